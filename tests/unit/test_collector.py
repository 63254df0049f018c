"""The worker process's garbage collector settings (``app.adapters.collector``)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from app.adapters.collector import YOUNG_THRESHOLD, freeze_survivors, tune_collector


@pytest.fixture
def restored_collector() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


@pytest.mark.usefixtures("restored_collector")
def test_the_young_threshold_is_raised_and_what_the_process_holds_is_frozen() -> None:
    gc.unfreeze()
    _, middle, old = gc.get_threshold()
    held = [[i] for i in range(1000)]  # containers alive when the loop starts
    tune_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, middle, old)
    assert gc.get_freeze_count() >= len(held)


@pytest.mark.usefixtures("restored_collector")
def test_cycles_are_still_collected() -> None:
    tune_collector()

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    del a, b
    assert gc.collect() >= 2


@pytest.mark.usefixtures("restored_collector")
def test_survivors_are_frozen_and_garbage_is_not() -> None:
    gc.unfreeze()
    kept = [[i] for i in range(1000)]

    class Node:
        other: object = None

    a, b = Node(), Node()
    a.other, b.other = b, a
    gone = weakref.ref(a)
    del a, b
    freeze_survivors()
    assert gc.get_freeze_count() >= len(kept)
    assert gone() is None  # the cycle was collected, not frozen
