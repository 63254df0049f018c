"""Per-request outcome counting: lost, duplicated, wrong kind; time to recover."""

from __future__ import annotations

import pytest

from app.chaos.tally import recovery_ms, tally


@pytest.mark.parametrize(
    ("predicted", "letters", "lost", "duplicated", "wrong", "dead"),
    [
        (["a", "b", "c"], ["x", "y"], 0, 0, 0, 2),  # the promise kept
        (["a", "c"], ["x", "y"], 1, 0, 0, 2),  # b lost
        (["a", "b", "b", "c", "c", "c"], ["x", "y"], 0, 3, 0, 2),  # b twice, c three times
        (["a", "b", "c"], ["x"], 1, 0, 0, 1),  # y's dead letter lost
        (["a", "b", "c"], ["x", "x", "y"], 0, 1, 0, 3),  # x dead-lettered twice
        (["a", "b", "x"], ["c", "y"], 0, 0, 2, 1),  # c dead-lettered, x predicted
        (["a", "b", "c", "other-run"], ["x", "y", "zz"], 0, 0, 0, 2),  # others ignored
    ],
)
def test_tally(
    predicted: list[str],
    letters: list[str],
    lost: int,
    duplicated: int,
    wrong: int,
    dead: int,
) -> None:
    t = tally(["a", "b", "c"], ["x", "y"], predicted, letters)
    assert (t.lost, t.duplicated, t.wrong_kind, t.dead_letters) == (lost, duplicated, wrong, dead)
    assert t.sent == 5
    assert t.ok == (lost == duplicated == wrong == 0)


def test_recovery_is_the_longest_wait_of_a_request_sent_after_the_first_fault() -> None:
    sent = {"a": 1000, "b": 2000, "c": 3000, "d": 5000}
    served = {"a": 9000, "b": 4200, "c": 4300, "d": 5020}
    assert recovery_ms([1500], sent, served) == 2200  # b waited 2.2 s; a was before the fault
    assert recovery_ms([4800, 1500], sent, served) == 2200
    assert recovery_ms([4800], sent, served) == 20
    assert recovery_ms([], sent, served) is None
    assert recovery_ms([9000], sent, served) is None  # nothing sent after it


def test_a_request_never_served_is_not_a_wait_but_lost() -> None:
    assert recovery_ms([1500], {"a": 1000, "b": 2000}, {"a": 1005}) is None
    assert recovery_ms([1500], {"b": 2000, "c": 2500}, {"c": 2600}) == 100
