"""Fisher-trace sensitivity: sums of squares and the per-layer accumulator of ``libmsp``.

The sensitivity of layer l is the trace of its Fisher information over S calibration samples,
``Tr(F_l) = (1/S) * sum_s ||g_ls||^2``, where ``g_ls`` is the loss gradient with respect to the
layer's weights on sample s. The library widens float32/float16/bfloat16 gradients exactly and sums
their squares in double with compensated summation; results agree with a float64 reference to
about 1e-15 relative and do not depend on the thread count.

Gradients are read zero-copy: any-shaped numpy arrays (float32, float16, or ``ml_dtypes.bfloat16``)
and CPU torch tensors (float32, float16, bfloat16). A non-contiguous input is copied to a contiguous
buffer first (it is only read). Nothing is converted: float64 and integer inputs raise ``TypeError``.

The calls release the GIL while the library works. ``msp.torch.fisher_traces`` collects the traces
of a PyTorch model with this accumulator.
"""

from __future__ import annotations

import ctypes
from typing import Any, Iterable

import numpy as np

from . import _arrays
from ._convert import integer, real
from ._handle import NativeHandle
from ._lib import DTYPE_BF16, DTYPE_F16, DTYPE_F32, lib
from .errors import InvalidArgumentError

__all__ = ["FisherAccumulator", "sum_squares", "add_fisher_diagonal"]


_ITEMSIZE = {DTYPE_F32: 4, DTYPE_F16: 2, DTYPE_BF16: 2}


def sum_squares(x: Any) -> float:
    """Return ``sum(x**2)`` over all elements, accumulated in double.

    Args:
        x: numpy array or CPU torch tensor of float32/float16/bfloat16, any shape, all finite.

    Returns:
        The sum as a Python float (0.0 for an empty input). Exact to about 1e-15 relative; the same
        for any thread count.

    Raises:
        TypeError, ValueError: unsupported object, dtype or device (see the module docstring).
        msp.InvalidArgumentError: a non-finite element (the message gives its flat index).
    """
    vector = _arrays.as_vector(x, "x")
    if vector.count == 0:
        return 0.0
    out = ctypes.c_double()
    lib.msp_sum_squares(vector.ptr, vector.dtype, vector.count, ctypes.byref(out))
    return out.value


def add_fisher_diagonal(grad: Any, diag: Any, scale: float = 1.0) -> None:
    """Accumulate the diagonal Fisher element-wise, in place: ``diag += scale * grad**2``.

    Each update is computed in double from the exactly widened gradient and rounded once to float32.
    With the weights ``w``, ``0.5 * diag * w**2`` is an OBD-style pruning score that can be passed to
    ``msp.nm_mask``.

    Args:
        grad: numpy array or CPU torch tensor of float32/float16/bfloat16, any shape, all finite.
        diag: float32 numpy array or CPU torch tensor with as many elements as ``grad`` (any
            shape), C-contiguous and writable; updated in place, never copied.
        scale: finite, >= 0.

    Raises:
        TypeError: unsupported objects, dtypes or layouts (``diag`` must be a dense float32 buffer).
        ValueError: ``diag`` not contiguous, read-only, off the CPU, requiring grad under grad mode,
            or of another element count than ``grad``.
        msp.InvalidArgumentError: a non-finite gradient or an update that overflows float32 (the
            message gives the index), or a bad scale. ``diag`` is unchanged on any error.
    """
    scale = real(scale, "scale")
    vector = _arrays.as_vector(grad, "grad")
    out = _arrays.as_output(diag, "diag")
    count, ptr = out.count, out.ptr
    if count != vector.count:
        raise ValueError(f"diag has {count} elements but grad has {vector.count}")
    if count == 0:
        return
    if vector.ptr < ptr + 4 * count and ptr < vector.ptr + _ITEMSIZE[vector.dtype] * count:
        # grad overlaps diag (e.g. shifted views of one buffer): read it from a copy, as numpy's
        # `diag += grad**2` would, since the library writes diag while it still reads grad.
        source = vector.obj
        vector = _arrays.as_vector(source.clone() if hasattr(source, "clone") else source.copy(), "grad")
    lib.msp_fisher_add_diagonal(vector.ptr, vector.dtype, count, ptr, scale)
    _arrays.written(out)


class FisherAccumulator(NativeHandle):
    """Per-layer sums of squared gradients over calibration samples (``msp_fisher`` in ``msp.h``).

    Example::

        acc = msp.FisherAccumulator([w.numel() for w in weights])
        for batch in calibration:
            loss(batch).backward()
            for i, w in enumerate(weights):
                acc.add(i, w.grad)
            acc.end_sample()
        traces = acc.traces()            # float64 [num_layers]: sum_s ||g_ls||^2 / S

    A layer's gradient may arrive in several chunks per sample (together at most the layer's size);
    a layer that gets nothing in a sample counts as a zero gradient. ``traces`` reports closed
    samples only.

    Thread safety: ``add`` calls for *distinct* layers may run concurrently from several threads
    (the library releases the GIL); calls for the same layer, and any call concurrent with
    ``end_sample``, ``traces``, ``reset`` or ``close``, must be serialised by the caller.

    The object owns its native handle: ``close()`` (or leaving a ``with`` block, or garbage
    collection) releases it; any call after ``close()`` raises ``msp.InvalidStateError``.
    Every method validates its input before changing anything: after an error the accumulator is
    exactly as before the call.
    """

    _free = staticmethod(lib.msp_fisher_free)
    _name = "FisherAccumulator"

    def __init__(self, sizes: Iterable[int]) -> None:
        """Create an accumulator over ``len(sizes)`` layers.

        Args:
            sizes: the parameter count of every layer (integers > 0; at least one layer).

        Raises:
            TypeError: a size that is not an integer.
            msp.InvalidArgumentError: no layers, or a size <= 0.
        """
        super().__init__()
        values = _arrays.layer_sizes(sizes)
        array = np.array(values, dtype=np.int64)
        handle = ctypes.c_void_p()
        lib.msp_fisher_create(array.ctypes.data, len(values), ctypes.byref(handle))
        self._handle = handle.value
        self._sizes = tuple(values)

    def __repr__(self) -> str:
        if self.closed:
            return "<msp.FisherAccumulator (closed)>"
        return f"<msp.FisherAccumulator {self.num_layers} layers, {self.num_samples} samples>"

    # --- operations ----------------------------------------------------------------------------------

    @property
    def sizes(self) -> tuple[int, ...]:
        """The parameter count of every layer."""
        return self._sizes

    @property
    def num_layers(self) -> int:
        """The number of layers."""
        return len(self._sizes)

    @property
    def num_samples(self) -> int:
        """The number of closed samples (``end_sample`` calls since creation or ``reset``)."""
        out = ctypes.c_int64()
        lib.msp_fisher_num_samples(self._ptr(), ctypes.byref(out))
        return out.value

    def add(self, layer: int, grad: Any, scale: float = 1.0) -> None:
        """Add ``scale * sum(grad**2)`` to layer ``layer`` in the open sample.

        Args:
            layer: index in ``[0, num_layers)``.
            grad: numpy array or CPU torch tensor of float32/float16/bfloat16, any shape, all
                finite: the whole gradient of the layer or a chunk of it. Its elements, with those
                already added to the layer in this sample, may not exceed the layer's size. An empty
                input adds nothing.
            scale: finite, >= 0 (e.g. ``1 / loss_scale**2`` to undo loss scaling).

        Raises:
            TypeError, ValueError: unsupported object, dtype or device.
            msp.InvalidArgumentError: bad layer or scale, too many elements, a non-finite gradient
                (the message names the layer and the flat index). The accumulator is unchanged.
            msp.InvalidStateError: the accumulator is closed.
        """
        handle = self._ptr()
        layer = integer(layer, "layer")
        scale = real(scale, "scale")
        vector = _arrays.as_vector(grad, "grad")
        if not 0 <= layer < self.num_layers:
            raise InvalidArgumentError(f"layer ({layer}) must be in [0, {self.num_layers})")
        if vector.count == 0:
            return
        lib.msp_fisher_add(handle, layer, vector.ptr, vector.dtype, vector.count, scale)

    def end_sample(self) -> None:
        """Close the current calibration sample (S += 1)."""
        lib.msp_fisher_end_sample(self._ptr())

    def traces(self, per_parameter: bool = False) -> np.ndarray:
        """Return every layer's trace over the closed samples.

        Args:
            per_parameter: False for ``sum_s ||g_ls||^2 / S``; True to divide further by the layer's
                size (the mean per-weight Fisher, comparable across layers of different size).

        Returns:
            A new float64 array of ``num_layers`` values.

        Raises:
            msp.InvalidStateError: no sample has been closed yet, or the accumulator is closed.
        """
        handle = self._ptr()
        out = np.empty(self.num_layers, dtype=np.float64)
        lib.msp_fisher_traces(handle, 1 if per_parameter else 0, out.ctypes.data)
        return out

    def reset(self) -> None:
        """Clear every sum, the open sample and the sample count; the layer sizes stay."""
        lib.msp_fisher_reset(self._ptr())
