"""Calibration statistics of a PyTorch model: the losses, Fisher traces and Wanda's activation norms.

::

    traces = fisher_traces(model, layers, calibration)     # {name: Tr(F_l)}, the planner's sensitivity
    norms = activation_norms(model, layers, calibration)   # {name: ||x_j||}, Wanda's column scales

``calibration`` is a list of batches, one tensor ``[N, ...]`` (cut into batches of 8) or any
iterable of batches (``msp.torch.batches``). The model may be any ``nn.Module`` on any device:
``loss_fn(model, batch)`` and ``forward_fn(model, batch)`` say how a batch becomes a loss or a
forward pass (the defaults suit causal LMs). Statistics of layer inputs (activation norms, and any
other per-layer input statistic) come from one collector, :func:`collect_inputs`.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import Progress
from ..fisher import FisherAccumulator
from .batches import calibration_batches, split_samples
from .device_fisher import DeviceFisherAccumulator
from .forward import call_model, device_of, eval_mode, logits_of, to_device
from .kernels import check_kernels, uses_native
from .layers import layer_items, layer_weights

__all__ = ["causal_lm_loss", "fisher_traces", "activation_norms", "collect_inputs"]


# --- loss ------------------------------------------------------------------------------------------


_LOSS_HINT = "; pass loss_fn(model, batch)"


def causal_lm_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """The default loss of ``fisher_traces``: mean next-token cross-entropy of a causal LM.

    Args:
        model: returns logits ``[B, T, V]`` as a tensor, as ``output.logits`` (Hugging Face) or as
            ``output[0]``.
        batch: a LongTensor of token ids ``[B, T]`` (called as ``model(ids)``), or a dict of model
            inputs with ``"input_ids"`` (called as ``model(**inputs)``). Targets are the ids shifted
            by one; a ``"labels"`` entry (not passed to the model) replaces the ids as targets, and
            positions where ``"attention_mask"`` is 0 or the target is -100 are ignored.

    Returns:
        The scalar loss, computed in float32.
    """
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise KeyError("the default loss needs batch['input_ids']; pass loss_fn(model, batch) otherwise")
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = logits_of(model(**inputs), _LOSS_HINT)
        labels = batch.get("labels")
        if labels is None:
            labels = batch["input_ids"]
            mask = batch.get("attention_mask")
            if mask is not None:
                labels = labels.masked_fill(mask == 0, -100)
    elif isinstance(batch, torch.Tensor):
        logits = logits_of(model(batch), _LOSS_HINT)
        labels = batch
    else:
        raise TypeError(
            f"the default loss takes a LongTensor of token ids or a dict of model inputs, got "
            f"{type(batch).__name__}; pass loss_fn(model, batch) otherwise"
        )
    if logits.dim() != 3 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"the default loss expects logits [B, T, V] for ids [B, T], got {tuple(logits.shape)} for "
            f"{tuple(labels.shape)}"
        )
    logits = logits[:, :-1].float()
    target = labels[:, 1:].to(logits.device)
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1), ignore_index=-100)


# --- Fisher traces ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _tracking(model: nn.Module, params: list[nn.Parameter]):
    """Enable gradients on ``params`` only, clear their ``.grad``, switch every module to eval mode;
    restore every parameter's ``requires_grad`` and ``.grad`` and every module's mode on exit,
    also on an exception."""
    tracked = {id(p) for p in params}
    everything = list(model.parameters())
    seen = {id(p) for p in everything}
    everything += [p for p in params if id(p) not in seen]
    saved_flags = [(p, p.requires_grad) for p in everything]
    saved_grads = [(p, p.grad) for p in params]
    try:
        for p in everything:
            p.requires_grad_(id(p) in tracked)
        for p in params:
            p.grad = None
        with eval_mode(model), torch.enable_grad():
            yield
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        for p, grad in saved_grads:
            p.grad = grad


class _Sums:
    """The Fisher sums of ``fisher_traces``: the native accumulator for the layers it reduces,
    the device accumulator for the others (created when first needed); both give the same bits."""

    def __init__(self, sizes: list[int], native: list[bool]) -> None:
        self.native = native
        self.host = FisherAccumulator(sizes)
        self.device = None if all(native) else DeviceFisherAccumulator(sizes)

    def add(self, index: int, grad: torch.Tensor) -> None:
        if grad.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            grad = grad.float()  # float64 weights: both sums take 32/16-bit floats
        if not self.native[index]:
            self.device.add(index, grad)
            return
        if grad.device.type != "cpu":
            grad = grad.cpu()  # kernels="native" on a weight off the CPU: one layer at a time
        self.host.add(index, grad)

    def end_sample(self) -> None:
        self.host.end_sample()
        if self.device is not None:
            self.device.end_sample()

    def traces(self, per_parameter: bool) -> list[float]:
        host = self.host.traces(per_parameter=per_parameter)
        device = host if self.device is None else self.device.traces(per_parameter)
        return [float(h if n else d) for h, d, n in zip(host, device, self.native)]


def fisher_traces(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    *,
    per_parameter: bool = False,
    per_sample: bool = True,
    kernels: str = "auto",
    progress: bool = True,
) -> "OrderedDict[str, float]":
    """Return every layer's Fisher-trace sensitivity ``Tr(F_l) = (1/S) * sum_s ||dloss_s/dW_l||^2``.

    For every calibration sample the loss is computed and back-propagated once. Each layer's weight
    gradient is reduced by a post-accumulate-grad hook the moment autograd produces it, and freed
    right after (``param.grad = None``): at most one tracked layer's gradient exists at any time,
    so the extra memory is one layer's gradient, not the model's.

    Gradients are reduced where they live: CPU gradients by the native accumulator, gradients on
    another device by torch operations on that device that repeat the native order of float64
    operations, so the traces are the same bit for bit and only one number per layer crosses to
    the host (``kernels``).

    During the call only the tracked weights require grad (so no other gradient is computed), the
    tracked weights' ``.grad`` is cleared, and every module is in eval mode (no dropout). Afterwards
    every parameter's ``requires_grad`` and ``.grad`` and every module's training mode are restored,
    also when an exception (e.g. from ``loss_fn``) ends the call.

    Args:
        model: any ``nn.Module``; its parameters may live on any device.
        layers: ``{name: module}`` whose ``.weight`` parameters are tracked, e.g. from
            ``linear_layers(model)``. The trace does not depend on the weight's layout, so any module
            with a ``.weight`` parameter works; two names sharing one parameter are rejected.
        batches: the calibration: a list of batches, one tensor ``[N, ...]`` (cut into batches of
            8), or an iterable of batches such as a DataLoader (``msp.torch.batches``). A batch is
            whatever ``loss_fn`` takes (the default: LongTensors of token ids ``[B, T]`` or dicts
            of model inputs); its tensors are moved to the model's device first.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; default ``causal_lm_loss`` (next-token
            cross-entropy from the model's logits). A classifier on ``(x, y)`` batches passes e.g.
            ``lambda model, batch: F.cross_entropy(model(batch[0]), batch[1])``.
        per_parameter: divide each trace by the layer's parameter count (mean per-weight Fisher,
            comparable across layers of different size).
        per_sample: True (default) cuts a batch of B rows into B samples, one backward pass each:
            the Fisher of single samples. Tensors, dicts and tuples (also nested) are cut along
            dim 0 alike (``msp.torch.batches.split_samples``). False counts each batch as one
            sample (its batch-mean gradient), which is B times cheaper and smaller by about 1/B
            for independent rows.
        kernels: ``"auto"`` (native for CPU gradients, torch operations on the gradient's device
            otherwise), ``"native"`` (every gradient reduced by the native accumulator; gradients
            off the CPU are copied to the host one layer at a time) or ``"torch"`` (torch
            operations everywhere; the same bits).
        progress: show a progress bar (tqdm when installed, else a line on stderr).

    Returns:
        An ordered dict ``{name: trace}`` of Python floats, in the order of ``layers``.

    Raises:
        TypeError: a calibration object of another kind (the message names the accepted forms).
        ValueError: no layers, no samples, a layer without a ``.weight`` parameter, shared weights,
            a loss that is not a finite scalar.
        msp.InvalidArgumentError: a non-finite gradient (the message names the layer index).
        Whatever the model or ``loss_fn`` raises propagates unchanged.
    """
    if not hasattr(torch.Tensor, "register_post_accumulate_grad_hook"):
        raise RuntimeError(f"fisher_traces needs torch >= 2.1 (post-accumulate-grad hooks), got {torch.__version__}")
    kernels = check_kernels(kernels)
    names: list[str] = []
    params: list[nn.Parameter] = []
    for name, _, weight in layer_weights(layers):
        if not isinstance(weight, nn.Parameter):
            raise ValueError(f"layer {name!r} has no .weight parameter (a plain tensor gets no gradient)")
        if weight.is_sparse or not weight.dtype.is_floating_point:
            raise ValueError(f"layer {name!r} has a {weight.dtype} {weight.layout} weight; need a dense float weight")
        names.append(name)
        params.append(weight)
    batches = calibration_batches(batches, "batches")
    loss_fn = causal_lm_loss if loss_fn is None else loss_fn
    device = device_of(model)
    total = len(batches) if hasattr(batches, "__len__") else None
    sums = _Sums([p.numel() for p in params], [uses_native(p, kernels) for p in params])
    samples = 0

    def hook_for(index: int):
        def hook(param: torch.Tensor) -> None:
            grad = param.grad
            param.grad = None  # free it whatever happens below
            if grad is not None:
                sums.add(index, grad.detach())

        return hook

    handles = []
    bar = Progress("msp fisher", total, "batches", progress)
    try:
        with _tracking(model, params):
            for i, p in enumerate(params):
                handles.append(p.register_post_accumulate_grad_hook(hook_for(i)))
            for batch in batches:
                for sample in split_samples(batch) if per_sample else [batch]:
                    loss = loss_fn(model, to_device(sample, device))
                    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                        raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
                    if not torch.isfinite(loss.detach()).all():
                        raise ValueError(f"the loss of sample {samples} is {loss.item()}")
                    if loss.requires_grad:
                        loss.reshape(()).backward()
                    sums.end_sample()
                    samples += 1
                bar.advance()
    finally:
        for handle in handles:
            handle.remove()
        bar.close()
    if samples == 0:
        raise ValueError("batches is empty: no calibration sample")
    return OrderedDict(zip(names, sums.traces(per_parameter)))


# --- statistics of layer inputs --------------------------------------------------------------------


def _version(x: torch.Tensor) -> int | None:
    """The tensor's version counter (None where it has none, e.g. an inference tensor)."""
    try:
        return x._version
    except RuntimeError:
        return None


class _LastInput:
    """The input tensor of the last recorded layer call and the layers that read it since:
    ``collect_inputs``' test for one input read by several layers in turn."""

    __slots__ = ("tensor", "version", "first", "readers")

    def __init__(self) -> None:
        self.forget()

    def forget(self) -> None:
        """Release the tensor (at the end of every batch)."""
        self.tensor: torch.Tensor | None = None
        self.version: int | None = None
        self.first = ""
        self.readers: set[str] = set()

    def remember(self, x: torch.Tensor, name: str) -> None:
        """``x`` was just recorded for layer ``name``."""
        self.tensor, self.version, self.first, self.readers = x, _version(x), name, {name}

    def reader_of(self, x: torch.Tensor, name: str) -> str | None:
        """The layer whose record call saw ``x`` when it is the remembered tensor, unwritten since
        and not yet read by ``name`` (which is then counted as a reader); else None."""
        held = self.tensor
        if held is None or name in self.readers or self.version is None or _version(x) != self.version:
            return None
        same = x is held or (
            x.device == held.device and x.dtype == held.dtype and x.shape == held.shape
            and x.stride() == held.stride() and x.data_ptr() == held.data_ptr()
        )
        if not same:
            return None
        self.readers.add(name)
        return self.first


def _width(module: nn.Module) -> int | None:
    """A layer's input width: ``in_features``, else its 2-D weight's column count, else None."""
    width = getattr(module, "in_features", None)
    if width is None:
        weight = getattr(module, "weight", None)
        width = weight.shape[-1] if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None
    return width


def collect_inputs(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Any,
    record: Callable[[str, torch.Tensor], None],
    *,
    share: Callable[[str, str], None] | None = None,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    progress: bool = False,
    desc: str = "msp layer inputs",
) -> None:
    """Run ``model`` on every calibration batch and hand every layer's input to ``record``: the
    one place where per-layer input statistics (activation norms, and any statistic a pruning
    criterion adds) are collected.

    Forward pre-hooks see each layer's first positional input ``x``; ``record(name, rows)`` gets
    it detached as ``[tokens, in_features]`` (``x.reshape(-1, in_features)``), on its own device.
    The model runs in eval mode under ``torch.no_grad()``; modes and hooks are restored and
    removed afterwards, also on an exception.

    With ``share``, an input is recorded once for all the layers that read it in turn: when a
    layer's input is the tensor the previously called layer of ``layers`` was recorded with (the
    same tensor object, or the same view of the same memory, not written in between: q/k/v read
    one tensor one after another, and so do gate/up), ``share(name, first)`` is called instead
    of ``record``, ``first`` naming the layer whose ``record`` call saw that tensor. The tensor
    is held until the next layer call or the end of the batch, so that its identity is certain.

    Args:
        model: any ``nn.Module``, on any device.
        layers: ``{name: module}``, e.g. ``linear_layers(model)``; ``in_features`` (or the weight's
            column count) is each input's last dimension.
        batches: the calibration (``msp.torch.batches``: a list of batches, one tensor ``[N, ...]``,
            or an iterable of batches).
        record: called once per layer call with ``(name, rows)`` (with ``share``: once per
            distinct input).
        share: None, or ``share(name, first)``, called for a layer call whose input was recorded
            for layer ``first`` just before (see above).
        forward_fn: ``forward_fn(model, batch)`` runs one batch (its tensors already moved to the
            model's device); default ``model(ids)`` for a tensor, ``model(**inputs)`` for a dict
            (without ``"labels"``), ``model(*batch)`` for a tuple. An ``(x, y)`` classifier passes
            ``lambda model, batch: model(batch[0])``.
        progress: show a progress bar over the batches.
        desc: the progress bar's label.

    Raises:
        TypeError: a calibration object of another kind, or a layer called without a tensor.
        ValueError: no batches, a layer input of the wrong width, or a layer that never ran.
        Whatever the model or ``forward_fn`` raises propagates unchanged.
    """
    items = layer_items(layers)
    widths = {name: _width(module) for name, module in items}
    ran: set[str] = set()
    batches = calibration_batches(batches, "batches")
    run = call_model if forward_fn is None else forward_fn
    device = device_of(model)

    last = _LastInput()

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple) -> None:
            if not args or not isinstance(args[0], torch.Tensor):
                raise TypeError(f"layer {name!r} was called without a tensor as its first input")
            x = args[0]
            width = widths[name] or x.shape[-1]
            if x.shape[-1] != width:
                raise ValueError(f"layer {name!r} got an input of shape {tuple(x.shape)}; expected last dim {width}")
            first = last.reader_of(x, name) if share is not None else None
            if first is None:
                record(name, x.detach().reshape(-1, width))
                last.remember(x, name)
            else:
                share(name, first)
            ran.add(name)

        return hook

    total = len(batches) if hasattr(batches, "__len__") else None
    bar = Progress(desc, total, "batches", progress)
    handles = []
    count = 0
    try:
        for name, module in items:
            handles.append(module.register_forward_pre_hook(hook_for(name)))
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                run(model, to_device(batch, device))
                last.forget()
                count += 1
                bar.advance()
    finally:
        last.forget()
        for handle in handles:
            handle.remove()
        bar.close()
    if count == 0:
        raise ValueError("batches is empty: no calibration data")
    never = [name for name, _ in items if name not in ran]
    if never:
        shown = ", ".join(never[:4]) + (f", ... ({len(never)} in all)" if len(never) > 4 else "")
        raise ValueError(f"these layers never ran on the calibration batches: {shown}")


def activation_norms(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Any,
    *,
    forward_fn: Callable[[nn.Module, Any], Any] | None = None,
    progress: bool = False,
) -> "OrderedDict[str, torch.Tensor]":
    """Return Wanda's statistic: the L2 norm of every input column of every layer over all tokens.

    For layer l with inputs ``X`` (all calibration tokens stacked, ``[tokens, in_features]``), the
    result is ``sqrt(sum_t X[t, c]**2)`` for every column c. The squares are summed in float64 on
    the input's device (:func:`collect_inputs`) and the square root is taken at the end.

    Args:
        model: any ``nn.Module``; runs on its own device.
        layers: ``{name: module}``, e.g. ``linear_layers(model)``; each module's first positional
            input is taken as its input, with ``in_features`` (or the weight's column count) as
            its last dimension.
        batches: the calibration: a list of batches, one tensor ``[N, ...]`` (cut into batches of
            8), or an iterable of batches (``msp.torch.batches``).
        forward_fn: ``forward_fn(model, batch)`` runs one batch (see :func:`collect_inputs`);
            default: ``model(ids)``, ``model(**inputs)`` or ``model(*batch)`` by the batch's kind.
        progress: show a progress bar over the batches (tqdm when installed, else a line on stderr).

    Returns:
        ``{name: float32 CPU tensor [in_features]}`` in the order of ``layers``.

    Raises:
        TypeError: a calibration object of another kind (the message names the accepted forms).
        ValueError: no batches, or a layer that never ran (it would get an all-zero norm, which
            would prune it at random).
        Whatever the model raises propagates unchanged.
    """
    sums: dict[str, torch.Tensor] = {}

    def record(name: str, rows: torch.Tensor) -> None:
        squares = rows.double().square().sum(dim=0)
        total = sums.get(name)
        sums[name] = squares if total is None else total.add_(squares.to(total.device))

    collect_inputs(model, layers, batches, record, forward_fn=forward_fn, progress=progress,
                   desc="msp activation norms")
    return OrderedDict((name, sums[name].sqrt().float().cpu()) for name, _ in layer_items(layers))
