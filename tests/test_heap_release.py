"""nodes/heap_release.py: importing it installs nothing; the first model registered installs one
gc callback, which trims the C heap once at the full collection after a watched model is freed.

The module is loaded from its file (it needs only the standard library), so each test gets a
fresh copy and gc.callbacks is restored afterwards."""

import gc
import importlib.util
from pathlib import Path

import pytest

HEAP_RELEASE = Path(__file__).resolve().parents[1] / "nodes" / "heap_release.py"


def fresh_module():
    spec = importlib.util.spec_from_file_location("heap_release_under_test", HEAP_RELEASE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def callbacks():
    before = list(gc.callbacks)
    yield before
    gc.callbacks[:] = before


class Model:
    """Stands in for a loaded model (anything a weakref finalizer can watch)."""


def test_importing_installs_nothing(callbacks):
    fresh_module()
    assert gc.callbacks == callbacks


def test_the_first_model_installs_one_callback_that_trims_once_after_a_free(callbacks, monkeypatch):
    module, trims = fresh_module(), []
    monkeypatch.setattr(module, "glibc_malloc_trim", lambda: trims.append)
    first, second = Model(), Model()
    module.release_heap_when_freed(first)
    module.release_heap_when_freed(second)
    added = [c for c in gc.callbacks if c not in callbacks]
    assert len(added) == 1 and isinstance(added[0], module.HeapRelease)
    gc.collect()
    assert trims == []  # nothing freed yet
    del first, second
    gc.collect()
    gc.collect()
    assert trims == [0]


def test_nothing_is_installed_off_glibc(callbacks, monkeypatch):
    module = fresh_module()
    monkeypatch.setattr(module, "glibc_malloc_trim", lambda: None)
    module.release_heap_when_freed(Model())
    assert gc.callbacks == callbacks
