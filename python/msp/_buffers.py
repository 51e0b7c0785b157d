"""Turns numpy arrays and CPU torch tensors into raw (pointer, dtype code, rows, cols) views.

Rules, shared by every function of the package:

- Accepted objects: ``numpy.ndarray`` of float32 or float16 (or ``ml_dtypes.bfloat16`` when that
  module is in use), and ``torch.Tensor`` of float32, float16 or bfloat16 on the CPU. Anything else
  (lists, float64, integer dtypes, ``None``) raises ``TypeError``; nothing is converted, because a
  conversion could change which weights tie.
- Weights and scores must be 2-D ``[rows, cols]`` (an ``nn.Linear`` weight is ``[out, in]``); 1-D and
  3-D inputs raise ``ValueError`` rather than being reshaped by guesswork. Empty matrices raise
  ``ValueError`` (the C API needs rows, cols > 0).
- In-place arguments are used zero-copy or not at all: a non-contiguous or misaligned array, a
  read-only numpy array, a tensor off the CPU, or a tensor that requires grad while grad mode is on
  raises ``ValueError`` and no hidden copy is made (the result would land on the copy).
- Read-only arguments (``nm_mask`` scores) that are not C-contiguous are copied to a contiguous
  buffer first; that copy is the only one the package makes of a matrix.
- torch is never imported here: a tensor can only exist if the caller already imported torch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._convert import int32  # noqa: F401  (re-exported: masking and costs call _buffers.int32)
from ._lib import DTYPE_BF16, DTYPE_F16, DTYPE_F32


@dataclass(frozen=True)
class Matrix:
    """A 2-D buffer ready for the C API; ``obj`` keeps the memory behind ``ptr`` alive."""

    obj: Any
    ptr: int
    dtype: int
    rows: int
    cols: int
    torch: Any  # the torch module for a tensor, else None


def _torch_of(x: Any):
    """The torch module if ``x`` is a torch tensor, else None (torch is never imported here)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(x, torch.Tensor):
        return torch
    return None


def _numpy_dtype_code(dtype: np.dtype) -> int | None:
    if dtype == np.float32:
        return DTYPE_F32
    if dtype == np.float16:
        return DTYPE_F16
    ml_dtypes = sys.modules.get("ml_dtypes")
    if ml_dtypes is not None and dtype == ml_dtypes.bfloat16:
        return DTYPE_BF16
    return None


def tensor_code(torch: Any, x: Any, name: str) -> int:
    """The dtype code of a dense float32/float16/bfloat16 tensor; ``TypeError`` for anything else."""
    codes = {torch.float32: DTYPE_F32, torch.float16: DTYPE_F16, torch.bfloat16: DTYPE_BF16}
    code = codes.get(x.dtype)
    if code is None:
        raise TypeError(f"{name} has dtype {x.dtype}; msp takes float32, float16 or bfloat16 tensors")
    if x.layout != torch.strided:
        raise TypeError(f"{name} has layout {x.layout}; msp takes dense (strided) tensors")
    return code


def ndarray_code(x: Any, name: str, *, tensor: str, why: str = "") -> int:
    """The dtype code of a plain float32/float16/bfloat16 numpy array; ``TypeError`` for anything else.

    ``tensor`` names the accepted tensors and ``why`` ends the dtype message.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy masked array; pass a plain ndarray (its .data)")
    if not isinstance(x, np.ndarray):
        raise TypeError(
            f"{name} must be a numpy array or {tensor} of float32, float16 or bfloat16, got {type(x).__name__}"
        )
    code = _numpy_dtype_code(x.dtype)
    if code is None:
        raise TypeError(
            f"{name} has dtype {x.dtype}; msp takes float32 or float16 numpy arrays (bfloat16 via "
            f"torch or ml_dtypes) and converts nothing{why}"
        )
    return code


def _check_shape(shape: tuple, name: str) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D [rows, cols], got {len(shape)}-D shape {tuple(shape)}")
    rows, cols = int(shape[0]), int(shape[1])
    if rows == 0 or cols == 0:
        raise ValueError(f"{name} is empty (shape {tuple(shape)}); msp needs rows > 0 and cols > 0")
    return rows, cols


def as_matrix(x: Any, name: str, *, inplace: bool) -> Matrix:
    """View ``x`` as a 2-D matrix for the C API.

    Args:
        x: a numpy array or a CPU torch tensor (see the module docstring for the rules).
        name: the argument's name, used in messages.
        inplace: True when the library will write into ``x``.

    Raises:
        TypeError: ``x`` is not an array/tensor of a supported dtype.
        ValueError: bad shape, empty, non-contiguous or read-only in-place argument, tensor off the
            CPU or requiring grad under grad mode.
    """
    torch = _torch_of(x)
    if torch is not None:
        return _tensor_matrix(torch, x, name, inplace)
    code = ndarray_code(x, name, tensor="a torch tensor", why=", since a conversion can change ties")
    rows, cols = _check_shape(x.shape, name)
    if not (x.flags.c_contiguous and x.flags.aligned):
        if inplace:
            raise ValueError(
                f"{name} is not a C-contiguous, aligned array (strides {x.strides}); in-place "
                f"pruning never copies (the result would land on the copy): prune "
                f"np.ascontiguousarray({name}) and write it back yourself"
            )
        x = np.ascontiguousarray(x)  # a read-only input: the copy is all the library sees
        if not x.flags.aligned:
            x = x.copy()
    if inplace and not x.flags.writeable:
        raise ValueError(f"{name} is a read-only array (flags.writeable is False); in-place pruning needs to write it")
    return Matrix(x, int(x.ctypes.data), code, rows, cols, None)


def _tensor_matrix(torch, x, name: str, inplace: bool) -> Matrix:
    code = tensor_code(torch, x, name)
    if x.device.type != "cpu":
        raise ValueError(
            f"{name} is on device {x.device}; msp works on CPU memory (move it with .cpu() and, "
            f"for in-place pruning, copy the result back)"
        )
    rows, cols = _check_shape(tuple(x.shape), name)
    if not x.is_contiguous():
        if inplace:
            raise ValueError(
                f"{name} is not contiguous (strides {tuple(x.stride())}); in-place pruning never "
                f"copies (the result would land on the copy): prune {name}.contiguous() and copy "
                f"it back yourself"
            )
        x = x.contiguous()
    if inplace and x.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name} requires grad and grad mode is on; autograd cannot see msp's in-place writes: "
            f"call inside `with torch.no_grad():` or pass {name}.detach()"
        )
    return Matrix(x, int(x.data_ptr()), code, rows, cols, torch)


def written(matrix: Matrix) -> None:
    """Record an in-place write by the library in a tensor's autograd version counter."""
    if matrix.torch is not None:
        matrix.torch.autograd.graph.increment_version(matrix.obj)


def new_keep_mask(matrix: Matrix) -> tuple[Any, int]:
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


def as_col_scale(col_scale: Any, cols: int) -> np.ndarray | None:
    """Convert ``col_scale`` (``None`` or array-like of ``cols`` numbers) to contiguous float32.

    A torch tensor on any device is moved to the CPU. The result is always a private copy: a
    col_scale that shares memory with the weights (``col_scale=w[0]``) would otherwise be changed
    by the in-place pruning while the library still reads it.

    Raises:
        TypeError: not numeric.
        ValueError: not 1-D with ``cols`` entries.
    """
    if col_scale is None:
        return None
    torch = _torch_of(col_scale)
    if torch is not None:
        col_scale = col_scale.detach().to(device="cpu", dtype=torch.float32).numpy()
    array = np.asarray(col_scale)
    if array.dtype.kind not in "fiu" and _numpy_dtype_code(array.dtype) is None:
        raise TypeError(f"col_scale must hold real numbers, got dtype {array.dtype}")
    if array.shape != (cols,):
        raise ValueError(f"col_scale must be 1-D with cols = {cols} entries, got shape {array.shape}")
    return np.array(array, dtype=np.float32, order="C", copy=True)
