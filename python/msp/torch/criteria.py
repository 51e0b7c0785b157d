"""The pruning criteria of ``pruner=``: how a planned level becomes pruned weights, and which
calibration statistic each criterion needs.

Every criterion is one class here, registered in :data:`CRITERIA`; ``Pruner``, ``apply_plan`` and
``prune`` only talk to this interface:

- ``statistic``: the keyword of its calibration statistic (``"norms"`` for Wanda; None for none),
  and ``collect(...)``, which computes it from calibration batches for ``prune``;
- ``prepare(name, weight, value)``: check one layer's statistic and keep what pruning needs
  (``states`` does it for all layers at once, so that layers may share state);
- ``digest(state, scope)``: the bytes a pruned weight depends on besides the dense weight and the
  level (the key of the database on disk, ``msp.torch.database``);
- ``prune_(weight, level, state, scope, native, return_mask)``: prune one weight in place to an
  N:M or unstructured level, on the native kernels or with torch operations on the weight's device
  (the same masks; see ``msp.torch.kernels``).

A criterion that needs another statistic adds its class, its collector (a statistic of layer
inputs is one ``record`` function for ``msp.torch.calibration.collect_inputs``) and the
statistic's keyword to ``Pruner``, ``apply_plan`` and ``prune``; the layer checks, plans, caching,
devices and restoring stay as they are. SparseGPT is such a criterion: its statistic is ``grams``
(``msp.torch.gram_matrices``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _arrays
from ..levels import Level
from ..masking import prune_nm_, prune_topk_
from ..obs import OBS
from .calibration import activation_norms
from .database import digest_of
from .grams import gram_matrices
from .kernels import torch_prune_nm_, torch_prune_topk_

__all__ = ["Criterion", "Magnitude", "Wanda", "SparseGPT", "CRITERIA", "criterion_for", "is_dense"]


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
    gather: Callable[..., Any] | None = None
    """The function computing the statistic: ``gather(model, layers, batches, forward_fn=,
    progress=)`` (None: no statistic)."""

    def collect(self, model: nn.Module, layers: Mapping[str, nn.Module], batches: Any,
                forward_fn: Callable[[nn.Module, Any], Any] | None, progress: bool) -> Any:
        """The calibration statistic of ``layers`` (None for a criterion without one)."""
        if self.gather is None:
            return None
        return self.gather(model, layers, batches, forward_fn=forward_fn, progress=progress)

    def prepare(self, name: str, weight: torch.Tensor, value: Any) -> Any:
        """The state pruning layer ``name`` needs, from its statistic ``value``."""
        return None

    def states(self, names: list[str], weights: list[torch.Tensor], values: list[Any],
               settings: Mapping[str, Any]) -> list[Any]:
        """The state of every layer (``settings``: the criterion's options, e.g. SparseGPT's
        ``damp`` and ``block``)."""
        return [self.prepare(n, w, v) for n, w, v in zip(names, weights, values)]

    def digest(self, state: Any, scope: str) -> bytes:
        """What a pruned weight depends on besides the dense weight and the level."""
        return digest_of(self.name, scope, None if state is None else state.array)

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
    gather = staticmethod(activation_norms)

    def prepare(self, name: str, weight: torch.Tensor, value: Any) -> ColumnScale:
        cols = int(weight.shape[1])
        array = _arrays.float_array(value, (cols,), f"norms[{name!r}] (in_features = {cols})", np.float32, copy=True)
        if not np.isfinite(array).all() or (array < 0).any():
            raise ValueError(f"norms[{name!r}] must hold finite values >= 0")
        return ColumnScale(array)


class GramFactor:
    """One Gram matrix of SparseGPT's, shared by the layers that read its inputs: a private float32
    copy, factorised (``msp.OBS``) when first needed and then reused for every level and layer."""

    __slots__ = ("gram", "damp", "block", "_obs", "_digest")

    def __init__(self, gram: np.ndarray, damp: float, block: int) -> None:
        self.gram, self.damp, self.block = gram, damp, block
        self._obs: OBS | None = None
        self._digest: bytes | None = None

    def obs(self) -> OBS:
        """The factorised solver (made on first use)."""
        if self._obs is None:
            self._obs = OBS(self.gram, damp=self.damp)
        return self._obs

    def digest(self) -> bytes:
        """BLAKE2b of the Gram matrix and the solver settings (computed once)."""
        if self._digest is None:
            self._digest = digest_of("sparsegpt", self.gram, float(self.damp), int(self.block))
        return self._digest

    def close(self) -> None:
        """Release the factorisation (it is made again when needed)."""
        if self._obs is not None:
            self._obs.close()
            self._obs = None


class SparseGPT(Criterion):
    """``pruner="sparsegpt"``: SparseGPT's sweep (``msp.OBS``) with the Gram matrices of the
    layers' inputs (``msp.torch.gram_matrices``): each pruned weight's error is compensated on the
    later columns of its row. Layers given the same Gram tensor (q/k/v, gate/up from
    ``gram_matrices``) share one factorisation. Unstructured levels follow SparseGPT's rule (per
    block of ``block`` columns over all rows), so ``scope`` does not apply. The solver runs on
    the host: a weight elsewhere (or not contiguous) is copied to the host and back."""

    name = "sparsegpt"
    statistic = "grams"
    collector = "msp.torch.gram_matrices(model, layers, batches)"
    gather = staticmethod(gram_matrices)

    def states(self, names: list[str], weights: list[torch.Tensor], values: list[Any],
               settings: Mapping[str, Any]) -> list[GramFactor]:
        damp, block = settings["damp"], settings["block"]
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not (math.isfinite(damp) and damp >= 0):
            raise ValueError(f"damp must be a finite number >= 0, got {damp!r}")
        if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
            raise ValueError(f"block must be an integer > 0, got {block!r}")
        shared: dict[int, GramFactor] = {}
        states = []
        for name, weight, value in zip(names, weights, values):
            cols = int(weight.shape[1])
            factor = shared.get(id(value))
            if factor is None:
                array = _arrays.float_array(value, (cols, cols), f"grams[{name!r}] (in_features = {cols})",
                                            np.float32, copy=True)
                if not np.isfinite(array).all():
                    raise ValueError(f"grams[{name!r}] must be finite")
                factor = shared[id(value)] = GramFactor(array, float(damp), block)
            elif factor.gram.shape != (cols, cols):
                raise ValueError(f"grams[{name!r}] is shared with a layer of another in_features")
            states.append(factor)
        return states

    def digest(self, state: GramFactor, scope: str) -> bytes:
        return state.digest()

    def prune_(self, weight: torch.Tensor, level: Level, state: GramFactor, scope: str, native: bool,
               return_mask: bool) -> torch.Tensor | None:
        if is_dense(level):
            return torch.ones(weight.shape, dtype=torch.bool, device=weight.device) if return_mask else None
        if native and weight.is_contiguous():
            return state.obs().prune_(weight, level, state.block, return_mask=return_mask)
        host = weight.to("cpu", copy=True, memory_format=torch.contiguous_format)
        mask = state.obs().prune_(host, level, state.block, return_mask=return_mask)
        weight.copy_(host)
        return mask


CRITERIA: dict[str, Criterion] = {c.name: c for c in (Magnitude(), Wanda(), SparseGPT())}
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
