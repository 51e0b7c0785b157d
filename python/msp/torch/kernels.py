"""Where pruning runs: the library's native kernels on CPU tensors, torch operations on the
weight's own device elsewhere, with the same masks bit for bit.

The ``kernels=`` argument of ``Pruner``, ``apply_plan``, ``prune`` and ``fisher_traces`` picks the
path (:data:`KERNELS`):

- ``"auto"`` (the default): native kernels for CPU tensors, torch operations on the tensor's own
  device for any other device (CUDA, MPS, XPU, ...);
- ``"native"``: native kernels only (a weight off the CPU raises ``ValueError``; ``fisher_traces``
  copies such gradients to the host one layer at a time instead);
- ``"torch"``: torch operations everywhere, also on the CPU: how the tests check that the two paths
  agree bit for bit, and a fallback where the native library is slow or unavailable for a dtype.

The torch path follows the native rules exactly (``include/msp.h``): a weight's score is ``|w|``
(compared on the element's own magnitude bits) or ``|w| * col_scale[col]`` computed in float32
(the weight widened exactly, one rounding of the product, as the native kernels do); within a
comparison group (an N:M group, a row, or the whole layer) scores rank descending, then by index
ascending, and the first ones are kept; pruned weights become +0; a NaN score is an
``msp.InvalidArgumentError`` naming the first offending row and column, raised before anything is
written. Scores are compared as integer keys (their float bits without the sign), so flushing
subnormal numbers on a device would not change a comparison.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import InvalidArgumentError

__all__ = ["KERNELS", "check_kernels", "uses_native", "torch_prune_nm_", "torch_prune_topk_"]

KERNELS = ("auto", "native", "torch")
"""The kernel choices of ``kernels=``: ``"auto"``, ``"native"`` or ``"torch"``."""

# The key of +inf in each element format: NaN keys are larger.
_INFINITY_KEY = {torch.float32: 0x7F800000, torch.float16: 0x7C00, torch.bfloat16: 0x7F80}


def check_kernels(kernels: Any) -> str:
    """Return ``kernels`` after checking that it is one of :data:`KERNELS`."""
    if not isinstance(kernels, str) or kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {', '.join(repr(k) for k in KERNELS)}, got {kernels!r}")
    return kernels


def uses_native(tensor: torch.Tensor, kernels: str) -> bool:
    """True when work on ``tensor`` runs on the native kernels under ``kernels`` (a checked choice):
    CPU tensors under ``"auto"``, every tensor under ``"native"``; False means torch operations."""
    if kernels == "native":
        return True
    return kernels == "auto" and tensor.device.type == "cpu"


def _score_keys(weight: torch.Tensor, col_scale: torch.Tensor | None) -> torch.Tensor:
    """The int32 order key of every score of ``weight`` (2-D), on its device: the float bits of the
    score without the sign, so keys order as the scores do and -0 ties with +0.

    Raises:
        msp.InvalidArgumentError: a NaN score (a NaN weight, or an infinite one in a column scaled
            by 0), naming the first one in row-major order as the native kernels do.
    """
    if col_scale is None:
        if weight.dtype == torch.float32:
            keys = weight.view(torch.int32) & 0x7FFFFFFF
        else:
            keys = weight.view(torch.int16).to(torch.int32) & 0x7FFF
        infinity = _INFINITY_KEY[weight.dtype]
    else:
        keys = (weight.float().abs() * col_scale).view(torch.int32) & 0x7FFFFFFF
        infinity = _INFINITY_KEY[torch.float32]
    bad = keys > infinity
    if bool(bad.any()):
        first = int(torch.argmax(bad.reshape(-1).to(torch.uint8)))  # argmax gives the first maximum
        row, col = divmod(first, weight.shape[1])
        value = float(weight[row, col])
        if math.isnan(value):
            raise InvalidArgumentError(f"weights[{row}][{col}] is NaN")
        raise InvalidArgumentError(f"score of weights[{row}][{col}] is NaN (weight {value} times col_scale[{col}] = 0)")
    return keys


def _keep_top(keys: torch.Tensor, keep: int) -> torch.Tensor:
    """The keep mask of the ``keep`` largest keys of every row of ``keys`` ``[groups, size]``, ties
    going to the lower index: all keys above the row's keep-th largest, then its first equals."""
    size = keys.shape[1]
    if keep >= size:
        return torch.ones(keys.shape, dtype=torch.bool, device=keys.device)
    if keep <= 0:
        return torch.zeros(keys.shape, dtype=torch.bool, device=keys.device)
    threshold = keys.kthvalue(size - keep + 1, dim=1, keepdim=True).values
    above = keys > threshold
    ties = keys == threshold
    wanted = keep - above.sum(dim=1, keepdim=True, dtype=torch.int64)
    return above | (ties & (ties.cumsum(dim=1, dtype=torch.int64) <= wanted))


def _check_matrix(weight: torch.Tensor) -> None:
    if weight.dim() != 2 or weight.numel() == 0:
        raise ValueError(f"weight must be a non-empty 2-D [rows, cols] tensor, got shape {tuple(weight.shape)}")
    if weight.dtype not in _INFINITY_KEY:
        raise TypeError(f"weight has dtype {weight.dtype}; msp prunes float32, float16 or bfloat16 weights")


def _scale_on(weight: torch.Tensor, col_scale: torch.Tensor | None) -> torch.Tensor | None:
    """``col_scale`` as float32 on the weight's device (the caller checked its values)."""
    if col_scale is None:
        return None
    if col_scale.shape != (weight.shape[1],):
        raise ValueError(f"col_scale must have shape ({weight.shape[1]},), got {tuple(col_scale.shape)}")
    return col_scale.to(device=weight.device, dtype=torch.float32)


def _write(weight: torch.Tensor, keep: torch.Tensor, return_mask: bool) -> torch.Tensor | None:
    weight.masked_fill_(~keep, 0)  # +0, as the native kernels write
    return keep if return_mask else None


def torch_prune_nm_(
    weight: torch.Tensor, n: int, m: int, col_scale: torch.Tensor | None = None, *, return_mask: bool = True
) -> torch.Tensor | None:
    """Prune ``weight`` in place to N:M with torch operations on its device; the mask and the
    result equal ``msp.prune_nm_``'s bit for bit.

    Args:
        weight: 2-D ``[out_features, in_features]`` float32/float16/bfloat16 tensor on any device,
            ``in_features % m == 0``, no NaN; written in place (the caller holds ``no_grad``).
        n, m: keep ``n`` of every ``m``, ``0 < n < m <= 32``.
        col_scale: None (magnitude) or ``in_features`` finite values >= 0 (Wanda's norms).
        return_mask: False returns None instead of the keep mask.

    Returns:
        The bool keep mask on the weight's device, or None.

    Raises:
        TypeError, ValueError: bad shape, dtype or pattern; ``msp.InvalidArgumentError`` for a NaN
            score. ``weight`` is unchanged on any error.
    """
    _check_matrix(weight)
    rows, cols = weight.shape
    if not (0 < n < m <= 32) or cols % m:
        raise InvalidArgumentError(f"pattern {n}:{m} needs 0 < n < m <= 32 and cols ({cols}) divisible by m")
    keys = _score_keys(weight, _scale_on(weight, col_scale))
    keep = _keep_top(keys.reshape(-1, m), n).reshape(rows, cols)
    return _write(weight, keep, return_mask)


def torch_prune_topk_(
    weight: torch.Tensor,
    sparsity: float,
    scope: str = "row",
    col_scale: torch.Tensor | None = None,
    *,
    return_mask: bool = True,
) -> torch.Tensor | None:
    """Prune ``weight`` in place to an unstructured sparsity with torch operations on its device;
    the mask and the result equal ``msp.prune_topk_``'s bit for bit.

    ``floor(sparsity * group_size)`` weights are pruned per comparison group (in double, as the
    library counts): every row for ``scope="row"``, the whole matrix for ``scope="layer"``.

    Args:
        weight, col_scale, return_mask: as for :func:`torch_prune_nm_` (no divisibility rule).
        sparsity: the fraction to prune, in [0, 1).
        scope: ``"row"`` or ``"layer"``.

    Raises:
        TypeError, ValueError: as for :func:`torch_prune_nm_`; ``msp.InvalidArgumentError`` also
            for a sparsity outside [0, 1). ``weight`` is unchanged on any error.
    """
    _check_matrix(weight)
    if scope not in ("row", "layer"):
        raise ValueError(f'scope must be "row" or "layer", got {scope!r}')
    if not 0 <= sparsity < 1:
        raise InvalidArgumentError(f"sparsity ({sparsity}) must be in [0, 1)")
    rows, cols = weight.shape
    keys = _score_keys(weight, _scale_on(weight, col_scale))
    if scope == "layer":
        keys = keys.reshape(1, -1)
    size = keys.shape[1]
    keep = _keep_top(keys, size - math.floor(sparsity * size)).reshape(rows, cols)
    return _write(weight, keep, return_mask)
