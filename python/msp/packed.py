"""Compressed N:M weights: ``msp.nm_pack``, the ``msp.PackedNM`` object and ``msp.nm_linear``.

A weight matrix pruned to an N:M level is stored as its kept values plus a one-bit-per-column index,
and multiplied with tokens straight from that form, so the pruned layer is smaller and faster::

    packed = msp.nm_pack(layer.weight.data, "2:8")   # keeps the 2 largest |w| of every 8 (msp's rule)
    y = msp.nm_linear(x, packed)                      # x @ W.T for x of shape [..., in_features]
    w = packed.unpack()                               # the masked dense matrix, bit for bit

Format (``include/msp.h``, "Compressed N:M weights"): ``values`` is ``[rows, cols // m * n]`` in the
weight's dtype, each row's kept weights in column order; ``index`` is ``[rows, 4 * ceil(cols / 32)]``
uint8, bit ``c % 8`` of byte ``c // 8`` set when column ``c`` is kept. At 2:8 a bfloat16 matrix
takes 0.31 of its dense bytes.

Weights, values and tokens are numpy arrays (float32, float16, or bfloat16 through ml_dtypes) or
CPU torch tensors (float32, float16, bfloat16); results have the type of their input (torch in,
torch out). The calls release the GIL while the library works.
"""

from __future__ import annotations

import ctypes
import math
from typing import Any

import numpy as np

from . import _arrays
from ._convert import integer
from ._lib import DTYPE_F32, lib
from .levels import Level

__all__ = ["PackedNM", "nm_pack", "nm_linear"]


def _nm_level(level: Any) -> Level:
    """An N:M level with n < m from ``"2:8"``, ``(2, 8)`` or a ``msp.Level``."""
    parsed = Level.parse(level)
    if not parsed.is_nm or parsed.n == parsed.m:
        raise ValueError(f"a packed matrix needs an N:M level with n < m (e.g. \"2:8\"), got {parsed}")
    return parsed


def _sizes(rows: int, cols: int, level: Level, code: int) -> tuple[int, int]:
    """Bytes of a packed matrix's values and index (``msp_nm_packed_size``)."""
    values, index = ctypes.c_int64(), ctypes.c_int64()
    lib.msp_nm_packed_size(rows, cols, level.n, level.m, code, ctypes.byref(values), ctypes.byref(index))
    return values.value, index.value


class PackedNM:
    """An N:M weight matrix in compressed form (see the module docstring for the format).

    Build one with :func:`nm_pack`, or from stored arrays with ``PackedNM(values, index, shape, level)``
    (for loading: the arrays are checked for type and shape here, the index's content by the library
    at every :meth:`unpack` and :func:`nm_linear`, where a bad index raises
    ``msp.InvalidArgumentError``).

    All attributes are read-only: the library reads the arrays by the shape and level they were
    given with.
    """

    def __init__(self, values: Any, index: Any, shape: tuple[int, int], level: Any) -> None:
        level = _nm_level(level)
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2):
            raise TypeError(f"shape must be (rows, cols), got {shape!r}")
        rows, cols = (integer(s, "shape") for s in shape)
        if rows <= 0 or cols <= 0 or cols % level.m:
            raise ValueError(f"shape {tuple(shape)} needs rows, cols > 0 and cols a multiple of m = {level.m}")
        matrix = _arrays.as_matrix(values, "values", inplace=False)
        if (matrix.rows, matrix.cols) != (rows, cols // level.m * level.n):
            raise ValueError(
                f"values must have shape ({rows}, {cols // level.m * level.n}) for {rows} x {cols} at {level}, "
                f"got ({matrix.rows}, {matrix.cols})"
            )
        if _arrays.torch_of(index) is not _arrays.torch_of(matrix.obj):
            raise TypeError("values and index must both be numpy arrays or both torch tensors")
        self._values = matrix.obj
        self._index, self._index_ptr = _arrays.as_bytes(index, "index", (rows, 4 * math.ceil(cols / 32)))
        self._shape = (rows, cols)
        self._level = level
        self._code = matrix.dtype
        # The arrays are held for the object's life (read-only attributes): their addresses stay valid.
        self._values_ptr = matrix.ptr

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)`` of the dense matrix (``[out_features, in_features]``)."""
        return self._shape

    @property
    def level(self) -> Level:
        """The ``msp.Level`` ``n:m``."""
        return self._level

    @property
    def values(self) -> Any:
        """``[rows, cols // m * n]`` kept weights (numpy array or CPU torch tensor)."""
        return self._values

    @property
    def index(self) -> Any:
        """``[rows, 4 * ceil(cols / 32)]`` uint8 bitmask of the kept columns, same kind as ``values``."""
        return self._index

    @property
    def dtype(self) -> Any:
        """The dtype of the weights and of ``values``."""
        return self.values.dtype

    @property
    def nbytes(self) -> int:
        """Bytes of ``values`` plus ``index``."""
        return _arrays.nbytes(self.values) + _arrays.nbytes(self.index)

    def unpack(self) -> Any:
        """The dense ``[rows, cols]`` masked matrix: kept weights at their columns, +0 elsewhere.

        Returns:
            A numpy array or torch tensor like ``values``, of its dtype; bit-identical to the weight
            ``nm_pack`` was given after ``msp.prune_nm_`` with the same level and ``col_scale``.

        Raises:
            msp.InvalidArgumentError: an index that breaks the format (the message names the row).
        """
        rows, cols = self.shape
        dense, dense_ptr = _arrays.new_array(self.values, (rows, cols), self._code)
        n, m = self.level.n, self.level.m
        lib.msp_nm_unpack(self._values_ptr, self._index_ptr, self._code, rows, cols, n, m, dense_ptr)
        return dense

    def __repr__(self) -> str:
        return f"PackedNM({self.level}, shape={self.shape}, dtype={self.dtype}, nbytes={self.nbytes})"


def nm_pack(weight: Any, level: Any, col_scale: Any = None) -> PackedNM:
    """Pack a weight matrix at an N:M level: in every group of ``m`` consecutive weights along a row
    the ``n`` with the highest score ``|w| * col_scale[col]`` are kept (ties: lower column kept), as
    ``msp.prune_nm_`` keeps them; a matrix already pruned to the level packs exactly its nonzeros.

    Args:
        weight: 2-D ``[out_features, in_features]`` float32/float16/bfloat16 numpy array or CPU torch
            tensor, ``cols % m == 0``, no NaN. Not modified (a non-contiguous one is copied first).
        level: ``"2:8"``, ``(2, 8)`` or a ``msp.Level``, with ``0 < n < m <= 32``.
        col_scale: None for magnitude, or ``cols`` finite non-negative numbers (Wanda's input norms).

    Returns:
        A :class:`PackedNM` whose arrays are of the weight's kind (numpy or torch) and dtype.

    Raises:
        TypeError, ValueError: see ``msp._arrays``; ``msp.InvalidArgumentError`` for a bad level or
            shape, a NaN weight or a bad ``col_scale``.
    """
    level = _nm_level(level)
    matrix = _arrays.as_matrix(weight, "weight", inplace=False)
    scale = _arrays.col_scale(col_scale, matrix.cols)
    values_bytes, index_bytes = _sizes(matrix.rows, matrix.cols, level, matrix.dtype)
    width = 4 if matrix.dtype == DTYPE_F32 else 2
    per_row = values_bytes // width // matrix.rows
    values, values_ptr = _arrays.new_array(matrix.obj, (matrix.rows, per_row), matrix.dtype)
    index, index_ptr = _arrays.new_array(matrix.obj, (matrix.rows, index_bytes // matrix.rows), None)
    lib.msp_nm_pack(
        matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, level.n, level.m, _arrays.pointer(scale), values_ptr,
        index_ptr,
    )
    return PackedNM(values, index, (matrix.rows, matrix.cols), level)


def nm_linear(x: Any, packed: PackedNM) -> Any:
    """``x @ W.T`` for the packed weights ``W`` (``torch.nn.functional.linear`` without bias).

    The product runs on the compressed form: float32 fused multiply-adds in a fixed order, the same
    bits for any thread count, CPU instruction set or batch a token comes in, within
    ``(ceil(cols / 64) + 6) * 2**-24 * sum(|W[r, c] * x[c]|)`` of the exact value, then rounded to x's
    dtype. Pruned columns contribute ``0 * x`` (an infinite or NaN ``x`` gives NaN, as a dense product
    does). Made for decoding: the weights are read once per 16 tokens.

    Args:
        x: ``[..., cols]`` float32/bfloat16 (or float16) numpy array or CPU torch tensor; copied when
            not C-contiguous.
        packed: the weights, from :func:`nm_pack` or ``PackedNM(...)``.

    Returns:
        ``[..., rows]`` of x's kind and dtype.

    Raises:
        TypeError: unsupported x or packed.
        ValueError: x's last dimension is not ``cols``, or x requires grad under grad mode (there is
            no backward); ``msp.InvalidArgumentError`` for a bad index.
    """
    if not isinstance(packed, PackedNM):
        raise TypeError(f"packed must be a msp.PackedNM (from msp.nm_pack), got {type(packed).__name__}")
    rows, cols = packed.shape
    torch = _arrays.torch_of(x)
    shape = tuple(x.shape) if torch is not None or isinstance(x, np.ndarray) else None
    if not shape or shape[-1] != cols:
        raise ValueError(f"x must have shape [..., {cols}] (in_features), got {shape}")
    if torch is not None and x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "x requires grad and grad mode is on; nm_linear has no backward: call it under torch.no_grad()")
    tokens = _arrays.as_vector(x, "x")  # batch x cols, a contiguous copy when x is not
    y, y_ptr = _arrays.new_array(tokens.obj, (*shape[:-1], rows), tokens.dtype)
    if tokens.count:
        lib.msp_nm_linear(
            packed._values_ptr, packed._index_ptr, packed._code, rows, cols, packed.level.n, packed.level.m,
            tokens.ptr, tokens.dtype, tokens.count // cols, y_ptr, tokens.dtype,
        )
    return y
