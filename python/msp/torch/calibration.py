"""Calibration statistics of a PyTorch model: the losses, Fisher traces and Wanda's activation norms.

::

    traces = fisher_traces(model, layers, batches)       # {name: Tr(F_l)}, the planner's sensitivity
    norms = activation_norms(model, layers, batches)     # {name: ||x_j||}, Wanda's column scales
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .._progress import Progress
from ..fisher import FisherAccumulator
from .forward import call_model, device_of, eval_mode, logits_of, to_device
from .layers import layer_items, layer_weights

__all__ = ["causal_lm_loss", "fisher_traces", "activation_norms"]


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


def _split(batch: Any) -> list[Any]:
    """One calibration sample per row: a tensor ``[B, ...]`` or a dict whose ``input_ids`` (else its
    first tensor) has B rows is cut into B single-row samples; tensors in a dict with another
    leading size, and non-tensor values, are shared by all rows. Anything else is one sample."""
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0 or batch.shape[0] <= 1:
            return [batch]
        return [batch[i : i + 1] for i in range(batch.shape[0])]
    if isinstance(batch, Mapping):
        lead = batch.get("input_ids")
        if not isinstance(lead, torch.Tensor):
            lead = next((v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        if lead is None or lead.dim() == 0 or lead.shape[0] <= 1:
            return [batch]
        rows = lead.shape[0]
        return [
            {
                k: v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == rows else v
                for k, v in batch.items()
            }
            for i in range(rows)
        ]
    return [batch]


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


def fisher_traces(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    *,
    per_parameter: bool = False,
    per_sample: bool = True,
    progress: bool = True,
) -> "OrderedDict[str, float]":
    """Return every layer's Fisher-trace sensitivity ``Tr(F_l) = (1/S) * sum_s ||dloss_s/dW_l||^2``.

    For every calibration sample the loss is computed and back-propagated once. Each layer's weight
    gradient is handed to the native accumulator by a post-accumulate-grad hook the moment autograd
    produces it, and freed right after (``param.grad = None``): at most one tracked layer's gradient
    exists at any time, so the extra memory is one layer's gradient, not the model's.

    During the call only the tracked weights require grad (so no other gradient is computed), the
    tracked weights' ``.grad`` is cleared, and every module is in eval mode (no dropout). Afterwards
    every parameter's ``requires_grad`` and ``.grad`` and every module's training mode are restored,
    also when an exception (e.g. from ``loss_fn``) ends the call.

    Args:
        model: the model; its parameters may live on any device (gradients are copied to the CPU
            one layer at a time when they live elsewhere).
        layers: ``{name: module}`` whose ``.weight`` parameters are tracked, e.g. from
            ``linear_layers(model)``. The trace does not depend on the weight's layout, so any module
            with a ``.weight`` parameter works; two names sharing one parameter are rejected.
        batches: an iterable of calibration batches: LongTensors of token ids ``[B, T]`` or dicts of
            model inputs (moved to the model's device), or anything ``loss_fn`` understands.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``; default ``causal_lm_loss`` (next-token
            cross-entropy from the model's logits).
        per_parameter: divide each trace by the layer's parameter count (mean per-weight Fisher,
            comparable across layers of different size).
        per_sample: True (default) cuts a batch of B rows into B samples, one backward pass each:
            the Fisher of single sequences. False counts each batch as one sample (its batch-mean
            gradient), which is B times cheaper and smaller by about 1/B for independent rows.
        progress: show a progress bar (tqdm when installed, else a line on stderr).

    Returns:
        An ordered dict ``{name: trace}`` of Python floats, in the order of ``layers``.

    Raises:
        ValueError: no layers, no samples, a layer without a ``.weight`` parameter, shared weights,
            a loss that is not a finite scalar.
        msp.InvalidArgumentError: a non-finite gradient (the message names the layer index).
        Whatever the model or ``loss_fn`` raises propagates unchanged.
    """
    if not hasattr(torch.Tensor, "register_post_accumulate_grad_hook"):
        raise RuntimeError(f"fisher_traces needs torch >= 2.1 (post-accumulate-grad hooks), got {torch.__version__}")
    names: list[str] = []
    params: list[nn.Parameter] = []
    for name, _, weight in layer_weights(layers):
        if not isinstance(weight, nn.Parameter):
            raise ValueError(f"layer {name!r} has no .weight parameter (a plain tensor gets no gradient)")
        if weight.is_sparse or not weight.dtype.is_floating_point:
            raise ValueError(f"layer {name!r} has a {weight.dtype} {weight.layout} weight; need a dense float weight")
        names.append(name)
        params.append(weight)
    loss_fn = causal_lm_loss if loss_fn is None else loss_fn
    device = device_of(model)
    total = len(batches) if hasattr(batches, "__len__") else None

    with FisherAccumulator([p.numel() for p in params]) as accumulator:

        def hook_for(index: int):
            def hook(param: torch.Tensor) -> None:
                grad = param.grad
                param.grad = None  # free it whatever happens below
                if grad is None:
                    return
                grad = grad.detach()
                if grad.dtype not in (torch.float32, torch.float16, torch.bfloat16):
                    grad = grad.float()  # float64 weights: the native sum takes 32/16-bit floats
                if grad.device.type != "cpu":
                    grad = grad.cpu()
                accumulator.add(index, grad)

            return hook

        handles = []
        bar = Progress("msp fisher", total, "batches", progress)
        try:
            with _tracking(model, params):
                for i, p in enumerate(params):
                    handles.append(p.register_post_accumulate_grad_hook(hook_for(i)))
                for batch in batches:
                    samples = _split(batch) if per_sample else [batch]
                    for sample in samples:
                        loss = loss_fn(model, to_device(sample, device))
                        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                            raise ValueError(f"loss_fn must return a scalar tensor, got {type(loss).__name__}")
                        if not torch.isfinite(loss.detach()).all():
                            raise ValueError(f"the loss of sample {accumulator.num_samples} is {loss.item()}")
                        if loss.requires_grad:
                            loss.reshape(()).backward()
                        accumulator.end_sample()
                    bar.advance()
        finally:
            for handle in handles:
                handle.remove()
            bar.close()
        if accumulator.num_samples == 0:
            raise ValueError("batches is empty: no calibration sample")
        traces = accumulator.traces(per_parameter=per_parameter)
    return OrderedDict((name, float(t)) for name, t in zip(names, traces))


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
        progress: show a progress bar over the batches (tqdm when installed, else a line on stderr).

    Returns:
        ``{name: float32 CPU tensor [in_features]}`` in the order of ``layers``.

    Raises:
        ValueError: no batches, or a layer that never ran (it would get an all-zero norm, which
            would prune it at random).
        Whatever the model raises propagates unchanged.
    """
    items = layer_items(layers)
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
    bar = Progress("msp activation norms", total, "batches", progress)
    handles = []
    count = 0
    try:
        for name, module in items:
            handles.append(module.register_forward_pre_hook(hook_for(name)))
        with eval_mode(model), torch.no_grad():
            for batch in batches:
                call_model(model, batch)
                count += 1
                bar.advance()
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
