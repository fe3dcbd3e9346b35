"""Hands the C heap back to the system once the pack's models are freed.

glibc keeps freed memory inside the process: after it frees a large mmap'd block it raises its
mmap threshold to that size, so later weight-sized buffers are carved from the heap and stay
there when freed. In a real ComfyUI 0.33, "Free model and node cache" after a DropletVideo run
left the server 18% above its RSS before the first load, none of it held by Python objects.
`malloc_trim(0)` returns those pages. Each model the loaders build gets a finalizer that marks
it freed; the next full garbage collection (ComfyUI runs one right after a Free) trims the heap.

Importing this module changes nothing: the first model registered (`release_heap_when_freed`)
installs the one gc callback, a HeapRelease, which holds the state. Elsewhere than glibc
nothing is installed.
"""

import ctypes
import gc
import logging
import weakref
from typing import Callable, Optional

logger = logging.getLogger(__name__)


def glibc_malloc_trim() -> Optional[Callable[[int], int]]:
    try:
        return ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
        return None


class HeapRelease:
    """A gc callback: trims the C heap at the first full collection after a watched model is freed."""

    def __init__(self, malloc_trim: Callable[[int], int]):
        self.malloc_trim, self.models_freed = malloc_trim, False

    def watch(self, model) -> None:
        weakref.finalize(model, self.note_freed)

    def note_freed(self) -> None:
        self.models_freed = True

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "stop" and info["generation"] == 2 and self.models_freed:
            self.models_freed = False
            self.malloc_trim(0)
            logger.debug("DropletVideo: returned the freed C heap to the system (malloc_trim)")


def installed() -> Optional[HeapRelease]:
    """The process's HeapRelease in gc.callbacks, installed on the first call; None off glibc."""
    for callback in gc.callbacks:
        if isinstance(callback, HeapRelease):
            return callback
    malloc_trim = glibc_malloc_trim()
    if malloc_trim is None:
        return None
    release = HeapRelease(malloc_trim)
    gc.callbacks.append(release)
    return release


def release_heap_when_freed(model) -> None:
    """Trim the C heap at the first full garbage collection after `model` is freed."""
    release = installed()
    if release is not None:
        release.watch(model)
