"""Gram matrices of layer inputs: ``msp.GramAccumulator`` (``msp_gram_*`` in ``msp.h``).

SparseGPT prunes a layer with the Gram matrix of its calibration inputs, ``H = sum_t x_t x_t^T``
(``in_features x in_features``). The accumulator keeps one per layer, fed with activation chunks of
any leading shape ``[..., in_features]`` (float32, float16 or bfloat16; numpy arrays or CPU torch
tensors, read zero-copy when contiguous). Every chunk is multiplied in float32 by BLAS in runs of at
most 128 tokens and added into a double accumulator, so every entry agrees with a float64 reference
to better than ``1e-5 * sqrt(H_ii * H_jj)``. ``sqrt(diag(H))`` are the input-feature norms Wanda
scores with, so one pass over the calibration data serves both pruners.

The calls release the GIL while the library works.
"""

from __future__ import annotations

import ctypes
from typing import Any, Iterable

import numpy as np

from . import _arrays
from ._convert import c_integer
from ._handle import NativeHandle
from ._lib import lib
from .errors import InvalidArgumentError

__all__ = ["GramAccumulator"]


class GramAccumulator(NativeHandle):
    """Per-layer Gram matrices ``H = sum_t x_t x_t^T`` of layer inputs (``msp_gram`` in ``msp.h``).

    Example::

        acc = msp.GramAccumulator([layer.in_features for layer in layers])
        for batch in calibration:          # e.g. from forward pre-hooks
            acc.add(i, inputs_of_layer_i)   # [..., in_features]
        H = acc.gram(i)                     # float32 [in_features, in_features]
        obs = msp.OBS(H)

    A layer's accumulator (``8 * cols**2`` bytes) is allocated by its first ``add``; each ``add``
    uses ``4 * cols**2`` bytes of scratch besides.

    Thread safety: ``add`` calls for *distinct* layers may run concurrently from several threads
    (the library releases the GIL); calls for the same layer, and any call concurrent with
    ``reset`` or ``close``, must be serialised by the caller.

    The object owns its native handle: ``close()`` (or leaving a ``with`` block, or garbage
    collection) releases it; any call after ``close()`` raises ``msp.InvalidStateError``. Every
    method validates its input before changing anything: after an error the accumulator is exactly
    as before the call.
    """

    _free = staticmethod(lib.msp_gram_free)
    _name = "GramAccumulator"

    def __init__(self, cols_per_layer: Iterable[int]) -> None:
        """Create an accumulator with every Gram matrix at zero.

        Args:
            cols_per_layer: the input features of every layer (integers in ``[1, 2**31 - 1]``; at
                least one layer).

        Raises:
            TypeError: a width that is not an integer.
            msp.InvalidArgumentError: no layers, or a width out of range (a ``ValueError``).
        """
        super().__init__()
        if isinstance(cols_per_layer, (str, bytes)) or not isinstance(cols_per_layer, Iterable):
            raise TypeError(f"cols_per_layer must be an iterable of integers, got {type(cols_per_layer).__name__}")
        values = [c_integer(c, f"cols_per_layer[{i}]", "int64") for i, c in enumerate(cols_per_layer)]
        array = np.array(values, dtype=np.int64)
        handle = ctypes.c_void_p()
        lib.msp_gram_create(array.ctypes.data, len(values), ctypes.byref(handle))
        self._handle = handle.value
        self._cols = tuple(values)

    def __repr__(self) -> str:
        if self.closed:
            return "<msp.GramAccumulator (closed)>"
        return f"<msp.GramAccumulator {self.num_layers} layers>"

    @property
    def cols(self) -> tuple[int, ...]:
        """The input features of every layer."""
        return self._cols

    @property
    def num_layers(self) -> int:
        """The number of layers."""
        return len(self._cols)

    def _layer(self, layer: Any) -> int:
        layer = c_integer(layer, "layer", "int64")
        if not 0 <= layer < self.num_layers:
            raise InvalidArgumentError(f"layer ({layer}) must be in [0, {self.num_layers})")
        return layer

    def add(self, layer: int, x: Any) -> None:
        """Add ``sum_t x_t x_t^T`` of one activation chunk to layer ``layer``.

        Args:
            layer: index in ``[0, num_layers)``.
            x: numpy array or CPU torch tensor of float32/float16/bfloat16 with shape
                ``[..., cols]`` (``cols`` = the layer's width; the leading dimensions are the
                tokens), all finite. Read only; a non-contiguous input is copied first (see
                ``msp._arrays``). An empty input adds nothing.

        Raises:
            TypeError, ValueError: unsupported object, dtype, device, or a last dimension that is
                not the layer's width.
            msp.InvalidArgumentError: a bad layer, a non-finite element (the message names the
                token and column), or a diagonal entry that would exceed half the float32 range.
                The accumulator is unchanged.
            msp.InvalidStateError: the accumulator is closed.
        """
        handle = self._ptr()
        layer = self._layer(layer)
        cols = self._cols[layer]
        shape = tuple(getattr(x, "shape", ()))
        if not shape or shape[-1] != cols:
            raise ValueError(f"x must have shape [..., {cols}] (layer {layer}'s width), got {shape}")
        vector = _arrays.as_vector(x, "x")
        if vector.count == 0:
            return
        lib.msp_gram_add(handle, layer, vector.ptr, vector.dtype, vector.count // cols, cols)

    def tokens(self, layer: int) -> int:
        """The number of tokens added to layer ``layer`` since creation or ``reset``."""
        handle = self._ptr()
        out = ctypes.c_int64()
        lib.msp_gram_tokens(handle, self._layer(layer), ctypes.byref(out))
        return out.value

    def gram(self, layer: int) -> np.ndarray:
        """Return layer ``layer``'s Gram matrix ``sum_t x_t x_t^T`` (not divided by the tokens).

        Returns:
            A new float32 array ``[cols, cols]``, exactly symmetric; zeros before the first ``add``.
        """
        handle = self._ptr()
        layer = self._layer(layer)
        cols = self._cols[layer]
        out = np.empty((cols, cols), dtype=np.float32)
        lib.msp_gram_get(handle, layer, out.ctypes.data)
        return out

    def reset(self) -> None:
        """Clear every layer's Gram matrix and token count (releasing their memory)."""
        lib.msp_gram_reset(self._ptr())
