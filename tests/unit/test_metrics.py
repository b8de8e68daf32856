"""Metrics against hand-computed values.

pytest.approx (its default, rel 1e-6) where a value comes out of a few float operations (F1's
2pr/(p+r), a mean): each rounds by at most 2^-53 relative, and 2/3 has no exact binary form."""
from __future__ import annotations

import pytest

from mezo.metrics import accuracy, drop_em_f1, drop_f1, exact_match, f1, normalize_answer, score


def test_accuracy():
    assert accuracy([0, 1, 1, 2], [0, 1, 0, 0]) == 0.5
    assert accuracy([2, 0], [[2, 3], [1]]) == 0.5          # ReCoRD: any gold entity counts
    assert score("accuracy", [1], [1]) == 1.0


def test_squad_normalisation_em_f1():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("the Denver Broncos.", ["Carolina", "Denver Broncos"]) == 1.0
    assert exact_match("Denver", ["Denver Broncos"]) == 0.0
    # pred {denver}, gold {denver, broncos}: p = 1, r = 1/2 -> 2/3
    assert f1("Denver", ["Denver Broncos"]) == pytest.approx(2 / 3)
    # max over golds: "broncos won" vs "Denver Broncos" p=1/2 r=1/2 -> 1/2; vs "Broncos" p=1/2 r=1 -> 2/3
    assert f1("Broncos won", ["Denver Broncos", "Broncos"]) == pytest.approx(2 / 3)
    assert f1("Carolina", ["Denver Broncos"]) == 0.0
    assert f1("an apple", ["the apple"]) == 1.0
    assert score("f1", ["Denver", "x"], [["Denver Broncos"], ["x"]]) == pytest.approx((2 / 3 + 1) / 2)
    assert score("em", ["Denver", "x"], [["Denver Broncos"], ["x"]]) == 0.5


def test_drop_f1():
    assert drop_em_f1("the 3 cats", ["3 cats"]) == (1.0, 1.0)
    # numbers are canonicalised: "1,000" -> "1000" -> "1000.0"; bag {1000.0, people} vs {1000.0}
    assert drop_em_f1("1,000 people", ["1000"]) == (0.0, 0.67)
    # a gold bag with numbers scores 0 unless a number matches, even with other words shared
    assert drop_f1("7 yards", ["8 yards"]) == 0.0
    assert drop_f1("seven yards", ["yards"]) == 0.67
    # multi-span gold aligned one-to-one with the predicted spans
    assert drop_em_f1(["Bob", "Alice"], [["Alice", "Bob"]]) == (1.0, 1.0)
    # one predicted bag {bob, and, alice} vs gold bags {alice}, {bob}: best pair f1 = 0.5, over 2 bags
    assert drop_f1("Bob and Alice", [["Alice", "Bob"]]) == 0.25
    # max over gold answers; hyphen splits tokens
    assert drop_f1("Jean-Luc", ["Picard", "jean luc"]) == 1.0
    assert score("drop_f1", ["7"], [["7"]]) == 1.0
