"""msp.levels: level sets (nm_levels, ratio_levels) and the one grammar of a level, Level.parse."""

import numpy as np
import pytest

import msp
from msp._lib import msp_level
from msp.levels import Level, as_level_set, nm_levels, ratio_levels


def test_nm_levels_run_from_dense_to_sparsest():
    levels = nm_levels(8)
    assert [str(level) for level in levels] == [f"{n}:8" for n in range(8, 0, -1)]
    assert [level.sparsity for level in levels] == [1 - n / 8 for n in range(8, 0, -1)]
    assert levels[0].sparsity == 0.0 and levels[0].pattern == (8, 8)
    assert [str(level) for level in nm_levels(4, min_n=2)] == ["4:4", "3:4", "2:4"]
    assert [str(level) for level in nm_levels(8, min_n=2, max_n=6)] == ["6:8", "5:8", "4:8", "3:8", "2:8"]
    for bad in [dict(m=0), dict(m=33), dict(m=8, min_n=0), dict(m=8, max_n=9), dict(m=8, min_n=5, max_n=4)]:
        with pytest.raises(ValueError):
            nm_levels(**bad)
    with pytest.raises(TypeError):
        nm_levels(8.0)


def test_ratio_levels_are_sorted_and_validated():
    levels = ratio_levels([0.7, 0.5, 0.6])
    assert [level.sparsity for level in levels] == [0.5, 0.6, 0.7]
    assert [str(level) for level in levels] == ["50%", "60%", "70%"]
    assert all(level.pattern is None and not level.is_nm for level in levels)
    assert str(Level.ratio(0.625)) == "62.5%"
    for bad in [[], [1.0], [0.5, 1.0], [-0.1], [float("nan")], [0.5, 0.5], [float("inf")]]:
        with pytest.raises(ValueError):
            ratio_levels(bad)
    with pytest.raises(TypeError):
        ratio_levels(["0.5"])


def test_level_parsing_and_validation():
    assert Level.parse("2:8") == Level.nm(2, 8) == Level(0.75, 2, 8)
    assert Level.parse((2, 4)) == Level.nm(2, 4)
    assert Level.parse("70%") == Level.parse(0.7) == Level.parse("0.7") == Level.ratio(0.7)
    assert Level.from_json(Level.nm(3, 8).to_json()) == Level.nm(3, 8)
    for bad in ["0:8", "9:8", "2:64", "1.5:8", "150%", "x", 1.0, -0.5, (0, 4)]:
        with pytest.raises(ValueError):
            Level.parse(bad)
    with pytest.raises(ValueError):
        Level(0.5, 2, 8)  # sparsity inconsistent with 2:8
    with pytest.raises(TypeError):
        Level.parse(None)
    with pytest.raises(TypeError):
        Level.parse(True)
    with pytest.raises(Exception):  # frozen
        Level.nm(2, 8).n = 3


# --- the one grammar of a level -------------------------------------------------------------------


class LevelLike:
    def __init__(self, sparsity, n, m):
        self.sparsity, self.n, self.m = sparsity, n, m


def test_every_form_of_a_level_parses_to_the_same_level():
    two_of_eight = Level(0.75, 2, 8)
    for form in ["2:8", " 2 : 8 ", (2, 8), [2, 8], (0.75, 2, 8), [0.75, 2, 8], Level.nm(2, 8),
                 msp_level(0.75, 2, 8), LevelLike(0.75, 2, 8)]:
        assert Level.parse(form) == two_of_eight, form
    seventy = Level(0.7)
    for form in ["70%", "0.7", 0.7, np.float64(0.7), (0.7, 0, 0), (0.7, None, None), LevelLike(0.7, None, None)]:
        assert Level.parse(form) == seventy, form
    assert Level.parse(two_of_eight) is two_of_eight
    assert Level.from_json([2, 8]) == two_of_eight and Level.from_json({"sparsity": 0.7}) == seventy


def test_invalid_patterns_are_the_librarys_invalid_argument():
    for bad in [(0, 8), (9, 8), (2, 64), (0.5, 2, 8), (0.25, 3, 0), LevelLike(0.4, 2, 4)]:
        with pytest.raises(msp.InvalidArgumentError, match="level"):
            Level.parse(bad)
    for bad in [(1, 2, 3, 4), (), b"2:8", {"n": 2}, object()]:
        with pytest.raises(TypeError, match="a level is"):
            Level.parse(bad)


def test_level_sets_keep_their_order_and_take_any_iterable():
    assert as_level_set(None) == nm_levels(8)
    assert as_level_set(["2:4", 0.9]) == [Level.nm(2, 4), Level.ratio(0.9)]
    assert as_level_set(["70%", "50%"]) == [Level.ratio(0.7), Level.ratio(0.5)]  # the library rejects the order
    native = (msp_level * 2)(msp_level(0.5, 1, 2), msp_level(0.75, 0, 0))
    assert as_level_set(native) == [Level.nm(1, 2), Level.ratio(0.75)]
    for bad in ["2:8", Level.nm(2, 8), 3]:
        with pytest.raises(TypeError, match="sequence of levels"):
            as_level_set(bad)
    with pytest.raises(ValueError, match="empty"):
        as_level_set([])
