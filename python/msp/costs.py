"""Proxy costs of one layer at every level of a level set, from its weights (``msp_cost_table_*``).

Each level prunes exactly what the pruning functions would: ``prune_nm_`` for an N:M level (a dense
level such as 8:8 costs 0), ``prune_topk_`` with ``scope`` for an unstructured level, both scoring
``|w| * col_scale``. Two costs:

- ``kind="energy"``: ``scale * sum over pruned weights of w**2 * diag`` (``diag`` = 1 when omitted).
  With ``scale = Tr(F_l) / size_l`` this is the Fisher-weighted pruned energy; with ``diag`` the
  per-weight Fisher diagonal it is an OBD-style cost.
- ``kind="reconstruction"``: ``tr(dW @ H @ dW.T)``, the squared output error of the layer on its
  calibration inputs, where ``dW`` holds the pruned weights and ``H = X.T @ X`` is the Gram matrix
  of the inputs (``cols x cols``). Computed with BLAS in float32, accumulated in float64.

The table of a layer is one row of the ``costs`` argument of the exact solver. Weights are read
zero-copy (see ``msp._buffers``); the calls release the GIL while the library works.
"""

from __future__ import annotations

import ctypes
import numbers
import sys
from typing import Any, Iterable

import numpy as np

from . import _buffers
from ._lib import SCOPE_LAYER, SCOPE_ROW, lib, msp_level

__all__ = ["cost_table", "level_array"]

_SCOPES = {"row": SCOPE_ROW, "layer": SCOPE_LAYER}
_KINDS = ("energy", "reconstruction")


def _level_fields(level: Any, k: int) -> tuple[float, int, int]:
    """``(sparsity, n, m)`` of one level given as a tuple, a number, an ``msp_level`` or an object."""
    if isinstance(level, msp_level):
        return level.sparsity, level.n, level.m
    if isinstance(level, numbers.Real) and not isinstance(level, bool):
        return float(level), 0, 0
    if isinstance(level, (tuple, list)):
        if len(level) != 3:
            raise ValueError(f"levels[{k}] must be (sparsity, n, m), got {level!r}")
        sparsity, n, m = level
    elif all(hasattr(level, name) for name in ("sparsity", "n", "m")):
        sparsity, n, m = level.sparsity, level.n, level.m
    else:
        raise TypeError(
            f"levels[{k}] must be a (sparsity, n, m) tuple, a sparsity, or an object with "
            f".sparsity, .n and .m, got {type(level).__name__}"
        )
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise TypeError(f"levels[{k}] sparsity must be a real number, got {type(sparsity).__name__}")
    n = 0 if n is None else _buffers.int32(n, f"levels[{k}] n")
    m = 0 if m is None else _buffers.int32(m, f"levels[{k}] m")
    return float(sparsity), n, m


def level_array(levels: Iterable[Any]) -> ctypes.Array:
    """Convert a level set to a ctypes ``msp_level`` array (validated by the library when used).

    Args:
        levels: from least to most sparse; each a ``(sparsity, n, m)`` tuple (``n = m = 0`` or
            ``None`` for unstructured, else N:M keeping ``n`` of ``m`` with ``sparsity = 1 - n/m``),
            a plain sparsity (unstructured), an ``msp_level``, or an object with ``.sparsity``,
            ``.n`` and ``.m`` attributes.

    Raises:
        TypeError: a level of another kind.
        ValueError: an empty level set or a tuple of the wrong length.
    """
    items = list(levels)
    if not items:
        raise ValueError("levels is empty; give at least one level")
    array = (msp_level * len(items))()
    for k, level in enumerate(items):
        array[k] = msp_level(*_level_fields(level, k))
    return array


def _float32_matrix(x: Any, shape: tuple[int, int], name: str) -> np.ndarray:
    """``x`` (array-like or torch tensor on any device) as a C-contiguous float32 array of ``shape``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        x = x.detach().to(device="cpu", dtype=torch.float32).numpy()
    array = np.asarray(x)
    if array.dtype.kind not in "fiu" and array.dtype.name != "bfloat16":
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float32)


def cost_table(
    weight: Any,
    levels: Iterable[Any],
    kind: str = "energy",
    scope: str = "row",
    col_scale: Any = None,
    diag: Any = None,
    scale: float = 1.0,
    gram: Any = None,
) -> np.ndarray:
    """Return the proxy cost of pruning ``weight`` at each level.

    Args:
        weight: 2-D ``[out_features, in_features]`` float32/float16/bfloat16 numpy array or CPU
            torch tensor; finite (NaN and inf raise). Only read; a non-contiguous input is copied.
        levels: the level set, least sparse first (see ``level_array``); every N:M level's ``m``
            must divide ``in_features``.
        kind: ``"energy"`` or ``"reconstruction"`` (see the module docstring).
        scope: comparison group of the unstructured levels, ``"row"`` (Wanda) or ``"layer"``.
        col_scale: None for magnitude scores, or ``in_features`` finite non-negative numbers
            (Wanda's input-feature norms), as for ``prune_nm_``.
        diag: energy only: None, or per-weight factors of the weight's shape (e.g. the Fisher
            diagonal); converted to float32.
        scale: energy only: finite factor >= 0 (e.g. ``Tr(F_l) / size_l``).
        gram: reconstruction only (required): ``H = X.T @ X``, ``in_features x in_features``,
            symmetric and finite; converted to float32.

    Returns:
        A float64 array with one cost per level.

    Raises:
        TypeError: unsupported weight, level or argument types.
        ValueError: a bad ``kind``, ``scope``, shape or argument combination;
            ``msp.InvalidArgumentError`` (a ValueError) for what the library rejects (bad levels,
            non-finite data, an N:M level whose m does not divide the columns, ...).
        MemoryError: ``msp.OutOfMemoryError`` when scratch memory cannot be allocated.
    """
    if kind not in _KINDS:
        raise ValueError(f'kind must be "energy" or "reconstruction", got {kind!r}')
    if scope not in _SCOPES:
        raise ValueError(f'scope must be "row" or "layer", got {scope!r}')
    matrix = _buffers.as_matrix(weight, "weight", inplace=False)
    array = level_array(levels)
    col = _buffers.as_col_scale(col_scale, matrix.cols)
    col_ptr = None if col is None else col.ctypes.data
    costs = np.zeros(len(array), dtype=np.float64)
    if kind == "energy":
        if gram is not None:
            raise ValueError('gram is used by kind="reconstruction" only')
        if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
            raise TypeError(f"scale must be a real number, got {type(scale).__name__}")
        d = None if diag is None else _float32_matrix(diag, (matrix.rows, matrix.cols), "diag")
        lib.msp_cost_table_energy(
            matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, array, len(array), _SCOPES[scope],
            col_ptr, None if d is None else d.ctypes.data, float(scale), costs.ctypes.data,
        )
    else:
        if gram is None:
            raise ValueError('kind="reconstruction" needs gram, the inputs\' Gram matrix X.T @ X')
        if diag is not None or scale != 1.0:
            raise ValueError('diag and scale are used by kind="energy" only')
        h = _float32_matrix(gram, (matrix.cols, matrix.cols), "gram")
        lib.msp_cost_table_reconstruction(
            matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, array, len(array), _SCOPES[scope],
            col_ptr, h.ctypes.data, costs.ctypes.data,
        )
    return costs
