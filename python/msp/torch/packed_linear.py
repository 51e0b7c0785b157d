"""``PackedLinear``: an ``nn.Linear`` whose weight is held compressed (``msp.PackedNM``) and applied
by the native N:M kernel (``msp.nm_linear``) on the CPU.

``msp.torch.compress`` puts these modules in place of a model's pruned ``nn.Linear`` layers; this
module defines what one of them holds and how it runs. Which path computes ``x @ W.T + bias``:

- the kernel (``msp.nm_linear``, from the compressed form): on the CPU, for float32, float16 or
  bfloat16 weights and inputs, when ``x`` holds fewer than :data:`DENSE_FROM_TOKENS` tokens and no
  gradient is needed for it. Decoding one token at a time always takes this path.
- the masked dense matrix (``F.linear`` on the unpacked weight, unpacked by the library on the CPU
  and by torch operations elsewhere): for prompts of :data:`DENSE_FROM_TOKENS` tokens or more (the
  kernel re-reads the weights for every 16 tokens; on this project's 2-core machine a dense product
  on the unpacked weight is faster from about 32 tokens on), on other devices (CUDA, MPS, ...), for
  other dtypes (float64), and when autograd needs the gradient of ``x``.

Both paths give the masked dense product within float32 rounding (the kernel's bound is in
``include/msp.h``), in ``x``'s dtype. ``kernels=`` forces one path: ``"native"`` always the kernel
(an input it cannot take raises), ``"torch"`` always the masked dense matrix built by torch
operations (how the tests check the fallback on the CPU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..packed import PackedNM, nm_linear
from .kernels import check_kernels

__all__ = ["PackedLinear", "DENSE_FROM_TOKENS", "torch_unpack"]

DENSE_FROM_TOKENS = 32
"""Inputs with at least this many tokens (rows of ``x``) run as a dense product on the unpacked
weight under ``kernels="auto"``: measured on SmolLM2-135M's layer shapes (576x576 .. 1536x576,
float32, one thread), the kernel is as fast as that up to about 24 tokens and 1.3-1.4x slower at 64."""

_KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def torch_unpack(values: torch.Tensor, index: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The dense masked matrix of a packed one with torch operations on the arrays' own device (the
    library's ``msp_nm_unpack`` for tensors anywhere): kept values at their columns, +0 elsewhere.

    Args:
        values: ``[rows, kept per row]``, each row's kept weights in column order.
        index: ``[rows, 4 * ceil(cols / 32)]`` uint8, bit ``c % 8`` of byte ``c // 8`` set when
            column ``c`` is kept; a valid index (``PackedLinear`` checks it when it is made).
        shape: ``(rows, cols)``.
    """
    rows, cols = shape
    bits = torch.arange(8, device=index.device, dtype=torch.uint8)
    keep = ((index.unsqueeze(-1) >> bits) & 1).reshape(rows, -1)[:, :cols].bool()
    dense = torch.zeros(rows, cols, dtype=values.dtype, device=values.device)
    return dense.masked_scatter_(keep, values)


class PackedLinear(nn.Module):
    """``y = x @ W.T + bias`` with ``W`` held as a packed N:M matrix, for inference.

    Made by ``msp.torch.compress`` and ``msp.torch.load_compressed``, or from a packed weight::

        layer = PackedLinear(msp.nm_pack(linear.weight.detach(), "2:8"), linear.bias)

    What it holds: the buffers ``values`` (``[out_features, in_features // m * n]``, the weight's
    dtype) and ``index`` (``[out_features, 4 * ceil(in_features / 32)]`` uint8), the format of
    ``msp.PackedNM``, and ``bias`` (the ``nn.Linear``'s parameter, or None). They move and cast
    with the module (``.to(device)``, ``.to(torch.bfloat16)`` rounds the kept values only) and are
    its ``state_dict``. Where the path runs and why: see the module docstring.

    Autograd: the packed weights are buffers, never trained. When autograd needs the gradient of
    ``x`` (grad mode on and ``x.requires_grad``), the masked dense path runs and torch
    differentiates it, so gradients reach the inputs and the bias.

    ``weight`` is read-only: reading it materialises the dense masked matrix (``out_features x
    in_features``, the values' dtype and device), a new tensor each time, for code that inspects
    ``module.weight`` (its dtype, device, shape or values); writing into it does not change the
    module.

    Args:
        packed: a ``msp.PackedNM`` of CPU torch tensors (``msp.nm_pack`` of a tensor, or
            ``msp.PackedNM(values, index, shape, level)`` of stored arrays).
        bias: ``[out_features]`` tensor or parameter, or None; kept as a parameter.
        kernels: ``"auto"``, ``"native"`` or ``"torch"`` (the module docstring); settable later.

    Raises:
        TypeError: ``packed`` is not a ``PackedNM`` of torch tensors, or ``bias`` is not a tensor.
        ValueError: ``bias`` of another length, or an unknown ``kernels``.
        msp.InvalidArgumentError: an index that breaks the format (checked by the library here, so
            a module always holds a valid one).
    """

    def __init__(self, packed: PackedNM, bias: Any = None, *, kernels: str = "auto") -> None:
        super().__init__()
        if not isinstance(packed, PackedNM) or not isinstance(packed.values, torch.Tensor):
            raise TypeError(f"packed must be a msp.PackedNM of torch tensors (msp.nm_pack of a tensor), got {packed!r}")
        rows, cols = packed.shape
        if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (rows,)):
            shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
            raise (ValueError if isinstance(bias, torch.Tensor) else TypeError)(
                f"bias must be a tensor of shape ({rows},) (out_features) or None, got {shape}")
        self.kernels = kernels
        nm_linear(torch.zeros(1, cols, dtype=packed.values.dtype), packed)  # the library checks every row's index
        self.in_features, self.out_features, self.level = cols, rows, packed.level
        self.register_buffer("values", packed.values)
        self.register_buffer("index", packed.index)
        self.register_parameter("bias", None if bias is None else bias if isinstance(bias, nn.Parameter)
                                else nn.Parameter(bias))
        self._packed: tuple[int, int, PackedNM] | None = None  # (values and index addresses, their PackedNM)

    @property
    def kernels(self) -> str:
        """Which path runs: ``"auto"``, ``"native"`` (always the kernel) or ``"torch"`` (always the
        masked dense matrix built by torch operations)."""
        return self._kernels

    @kernels.setter
    def kernels(self, value: str) -> None:
        self._kernels = check_kernels(value)

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_features, in_features)``, the dense weight's shape."""
        return (self.out_features, self.in_features)

    @property
    def nbytes(self) -> int:
        """Bytes of the compressed weight (``values`` plus ``index``; the bias not counted)."""
        return sum(t.numel() * t.element_size() for t in (self.values, self.index))

    @property
    def weight(self) -> torch.Tensor:
        """The dense masked weight ``[out_features, in_features]``, materialised on each access."""
        return self._dense()

    def packed(self) -> PackedNM:
        """The weights as a ``msp.PackedNM`` over this module's CPU buffers (made again whenever the
        buffers were replaced, e.g. by ``.to()``)."""
        values, index = self.values, self.index
        cached = self._packed
        if cached is None or cached[0] != values.data_ptr() or cached[1] != index.data_ptr():
            cached = (values.data_ptr(), index.data_ptr(), PackedNM(values, index, self.shape, self.level))
            self._packed = cached
        return cached[2]

    def _native(self) -> bool:
        """True when the library can read the buffers as they are (CPU, float32/float16/bfloat16)."""
        return self.values.device.type == "cpu" and self.values.dtype in _KERNEL_DTYPES

    def _dense(self) -> torch.Tensor:
        """The dense masked matrix: unpacked by the library where it can read the buffers (and
        ``kernels`` allows), else by torch operations on their device."""
        if self.kernels != "torch" and self._native():
            return self.packed().unpack()
        return torch_unpack(self.values, self.index, self.shape)

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        if self.kernels != "auto":
            return self.kernels == "native"
        return (self._native() and x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES
                and x.dim() > 0 and x.shape[-1] == self.in_features
                and x.numel() < DENSE_FROM_TOKENS * self.in_features
                and not (x.requires_grad and torch.is_grad_enabled()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T + bias`` for ``x`` of shape ``[..., in_features]``, in ``x``'s dtype."""
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if not self._uses_kernel(x):
            return F.linear(x, self._dense().to(x.dtype), bias)
        y = nm_linear(x, self.packed())
        return y if bias is None else y.add_(bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"level={self.level}, dtype={self.values.dtype}, kernels={self.kernels!r}")
