"""Applying plans to a PyTorch model: Wanda statistics, block groups, the ``Pruner`` and ``prune``.

Re-exported by ``msp.torch``; torch is imported only by the ``msp.torch`` family of modules::

    from msp.torch import linear_layers, fisher_traces, activation_norms, Pruner, prune

    layers = linear_layers(model)                          # {name: nn.Linear}
    norms = activation_norms(model, layers, calibration)   # Wanda's per-input-column norms
    pruner = Pruner(layers, method="wanda", norms=norms)   # keeps the dense weights on the CPU
    pruner.apply(plan)                                     # any plan, quickly and repeatedly
    pruner.restore()                                       # bit-identical dense weights again

    plan = prune(model, calibration, target=0.75, structure="N:8")   # all of it in one call

Every function validates all of its input before it writes any weight: a plan that does not fit
the layers, a weight on a GPU or not contiguous, ``in_features`` not divisible by a level's M, or a
non-finite weight raise ``ValueError`` (or ``TypeError``) and leave every weight unchanged.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .levels import Level, nm_levels, ratio_levels
from .masking import prune_nm_, prune_topk_
from .plan import Plan
from ._torch_util import call_model, eval_mode

__all__ = ["Pruner", "activation_norms", "apply_plan", "block_groups", "prune"]

METHODS = ("magnitude", "wanda")
"""The pruning criteria: ``|w|`` (magnitude) or ``|w| * ||x_col||`` (Wanda)."""

_SCOPES = ("row", "layer")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Stage:
    """One step of a long job, reported on stderr: ``msp <job>: <what> ... done in 1.2 s``."""

    def __init__(self, job: str, enabled: bool) -> None:
        self.job, self.enabled = job, enabled

    @contextlib.contextmanager
    def __call__(self, what: str):
        start = time.perf_counter()
        if self.enabled:
            print(f"msp {self.job}: {what} ...", file=sys.stderr, flush=True)
        yield
        if self.enabled:
            print(f"msp {self.job}: {what}: done in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)


class _Bar:
    """tqdm over batches when installed, else nothing; silent when disabled."""

    def __init__(self, total: int | None, enabled: bool, desc: str) -> None:
        self._bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                return
            self._bar = tqdm(total=total, desc=desc, unit="batch")

    def update(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# --- statistics ------------------------------------------------------------------------------------


def _layer_items(layers: Any, what: str = "layers") -> list[tuple[str, nn.Module]]:
    """``[(name, module)]`` from a mapping (e.g. ``linear_layers(model)``) or ``(name, module)`` pairs."""
    if isinstance(layers, Mapping):
        items = list(layers.items())
    elif isinstance(layers, Iterable) and not isinstance(layers, (str, bytes, nn.Module)):
        items = list(layers)
        if not all(isinstance(i, tuple) and len(i) == 2 for i in items):
            raise TypeError(f"{what} must be a mapping {{name: module}} (e.g. msp.torch.linear_layers(model))")
    else:
        raise TypeError(f"{what} must be a mapping {{name: module}}, got {type(layers).__name__}")
    if not items:
        raise ValueError(f"{what} is empty")
    names = [n for n, _ in items]
    if len(set(names)) != len(names):
        raise ValueError(f"{what} repeats a name")
    for name, module in items:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str, got {type(name).__name__}")
        if not isinstance(module, nn.Module):
            raise TypeError(f"layer {name!r} is a {type(module).__name__}, not an nn.Module")
    return items


def activation_norms(
    model: nn.Module, layers: Mapping[str, nn.Module], batches: Iterable[Any], *, progress: bool = False
) -> "OrderedDict[str, torch.Tensor]":
    """Return Wanda's statistic: the L2 norm of every input column of every layer over all tokens.

    For layer l with inputs ``X`` (all calibration tokens stacked, ``[tokens, in_features]``), the
    result is ``sqrt(sum_t X[t, c]**2)`` for every column c. Forward pre-hooks see each layer's
    input; the squares are summed in float64 on the input's device and the square root is taken at
    the end. The model runs in eval mode under ``torch.no_grad()``; modes and hooks are restored
    and removed afterwards, also on an exception.

    Args:
        model: the model; runs on its own device.
        layers: ``{name: module}``, e.g. ``linear_layers(model)``; each module's first positional
            input is taken as its input, with ``in_features`` (or the weight's column count) as
            its last dimension.
        batches: calibration batches: LongTensors ``[B, T]``, dicts of model inputs, or tuples of
            positional inputs.
        progress: show a progress bar over the batches (tqdm).

    Returns:
        ``{name: float32 CPU tensor [in_features]}`` in the order of ``layers``.

    Raises:
        ValueError: no batches, or a layer that never ran (it would get an all-zero norm, which
            would prune it at random).
        Whatever the model raises propagates unchanged.
    """
    items = _layer_items(layers)
    sums: dict[str, torch.Tensor | None] = {name: None for name, _ in items}
    widths: dict[str, int] = {}
    for name, module in items:
        width = getattr(module, "in_features", None)
        if width is None:
            weight = getattr(module, "weight", None)
            width = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
        widths[name] = width

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise TypeError(f"layer {name!r} was called without a tensor as its first input")
            x = args[0].detach()
            width = widths[name] or x.shape[-1]
            if x.shape[-1] != width:
                raise ValueError(f"layer {name!r} got an input of shape {tuple(x.shape)}; expected last dim {width}")
            squares = x.reshape(-1, width).double().square().sum(dim=0)
            total = sums[name]
            sums[name] = squares if total is None else total.add_(squares)

        return hook

    total = len(batches) if hasattr(batches, "__len__") else None
    bar = _Bar(total, progress, "activation norms")
    handles = []
    count = 0
    try:
        for name, module in items:
            handles.append(module.register_forward_pre_hook(hook_for(name)))
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                call_model(model, batch)
                count += 1
                bar.update()
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
    if count == 0:
        raise ValueError("batches is empty: no calibration data")
    never = [name for name, s in sums.items() if s is None]
    if never:
        shown = ", ".join(never[:4]) + (f", ... ({len(never)} in all)" if len(never) > 4 else "")
        raise ValueError(f"activation_norms: these layers never ran on the calibration batches: {shown}")
    return OrderedDict((name, s.sqrt().float().cpu()) for name, s in sums.items())


_INDEX = re.compile(r"^\d+$")


def block_groups(names: Iterable[str] | Mapping[str, Any]) -> list[int]:
    """One group id per layer: layers of the same numbered block share an id.

    A layer's block is its dotted name up to and including the first all-digit component
    (``model.layers.12.self_attn.q_proj`` -> ``model.layers.12``; ``encoder.block.3.layer.0.wi``
    -> ``encoder.block.3``). A name without a numbered component is a group of its own. Ids count
    from 0 in order of first appearance, as ``msp.plan(groups=...)`` takes them.

    Args:
        names: layer names in layer order, or a mapping whose keys are (``linear_layers(model)``).
    """
    if isinstance(names, (str, bytes)):
        raise TypeError("names must be a sequence of layer names, not one string")
    ids: dict[str, int] = {}
    groups = []
    for name in names:
        if not isinstance(name, str):
            raise TypeError(f"layer names must be str, got {type(name).__name__}")
        parts = name.split(".")
        key = name
        for k, part in enumerate(parts):
            if _INDEX.match(part):
                key = ".".join(parts[: k + 1])
                break
        groups.append(ids.setdefault(key, len(ids)))
    return groups


# --- layers and plans ------------------------------------------------------------------------------


class _Layer:
    """One prunable layer: its weight parameter and what pruning it needs."""

    __slots__ = ("name", "module", "weight", "rows", "cols", "scale", "dense", "level", "version")

    def __init__(self, name: str, module: nn.Module) -> None:
        self.name, self.module = name, module
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor):
            raise ValueError(f"layer {name!r} has no .weight tensor")
        self.weight = weight
        self.rows, self.cols = (int(weight.shape[0]), int(weight.shape[1])) if weight.dim() == 2 else (0, 0)
        self.scale: np.ndarray | None = None
        self.dense: torch.Tensor | None = None
        self.level: Level | None = None  # what the weight holds now (None = dense)
        self.version = -1


def _check_weight(layer: _Layer) -> None:
    """Raise unless the layer's weight can be pruned in place by the library."""
    w, name = layer.weight, layer.name
    if getattr(layer.module, "weight", None) is not w:
        raise ValueError(f"layer {name!r}: its .weight was replaced after the Pruner was made; make a new Pruner")
    if type(layer.module).__name__ == "Conv1D" and type(layer.module).__module__.startswith("transformers"):
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
    if w.device.type != "cpu":
        raise ValueError(
            f"layer {name!r} has its weight on {w.device}; msp prunes CPU weights in place (move the model "
            f"with model.cpu(), prune, then move it back)"
        )
    if not w.is_contiguous():
        raise ValueError(
            f"layer {name!r} has a non-contiguous weight (strides {tuple(w.stride())}); in-place pruning never "
            f"copies: make it contiguous first (module.weight.data = module.weight.data.contiguous())"
        )


def _check_finite(layer: _Layer) -> None:
    if not bool(torch.isfinite(layer.weight.detach()).all()):
        raise ValueError(f"layer {layer.name!r} has a non-finite weight (NaN or inf); msp will not rank it")


def _col_scale(name: str, value: Any, cols: int) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to(device="cpu", dtype=torch.float64).numpy()
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (cols,):
        raise ValueError(f"norms[{name!r}] has shape {array.shape}; layer {name!r} has in_features = {cols}")
    if not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"norms[{name!r}] must hold finite values >= 0")
    return np.ascontiguousarray(array, dtype=np.float32)


def _prepare(layers: Any, method: str, norms: Any, scope: str) -> list[_Layer]:
    """Validate layers, method, norms and scope; return the layer records (no weight touched)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in METHODS)}, got {method!r}")
    if scope not in _SCOPES:
        raise ValueError(f'scope must be "row" or "layer", got {scope!r}')
    records = [_Layer(name, module) for name, module in _layer_items(layers)]
    owner: dict[int, str] = {}
    for layer in records:
        _check_weight(layer)
        if id(layer.weight) in owner:
            raise ValueError(f"layers {owner[id(layer.weight)]!r} and {layer.name!r} share one weight; list it once")
        owner[id(layer.weight)] = layer.name
    if method == "magnitude":
        if norms is not None:
            raise ValueError("norms are Wanda's statistic; method='magnitude' does not use them (pass method='wanda')")
    else:
        if norms is None:
            raise ValueError("method='wanda' needs norms: norms = msp.torch.activation_norms(model, layers, batches)")
        if isinstance(norms, Mapping):
            missing = [r.name for r in records if r.name not in norms]
            if missing:
                raise ValueError(f"norms has no entry for layer(s) {', '.join(repr(n) for n in missing[:4])}")
            values = [norms[r.name] for r in records]
        else:
            values = list(norms)
            if len(values) != len(records):
                raise ValueError(f"norms has {len(values)} entries for {len(records)} layers")
        for layer, value in zip(records, values):
            layer.scale = _col_scale(layer.name, value, layer.cols)
    return records


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


def _is_dense(level: Level) -> bool:
    return (level.m and level.n == level.m) or (not level.m and level.sparsity == 0.0)


def _prune(layer: _Layer, level: Level, scope: str, return_mask: bool) -> Any:
    """Prune the layer's weight in place to ``level`` (the caller holds ``torch.no_grad()``)."""
    w = layer.weight.detach()  # shares the version counter: the library's write is recorded
    if _is_dense(level):
        return torch.ones(w.shape, dtype=torch.bool) if return_mask else None
    if level.m:
        return prune_nm_(w, level.n, level.m, col_scale=layer.scale, return_mask=return_mask)
    return prune_topk_(w, level.sparsity, scope=scope, col_scale=layer.scale, return_mask=return_mask)


# --- the Pruner ------------------------------------------------------------------------------------


class Pruner:
    """Applies any plan to a set of layers quickly and repeatedly, and restores them exactly.

    At construction it checks every layer, keeps a CPU copy of each dense weight and, for Wanda,
    each layer's column scale (the activation norms as float32). ``apply(plan)`` then sets every
    layer to its planned level in place: N:M levels are pruned by ``msp.prune_nm_`` (a dense level
    n == m leaves the layer dense), unstructured levels by ``msp.prune_topk_`` at the planned
    sparsity (``floor(sparsity * in_features)`` pruned in every row with ``scope="row"``), each
    from the dense weights. The result depends only on the plan, never on the plans applied before.

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

        pruner = Pruner(linear_layers(model), method="wanda", norms=norms)
        def fitness(plan):
            pruner.apply(plan)
            return perplexity(model, batches)
        plan = msp.plan(pruner.sizes, 0.75, msp.nm_levels(8), traces, fitness)
        pruner.apply(plan)       # keep the best plan; or pruner.restore() for the dense model

    Args:
        layers: ``{name: nn.Linear}`` in layer order (e.g. ``linear_layers(model)``). Weights must
            be 2-D ``[out_features, in_features]`` float32/float16/bfloat16 CPU tensors,
            contiguous and finite; no two names may share a weight.
        method: ``"magnitude"`` (score ``|w|``) or ``"wanda"`` (score ``|w| * norms[col]``).
        norms: Wanda's activation norms, ``{name: [in_features]}`` (``activation_norms``) or one
            per layer in order; only with ``method="wanda"``.
        scope: comparison group of unstructured levels: ``"row"`` (Wanda's, the default: every
            row pruned to the sparsity) or ``"layer"`` (the whole matrix).
        cache_bytes: memory for cached pruned weights (default 2 GiB; 0 = no cache). The dense
            copies (the size of the layers' weights) come on top.

    Raises:
        TypeError, ValueError: a bad argument or weight (see the module docstring); nothing is
            modified.
    """

    def __init__(self, layers: Mapping[str, nn.Module], method: str = "magnitude", norms: Any = None,
                 *, scope: str = "row", cache_bytes: int = 2 << 30) -> None:
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        records = _prepare(layers, method, norms, scope)
        for layer in records:
            _check_finite(layer)
        with torch.no_grad():
            for layer in records:
                layer.dense = layer.weight.detach().clone(memory_format=torch.contiguous_format)
                layer.version = layer.weight._version
        self._layers = records
        self._cache: OrderedDict[tuple[int, Level], torch.Tensor] = OrderedDict()
        self._cache_limit = cache_bytes
        self._cached = 0
        self.method = method
        self.scope = scope

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
        for layer in self._layers:
            if layer.dense is None:
                raise RuntimeError("this Pruner was closed (its dense copies were released)")
            _check_weight(layer)
            if layer.weight.shape != layer.dense.shape or layer.weight.dtype != layer.dense.dtype:
                raise ValueError(f"layer {layer.name!r}: its weight changed shape or dtype since the Pruner was made")

    def _current(self, layer: _Layer) -> bool:
        """True when the layer's weight is exactly as this Pruner last left it."""
        return layer.weight._version == layer.version

    def _set(self, index: int, layer: _Layer, level: Level) -> None:
        """Write ``level`` of the layer into its weight (the caller holds ``torch.no_grad()``)."""
        w = layer.weight.detach()  # shares the version counter: every write below is recorded
        if _is_dense(level):
            w.copy_(layer.dense)
            return
        key = (index, level)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            w.copy_(cached)
            return
        w.copy_(layer.dense)
        _prune(layer, level, self.scope, False)
        size = w.numel() * w.element_size()
        if size > self._cache_limit:
            return
        while self._cached + size > self._cache_limit:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= dropped.numel() * dropped.element_size()
        self._cache[key] = w.clone()
        self._cached += size

    def apply(self, plan: Any, *, incremental: bool = True) -> None:
        """Set every layer in place to its planned level.

        Args:
            plan: a ``msp.Plan`` over these layers (in order), a ``{name: level}`` dict naming
                exactly these layers (levels as ``msp.Level``, ``"2:8"``, ``(2, 8)``, ``"70%"`` or a
                sparsity; e.g. ``plan.to_dict(names)``), or a list of levels, one per layer.
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
                    dense = _is_dense(level)
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
        return (f"<msp Pruner {self.method}, {len(self._layers)} layers, {pruned} pruned now, "
                f"{self._cached / 2**20:.0f} MiB cached>")


def apply_plan(
    layers: Mapping[str, nn.Module],
    plan: Any,
    method: str = "magnitude",
    norms: Any = None,
    *,
    scope: str = "row",
    return_masks: bool = False,
) -> "OrderedDict[str, torch.Tensor] | None":
    """Prune every layer in place to its planned level, once (no dense copy is kept).

    The one-shot form of ``Pruner(layers, method, norms).apply(plan)``: same plans, same masks,
    without the memory for restoring.

    Args:
        layers, method, norms, scope: as for :class:`Pruner`.
        plan: as for :meth:`Pruner.apply`.
        return_masks: also return ``{name: bool keep mask}`` (True = kept).

    Returns:
        The keep masks, or None.

    Raises:
        TypeError, ValueError: as for :class:`Pruner` and :meth:`Pruner.apply`, before any weight
            is written (non-finite weights included).
    """
    records = _prepare(layers, method, norms, scope)
    levels = _resolve(plan, records)
    for layer in records:
        _check_finite(layer)
    masks: OrderedDict[str, torch.Tensor] = OrderedDict()
    with torch.no_grad():
        for layer, level in zip(records, levels):
            mask = _prune(layer, level, scope, return_masks)
            if return_masks:
                masks[layer.name] = mask
    return masks if return_masks else None


# --- the one-call pipeline -------------------------------------------------------------------------


def _levels_for(structure: str, target: float) -> list[Level]:
    """The default level set of a structure: every N:M for ``"N:M"``; for ``"unstructured"`` the
    sparsities 0, 5 %, ..., 95 % and the target itself (so the uniform plan is exact)."""
    if not isinstance(structure, str):
        raise TypeError(f'structure must be "N:M" (e.g. "N:8") or "unstructured", got {structure!r}')
    text = structure.strip()
    if text.lower() == "unstructured":
        grid = {round(0.05 * k, 10) for k in range(20)} | {float(target)}
        return ratio_levels(sorted(grid))
    match = re.fullmatch(r"[nN]\s*:\s*(\d+)", text)
    if match is None:
        raise ValueError(f'structure must be "N:M" (e.g. "N:8": every layer some n:8) or "unstructured", got {structure!r}')
    return nm_levels(int(match.group(1)))


def _measure(fitness: Any, model: nn.Module, batches: list, stage: Stage) -> Callable[[], float]:
    """The fitness of the model as it is now: the user's ``fitness(model)``, or KL to the dense
    model (its reference computed here, while the model is dense), or perplexity on ``batches``."""
    if callable(fitness):
        return lambda: fitness(model)
    from ._torch_eval import kl_to_dense, perplexity, reference_logits

    if fitness == "perplexity":
        return lambda: perplexity(model, batches)
    with stage(f"dense reference logits on {len(batches)} batches"):
        reference = reference_logits(model, batches)
    return lambda: kl_to_dense(model, batches, reference)


def _applying(worker: Pruner, measure: Callable[[], float]) -> Callable[[Plan], float]:
    """The fitness of a candidate plan: apply it, then measure the model."""

    def score(candidate: Plan) -> float:
        worker.apply(candidate)
        return measure()

    return score


def prune(
    model: nn.Module,
    calibration: Iterable[Any],
    target: float = 0.75,
    structure: str = "N:8",
    pruner: str = "wanda",
    *,
    search: Mapping[str, Any] | None = None,
    fitness: str | Callable[[nn.Module], float] = "kl",
    eval_batches: Sequence[Any] | None = None,
    method: str = "search",
    levels: Sequence[Any] | None = None,
    layers: Mapping[str, nn.Module] | None = None,
    ignore: Iterable[str] = ("lm_head",),
    groups: str | Sequence[Any] | None = None,
    sensitivity: Any = None,
    norms: Any = None,
    seed: int = 0,
    progress: bool = True,
) -> Plan:
    """Plan a mixed sparsity for ``model`` and leave the model pruned with it: the common case in one call.

    Steps (each reported on stderr when ``progress`` is on): Fisher traces of the linear layers on
    ``calibration``; Wanda's activation norms (``pruner="wanda"``); the plan (by default the
    evolutionary search from the Fisher prior, every candidate applied to the model by a
    :class:`Pruner` and scored by ``fitness``); applying the best plan.

    Args:
        model: a causal LM on the CPU (its linear weights are pruned in place).
        calibration: batches of token ids ``[B, T]`` or dicts of model inputs (a list; an iterator
            is read into one).
        target: average sparsity over the pruned layers, weighted by parameter count.
        structure: ``"N:M"`` (e.g. ``"N:8"``: every layer some n:8 from 1:8 to 8:8 = dense) or
            ``"unstructured"`` (0 %, 5 %, ..., 95 % and ``target``). ``levels`` overrides it.
        pruner: ``"wanda"`` or ``"magnitude"``.
        search: settings for ``msp.plan`` (``generations``, ``offspring``, ``survivors``,
            ``prior_grid``, ``max_evaluations``, ``patience``, ...).
        fitness: ``"kl"`` (mean KL divergence of the pruned model's next-token distribution from
            the dense one's), ``"perplexity"``, or a callable ``fitness(model) -> float`` called
            with the candidate plan applied to ``model`` (lower is better).
        eval_batches: the batches ``"kl"``/``"perplexity"`` are computed on; default: the first
            two calibration batches (keep it small: it runs once per candidate).
        method: ``"search"``, ``"prior"`` (the Fisher prior alone) or ``"uniform"``.
        levels: an explicit level set (least sparse first), instead of ``structure``.
        layers: the layers to prune; default ``linear_layers(model, ignore)``.
        ignore: layer names to leave dense when ``layers`` is None.
        groups: None, ``"block"`` (layers of one transformer block share a level, ``block_groups``)
            or one group label per layer.
        sensitivity, norms: precomputed Fisher traces (dict or list) and activation norms, to skip
            those steps.
        seed: search seed.
        progress: report every step on stderr (and progress bars).

    Returns:
        The applied :class:`msp.Plan` (``plan.to_dict(names)`` gives ``{layer name: sparsity}``).

    Raises:
        TypeError, ValueError: bad arguments, before the model is touched.
        Whatever the model or a user's ``fitness`` raises propagates unchanged, and the model is
        left dense (restored bit-identically), also on ``KeyboardInterrupt``.
    """
    from .planner import plan as make_plan
    from .torch import fisher_traces, linear_layers

    if pruner not in METHODS:
        raise ValueError(f"pruner must be one of {', '.join(repr(m) for m in METHODS)}, got {pruner!r}")
    if method not in ("search", "prior", "uniform"):
        raise ValueError(f"method must be 'search', 'prior' or 'uniform', got {method!r}")
    if not (isinstance(fitness, str) and fitness in ("kl", "perplexity")) and not callable(fitness):
        raise ValueError(f"fitness must be 'kl', 'perplexity' or a callable fitness(model) -> float, got {fitness!r}")
    settings = dict(search or {})
    for key in ("sizes", "target", "levels", "sensitivity", "fitness", "groups", "method", "progress"):
        if key in settings:
            raise ValueError(f"search={{{key!r}: ...}} is set by prune itself; pass it as prune's own argument")
    level_set = [Level.parse(level) for level in levels] if levels is not None else _levels_for(structure, target)
    calibration = list(calibration)
    if not calibration:
        raise ValueError("calibration is empty")
    if layers is None:
        layers = linear_layers(model, ignore=ignore)
    records = _prepare(layers, "magnitude", None, "row")  # checks every weight before any work
    names = [r.name for r in records]
    if isinstance(groups, str):
        if groups != "block":
            raise ValueError(f"groups must be None, 'block' or one label per layer, got {groups!r}")
        groups = block_groups(names)
    # A layer whose in_features no N:M level divides can only stay dense (its m:m level) or take
    # the unstructured levels; bound it to the levels it can hold.
    allowed = [[k for k, lv in enumerate(level_set) if not (lv.m and lv.n < lv.m and r.cols % lv.m)] for r in records]
    if any(not a for a in allowed):
        bad = next(r.name for r, a in zip(records, allowed) if not a)
        raise ValueError(f"layer {bad!r} (in_features {records[names.index(bad)].cols}) fits no level of the level set")
    max_level = None
    if any(a != list(range(len(level_set))) for a in allowed):
        if any(a != list(range(a[-1] + 1)) for a in allowed):
            raise ValueError("some layers fit only a non-contiguous part of the level set; pass layers= without them")
        max_level = [a[-1] for a in allowed]
        if progress:
            few = sum(a[-1] + 1 < len(level_set) for a in allowed)
            print(f"msp prune: {few} layer(s) have in_features not divisible by M: they stay dense", file=sys.stderr)

    stage = Stage("prune", progress)
    if sensitivity is None:
        with stage(f"Fisher traces of {len(names)} layers on {len(calibration)} calibration batches"):
            traces = fisher_traces(model, layers, calibration, progress=progress)
        sensitivity = [traces[n] for n in names]
    elif isinstance(sensitivity, Mapping):
        sensitivity = [float(sensitivity[n]) for n in names]
    if pruner == "wanda" and norms is None:
        with stage(f"activation norms on {len(calibration)} calibration batches"):
            norms = activation_norms(model, layers, calibration, progress=progress)
    worker = Pruner(layers, pruner, norms if pruner == "wanda" else None)
    try:
        score = None
        if method == "search" or callable(fitness):
            batches = list(eval_batches) if eval_batches is not None else calibration[:2]
            score = _applying(worker, _measure(fitness, model, batches, stage))
        label = {"search": "evolutionary search", "prior": "Fisher prior plan", "uniform": "uniform plan"}[method]
        with stage(f"{label} at {target:.1%} average sparsity over {len(level_set)} levels"):
            result = make_plan(
                worker.sizes, target, level_set, sensitivity=sensitivity, fitness=score, groups=groups,
                max_level=max_level, method=method, seed=seed, progress=progress, **settings,
            )
        with stage("applying the plan"):
            worker.apply(result)
    except BaseException:
        worker.restore()
        raise
    finally:
        worker.close()
    if progress:
        print(f"msp prune: done: {result!r}", file=sys.stderr, flush=True)
    return result
