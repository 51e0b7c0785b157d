"""Applying plans to a PyTorch model's layers: the ``Pruner`` (repeatedly, restorable) and
``apply_plan`` (once).

The pruning criterion is ``pruner=``: ``"magnitude"`` scores ``|w|``, ``"wanda"`` scores
``|w| * ||x_col||`` with the activation norms of ``msp.torch.activation_norms``::

    layers = linear_layers(model)                          # {name: nn.Linear}
    norms = activation_norms(model, layers, calibration)   # Wanda's per-input-column norms
    pruner = Pruner(layers, pruner="wanda", norms=norms)   # keeps the dense weights to restore
    pruner.apply(plan)                                     # any plan, quickly and repeatedly
    pruner.restore()                                       # bit-identical dense weights again
    apply_plan(layers, plan, pruner="wanda", norms=norms)  # once, without the dense copies

Weights may live on any device: the native kernels prune CPU weights, torch operations on the
weight's own device prune the others, with the same masks bit for bit (``kernels=``, see
``msp.torch.kernels``).

Every function validates all of its input before it writes any weight: a plan that does not fit
the layers, a weight without data (``meta``), a weight the native kernels cannot take (off the CPU
under ``kernels="native"``, or not contiguous), ``in_features`` not divisible by a level's M, or a
non-finite weight raise ``ValueError`` (or ``TypeError``) and leave every weight unchanged.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from .._convert import scope as scope_code
from .._deprecation import deprecated, renamed
from ..levels import Level
from ..plans import Plan
from .criteria import CRITERIA, Criterion, criterion_for, is_dense
from .kernels import check_kernels, uses_native
from .layers import is_hf_conv1d, layer_weights

__all__ = ["Pruner", "apply_plan", "PRUNERS", "DENSE_COPIES"]

PRUNERS = tuple(CRITERIA)
"""The pruning criteria: ``|w|`` (magnitude) or ``|w| * ||x_col||`` (Wanda)."""

DENSE_COPIES = ("device", "host")
"""Where a :class:`Pruner` keeps its dense copies and cache: each weight's own device, or host memory."""

_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_METHOD_NOTE = " (method= names the planning method of msp.plan and msp.torch.prune)"


class _Layer:
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


def _check_weight(layer: _Layer, kernels: str) -> None:
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


def _check_finite(layer: _Layer) -> None:
    if not bool(torch.isfinite(layer.weight.detach()).all()):
        raise ValueError(f"layer {layer.name!r} has a non-finite weight (NaN or inf); msp will not rank it")


def check_pruner(pruner: Any) -> Criterion:
    """The criterion named ``pruner``; ``ValueError`` unless it is one of :data:`PRUNERS`."""
    return criterion_for(pruner)


def prepare_layers(layers: Any, pruner: str = "magnitude", norms: Any = None, scope: str = "row",
                   kernels: str = "auto") -> list[_Layer]:
    """Validate layers, criterion, its statistic, scope and kernels; return the layer records
    (no weight touched)."""
    criterion = check_pruner(pruner)
    scope_code(scope)
    check_kernels(kernels)
    records = [_Layer(name, module, weight) for name, module, weight in layer_weights(layers)]
    for layer in records:
        _check_weight(layer, kernels)
    statistics = {"norms": norms}
    for key, value in statistics.items():
        if value is not None and key != criterion.statistic:
            users = [c.name for c in CRITERIA.values() if c.statistic == key]
            raise ValueError(f"{key} are the statistic of pruner={users[0]!r}; pruner={criterion.name!r} does not "
                             f"use them")
    if criterion.statistic is not None:
        values = _per_layer(statistics[criterion.statistic], records, criterion)
        for layer, value in zip(records, values):
            layer.state = criterion.prepare(layer.name, layer.weight, value)
    return records


def _per_layer(value: Any, records: list[_Layer], criterion: Criterion) -> list[Any]:
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


def _resolve(plan: Any, records: list[_Layer]) -> list[Level]:
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


def _prune(layer: _Layer, criterion: Criterion, level: Level, scope: str, return_mask: bool) -> Any:
    """Prune the layer's weight in place to ``level`` (the caller holds ``torch.no_grad()``)."""
    w = layer.weight.detach()  # shares the version counter: every write is recorded
    return criterion.prune_(w, level, layer.state, scope, layer.native, return_mask)


# --- the Pruner ------------------------------------------------------------------------------------


class Pruner:
    """Applies any plan to a set of layers quickly and repeatedly, and restores them exactly.

    At construction it checks every layer, keeps a copy of each dense weight (on the weight's
    device or in host memory, ``dense_copies``) and, for Wanda, each layer's column scale (the
    activation norms as float32). ``apply(plan)`` then sets every layer to its planned level in
    place: N:M levels as ``msp.prune_nm_`` prunes them (a dense level n == m leaves the layer
    dense), unstructured levels as ``msp.prune_topk_`` does at the planned sparsity
    (``floor(sparsity * in_features)`` pruned in every row with ``scope="row"``), each from the
    dense weights. The result depends only on the plan, never on the plans applied before.

    Weights may live on any torch device: CPU weights are pruned by the native kernels, others by
    torch operations on their own device with the same masks bit for bit (``kernels``; see
    ``msp.torch.kernels``). Nothing but the plan crosses between host and device, unless the dense
    copies are kept in host memory.

    Two things make repeated applies cheap (an evolutionary search applies hundreds of plans that
    differ in a few layers):

    - a layer whose level is unchanged since the last ``apply`` and whose weight has not been
      written since (its autograd version counter is unchanged) is skipped;
    - the pruned weights of each (layer, level) pair are kept in a cache of at most ``cache_bytes``
      (least recently used pairs are dropped first), so a layer returning to a level it held
      before is one memory copy instead of a new ranking.

    Writes that bypass the version counter (``weight.data.copy_(...)``) are not seen: call
    ``restore()`` or ``apply(plan, incremental=False)`` after those.

    Example::

        pruner = Pruner(linear_layers(model), pruner="wanda", norms=norms)
        def fitness(plan):
            pruner.apply(plan)
            return perplexity(model, batches)
        plan = msp.plan(pruner.sizes, 0.75, msp.nm_levels(8), traces, fitness)
        pruner.apply(plan)       # keep the best plan; or pruner.restore() for the dense model

    Args:
        layers: ``{name: nn.Linear}`` in layer order (e.g. ``linear_layers(model)``). Weights must
            be 2-D ``[out_features, in_features]`` float32/float16/bfloat16 tensors on any device
            but ``meta``, finite, and contiguous where the native kernels prune them; no two names
            may share a weight.
        pruner: the pruning criterion, ``"magnitude"`` (score ``|w|``) or ``"wanda"`` (score
            ``|w| * norms[col]``).
        norms: Wanda's activation norms, ``{name: [in_features]}`` (``activation_norms``) or one
            per layer in order; only with ``pruner="wanda"``.
        scope: comparison group of unstructured levels: ``"row"`` (Wanda's, the default: every
            row pruned to the sparsity) or ``"layer"`` (the whole matrix).
        cache_bytes: memory for cached pruned weights (default 2 GiB; 0 = no cache). The dense
            copies (the size of the layers' weights) come on top.
        kernels: ``"auto"`` (native kernels for CPU weights, torch operations on the weight's
            device otherwise), ``"native"`` (CPU weights only) or ``"torch"`` (torch operations
            everywhere; the same masks). Decided at every ``apply`` from where each weight is then.
        dense_copies: where the dense copies and the cache of pruned weights live: ``"device"``
            (default: each weight's own device; fastest, and the GPU memory of the weights once
            more) or ``"host"`` (CPU memory, pinned for CUDA weights; every restore and cache hit
            then copies host to device). The same for CPU weights.
        method: the deprecated spelling of ``pruner`` (a ``DeprecationWarning``).

    Attributes:
        pruner: the pruning criterion; ``scope``: the comparison group of unstructured levels.

    Raises:
        TypeError, ValueError: a bad argument or weight (see the module docstring); nothing is
            modified.
    """

    def __init__(self, layers: Mapping[str, nn.Module], pruner: str = "magnitude", norms: Any = None,
                 *, scope: str = "row", cache_bytes: int = 2 << 30, kernels: str = "auto",
                 dense_copies: str = "device", method: str | None = None) -> None:
        pruner = renamed("Pruner", "method", method, "pruner", pruner, "magnitude", _METHOD_NOTE)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        if dense_copies not in DENSE_COPIES:
            raise ValueError(f"dense_copies must be 'device' or 'host', got {dense_copies!r}")
        records = prepare_layers(layers, pruner, norms, scope, kernels)
        for layer in records:
            _check_finite(layer)
        self._dense_copies = dense_copies
        with torch.no_grad():
            for layer in records:
                layer.dense = self._keep(layer.weight.detach())
                layer.version = layer.weight._version
        self._layers = records
        self._criterion = CRITERIA[pruner]
        self._kernels = kernels
        self._cache: OrderedDict[tuple[int, Level], torch.Tensor] = OrderedDict()
        self._cache_limit = cache_bytes
        self._cached = 0
        self.pruner = pruner
        self.scope = scope

    def _keep(self, weight: torch.Tensor) -> torch.Tensor:
        """A contiguous copy of ``weight`` where ``dense_copies`` says."""
        if self._dense_copies == "device" or weight.device.type == "cpu":
            return weight.clone(memory_format=torch.contiguous_format)
        pinned = weight.device.type == "cuda"
        try:
            copy = torch.empty(weight.shape, dtype=weight.dtype, pin_memory=pinned)
        except RuntimeError:  # no pinned memory here: pageable host memory works too, slower
            copy = torch.empty(weight.shape, dtype=weight.dtype)
        return copy.copy_(weight)

    @property
    def method(self) -> str:
        """Deprecated: the pruning criterion, now :attr:`pruner`."""
        deprecated("Pruner.method", "Pruner.pruner")
        return self.pruner

    @property
    def names(self) -> list[str]:
        """Layer names, in order."""
        return [layer.name for layer in self._layers]

    @property
    def sizes(self) -> list[int]:
        """Parameter count of every layer (the ``sizes`` of ``msp.plan``)."""
        return [layer.rows * layer.cols for layer in self._layers]

    @property
    def in_features(self) -> list[int]:
        """``in_features`` (columns) of every layer."""
        return [layer.cols for layer in self._layers]

    @property
    def levels(self) -> list[Level | None]:
        """The level each layer holds now (None = dense, as at construction or after ``restore``)."""
        return [layer.level for layer in self._layers]

    @property
    def cached_bytes(self) -> int:
        """Bytes held by cached pruned weights now."""
        return self._cached

    def _validate(self) -> None:
        """Check every layer again (and where each is pruned, from its device now)."""
        for layer in self._layers:
            if layer.dense is None:
                raise RuntimeError("this Pruner was closed (its dense copies were released)")
            _check_weight(layer, self._kernels)
            if layer.weight.shape != layer.dense.shape or layer.weight.dtype != layer.dense.dtype:
                raise ValueError(f"layer {layer.name!r}: its weight changed shape or dtype since the Pruner was made")

    def _current(self, layer: _Layer) -> bool:
        """True when the layer's weight is exactly as this Pruner last left it."""
        return layer.weight._version == layer.version

    def _set(self, index: int, layer: _Layer, level: Level) -> None:
        """Write ``level`` of the layer into its weight (the caller holds ``torch.no_grad()``)."""
        w = layer.weight.detach()  # shares the version counter: every write below is recorded
        if is_dense(level):
            w.copy_(layer.dense)
            return
        key = (index, level)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            w.copy_(cached)
            return
        w.copy_(layer.dense)
        _prune(layer, self._criterion, level, self.scope, False)
        size = w.numel() * w.element_size()
        if size > self._cache_limit:
            return
        while self._cached + size > self._cache_limit:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= dropped.numel() * dropped.element_size()
        self._cache[key] = self._keep(w)
        self._cached += size

    def apply(self, plan: Any, *, incremental: bool = True) -> None:
        """Set every layer in place to its planned level.

        Args:
            plan: a ``msp.Plan`` over these layers (in order; when it carries names, they must be
                these layers' names), a ``{name: level}`` dict naming exactly these layers
                (levels as ``msp.Level``, ``"2:8"``, ``(2, 8)``, ``"70%"`` or a sparsity; e.g.
                ``plan.to_dict()``), or a list of levels, one per layer.
            incremental: skip layers already holding their planned level (see the class notes);
                False rewrites every layer.

        Raises:
            TypeError, ValueError: the plan does not fit the layers (count, names, sizes, or an
                N:M level whose M does not divide ``in_features``), or a weight was moved,
                replaced or made non-contiguous. Raised before any weight is written.
            If the library fails part-way (it should not: the weights were checked), every layer
            is restored to dense before the error propagates.
        """
        levels = _resolve(plan, self._layers)
        self._validate()
        try:
            with torch.no_grad():
                for index, (layer, level) in enumerate(zip(self._layers, levels)):
                    dense = is_dense(level)
                    held = None if dense else level
                    if incremental and layer.level == held and self._current(layer):
                        continue
                    if dense and layer.level is None and self._current(layer):
                        pass  # already dense
                    else:
                        self._set(index, layer, level)
                    layer.level = held
                    layer.version = layer.weight._version
        except BaseException:
            self.restore()
            raise

    def restore(self) -> None:
        """Copy every dense weight back (bit-identical to the weights at construction)."""
        with torch.no_grad():
            for layer in self._layers:
                if layer.dense is None:
                    raise RuntimeError("this Pruner was closed (its dense copies were released)")
                if layer.level is not None or not self._current(layer):
                    layer.weight.detach().copy_(layer.dense)
                layer.level = None
                layer.version = layer.weight._version

    @contextlib.contextmanager
    def applied(self, plan: Any):
        """``with pruner.applied(plan): ...`` applies the plan and restores the dense weights on exit."""
        self.apply(plan)
        try:
            yield self
        finally:
            self.restore()

    def clear_cache(self) -> None:
        """Drop the cached pruned weights (the dense copies stay)."""
        self._cache.clear()
        self._cached = 0

    def close(self) -> None:
        """Release the dense copies and the cache (the weights stay as they are); the Pruner
        cannot be used after."""
        self.clear_cache()
        for layer in self._layers:
            layer.dense = None

    def __repr__(self) -> str:
        pruned = sum(layer.level is not None for layer in self._layers)
        return (f"<msp Pruner {self.pruner}, {len(self._layers)} layers, {pruned} pruned now, "
                f"{self._cached / 2**20:.0f} MiB cached>")


def apply_plan(
    layers: Mapping[str, nn.Module],
    plan: Any,
    pruner: str = "magnitude",
    norms: Any = None,
    *,
    scope: str = "row",
    return_masks: bool = False,
    kernels: str = "auto",
    method: str | None = None,
) -> "OrderedDict[str, torch.Tensor] | None":
    """Prune every layer in place to its planned level, once (no dense copy is kept).

    The one-shot form of ``Pruner(layers, pruner, norms).apply(plan)``: same plans, same masks,
    without the memory for restoring.

    Args:
        layers, pruner, norms, scope, kernels: as for :class:`Pruner`.
        plan: as for :meth:`Pruner.apply`.
        return_masks: also return ``{name: bool keep mask}`` (True = kept), each on the device
            where its layer was pruned (the CPU for the native kernels, else the weight's device).
        method: the deprecated spelling of ``pruner`` (a ``DeprecationWarning``).

    Returns:
        The keep masks, or None.

    Raises:
        TypeError, ValueError: as for :class:`Pruner` and :meth:`Pruner.apply`, before any weight
            is written (non-finite weights included).
    """
    pruner = renamed("apply_plan", "method", method, "pruner", pruner, "magnitude", _METHOD_NOTE)
    records = prepare_layers(layers, pruner, norms, scope, kernels)
    criterion = CRITERIA[pruner]
    levels = _resolve(plan, records)
    for layer in records:
        _check_finite(layer)
    masks: OrderedDict[str, torch.Tensor] = OrderedDict()
    with torch.no_grad():
        for layer, level in zip(records, levels):
            mask = _prune(layer, criterion, level, scope, return_masks)
            if return_masks:
                masks[layer.name] = mask
    return masks if return_masks else None
