"""The layers a :class:`Pruner` or ``apply_plan`` prunes: every check made before a weight is
written (layers, criterion, statistics, kernels, plans), and pruning one layer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .._convert import scope as scope_code
from ..levels import Level
from ..plans import Plan
from .criteria import CRITERIA, Criterion, criterion_for
from .kernels import check_kernels, uses_native
from .layers import is_hf_conv1d, layer_weights

__all__ = ["LayerRecord", "check_weight", "check_finite", "check_pruner", "prepare_layers", "resolve_plan", "prune_layer"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class LayerRecord:
    """One prunable layer: its weight parameter and what pruning it needs."""

    __slots__ = ("name", "module", "weight", "rows", "cols", "native", "state", "dense", "level", "version")

    def __init__(self, name: str, module: nn.Module, weight: torch.Tensor) -> None:
        self.name, self.module, self.weight = name, module, weight
        self.rows, self.cols = (int(weight.shape[0]), int(weight.shape[1])) if weight.dim() == 2 else (0, 0)
        self.native = True  # pruned by the native kernels (else torch operations on its device)
        self.state: Any = None  # the criterion's per-layer state (e.g. Wanda's column scale)
        self.dense: torch.Tensor | None = None
        self.level: Level | None = None  # what the weight holds now (None = dense)
        self.version = -1


def check_weight(layer: LayerRecord, kernels: str) -> None:
    """Raise unless the layer's weight can be pruned in place under ``kernels``; set
    ``layer.native``: whether the native kernels prune it (else torch operations on its device)."""
    w, name = layer.weight, layer.name
    if getattr(layer.module, "weight", None) is not w:
        raise ValueError(f"layer {name!r}: its .weight was replaced after the Pruner was made; make a new Pruner")
    if is_hf_conv1d(layer.module):
        raise TypeError(
            f"layer {name!r} is a Hugging Face Conv1D whose weight is [in_features, out_features], the transpose "
            f"of nn.Linear's; msp does not guess the layout: convert it to nn.Linear"
        )
    if w.dim() != 2:
        raise ValueError(f"layer {name!r} has a {w.dim()}-D weight; msp prunes 2-D [out_features, in_features] weights")
    if w.layout != torch.strided:
        raise ValueError(f"layer {name!r} has a {w.layout} weight; msp prunes dense (strided) weights")
    if w.dtype not in _DTYPES:
        raise ValueError(f"layer {name!r} has a {w.dtype} weight; msp prunes float32, float16 or bfloat16 weights")
    native = uses_native(w, kernels)
    if native and w.device.type != "cpu":
        raise ValueError(
            f"layer {name!r} has its weight on {w.device}; kernels='native' prunes CPU weights only (the "
            f"default kernels='auto' prunes it on its device with torch operations, giving the same masks)"
        )
    if w.is_meta:
        raise ValueError(f"layer {name!r} has its weight on the meta device (no data); load the weights first")
    if native and not w.is_contiguous():
        raise ValueError(
            f"layer {name!r} has a non-contiguous weight (strides {tuple(w.stride())}); in-place pruning never "
            f"copies: make it contiguous first (module.weight.data = module.weight.data.contiguous())"
        )
    layer.native = native


def check_finite(layer: LayerRecord) -> None:
    if not bool(torch.isfinite(layer.weight.detach()).all()):
        raise ValueError(f"layer {layer.name!r} has a non-finite weight (NaN or inf); msp will not rank it")


def check_pruner(pruner: Any) -> Criterion:
    """The criterion named ``pruner``; ``ValueError`` unless it is one of :data:`PRUNERS`."""
    return criterion_for(pruner)


def prepare_layers(layers: Any, pruner: str = "magnitude", norms: Any = None, scope: str = "row",
                   kernels: str = "auto", grams: Any = None, damp: float = 0.01, block: int = 128) -> list[LayerRecord]:
    """Validate layers, criterion, its statistic and settings, scope and kernels; return the layer
    records (no weight touched)."""
    criterion = check_pruner(pruner)
    scope_code(scope)
    check_kernels(kernels)
    records = [LayerRecord(name, module, weight) for name, module, weight in layer_weights(layers)]
    for layer in records:
        check_weight(layer, kernels)
    statistics = {"norms": norms, "grams": grams}
    for key, value in statistics.items():
        if value is not None and key != criterion.statistic:
            users = [c.name for c in CRITERIA.values() if c.statistic == key]
            raise ValueError(f"{key} are the statistic of pruner={users[0]!r}; pruner={criterion.name!r} does not "
                             f"use them")
    if criterion.statistic is not None:
        values = _per_layer(statistics[criterion.statistic], records, criterion)
        states = criterion.states([r.name for r in records], [r.weight for r in records], values,
                                  {"damp": damp, "block": block})
        for layer, state in zip(records, states):
            layer.state = state
    return records


def _per_layer(value: Any, records: list[LayerRecord], criterion: Criterion) -> list[Any]:
    """A criterion's statistic, one entry per layer, from ``{name: value}`` or a list in layer order."""
    key = criterion.statistic
    if value is None:
        raise ValueError(
            f"pruner={criterion.name!r} needs {key}: {key} = {criterion.collector}"
        )
    if isinstance(value, Mapping):
        missing = [r.name for r in records if r.name not in value]
        if missing:
            raise ValueError(f"{key} has no entry for layer(s) {', '.join(repr(n) for n in missing[:4])}")
        return [value[r.name] for r in records]
    values = list(value)
    if len(values) != len(records):
        raise ValueError(f"{key} has {len(values)} entries for {len(records)} layers")
    return values


def resolve_plan(plan: Any, records: list[LayerRecord]) -> list[Level]:
    """The level of every layer from a plan; raise before anything is written if it does not fit."""
    names = [r.name for r in records]
    if isinstance(plan, Plan):
        if plan.num_layers != len(records):
            raise ValueError(f"the plan has {plan.num_layers} layers but {len(records)} layers were given")
        for i, (size, layer) in enumerate(zip(plan.sizes, records)):
            if size != layer.weight.numel():
                raise ValueError(
                    f"the plan's layer {i} has {size} parameters but layer {layer.name!r} has {layer.weight.numel()}; "
                    f"the plan was made for other layers (or another order)"
                )
        if plan.names is not None and plan.names != names:
            i = next(k for k, (a, b) in enumerate(zip(plan.names, names)) if a != b)
            raise ValueError(
                f"the plan's layer {i} is named {plan.names[i]!r} but the layer given there is {names[i]!r}; "
                f"the plan was made for other layers (or another order)"
            )
        levels = plan.layer_levels
    elif isinstance(plan, Mapping):
        missing = [n for n in names if n not in plan]
        extra = [n for n in plan if n not in set(names)]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"no level for {len(missing)} layer(s) ({', '.join(repr(n) for n in missing[:3])}...)")
            if extra:
                parts.append(f"unknown name(s) {', '.join(repr(n) for n in extra[:3])}")
            raise ValueError("the plan's names do not match the layers: " + "; ".join(parts))
        levels = [Level.parse(plan[n]) for n in names]
    elif isinstance(plan, Iterable) and not isinstance(plan, (str, bytes)):
        levels = [Level.parse(level) for level in plan]
        if len(levels) != len(records):
            raise ValueError(f"the plan has {len(levels)} levels but {len(records)} layers were given")
    else:
        raise TypeError(f"a plan is a msp.Plan, a {{name: level}} dict or a list of levels; got {type(plan).__name__}")
    for layer, level in zip(records, levels):
        if level.m and level.n < level.m and layer.cols % level.m != 0:
            raise ValueError(
                f"layer {layer.name!r} has in_features = {layer.cols}, not divisible by M = {level.m} of its level "
                f"{level}; give it an unstructured or dense level, or bound it (msp.plan max_level=...)"
            )
    return levels


def prune_layer(layer: LayerRecord, criterion: Criterion, level: Level, scope: str, return_mask: bool) -> Any:
    """Prune the layer's weight in place to ``level`` (the caller holds ``torch.no_grad()``)."""
    w = layer.weight.detach()  # shares the version counter: every write is recorded
    return criterion.prune_(w, level, layer.state, scope, layer.native, return_mask)
