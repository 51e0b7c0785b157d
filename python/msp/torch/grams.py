"""Gram matrices of layer inputs, ``H = sum_t x_t x_t^T``: SparseGPT's calibration statistic.

::

    grams = gram_matrices(model, layers, calibration)   # {name: H}, one forward pass
    pruner = Pruner(layers, pruner="sparsegpt", grams=grams)
    norms = grams.norms()                               # sqrt(diag H): Wanda's activation norms

One forward pass over the calibration set serves every layer (through ``collect_inputs``'
forward pre-hooks). Layers that read the same input tensor (q/k/v of an attention block, gate/up
of a gated MLP) get one Gram matrix, the same tensor object, which the SparseGPT pruner then
factorises once for all of them. The sharing is found from the hooked input tensors themselves,
never from the layers' names.
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Callable

import torch
from torch import nn

from ..errors import InvalidArgumentError
from ..gram import GramAccumulator
from .calibration import collect_inputs
from .kernels import check_kernels
from .layers import layer_items

__all__ = ["Grams", "gram_matrices"]

_RUN = 128  # tokens per float32 product, as the native accumulator multiplies them
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


class Grams(Mapping):
    """Gram matrices of layer inputs by layer name, as :func:`gram_matrices` returns them.

    A read-only mapping ``{name: H}`` in layer order; every ``H`` is a float32 CPU tensor
    ``[in_features, in_features]``, exactly symmetric, not divided by the token count. Layers
    that read one input map to the very same tensor (``grams[a] is grams[b]``): that is how the
    SparseGPT pruner knows to factorise it once. Do not modify the tensors in place.

    Attributes:
        groups: the names of layers sharing one matrix, one tuple per distinct matrix, in layer
            order (``[("...q_proj", "...k_proj", "...v_proj"), ("...o_proj",), ...]``).
        tokens: ``{name: tokens}``: how many input rows made each layer's matrix.
    """

    def __init__(self, matrices: Mapping[str, torch.Tensor], tokens: Mapping[str, int]) -> None:
        self._matrices = OrderedDict(matrices)
        self.tokens = dict(tokens)
        groups: dict[int, list[str]] = {}
        for name, matrix in self._matrices.items():
            groups.setdefault(id(matrix), []).append(name)
        self.groups = [tuple(names) for names in groups.values()]

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._matrices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._matrices)

    def __len__(self) -> int:
        return len(self._matrices)

    def norms(self) -> "OrderedDict[str, torch.Tensor]":
        """Wanda's activation norms from the same pass: ``sqrt(diag H)`` of every layer, float32
        CPU tensors ``[in_features]`` (``activation_norms`` gives the same values to about 1e-6
        relative: both sum squares in higher precision, in another order)."""
        return OrderedDict((name, torch.diagonal(h).double().sqrt().float()) for name, h in self._matrices.items())

    def __repr__(self) -> str:
        return f"<msp.torch.Grams {len(self._matrices)} layers, {len(self.groups)} distinct inputs>"


class _TorchSums:
    """Gram sums with torch operations on the inputs' own device: float32 products of runs of
    128 tokens added into float64, as the native accumulator does."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}

    def add(self, name: str, rows: torch.Tensor) -> None:
        x = rows.float()
        bad = ~torch.isfinite(x)
        if bool(bad.any()):
            token, col = divmod(int(torch.argmax(bad.reshape(-1).to(torch.uint8))), x.shape[1])
            raise InvalidArgumentError(f"the input of layer {name!r} is not finite at token {token}, column {col}")
        total = self.sums.get(name)
        if total is None:
            total = self.sums[name] = torch.zeros(x.shape[1], x.shape[1], dtype=torch.float64, device=x.device)
        for run in x.split(_RUN):
            total.add_((run.T @ run).double())

    def gram(self, name: str) -> torch.Tensor:
        total = self.sums[name]
        return ((total + total.T) / 2).float().cpu()


class _NativeSums:
    """Gram sums by the native accumulator (``msp.GramAccumulator``), one slot per layer."""

    def __init__(self, widths: Mapping[str, int]) -> None:
        self.index = {name: i for i, name in enumerate(widths)}
        self.acc = GramAccumulator(list(widths.values()))

    def add(self, name: str, rows: torch.Tensor) -> None:
        if rows.device.type != "cpu":
            rows = rows.cpu()  # kernels="native" on a model off the CPU: one input at a time
        if rows.dtype not in _DTYPES:
            rows = rows.float()
        self.acc.add(self.index[name], rows)

    def gram(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.acc.gram(self.index[name]))


def _collect(model: nn.Module, items: list[tuple[str, nn.Module]], batches: Any, forward_fn: Any, kernels: str,
             share: bool, progress: bool) -> tuple[dict[str, torch.Tensor], Counter, Counter, dict[str, Counter]]:
    """One pass: the Gram matrix of every layer that recorded its own input, the tokens and
    record calls per layer, and for every layer the layers whose recorded input it shared."""
    widths = {name: int(module.weight.shape[1]) for name, module in items}
    native = _NativeSums(widths) if kernels != "torch" else None
    device = _TorchSums() if kernels != "native" else None
    tokens: Counter = Counter()
    led: Counter = Counter()
    follows: dict[str, Counter] = {name: Counter() for name in widths}

    def record(name: str, rows: torch.Tensor) -> None:
        on_host = rows.device.type == "cpu"
        (native if native is not None and (on_host or device is None) else device).add(name, rows)
        tokens[name] += rows.shape[0]
        led[name] += 1

    def follow(name: str, first: str) -> None:
        follows[name][first] += 1

    try:
        collect_inputs(model, OrderedDict(items), batches, record, share=follow if share else None,
                       forward_fn=forward_fn, progress=progress, desc="msp gram matrices")
        grams = {}
        for name in led:
            sums = device if device is not None and name in device.sums else native
            grams[name] = sums.gram(name)
    finally:
        if native is not None:
            native.acc.close()
    return grams, tokens, led, follows


def gram_matrices(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Any,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    kernels: str = "auto",
    progress: bool = False,
) -> Grams:
    """Return the Gram matrix ``H = sum_t x_t x_t^T`` of every layer's inputs over the calibration.

    One forward pass over ``batches`` (forward pre-hooks, :func:`collect_inputs`): ``x_t`` are the
    rows of each layer's first positional input reshaped to ``[tokens, in_features]``. An input
    read by several layers in turn (q/k/v, gate/up) is summed once and its matrix shared: the
    result maps those layers to the same tensor. Should a layer read such a shared input in some
    calls and another input in others, its matrix is made in a second pass of its own, so every
    matrix is always exactly its layer's.

    ``sqrt(diag H)`` are Wanda's activation norms (:meth:`Grams.norms`), so this one pass serves
    both pruners.

    Precision and devices: CPU inputs are summed by the native accumulator (``msp.GramAccumulator``:
    float32 products of runs of 128 tokens added in double, every entry within ``1e-5 *
    sqrt(H_ii * H_jj)`` of a float64 sum); inputs on another device by torch operations on that
    device in the same way (``kernels="auto"``); ``kernels="native"`` copies them to the host one
    input at a time, ``kernels="torch"`` uses torch operations everywhere. Results are float32
    CPU tensors either way. Memory: ``8 * in_features**2`` bytes per distinct input while summing,
    ``4 * in_features**2`` per distinct input in the result.

    Args:
        model: any ``nn.Module`` on any device.
        layers: ``{name: module}`` with 2-D ``.weight`` ``[out_features, in_features]`` (e.g.
            ``linear_layers(model)``); no two names may share a module.
        batches: the calibration: a list of batches, one tensor ``[N, ...]`` (cut into batches of
            8), or an iterable of batches (``msp.torch.batches``).
        forward_fn: ``forward_fn(model, batch)`` runs one batch (see ``collect_inputs``); default:
            ``model(ids)``, ``model(**inputs)`` or ``model(*batch)`` by the batch's kind.
        kernels: ``"auto"``, ``"native"`` or ``"torch"`` (see above).
        progress: show a progress bar over the batches.

    Returns:
        A :class:`Grams` mapping ``{name: float32 CPU tensor [in_features, in_features]}`` in
        the order of ``layers``.

    Raises:
        TypeError: a calibration object of another kind, or a layer without a 2-D weight.
        ValueError: no layers, no batches, a layer that never ran, a module listed twice;
            ``msp.InvalidArgumentError`` (a ValueError) for a non-finite input.
        Whatever the model raises propagates unchanged.
    """
    kernels = check_kernels(kernels)
    items = layer_items(layers)
    if len({id(module) for _, module in items}) != len(items):
        raise ValueError("layers lists one module twice; list it once")
    for name, module in items:
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"layer {name!r} has no 2-D .weight [out_features, in_features]")
    batches = batches if isinstance(batches, list) else list(batches) if isinstance(batches, Iterator) else batches
    grams, tokens, led, follows = _collect(model, items, batches, forward_fn, kernels, True, progress)
    complete = {name for name in led if not follows[name]}  # layers that always recorded their own input
    matrices: OrderedDict[str, torch.Tensor] = OrderedDict()
    again = []
    for name, _ in items:
        seen = follows[name]
        if name in complete:
            matrices[name] = grams[name]
            continue
        first = next(iter(seen)) if len(seen) == 1 else None
        if first in complete and not led[name] and seen[first] == led[first]:
            matrices[name] = grams[first]  # read exactly the inputs `first` recorded
            tokens[name] = tokens[first]
        else:
            again.append(name)
    if again:
        chosen = [(name, module) for name, module in items if name in set(again)]
        extra, extra_tokens, _, _ = _collect(model, chosen, batches, forward_fn, kernels, False, False)
        for name in again:
            matrices[name] = extra[name]
            tokens[name] = extra_tokens[name]
    return Grams(OrderedDict((name, matrices[name]) for name, _ in items), tokens)
