"""The header is the single source of every limit and of the version: ``msp._lib.LIMITS`` (from
``msp_get_limits``) equals each ``MSP_*`` limit macro of include/msp.h, and every check through
Python accepts the macro's value and rejects one past it."""

import ctypes
import math
import re

import numpy as np
import pytest

import msp
from msp import _lib
from msp._lib import DTYPE_F32, LIMITS, SCOPE_ROW, lib

from conftest import REPO_DIR

HEADER = (REPO_DIR / "include" / "msp.h").read_text()


def header_macros() -> dict[str, str]:
    """``{NAME: value text}`` of every object-like ``#define MSP_*`` of the header."""
    return dict(re.findall(r"^#define (MSP_\w+) (.+?)\s*(?:/\*.*)?$", HEADER, re.M))


def limit_macros() -> dict[str, float]:
    """The limit macros (``MSP_MAX_*``, ``MSP_SOLVE_MAX_*``, ``MSP_*_TOLERANCE``) and their values."""
    macros = header_macros()
    names = [n for n in macros if re.fullmatch(r"MSP_(MAX_\w+|SOLVE_MAX_\w+|\w+_TOLERANCE)", n)]
    return {n: float(macros[n]) if re.search(r"[.eE]", macros[n]) else int(macros[n]) for n in names}


def test_every_limit_macro_is_what_the_library_reports():
    macros = limit_macros()
    # The documented set: a new limit macro needs an msp_limits field, and the reverse.
    assert {n[len("MSP_"):].lower() for n in macros} == set(LIMITS._fields)
    for name, value in macros.items():
        assert getattr(LIMITS, name[len("MSP_"):].lower()) == value, name
    # The values the header documents in words.
    assert (LIMITS.max_m, LIMITS.max_levels, LIMITS.max_layers) == (32, 256, 2**31 - 1)
    assert (LIMITS.max_offspring, LIMITS.max_survivors, LIMITS.max_fidelity_levels) == (2**20, 2**20, 16)
    assert (LIMITS.max_topk_cols, LIMITS.solve_max_cells, LIMITS.solve_max_steps) == (2**32 - 1, 2**21, 2**27)
    assert (LIMITS.max_tolerance, LIMITS.level_sparsity_tolerance, LIMITS.max_proxies) == (0.5, 1e-12, 8)


def test_limits_struct_size_is_checked():
    raw = _lib.msp_limits(struct_size=ctypes.sizeof(_lib.msp_limits) + 1)
    with pytest.raises(msp.InvalidArgumentError, match=r"struct_size"):
        lib.msp_get_limits(ctypes.byref(raw))
    assert raw.max_m == 0
    # An older, shorter struct (up to max_m) gets only its own fields.
    raw = _lib.msp_limits(struct_size=_lib.msp_limits.max_levels.offset)
    lib.msp_get_limits(ctypes.byref(raw))
    assert raw.max_m == LIMITS.max_m and raw.max_levels == 0


def test_version_macros_are_the_library_and_package_version():
    macros = header_macros()
    parts = [int(macros[f"MSP_VERSION_{p}"]) for p in ("MAJOR", "MINOR", "PATCH")]
    # MSP_VERSION_NUMBER's expression over the parts, evaluated with the parts' values.
    expression = macros["MSP_VERSION_NUMBER"]
    for name, value in zip(("MAJOR", "MINOR", "PATCH"), parts):
        expression = expression.replace(f"MSP_VERSION_{name}", str(value))
    assert re.fullmatch(r"[\d\s()*+]+", expression)
    number = eval(expression)  # noqa: S307  (digits, spaces, parentheses, * and + only)
    assert (number // 10000, number // 100 % 100, number % 100) == tuple(parts)
    assert msp.version() == msp.__version__ == ".".join(map(str, parts))


def test_group_size_at_most_max_m():
    m = LIMITS.max_m
    assert msp.Level.nm(1, m).m == m and len(msp.nm_levels(m)) == m
    for make in (lambda: msp.Level.nm(1, m + 1), lambda: msp.nm_levels(m + 1), lambda: msp.Level(1 - 1 / (m + 1), 1, m + 1)):
        with pytest.raises(ValueError, match=str(m)):
            make()
    scores = np.arange(1, m + 2, dtype=np.float32).reshape(1, m + 1)
    keep = msp.nm_mask(scores[:, :m].copy(), 1, m)
    assert keep.tolist() == [[False] * (m - 1) + [True]]
    with pytest.raises(msp.InvalidArgumentError, match=rf"m \({m + 1}\) must be in \[2, {m}\]"):
        msp.nm_mask(scores, 1, m + 1)


def test_level_count_at_most_max_levels():
    most = LIMITS.max_levels
    sparsities = [0.99 * k / (most + 1) for k in range(most + 1)]
    assert len(msp.ratio_levels(sparsities[:most])) == most
    msp.Problem([10, 20], 0.4, msp.ratio_levels(sparsities[:most]), tolerance=0.1).close()
    with pytest.raises(ValueError, match=str(most)):
        msp.ratio_levels(sparsities)


def test_level_sparsity_tolerance():
    tolerance = LIMITS.level_sparsity_tolerance
    assert msp.Level(0.5 + 0.99 * tolerance, 1, 2).sparsity == 0.5
    with pytest.raises(ValueError, match="1:2"):
        msp.Level(0.5 - 1.01 * tolerance, 1, 2)


def test_tolerance_at_most_max_tolerance():
    levels = msp.ratio_levels([0, 0.3, 0.6, 0.9])
    msp.Problem([10, 30], 0.5, levels, tolerance=LIMITS.max_tolerance).close()
    beyond = math.nextafter(LIMITS.max_tolerance, 1)
    with pytest.raises(msp.InvalidArgumentError, match=rf"tolerance \({beyond!r}\) must be in \[0, 0.5\]"):
        msp.Problem([10, 30], 0.5, levels, tolerance=beyond)


@pytest.mark.parametrize("setting, most", [("offspring", LIMITS.max_offspring), ("survivors", LIMITS.max_survivors),
                                           ("fidelity_levels", LIMITS.max_fidelity_levels)])
def test_search_settings_at_most_their_limit(setting, most):
    args = ([10, 20, 30], 0.5, msp.ratio_levels([0, 0.25, 0.5, 0.75]))
    search = msp.Search(*args, sensitivity=[1, 2, 3], tolerance=0.2, **{setting: most})
    search.close()
    with pytest.raises(msp.InvalidArgumentError, match=rf"{setting} \({most + 1}\) must be in \[1, {most}\]"):
        msp.Search(*args, sensitivity=[1, 2, 3], tolerance=0.2, **{setting: most + 1})


def test_layer_count_at_most_max_layers():
    # The count is checked before the sizes are read: at the limit, the NULL sizes are what fails.
    levels = (_lib.msp_level * 2)(_lib.msp_level(0, 0, 0), _lib.msp_level(0.5, 0, 0))
    out = ctypes.c_void_p()
    with pytest.raises(msp.InvalidArgumentError, match=r"^sizes is NULL$"):
        lib.msp_problem_create(None, LIMITS.max_layers, levels, 2, ctypes.byref(out))
    with pytest.raises(msp.InvalidArgumentError, match=rf"num_layers \({LIMITS.max_layers + 1}\)"):
        lib.msp_problem_create(None, LIMITS.max_layers + 1, levels, 2, ctypes.byref(out))
    assert out.value is None


def test_topk_columns_at_most_max_topk_cols():
    # At the limit the column count passes and col_scale[0] = -1 is rejected next, before any
    # buffer of that size is read; one column more is refused as too wide.
    widest = LIMITS.max_topk_cols
    w = np.arange(1, 5, dtype=np.float32)
    scale = np.array([-1, 1, 1, 1], dtype=np.float32)
    with pytest.raises(msp.InvalidArgumentError, match=r"col_scale\[0\] \(-1.0\)"):
        lib.msp_topk_prune(w.ctypes.data, DTYPE_F32, 1, widest, 0.5, SCOPE_ROW, scale.ctypes.data, None)
    with pytest.raises(msp.InvalidArgumentError, match=rf"cols \({widest + 1}\) must be at most {widest}"):
        lib.msp_topk_prune(w.ctypes.data, DTYPE_F32, 1, widest + 1, 0.5, SCOPE_ROW, scale.ctypes.data, None)
    assert w.tolist() == [1, 2, 3, 4]
