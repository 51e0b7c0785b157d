"""The one edge between user data and the library: arrays, tensors and sequences become the
buffers ``libmsp`` takes. Every public function of the package converts its arguments here.

Buffers the library reads or writes where they are (weights, scores, gradients, the diagonal
Fisher) are views (:func:`as_matrix`, :func:`as_vector`, :func:`as_output`), never conversions:

- Accepted objects: ``numpy.ndarray`` of float32 or float16 (or ``ml_dtypes.bfloat16`` when that
  module is in use), and ``torch.Tensor`` of float32, float16 or bfloat16 on the CPU. Anything else
  (lists, float64, integer dtypes, ``None``) raises ``TypeError``; nothing is converted, because a
  conversion could change which weights tie.
- Matrices (weights and scores) must be 2-D ``[rows, cols]`` (an ``nn.Linear`` weight is
  ``[out, in]``); 1-D and 3-D inputs raise ``ValueError`` rather than being reshaped by guesswork.
  Empty matrices raise ``ValueError`` (the C API needs rows, cols > 0).
- In-place arguments are used zero-copy or not at all: a non-contiguous or misaligned array, a
  read-only numpy array, a tensor off the CPU, or a tensor that requires grad while grad mode is on
  raises ``ValueError`` and no hidden copy is made (the result would land on the copy).
- Read-only arguments that are not C-contiguous are copied to a contiguous buffer first; that copy
  is all the library sees.
- torch is never imported here: a tensor can only exist if the caller already imported torch.

Small numeric arguments (column scales, sensitivities, cost tables, Gram matrices, fitness values)
become C-contiguous float arrays of an exact shape (:func:`float_array`); level sets become
``msp_level`` arrays in the one grammar of ``msp.Level.parse`` (:func:`level_array`); layer sizes
become checked int64 values (:func:`layer_sizes`).
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._convert import c_integer
from ._lib import DTYPE_BF16, DTYPE_F16, DTYPE_F32, msp_level
from .errors import InvalidArgumentError
from .levels import as_level_set

_KINDS = "float32, float16 or bfloat16"


@dataclass(frozen=True)
class Buffer:
    """A buffer ready for the C API; ``obj`` keeps the memory behind ``ptr`` alive.

    A matrix view has ``rows x cols`` elements; a flat view has ``count`` elements (``rows = 1``).
    """

    obj: Any
    ptr: int
    dtype: int  # MSP_DTYPE_*
    count: int
    rows: int
    cols: int
    torch: Any  # the torch module for a tensor, else None


def torch_of(x: Any) -> Any:
    """The torch module if ``x`` is a torch tensor, else None (torch is never imported here)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch
    return None


def _numpy_code(dtype: np.dtype, float32_only: bool = False) -> int | None:
    if dtype == np.float32:
        return DTYPE_F32
    if float32_only:
        return None
    if dtype == np.float16:
        return DTYPE_F16
    ml_dtypes = sys.modules.get("ml_dtypes")
    if ml_dtypes is not None and dtype == ml_dtypes.bfloat16:
        return DTYPE_BF16
    return None


def _dtype_message(name: str, dtype: Any, float32_only: bool, tensor: bool) -> str:
    if float32_only:
        return f"{name} has dtype {dtype}; msp writes it in place as a float32 buffer and converts nothing"
    if tensor:
        return f"{name} has dtype {dtype}; msp takes {_KINDS} tensors"
    return (f"{name} has dtype {dtype}; msp takes float32 or float16 numpy arrays (bfloat16 via torch or "
            f"ml_dtypes) and converts nothing")


def _matrix_shape(shape: tuple, name: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D [rows, cols], got {len(shape)}-D shape {tuple(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows == 0 or cols == 0:
        raise ValueError(f"{name} is empty (shape {tuple(shape)}); msp needs rows > 0 and cols > 0")
    return rows, cols


def _view(x: Any, name: str, *, inplace: bool, matrix: bool, float32_only: bool = False) -> Buffer:
    """The one view of an array or tensor for the C API (see the module docstring for the rules)."""
    torch = torch_of(x)
    if torch is not None:
        return _tensor_view(torch, x, name, inplace, matrix, float32_only)
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy masked array; pass a plain ndarray (its .data)")
    if not isinstance(x, np.ndarray):
        kinds = "float32" if float32_only else _KINDS
        raise TypeError(f"{name} must be a numpy array or a torch tensor of {kinds}, got {type(x).__name__}")
    code = _numpy_code(x.dtype, float32_only)
    if code is None:
        raise TypeError(_dtype_message(name, x.dtype, float32_only, tensor=False))
    rows, cols = _matrix_shape(x.shape, name) if matrix else (1, int(x.size))
    if not (x.flags.c_contiguous and x.flags.aligned):
        if inplace:
            raise ValueError(
                f"{name} is not a C-contiguous, aligned array (strides {x.strides}); msp writes it in place "
                f"and never copies (the result would land on the copy): pass np.ascontiguousarray({name}) and "
                f"write it back yourself"
            )
        x = np.ascontiguousarray(x)  # a read-only input: the copy is all the library sees
        if not x.flags.aligned:
            x = x.copy()
    if inplace and not x.flags.writeable:
        raise ValueError(f"{name} is a read-only array (flags.writeable is False); msp writes it in place")
    return Buffer(x, int(x.ctypes.data), code, int(x.size), rows, cols, None)


def _tensor_view(torch: Any, x: Any, name: str, inplace: bool, matrix: bool, float32_only: bool) -> Buffer:
    codes = {torch.float32: DTYPE_F32} if float32_only else {
        torch.float32: DTYPE_F32, torch.float16: DTYPE_F16, torch.bfloat16: DTYPE_BF16}
    code = codes.get(x.dtype)
    if code is None:
        raise TypeError(_dtype_message(name, x.dtype, float32_only, tensor=True))
    if x.layout != torch.strided:
        raise TypeError(f"{name} has layout {x.layout}; msp takes dense (strided) tensors")
    if x.device.type != "cpu":
        raise ValueError(
            f"{name} is on device {x.device}; msp works on CPU memory (pass {name}.cpu() and, after an "
            f"in-place call, copy the result back)"
        )
    rows, cols = _matrix_shape(tuple(x.shape), name) if matrix else (1, int(x.numel()))
    if not x.is_contiguous():
        if inplace:
            raise ValueError(
                f"{name} is not contiguous (strides {tuple(x.stride())}); msp writes it in place and never "
                f"copies (the result would land on the copy): pass {name}.contiguous() and copy it back yourself"
            )
        x = x.contiguous()
    if not inplace:
        x = x.detach()
    elif x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name} requires grad and grad mode is on; autograd cannot see msp's in-place writes: "
            f"call inside `with torch.no_grad():` or pass {name}.detach()"
        )
    return Buffer(x, int(x.data_ptr()), code, int(x.numel()), rows, cols, torch)


def as_matrix(x: Any, name: str, *, inplace: bool) -> Buffer:
    """View ``x`` as a 2-D ``rows x cols`` matrix (weights or scores).

    Args:
        x: a numpy array or a CPU torch tensor of float32/float16/bfloat16.
        name: the argument's name, used in messages.
        inplace: True when the library will write into ``x``.

    Raises:
        TypeError: ``x`` is not an array/tensor of a supported dtype and layout.
        ValueError: bad shape, empty, non-contiguous or read-only in-place argument, tensor off the
            CPU or requiring grad under grad mode.
    """
    return _view(x, name, inplace=inplace, matrix=True)


def as_vector(x: Any, name: str) -> Buffer:
    """View ``x`` (any shape, empty allowed) as ``count`` contiguous elements the library reads.

    Raises:
        TypeError: not a numpy array or torch tensor of float32/float16/bfloat16, or a sparse tensor.
        ValueError: a tensor off the CPU.
    """
    return _view(x, name, inplace=False, matrix=False)


def as_output(x: Any, name: str) -> Buffer:
    """View ``x`` (any shape) as ``count`` contiguous float32 elements the library updates in place.

    Raises:
        TypeError: not a float32 numpy array or dense float32 torch tensor.
        ValueError: not contiguous, read-only, off the CPU, or requiring grad under grad mode.
    """
    return _view(x, name, inplace=True, matrix=False, float32_only=True)


def written(buffer: Buffer) -> None:
    """Record an in-place write by the library in a tensor's autograd version counter."""
    if buffer.torch is not None:
        buffer.torch.autograd.graph.increment_version(buffer.obj)


def new_keep_mask(matrix: Buffer) -> tuple[Any, int]:
    """Allocate a rows x cols uint8 buffer for the library's keep mask.

    Returns:
        ``(mask, pointer)``: ``mask`` is a bool view of the buffer, a numpy array for numpy input and
        a torch tensor (sharing the numpy buffer) for torch input.
    """
    raw = np.empty((matrix.rows, matrix.cols), dtype=np.uint8)
    if matrix.torch is not None:
        mask = matrix.torch.from_numpy(raw).view(matrix.torch.bool)
    else:
        mask = raw.view(np.bool_)
    return mask, int(raw.ctypes.data)


def new_array(like: Any, shape: tuple, dtype: int | None) -> tuple[Any, int]:
    """Allocate an uninitialised C-contiguous buffer for the library to write, of the kind of
    ``like`` (a numpy array for a numpy array, a CPU tensor for a tensor).

    Args:
        like: the array or tensor whose kind the result takes (for a numpy bfloat16 buffer, its
            ``ml_dtypes.bfloat16`` dtype).
        shape: the buffer's shape.
        dtype: ``MSP_DTYPE_*`` for floats, or None for uint8 bytes.

    Returns:
        ``(buffer, pointer)``.
    """
    torch = torch_of(like)
    if torch is not None:
        codes = {None: torch.uint8, DTYPE_F32: torch.float32, DTYPE_F16: torch.float16, DTYPE_BF16: torch.bfloat16}
        buffer = torch.empty(shape, dtype=codes[dtype])
        return buffer, int(buffer.data_ptr())
    codes = {None: np.uint8, DTYPE_F32: np.float32, DTYPE_F16: np.float16, DTYPE_BF16: like.dtype}
    buffer = np.empty(shape, dtype=codes[dtype])
    return buffer, int(buffer.ctypes.data)


def as_bytes(x: Any, name: str, shape: tuple) -> tuple[Any, int]:
    """View a uint8 numpy array or CPU tensor of exactly ``shape`` (a packed index) for the library
    to read; a C-contiguous copy when it is not contiguous.

    Returns:
        ``(array, pointer)``: the array the pointer points into (keep it alive).

    Raises:
        TypeError: not a uint8 array or CPU tensor.
        ValueError: another shape.
    """
    torch = torch_of(x)
    if torch is not None:
        if x.dtype != torch.uint8 or x.device.type != "cpu":
            raise TypeError(f"{name} must be a uint8 CPU tensor, got {x.dtype} on {x.device}")
        found = tuple(x.shape)
    elif isinstance(x, np.ndarray):
        if x.dtype != np.uint8:
            raise TypeError(f"{name} must be a uint8 array, got {x.dtype}")
        found = x.shape
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor of uint8, got {type(x).__name__}")
    if found != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {found}")
    if torch is not None:
        x = x.detach().contiguous()
        return x, int(x.data_ptr())
    x = np.ascontiguousarray(x)
    return x, int(x.ctypes.data)


def nbytes(x: Any) -> int:
    """The bytes of a numpy array's or tensor's elements."""
    return int(x.numel() * x.element_size()) if torch_of(x) is not None else int(x.nbytes)


def pointer(array: np.ndarray | None) -> int | None:
    """The address of a numpy array's data for a C pointer argument; None (NULL) for None."""
    return None if array is None else int(array.ctypes.data)


def _shape_text(shape: tuple) -> str:
    text = ", ".join("n" if size is None else str(size) for size in shape)
    return f"({text},)" if len(shape) == 1 else f"({text})"


def float_array(values: Any, shape: tuple, name: str, dtype: Any = np.float64, *, copy: bool = False) -> np.ndarray:
    """``values`` as a C-contiguous float64 (or float32) array of exactly ``shape``.

    Args:
        values: a numpy array, a torch tensor on any device (moved to the CPU), or (nested)
            sequences of numbers. Integer, float and bfloat16 data are converted; values are checked
            by the library.
        shape: the required shape; ``None`` for a dimension of any length.
        name: the argument's name, used in messages.
        dtype: ``np.float64`` or ``np.float32``.
        copy: always return a private copy (for an argument that may share memory with a buffer the
            library writes, such as ``col_scale=w[0]``).

    Raises:
        TypeError: not real numbers.
        ValueError: another shape.
    """
    torch = torch_of(values)
    if torch is not None:
        values = values.detach().to(device="cpu", dtype=torch.float64 if dtype == np.float64 else torch.float32)
        values = values.numpy()
    array = np.asarray(values)
    if array.dtype.kind not in "fiu" and _numpy_code(array.dtype) is None:
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    if array.ndim != len(shape) or any(want not in (None, got) for want, got in zip(shape, array.shape)):
        raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {array.shape}")
    if copy:
        return np.array(array, dtype=dtype, order="C", copy=True)
    return np.ascontiguousarray(array, dtype=dtype)


def col_scale(values: Any, cols: int) -> np.ndarray | None:
    """A ``col_scale`` argument (None, or ``cols`` real numbers: an array, a tensor on any device or
    a sequence) as a private float32 copy: a scale that shares memory with the weights
    (``col_scale=w[0]``) would otherwise change under an in-place pruning while the library reads it.

    Raises:
        TypeError: not real numbers.
        ValueError: not 1-D with ``cols`` entries.
    """
    return None if values is None else float_array(values, (cols,), "col_scale", np.float32, copy=True)


def sequence(values: Any, name: str) -> list:
    """A list of the items of a sequence, array or tensor (strings and scalars rejected)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence, got {type(values).__name__}")
    return list(values)


def layer_sizes(sizes: Any) -> list[int]:
    """The parameter count of every layer as Python ints in the int64 range (values > 0 and their
    sum are the library's checks).

    Raises:
        TypeError: not an iterable of integers.
        msp.InvalidArgumentError: no layers, or a size outside the int64 range.
    """
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Iterable):
        raise TypeError(f"sizes must be an iterable of integers (one per layer), got {type(sizes).__name__}")
    values = [c_integer(s, f"sizes[{i}]", "int64") for i, s in enumerate(sizes)]
    if not values:
        raise InvalidArgumentError("sizes is empty: num_layers (0) must be > 0")
    return values


def level_array(levels: Any) -> ctypes.Array:
    """A level set as the library's ``msp_level`` array.

    Args:
        levels: from least to most sparse, each item in a form ``msp.Level.parse`` takes (``"2:8"``,
            ``(2, 8)``, ``0.7``, ``"70%"``, ``(sparsity, n, m)``, an ``msp.Level`` or ``msp_level``).
            The order is kept as given; the library checks it.

    Raises:
        TypeError: not a sequence, or an item of another kind.
        ValueError: an empty set or a malformed item.
    """
    if levels is None:
        raise TypeError("levels must be a sequence of levels (e.g. msp.nm_levels(8)), got None")
    items = as_level_set(levels)
    array = (msp_level * len(items))()
    for k, level in enumerate(items):
        array[k] = msp_level(level.sparsity, level.n, level.m)
    return array
