"""The pruning criteria of ``pruner=``: how a planned level becomes pruned weights, and which
calibration statistic each criterion needs.

Every criterion is one class here, registered in :data:`CRITERIA`; ``Pruner``, ``apply_plan`` and
``prune`` only talk to this interface:

- ``statistic``: the keyword of its calibration statistic (``"norms"`` for Wanda; None for none),
  and ``collect(...)``, which computes it from calibration batches for ``prune``;
- ``prepare(name, weight, value)``: check one layer's statistic and keep what pruning needs;
- ``prune_(weight, level, state, scope, native, return_mask)``: prune one weight in place to an
  N:M or unstructured level, on the native kernels or with torch operations on the weight's device
  (the same masks; see ``msp.torch.kernels``).

A criterion that needs another statistic (say Gram matrices) adds its class, its collector (a
statistic of layer inputs is one ``record`` function for ``msp.torch.calibration.collect_inputs``)
and the statistic's keyword to ``Pruner``, ``apply_plan`` and ``prune``; the layer checks, plans,
caching, devices and restoring stay as they are.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _arrays
from ..levels import Level
from ..masking import prune_nm_, prune_topk_
from .calibration import activation_norms
from .kernels import torch_prune_nm_, torch_prune_topk_

__all__ = ["Criterion", "Magnitude", "Wanda", "CRITERIA", "criterion_for", "is_dense"]


def is_dense(level: Level) -> bool:
    """True for a level that prunes nothing (n == m, or sparsity 0)."""
    return bool((level.m and level.n == level.m) or (not level.m and level.sparsity == 0.0))


class ColumnScale:
    """One layer's column scale (Wanda's ``||x_col||``): a private float32 copy for the native
    kernels, and the same values on any device the torch path asks for (copied once per device)."""

    __slots__ = ("array", "_on")

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self._on: dict[torch.device, torch.Tensor] = {}

    def on(self, device: torch.device) -> torch.Tensor:
        """The scale as a float32 tensor on ``device``."""
        tensor = self._on.get(device)
        if tensor is None:
            tensor = self._on[device] = torch.from_numpy(self.array).to(device)
        return tensor


class Criterion:
    """A pruning criterion that ranks weights by a score ``|w| * col_scale[col]`` (no scale:
    ``|w|``); subclasses say where the scale comes from."""

    name = ""
    statistic: str | None = None
    """The keyword under which the criterion takes its calibration statistic (None: none)."""
    collector = ""
    """How a user computes the statistic, for error messages."""

    def collect(self, model: nn.Module, layers: Mapping[str, nn.Module], batches: Any,
                forward_fn: Callable[[nn.Module, Any], Any] | None, progress: bool) -> Any:
        """The calibration statistic of ``layers`` (None for a criterion without one)."""
        return None

    def prepare(self, name: str, weight: torch.Tensor, value: Any) -> Any:
        """The state pruning layer ``name`` needs, from its statistic ``value``."""
        return None

    def prune_(self, weight: torch.Tensor, level: Level, state: Any, scope: str, native: bool,
               return_mask: bool) -> torch.Tensor | None:
        """Prune ``weight`` (detached, under ``no_grad``) in place to ``level``; return the keep
        mask (on the weight's device for the torch path, the CPU for the native one) or None."""
        if is_dense(level):
            return torch.ones(weight.shape, dtype=torch.bool, device=weight.device) if return_mask else None
        if native:
            scale = None if state is None else state.array
            if level.m:
                return prune_nm_(weight, level.n, level.m, col_scale=scale, return_mask=return_mask)
            return prune_topk_(weight, level.sparsity, scope=scope, col_scale=scale, return_mask=return_mask)
        scale = None if state is None else state.on(weight.device)
        if level.m:
            return torch_prune_nm_(weight, level.n, level.m, scale, return_mask=return_mask)
        return torch_prune_topk_(weight, level.sparsity, scope, scale, return_mask=return_mask)


class Magnitude(Criterion):
    """``pruner="magnitude"``: the score is ``|w|``."""

    name = "magnitude"


class Wanda(Criterion):
    """``pruner="wanda"``: the score is ``|w| * ||x_col||`` with the activation norms of
    ``msp.torch.activation_norms``."""

    name = "wanda"
    statistic = "norms"
    collector = "msp.torch.activation_norms(model, layers, batches)"

    def collect(self, model: nn.Module, layers: Mapping[str, nn.Module], batches: Any,
                forward_fn: Callable[[nn.Module, Any], Any] | None, progress: bool) -> Any:
        return activation_norms(model, layers, batches, forward_fn=forward_fn, progress=progress)

    def prepare(self, name: str, weight: torch.Tensor, value: Any) -> ColumnScale:
        cols = int(weight.shape[1])
        array = _arrays.float_array(value, (cols,), f"norms[{name!r}] (in_features = {cols})", np.float32, copy=True)
        if not np.isfinite(array).all() or (array < 0).any():
            raise ValueError(f"norms[{name!r}] must hold finite values >= 0")
        return ColumnScale(array)


CRITERIA: dict[str, Criterion] = {c.name: c for c in (Magnitude(), Wanda())}
"""The criteria by name, in the order they are documented."""


def criterion_for(pruner: Any) -> Criterion:
    """The criterion named ``pruner``.

    Raises:
        ValueError: not a name of :data:`CRITERIA`.
    """
    if not isinstance(pruner, str) or pruner not in CRITERIA:
        raise ValueError(
            f"pruner (the pruning criterion; the planning method is msp.plan's method=) must be one of "
            f"{', '.join(repr(m) for m in CRITERIA)}, got {pruner!r}"
        )
    return CRITERIA[pruner]
