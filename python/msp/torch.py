"""PyTorch helpers: find a model's linear layers and collect their Fisher-trace sensitivities.

This is the only module of the package that imports torch. msp itself never needs to know what a
transformer is: these helpers map module names to layer indices of the native library.

::

    from msp.torch import linear_layers, fisher_traces
    layers = linear_layers(model)                       # {name: nn.Linear}, lm_head ignored
    traces = fisher_traces(model, layers, batches)      # {name: Tr(F_l)}
"""

from __future__ import annotations

import contextlib
import sys
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ._torch_util import device_of, logits_of, to_device
from .fisher import FisherAccumulator

__all__ = ["linear_layers", "fisher_traces", "causal_lm_loss"]


# --- layers ----------------------------------------------------------------------------------------


def _is_hf_conv1d(module: nn.Module) -> bool:
    """True for Hugging Face ``transformers.pytorch_utils.Conv1D`` (GPT-2 style), without importing
    transformers."""
    cls = type(module)
    return cls.__name__ == "Conv1D" and cls.__module__.startswith("transformers")


def _ignored(name: str, ignore: tuple[str, ...]) -> bool:
    """True when ``name`` or one of its ancestors equals an ignore entry or ends with ``.entry``."""
    parts = name.split(".")
    for k in range(1, len(parts) + 1):
        prefix = ".".join(parts[:k])
        for entry in ignore:
            if prefix == entry or prefix.endswith("." + entry):
                return True
    return False


def linear_layers(model: nn.Module, ignore: Iterable[str] | str = ("lm_head",)) -> "OrderedDict[str, nn.Linear]":
    """Return the model's ``nn.Linear`` modules (subclasses included) by name, in module order.

    A layer's weight is ``[out_features, in_features]`` (rows = out, cols = in), the layout every
    msp function expects.

    Args:
        model: any ``nn.Module``.
        ignore: module names to skip. An entry matches a module whose dotted name equals it or ends
            with ``"." + entry``, and every module inside such a module: the default ``("lm_head",)``
            skips the output head; ``"layers.0"`` would skip every linear of block 0.

    Returns:
        An ordered dict ``{name: module}`` as ``model.named_modules()`` lists them.

    Raises:
        TypeError: the model contains Hugging Face ``Conv1D`` modules (GPT-2 style) that are not
            ignored. Their weight is stored ``[in_features, out_features]``, the transpose of
            ``nn.Linear``'s, so N:M groups and Wanda's per-input scales would run along the wrong
            axis; msp rejects them rather than guess. Convert them to ``nn.Linear`` (weight =
            ``conv.weight.T``) or list them in ``ignore``.
    """
    if isinstance(ignore, str):
        ignore = (ignore,)
    ignore = tuple(ignore)
    for entry in ignore:
        if not isinstance(entry, str):
            raise TypeError(f"ignore entries must be module names (str), got {type(entry).__name__}")
    layers: OrderedDict[str, nn.Linear] = OrderedDict()
    conv1d = []
    for name, module in model.named_modules():
        if not name or _ignored(name, ignore):
            continue
        if _is_hf_conv1d(module):
            conv1d.append(name)
        elif isinstance(module, nn.Linear):
            layers[name] = module
    if conv1d:
        shown = ", ".join(conv1d[:4]) + (f", ... ({len(conv1d)} in all)" if len(conv1d) > 4 else "")
        raise TypeError(
            f"linear_layers: the model has Hugging Face Conv1D modules ({shown}) whose weight is "
            f"[in_features, out_features], the transpose of nn.Linear's; msp does not guess the layout. "
            f"Replace them with nn.Linear (weight = conv.weight.T) or pass their names in `ignore`."
        )
    return layers


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


class _Progress:
    """tqdm when installed, else one updating stderr line; silent when disabled."""

    def __init__(self, total: int | None, enabled: bool, desc: str) -> None:
        self._bar = None
        self._line = False
        self._count = 0
        self._total = total
        self._desc = desc
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._line = True
        else:
            self._bar = tqdm(total=total, desc=desc, unit="batch")

    def update(self, batches: int) -> None:
        self._count += batches
        if self._bar is not None:
            self._bar.update(batches)
        elif self._line:
            of = f"/{self._total}" if self._total is not None else ""
            print(f"\r{self._desc}: {self._count}{of} batches", end="", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self._line:
            print(file=sys.stderr, flush=True)


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
    saved_modes = [(m, m.training) for m in model.modules()]
    try:
        for p in everything:
            p.requires_grad_(id(p) in tracked)
        for p in params:
            p.grad = None
        model.eval()
        with torch.enable_grad():
            yield
    finally:
        for p, flag in saved_flags:
            p.requires_grad_(flag)
        for p, grad in saved_grads:
            p.grad = grad
        for m, mode in saved_modes:
            m.training = mode


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
    names = list(layers)
    if not names:
        raise ValueError("layers is empty")
    params: list[nn.Parameter] = []
    owner: dict[int, str] = {}
    for name in names:
        weight = getattr(layers[name], "weight", None)
        if not isinstance(weight, nn.Parameter):
            raise ValueError(f"layer {name!r} has no .weight parameter")
        if id(weight) in owner:
            raise ValueError(f"layers {owner[id(weight)]!r} and {name!r} share one weight; list it once")
        if weight.is_sparse or not weight.dtype.is_floating_point:
            raise ValueError(f"layer {name!r} has a {weight.dtype} {weight.layout} weight; need a dense float weight")
        owner[id(weight)] = name
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
        bar = _Progress(total, progress, "fisher")
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
                    bar.update(1)
        finally:
            for handle in handles:
                handle.remove()
            bar.close()
        if accumulator.num_samples == 0:
            raise ValueError("batches is empty: no calibration sample")
        traces = accumulator.traces(per_parameter=per_parameter)
    return OrderedDict((name, float(t)) for name, t in zip(names, traces))


# --- pruning and fitness helpers (defined in ._torch_prune and ._torch_eval) -----------------------

from ._torch_eval import TopK, kl_to_dense, perplexity, reference_logits  # noqa: E402
from ._torch_prune import Pruner, activation_norms, apply_plan, block_groups, prune  # noqa: E402

__all__ += ["Pruner", "activation_norms", "apply_plan", "block_groups", "prune", "perplexity", "kl_to_dense",
            "reference_logits", "TopK"]
