"""Applying plans to a PyTorch model's layers: the ``Pruner`` (repeatedly, restorable) and
``apply_plan`` (once).

The pruning criterion is ``pruner=``: ``"magnitude"`` scores ``|w|``, ``"wanda"`` scores
``|w| * ||x_col||`` with the activation norms of ``msp.torch.activation_norms``, ``"sparsegpt"``
runs SparseGPT's sweep (``msp.OBS``) with the Gram matrices of ``msp.torch.gram_matrices``::

    layers = linear_layers(model)                          # {name: nn.Linear}
    norms = activation_norms(model, layers, calibration)   # Wanda's per-input-column norms
    pruner = Pruner(layers, pruner="wanda", norms=norms)   # keeps the dense weights to restore
    pruner.apply(plan)                                     # any plan, quickly and repeatedly
    pruner.restore()                                       # bit-identical dense weights again
    apply_plan(layers, plan, pruner="wanda", norms=norms)  # once, without the dense copies

    grams = gram_matrices(model, layers, calibration)      # SparseGPT's H = sum x x^T per input
    pruner = Pruner(layers, pruner="sparsegpt", grams=grams, cache_dir="sgpt-db")
    pruner.build(levels)                                   # the search's database, all at once

Both prune with the statistics they are given, i.e. one shot from the dense model's activations
(``msp.torch.gram_matrices`` on the dense model); neither re-collects statistics on the pruned
model.

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

from .._deprecation import deprecated, renamed
from .._progress import Progress
from ..levels import Level
from .criteria import CRITERIA, is_dense
from .database import Database, digest_of
from .records import (
    LayerRecord,
    check_finite,
    check_weight,
    prepare_layers,
    prune_layer,
    resolve_plan,
)

__all__ = ["Pruner", "apply_plan", "PRUNERS", "DENSE_COPIES"]

PRUNERS = tuple(CRITERIA)
"""The pruning criteria: ``|w|`` (magnitude), ``|w| * ||x_col||`` (Wanda) or SparseGPT's sweep."""

DENSE_COPIES = ("device", "host")
"""Where a :class:`Pruner` keeps its dense copies and cache: each weight's own device, or host memory."""

_METHOD_NOTE = " (method= names the planning method of msp.plan and msp.torch.prune)"


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
      before is one memory copy instead of a new ranking. With ``cache_dir`` the pairs are also
      kept on disk, where a later Pruner over the same dense weights, statistics and settings
      finds them (``msp.torch.database``: keyed by a hash of all of them; a stale or corrupted
      file is never used).

    For SparseGPT that cache is the search's database: every (layer, level) pair costs one
    sweep, after which a candidate plan is assembled by copies. It fills lazily, as plans are
    applied, or all at once with :meth:`build` (with a progress bar). Each distinct Gram matrix is
    factorised once, when first needed, and reused for all its layers and levels. Size it to hold
    the database (about the weights' bytes once per level; e.g. 0.42 GB per level for
    SmolLM2-135M's 210 layers in float32), or give ``cache_dir`` and let the disk hold the rest.

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
        pruner: the pruning criterion, ``"magnitude"`` (score ``|w|``), ``"wanda"`` (score
            ``|w| * norms[col]``) or ``"sparsegpt"`` (SparseGPT's sweep with ``grams``).
        norms: Wanda's activation norms, ``{name: [in_features]}`` (``activation_norms``, or
            ``grams.norms()`` from the same pass as the Gram matrices) or one per layer in order;
            only with ``pruner="wanda"``.
        grams: SparseGPT's Gram matrices of the layers' inputs, ``{name: [in_features,
            in_features]}`` (``gram_matrices``; layers mapped to the same tensor share one
            factorisation) or one per layer in order; only with ``pruner="sparsegpt"``.
        damp: SparseGPT's dampening, ``damp * mean(diag H)`` added to the diagonal (default 0.01).
        block: SparseGPT's columns per block (default 128): unstructured levels prune exactly
            ``round(sparsity * rows * width)`` weights of each block of columns, all rows together.
        scope: comparison group of unstructured levels of magnitude and Wanda: ``"row"`` (Wanda's,
            the default: every row pruned to the sparsity) or ``"layer"`` (the whole matrix);
            SparseGPT has its own rule (``block``).
        cache_bytes: memory for cached pruned weights (default 2 GiB; 0 = no cache). The dense
            copies (the size of the layers' weights) come on top.
        cache_dir: None (default), or a folder where the cached pruned weights are also written
            and looked up (see above; created when missing).
        kernels: ``"auto"`` (native kernels for CPU weights, torch operations on the weight's
            device otherwise), ``"native"`` (CPU weights only) or ``"torch"`` (torch operations
            everywhere; the same masks). Decided at every ``apply`` from where each weight is then.
            SparseGPT always runs the native solver on the host: under ``"torch"`` or for a weight
            off the CPU (or not contiguous) it prunes a host copy and copies it back.
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
                 *, grams: Any = None, damp: float = 0.01, block: int = 128, scope: str = "row",
                 cache_bytes: int = 2 << 30, cache_dir: Any = None, kernels: str = "auto",
                 dense_copies: str = "device", method: str | None = None) -> None:
        pruner = renamed("Pruner", "method", method, "pruner", pruner, "magnitude", _METHOD_NOTE)
        if isinstance(cache_bytes, bool) or not isinstance(cache_bytes, int) or cache_bytes < 0:
            raise ValueError(f"cache_bytes must be an integer >= 0, got {cache_bytes!r}")
        if dense_copies not in DENSE_COPIES:
            raise ValueError(f"dense_copies must be 'device' or 'host', got {dense_copies!r}")
        records = prepare_layers(layers, pruner, norms, scope, kernels, grams, damp, block)
        for layer in records:
            check_finite(layer)
        self._dense_copies = dense_copies
        with torch.no_grad():
            for layer in records:
                layer.dense = self._keep(layer.weight.detach())
                layer.version = layer.weight._version
        self._layers = records
        self._criterion = CRITERIA[pruner]
        self._kernels = kernels
        self._db = Database(cache_bytes, self._keep, cache_dir)
        self._keys: dict[int, bytes] = {}  # layer index -> digest of its dense weight and criterion state
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
        return self._db.bytes

    @property
    def database(self) -> Database:
        """The cache of pruned weights (``msp.torch.database.Database``: ``bytes``,
        ``disk_hits``, ``rejected``, ``cache_dir``)."""
        return self._db

    def _key(self, index: int, level: Level) -> bytes:
        """The disk key of (layer, level)."""
        base = self._keys.get(index)
        if base is None:
            layer = self._layers[index]
            base = self._keys[index] = digest_of(layer.dense, self._criterion.digest(layer.state, self.scope))
        return digest_of(base, str(level))

    def _validate(self) -> None:
        """Check every layer again (and where each is pruned, from its device now)."""
        for layer in self._layers:
            if layer.dense is None:
                raise RuntimeError("this Pruner was closed (its dense copies were released)")
            check_weight(layer, self._kernels)
            if layer.weight.shape != layer.dense.shape or layer.weight.dtype != layer.dense.dtype:
                raise ValueError(f"layer {layer.name!r}: its weight changed shape or dtype since the Pruner was made")

    def _current(self, layer: LayerRecord) -> bool:
        """True when the layer's weight is exactly as this Pruner last left it."""
        return layer.weight._version == layer.version

    def _set(self, index: int, layer: LayerRecord, level: Level) -> None:
        """Write ``level`` of the layer into its weight (the caller holds ``torch.no_grad()``)."""
        w = layer.weight.detach()  # shares the version counter: every write below is recorded
        if is_dense(level):
            w.copy_(layer.dense)
            return
        key = (lambda: self._key(index, level))
        cached = self._db.get(index, level, key, w)
        if cached is not None:
            w.copy_(cached)
            return
        w.copy_(layer.dense)
        prune_layer(layer, self._criterion, level, self.scope, False)
        self._db.put(index, level, key, w)

    def build(self, levels: Iterable[Any], *, progress: bool = True) -> None:
        """Fill the cache with every layer at every one of ``levels`` now (the search's database)
        instead of as plans are applied; pairs already in memory or on disk are not pruned again.
        The weights are left dense. Layers whose ``in_features`` a level's M does not divide skip
        that level (a plan cannot give it to them). Layers sharing a Gram matrix are built one
        after another and its factorisation released after them (SparseGPT).

        Args:
            levels: the levels (as for a plan: ``msp.Level``, ``"2:8"``, ``"70%"``, ...).
            progress: show a progress bar over the layers.
        """
        wanted = [Level.parse(level) for level in levels]
        wanted = [level for level in dict.fromkeys(wanted) if not is_dense(level)]
        self._validate()
        self.restore()
        bar = Progress(f"msp {self.pruner} database", len(self._layers), "layers", progress)
        try:
            with torch.no_grad():
                for index, layer in enumerate(self._layers):
                    for level in wanted:
                        if not (level.m and layer.cols % level.m) and not self._db.held(index, level):
                            self._set(index, layer, level)
                    layer.weight.detach().copy_(layer.dense)
                    layer.version = layer.weight._version
                    state = layer.state
                    if hasattr(state, "close") and all(other.state is not state for other in self._layers[index + 1:]):
                        state.close()
                    bar.advance()
        except BaseException:
            self.restore()
            raise
        finally:
            bar.close()

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
        levels = resolve_plan(plan, self._layers)
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
        """Drop the cached pruned weights held in memory (the dense copies and files on disk stay)."""
        self._db.clear()

    def close(self) -> None:
        """Release the dense copies, the cache and SparseGPT's factorisations (the weights stay as
        they are); the Pruner cannot be used after."""
        self.clear_cache()
        for layer in self._layers:
            layer.dense = None
            if hasattr(layer.state, "close"):
                layer.state.close()

    def __repr__(self) -> str:
        pruned = sum(layer.level is not None for layer in self._layers)
        return (f"<msp Pruner {self.pruner}, {len(self._layers)} layers, {pruned} pruned now, "
                f"{self._db.bytes / 2**20:.0f} MiB cached>")


def apply_plan(
    layers: Mapping[str, nn.Module],
    plan: Any,
    pruner: str = "magnitude",
    norms: Any = None,
    *,
    grams: Any = None,
    damp: float = 0.01,
    block: int = 128,
    scope: str = "row",
    return_masks: bool = False,
    kernels: str = "auto",
    method: str | None = None,
) -> "OrderedDict[str, torch.Tensor] | None":
    """Prune every layer in place to its planned level, once (no dense copy is kept).

    The one-shot form of ``Pruner(layers, pruner, norms, grams=...).apply(plan)``: same plans, same
    masks, same weights, without the memory for restoring. SparseGPT prunes with the Gram matrices
    given (one shot: typically the dense model's, from ``gram_matrices``), one factorisation per
    distinct matrix, released after its last layer.

    Args:
        layers, pruner, norms, grams, damp, block, scope, kernels: as for :class:`Pruner`.
        plan: as for :meth:`Pruner.apply`.
        return_masks: also return ``{name: bool keep mask}`` (True = kept), each on the device
            where its layer was pruned (the CPU for the native kernels, else the weight's device).
        method: the deprecated spelling of ``pruner`` (a ``DeprecationWarning``).

    Returns:
        The keep masks, or None.

    Raises:
        TypeError, ValueError: as for :class:`Pruner` and :meth:`Pruner.apply`, before any weight
            is written (non-finite weights included). One exception: SparseGPT finds a Gram matrix
            that is not positive definite after damping (``msp.InvalidArgumentError``, suggesting
            a larger ``damp``) only when it factorises it, at its first layer; the layers before
            are pruned by then (a :class:`Pruner` restores them).
    """
    pruner = renamed("apply_plan", "method", method, "pruner", pruner, "magnitude", _METHOD_NOTE)
    records = prepare_layers(layers, pruner, norms, scope, kernels, grams, damp, block)
    criterion = CRITERIA[pruner]
    levels = resolve_plan(plan, records)
    for layer in records:
        check_finite(layer)
    masks: OrderedDict[str, torch.Tensor] = OrderedDict()
    with torch.no_grad():
        for index, (layer, level) in enumerate(zip(records, levels)):
            mask = prune_layer(layer, criterion, level, scope, return_masks)
            if return_masks:
                masks[layer.name] = mask
            if hasattr(layer.state, "close") and all(r.state is not layer.state for r in records[index + 1:]):
                layer.state.close()
    return masks if return_masks else None
