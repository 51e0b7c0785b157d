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
zero-copy (see ``msp._arrays``); the calls release the GIL while the library works.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from . import _arrays
from ._convert import real, scope as scope_of
from ._lib import lib

__all__ = ["cost_table"]

_KINDS = ("energy", "reconstruction")


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
        levels: the level set, least sparse first, each level in a form ``msp.Level.parse``
            takes (``"2:8"``, ``(2, 8)``, ``0.7``, ``"70%"``, ``(sparsity, n, m)``, ``msp.Level``);
            every N:M level's ``m`` must divide ``in_features``.
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
    scope_code = scope_of(scope)
    matrix = _arrays.as_matrix(weight, "weight", inplace=False)
    array = _arrays.level_array(levels)
    col = _arrays.col_scale(col_scale, matrix.cols)
    costs = np.zeros(len(array), dtype=np.float64)
    if kind == "energy":
        if gram is not None:
            raise ValueError('gram is used by kind="reconstruction" only')
        scale = real(scale, "scale")
        d = None if diag is None else _arrays.float_array(diag, (matrix.rows, matrix.cols), "diag", np.float32)
        lib.msp_cost_table_energy(
            matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, array, len(array), scope_code,
            _arrays.pointer(col), _arrays.pointer(d), scale, costs.ctypes.data,
        )
    else:
        if gram is None:
            raise ValueError('kind="reconstruction" needs gram, the inputs\' Gram matrix X.T @ X')
        if diag is not None or scale != 1.0:
            raise ValueError('diag and scale are used by kind="energy" only')
        h = _arrays.float_array(gram, (matrix.cols, matrix.cols), "gram", np.float32)
        lib.msp_cost_table_reconstruction(
            matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, array, len(array), scope_code,
            _arrays.pointer(col), h.ctypes.data, costs.ctypes.data,
        )
    return costs
