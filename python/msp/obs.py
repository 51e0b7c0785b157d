"""SparseGPT's solver: ``msp.OBS`` (``msp_obs_*`` in ``msp.h``), one Gram matrix factorised once.

``msp.OBS(H)`` prepares the Gram matrix ``H`` of a layer's inputs as SparseGPT's reference
(``fasterprune``) does: an input whose diagonal is 0 is dead (its weights are zeroed), ``damp *
mean(diag H)`` is added to the diagonal, and the upper Cholesky factor of ``H^-1`` is computed once
(in double). ``prune_`` then prunes any number of weight matrices that read these inputs (a layer
at every level of a level set; q/k/v or gate/up, which share inputs) in place with SparseGPT's
sweep: each pruned weight's error is spread over the later columns of its row, block by block,
so that the layer's output on the calibration inputs changes as little as possible.

Levels use msp's grammar: ``"2:8"`` or ``(2, 8)`` keep 2 of every 8 along the input features
(chosen when the sweep reaches the group); a float or ``"70%"`` is an unstructured sparsity
(exactly ``floor(sparsity * rows * width + 0.5)`` weights of each block of ``block`` columns, all
rows together, chosen when the sweep reaches the block). Ties keep the lower index. Results do
not depend on the thread count; 16-bit weights are computed in float32 and rounded once.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

import numpy as np

from . import _arrays
from ._convert import c_integer, real
from ._handle import NativeHandle
from ._lib import lib

__all__ = ["OBS"]


class OBS(NativeHandle):
    """SparseGPT's solver for one Gram matrix (``msp_obs`` in ``msp.h``).

    Example::

        obs = msp.OBS(acc.gram(i))                  # factorise once (damp=0.01)
        for level in ["1:8", "2:8", 0.7]:
            w = dense.clone()
            keep = obs.prune_(w, level)             # in place; returns the keep mask

    Thread safety: the factorisation is immutable, so ``prune_`` may run on one solver from
    several threads at once (on distinct weights; the library releases the GIL). ``close()``
    waits for running ``prune_`` calls; any call after it raises ``msp.InvalidStateError``.
    """

    _free = staticmethod(lib.msp_obs_free)
    _name = "OBS"

    def __init__(self, gram: Any, damp: float = 0.01) -> None:
        """Prepare and factorise a Gram matrix.

        Args:
            gram: ``H = sum_t x_t x_t^T``, ``[cols, cols]``: a numpy array or torch tensor of real
                numbers on any device (converted to float32; only the lower triangle is read, and
                must be finite), e.g. ``GramAccumulator.gram(i)`` or ``X.T @ X``.
            damp: the dampening fraction of ``mean(diag H)`` added to the diagonal (finite, >= 0;
                SparseGPT's default 0.01).

        Raises:
            TypeError: ``gram`` is not numeric, or ``damp`` is not a real number.
            ValueError: ``gram`` is not a square matrix; ``msp.InvalidArgumentError`` (a
                ValueError) for a non-finite entry, a bad damp, or a matrix that is not positive
                definite after damping (the message suggests a larger damp).
            MemoryError: ``msp.OutOfMemoryError``.
        """
        super().__init__()
        self._idle = threading.Condition(self._lock)
        self._active = 0
        damp = real(damp, "damp")
        shape = tuple(getattr(gram, "shape", ()))
        if len(shape) != 2 or shape[0] != shape[1] or shape[0] == 0:
            raise ValueError(f"gram must be a non-empty square matrix [cols, cols], got shape {shape}")
        cols = int(shape[0])
        matrix = _arrays.float_array(gram, (cols, cols), "gram", np.float32)
        handle = ctypes.c_void_p()
        lib.msp_obs_create(matrix.ctypes.data, cols, damp, ctypes.byref(handle))
        self._handle = handle.value
        self._cols = cols
        self._damp = damp

    def __repr__(self) -> str:
        if self.closed:
            return "<msp.OBS (closed)>"
        return f"<msp.OBS cols={self._cols} damp={self._damp:g}>"

    @property
    def cols(self) -> int:
        """The input features (the weights' ``in_features``)."""
        return self._cols

    @property
    def damp(self) -> float:
        """The dampening fraction given at creation."""
        return self._damp

    def prune_(self, weight: Any, level: Any, block: int = 128, *, return_mask: bool = True) -> Any:
        """Prune ``weight`` in place to ``level`` with SparseGPT's sweep and return its keep mask.

        Args:
            weight: 2-D ``[out_features, in_features]`` float32/float16/bfloat16 numpy array or CPU
                torch tensor, C-contiguous and writable, finite, ``in_features == cols``. Replaced
                by the pruned and updated weights.
            level: ``"n:m"`` / ``(n, m)`` (n kept of every m; m must divide ``cols``), a sparsity
                in [0, 1) or ``"p%"`` (unstructured), or a ``msp.Level``.
            block: columns per block, > 0 (SparseGPT's default 128): the unstructured choice is
                made per block; for N:M it is rounded down to a multiple of m.
            return_mask: False skips writing the mask and returns None.

        Returns:
            The bool keep mask (numpy for numpy input, torch for torch input), or None.

        Raises:
            TypeError, ValueError: see ``msp._arrays``; ``msp.InvalidArgumentError`` for a bad
                level or block, a shape that does not fit, a non-finite weight, or pruned weights
                that overflow the dtype. On any error ``weight`` is unchanged.
            msp.InvalidStateError: the solver is closed.
        """
        level = _arrays.level_array([level])
        block = c_integer(block, "block", "int64")
        matrix = _arrays.as_matrix(weight, "weight", inplace=True)
        mask, mask_ptr = _arrays.new_keep_mask(matrix) if return_mask else (None, None)
        with self._lock:
            handle = self._ptr()
            self._active += 1
        try:
            lib.msp_obs_prune(handle, matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, level, block, mask_ptr)
        finally:
            with self._lock:
                self._active -= 1
                self._idle.notify_all()
        _arrays.written(matrix)
        return mask

    def close(self) -> None:
        """Release the native handle once no ``prune_`` runs. Idempotent."""
        with self._lock:
            while self._active:
                self._idle.wait()
            super().close()
