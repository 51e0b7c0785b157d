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

from . import _buffers
from ._convert import integer, real
from ._handle import NativeHandle
from ._lib import DTYPE_BF16, DTYPE_F16, DTYPE_F32, lib
from .errors import InvalidArgumentError

__all__ = ["FisherAccumulator", "sum_squares", "add_fisher_diagonal"]


_ITEMSIZE = {DTYPE_F32: 4, DTYPE_F16: 2, DTYPE_BF16: 2}


class _Vector:
    """A flat read-only view of an array or tensor for the C API; ``obj`` keeps the memory alive."""

    __slots__ = ("obj", "ptr", "dtype", "count")

    def __init__(self, obj: Any, ptr: int, dtype: int, count: int) -> None:
        self.obj, self.ptr, self.dtype, self.count = obj, ptr, dtype, count


def _as_vector(x: Any, name: str) -> _Vector:
    """View ``x`` (any shape) as ``count`` contiguous elements for a read-only C argument.

    Raises:
        TypeError: not a numpy array or torch tensor of float32/float16/bfloat16, or a sparse tensor.
        ValueError: a tensor off the CPU.
    """
    torch = _buffers._torch_of(x)
    if torch is not None:
        code = _buffers.tensor_code(torch, x, name)
        if x.device.type != "cpu":
            raise ValueError(f"{name} is on device {x.device}; msp reads CPU memory (pass {name}.cpu())")
        x = x.detach()
        if not x.is_contiguous():
            x = x.contiguous()  # read only: the copy is all the library sees
        return _Vector(x, int(x.data_ptr()), code, int(x.numel()))
    code = _buffers.ndarray_code(x, name, tensor="a CPU torch tensor")
    if not (x.flags.c_contiguous and x.flags.aligned):
        x = np.ascontiguousarray(x)
        if not x.flags.aligned:
            x = x.copy()
    return _Vector(x, int(x.ctypes.data), code, int(x.size))


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
    vector = _as_vector(x, "x")
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
    vector = _as_vector(grad, "grad")
    torch = _buffers._torch_of(diag)
    if torch is not None:
        if diag.dtype != torch.float32:
            raise TypeError(f"diag has dtype {diag.dtype}; the diagonal Fisher is a float32 buffer")
        if diag.layout != torch.strided:  # a TypeError, as for a sparse grad (_buffers.tensor_code)
            raise TypeError(f"diag has layout {diag.layout}; the diagonal Fisher is a dense (strided) tensor")
        if diag.device.type != "cpu":
            raise ValueError(f"diag must be a dense CPU tensor, got layout {diag.layout} on {diag.device}")
        if not diag.is_contiguous():
            raise ValueError("diag is not contiguous; it is updated in place and never copied")
        if diag.requires_grad and torch.is_grad_enabled():
            raise ValueError(
                "diag requires grad and grad mode is on; autograd cannot see msp's in-place writes: "
                "pass diag.detach() or call inside `with torch.no_grad():`"
            )
        count, ptr = int(diag.numel()), int(diag.data_ptr())
    elif isinstance(diag, np.ndarray) and not isinstance(diag, np.ma.MaskedArray):
        if diag.dtype != np.float32:
            raise TypeError(f"diag has dtype {diag.dtype}; the diagonal Fisher is a float32 buffer")
        if not (diag.flags.c_contiguous and diag.flags.aligned):
            raise ValueError("diag is not a C-contiguous, aligned array; it is updated in place and never copied")
        if not diag.flags.writeable:
            raise ValueError("diag is a read-only array (flags.writeable is False)")
        count, ptr = int(diag.size), int(diag.ctypes.data)
    else:
        raise TypeError(f"diag must be a float32 numpy array or CPU torch tensor, got {type(diag).__name__}")
    if count != vector.count:
        raise ValueError(f"diag has {count} elements but grad has {vector.count}")
    if count == 0:
        return
    if vector.ptr < ptr + 4 * count and ptr < vector.ptr + _ITEMSIZE[vector.dtype] * count:
        # grad overlaps diag (e.g. shifted views of one buffer): read it from a copy, as numpy's
        # `diag += grad**2` would, since the library writes diag while it still reads grad.
        source = vector.obj
        vector = _as_vector(source.clone() if hasattr(source, "clone") else source.copy(), "grad")
    lib.msp_fisher_add_diagonal(vector.ptr, vector.dtype, count, ptr, scale)
    if torch is not None:
        torch.autograd.graph.increment_version(diag)


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
        if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
            raise TypeError(f"sizes must be an iterable of integers, got {type(sizes).__name__}")
        values = [integer(s, f"sizes[{i}]") for i, s in enumerate(sizes)]
        for i, s in enumerate(values):
            if not -(2**63) <= s < 2**63:
                raise InvalidArgumentError(f"sizes[{i}] ({s}) is outside the int64 range")
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
        vector = _as_vector(grad, "grad")
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
