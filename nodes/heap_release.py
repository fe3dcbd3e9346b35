"""Hands the C heap back to the system once the pack's models are freed.

glibc keeps freed memory inside the process: after it frees a large mmap'd block it raises its
mmap threshold to that size, so later weight-sized buffers are carved from the heap and stay
there when freed. In a real ComfyUI 0.33, "Free model and node cache" after a DropletVideo run
left the server 18% above its RSS before the first load, none of it held by Python objects.
`malloc_trim(0)` returns those pages. Each model the loaders build gets a finalizer that marks
it freed; the next full garbage collection (ComfyUI runs one right after a Free) trims the heap.
Elsewhere than glibc this does nothing.
"""

import ctypes
import gc
import logging
import weakref

logger = logging.getLogger(__name__)


def _glibc_malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


_MALLOC_TRIM = _glibc_malloc_trim()
_models_freed = False


def _note_freed() -> None:
    global _models_freed
    _models_freed = True


def _trim_after_full_collection(phase: str, info: dict) -> None:
    global _models_freed
    if phase == "stop" and info["generation"] == 2 and _models_freed:
        _models_freed = False
        _MALLOC_TRIM(0)
        logger.debug("DropletVideo: returned the freed C heap to the system (malloc_trim)")


def release_heap_when_freed(model) -> None:
    """Trim the C heap at the first full garbage collection after `model` is freed."""
    if _MALLOC_TRIM is not None:
        weakref.finalize(model, _note_freed)


if _MALLOC_TRIM is not None and _trim_after_full_collection not in gc.callbacks:
    gc.callbacks.append(_trim_after_full_collection)
