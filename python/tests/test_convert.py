"""msp._convert: the scalar converters (the one C-integer converter, reals, flags, scopes, "n:m")."""

import numpy as np
import pytest

import msp
from msp._convert import c_integer, flag, nm_text, real, scope
from msp._lib import SCOPE_LAYER, SCOPE_ROW


@pytest.mark.parametrize("ctype, low, high", [("int32", -(2**31), 2**31 - 1), ("int64", -(2**63), 2**63 - 1),
                                              ("uint64", 0, 2**64 - 1)])
def test_c_integers_take_exactly_their_c_range(ctype, low, high):
    assert c_integer(low, "x", ctype) == low and c_integer(high, "x", ctype) == high
    assert c_integer(np.int16(7), "x", ctype) == 7
    for outside in (low - 1, high + 1):
        with pytest.raises(msp.InvalidArgumentError, match=rf"x \({outside}\) is outside the {ctype} range"):
            c_integer(outside, "x", ctype)
    for wrong in (True, 1.0, "1", None):
        with pytest.raises(TypeError, match="x must be an integer"):
            c_integer(wrong, "x", ctype)


def test_reals_and_flags():
    assert real(np.float32(0.5), "r") == 0.5 and real(3, "r") == 3.0
    for wrong in (True, "0.5", None, 1j):
        with pytest.raises(TypeError, match="r must be a real number"):
            real(wrong, "r")
    assert flag(np.bool_(True), "f") is True and flag(False, "f") is False
    for wrong in (1, 0, "yes", None):
        with pytest.raises(TypeError, match="f must be True or False"):
            flag(wrong, "f")


def test_scopes():
    assert scope("row") == SCOPE_ROW and scope("layer") == SCOPE_LAYER
    for wrong in ("column", "", None, ["row"]):
        with pytest.raises(ValueError, match="scope must be"):
            scope(wrong)


def test_nm_text():
    assert nm_text("2:4", "pattern", "2:4") == (2, 4)
    assert nm_text(" 16 : 32 ", "level", "2:8") == (16, 32)
    for wrong in ("2:", ":4", "2:4:8", "-2:4", "2.5:4", "a:b", "24"):
        with pytest.raises(ValueError, match=r'is not of the form "n:m", e.g. "2:8"'):
            nm_text(wrong, "level", "2:8")
