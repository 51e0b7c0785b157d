"""Fitness helpers for causal language models: perplexity and KL divergence to the dense model.

Re-exported by ``msp.torch``. Both work batch by batch and process the vocabulary dimension in
chunks of token positions, so the extra memory beyond the model's own logits of one batch is about
``chunk_tokens * vocab`` floats, whatever the number of batches::

    from msp.torch import perplexity, reference_logits, kl_to_dense

    ppl = perplexity(model, batches)
    dense = reference_logits(model, batches, top_k=64)     # before pruning
    ...prune...
    kl = kl_to_dense(model, batches, dense)                # mean KL(dense || pruned) per token

A batch is a LongTensor of token ids ``[B, T]`` (called as ``model(ids)``) or a dict of model
inputs with ``"input_ids"`` (called as ``model(**inputs)``; an ``"attention_mask"`` marks padding,
a ``"labels"`` entry replaces the ids as perplexity targets, -100 = ignored). The model returns
logits ``[B, T, V]`` as a tensor, as ``.logits`` or as ``output[0]``. Models on any device work:
batches are moved to the model's device, the references are kept on the CPU.

Any other model (an encoder, a classifier on ``(x, y)`` batches) gets its KL divergence to the
dense model with ``forward_fn(model, batch)``: its output's logits ``[..., V]`` are distributions
over the last dimension, one per position of the leading dimensions (no mask)::

    run = lambda model, batch: model(batch[0])
    dense = reference_logits(model, batches, forward_fn=run)
    kl = kl_to_dense(model, batches, dense, forward_fn=run)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .forward import call_model, device_of, eval_mode, logits_of, to_device

__all__ = ["perplexity", "kl_to_dense", "reference_logits", "TopK"]

CHUNK_TOKENS = 256
"""Token positions per vocabulary chunk (at V = 49 152: about 50 MB of float32 per temporary)."""


def _ids_and_mask(batch: Any) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """``(input_ids, attention_mask or None, labels or None)`` of a batch."""
    if isinstance(batch, torch.Tensor):
        return batch, None, None
    if isinstance(batch, Mapping):
        if "input_ids" not in batch:
            raise KeyError("a dict batch needs 'input_ids'")
        return batch["input_ids"], batch.get("attention_mask"), batch.get("labels")
    raise TypeError(f"a batch is a LongTensor of token ids [B, T] or a dict of model inputs, got {type(batch).__name__}")


def _forward(model: nn.Module, batch: Any) -> torch.Tensor:
    ids, _, _ = _ids_and_mask(batch)
    logits = logits_of(call_model(model, batch))
    if logits.dim() != 3 or logits.shape[:2] != ids.shape:
        raise ValueError(f"expected logits [B, T, V] for ids {tuple(ids.shape)}, got {tuple(logits.shape)}")
    return logits


ForwardFn = Callable[[nn.Module, Any], Any]


def _distributions(model: nn.Module, batch: Any, forward_fn: ForwardFn | None) -> tuple[torch.Tensor, Any]:
    """``(logits [..., V], keep)`` of one batch: by default a causal LM's ``[B, T, V]`` with the
    batch's attention mask as ``keep`` (or None); with ``forward_fn`` its output's logits, every
    position kept (``keep`` None)."""
    if forward_fn is None:
        _, mask, _ = _ids_and_mask(batch)
        return _forward(model, batch), mask
    logits = logits_of(forward_fn(model, to_device(batch, device_of(model))), "")
    if logits.dim() < 1 or logits.shape[-1] == 0:
        raise ValueError(f"forward_fn gave logits of shape {tuple(logits.shape)}; expected [..., V]")
    return logits, None


def _check_chunk(chunk_tokens: int) -> int:
    if isinstance(chunk_tokens, bool) or not isinstance(chunk_tokens, int) or chunk_tokens < 1:
        raise ValueError(f"chunk_tokens must be an integer >= 1, got {chunk_tokens!r}")
    return chunk_tokens


def perplexity(model: nn.Module, batches: Iterable[Any], *, chunk_tokens: int = CHUNK_TOKENS) -> float:
    """``exp`` of the mean next-token cross-entropy over every predicted token of every batch.

    Token t + 1 is predicted from positions up to t; padding (``attention_mask == 0`` on the
    target) and targets equal to -100 are not counted. The model runs in eval mode under
    ``torch.no_grad()`` (its modes are restored afterwards); log-softmax runs in float32 over
    ``chunk_tokens`` positions at a time.

    Raises:
        ValueError: no token to predict.
    """
    chunk_tokens = _check_chunk(chunk_tokens)
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            ids, mask, labels = _ids_and_mask(batch)
            logits = _forward(model, batch)
            target = (ids if labels is None else labels).to(logits.device)
            if mask is not None and labels is None:
                target = target.masked_fill(mask.to(logits.device) == 0, -100)
            vocab = logits.shape[-1]
            flat = logits[:, :-1].reshape(-1, vocab)
            target = target[:, 1:].reshape(-1)
            for start in range(0, flat.shape[0], chunk_tokens):
                part = target[start : start + chunk_tokens]
                total += F.cross_entropy(
                    flat[start : start + chunk_tokens].float(), part, ignore_index=-100, reduction="sum"
                ).item()
                count += int((part != -100).sum())
    if count == 0:
        raise ValueError("no token to predict (empty batches, or every target masked)")
    return math.exp(total / count)


class TopK(tuple):
    """A stored reference distribution (``reference_logits(..., top_k=k)``): at every position the k
    largest log-probabilities ``log_probs [B, T, k]``, their token ids ``indices [B, T, k]``, and
    ``log_rest [B, T]``, the log of the probability of all other tokens (-inf when k = V)."""

    __slots__ = ()

    def __new__(cls, log_probs: torch.Tensor, indices: torch.Tensor, log_rest: torch.Tensor | None = None) -> "TopK":
        return super().__new__(cls, (log_probs, indices, log_rest))


def reference_logits(
    model: nn.Module,
    batches: Iterable[Any],
    *,
    top_k: int | None = None,
    dtype: torch.dtype = torch.float32,
    chunk_tokens: int = CHUNK_TOKENS,
    forward_fn: ForwardFn | None = None,
) -> list[Any]:
    """The dense model's next-token distributions on ``batches``, for :func:`kl_to_dense`.

    Args:
        model: the model, before pruning.
        batches: the batches ``kl_to_dense`` will score (same order).
        top_k: None stores the full log-softmax ``[B, T, V]`` per batch (``B*T*V`` values); an
            integer k stores only the k largest log-probabilities and their token ids (a
            :class:`TopK`), and the KL then treats the other tokens as one category.
        dtype: storage dtype of the log-probabilities (float32, or float16/bfloat16 to halve it).
        chunk_tokens: positions per vocabulary chunk.
        forward_fn: ``forward_fn(model, batch)`` for a model that is not a causal LM taking ids
            (its output's logits ``[..., V]``; see the module docstring); default: the causal LM
            call.

    Returns:
        One entry per batch, on the CPU: a tensor ``[B, T, V]`` (``[..., V]`` with
        ``forward_fn``) or a :class:`TopK`.
    """
    chunk_tokens = _check_chunk(chunk_tokens)
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or an integer >= 1, got {top_k!r}")
    stored: list[Any] = []
    with eval_mode(model), torch.no_grad():
        for batch in batches:
            logits, _ = _distributions(model, batch, forward_fn)
            lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
            flat = logits.reshape(-1, vocab)
            values, indices, rests = [], [], []
            for start in range(0, flat.shape[0], chunk_tokens):
                logp = flat[start : start + chunk_tokens].float().log_softmax(-1)
                if top_k is None:
                    values.append(logp.to(device="cpu", dtype=dtype))
                else:
                    v, i = logp.topk(min(top_k, vocab), dim=-1)
                    values.append(v.to(device="cpu", dtype=dtype))
                    indices.append(i.cpu())
                    rests.append(logp.scatter(-1, i, -math.inf).logsumexp(-1).double().cpu())
            if top_k is None:
                stored.append(torch.cat(values).reshape(*lead, vocab))
            else:
                k = values[0].shape[-1]
                stored.append(
                    TopK(
                        torch.cat(values).reshape(*lead, k),
                        torch.cat(indices).reshape(*lead, k),
                        torch.cat(rests).reshape(lead),
                    )
                )
    return stored


def _kl_full(logq: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    logp = reference.float().log_softmax(-1)  # idempotent on stored log-probs; normalises raw logits
    return (logp.exp() * (logp - logq)).sum(-1)


def _kl_top(
    logq: torch.Tensor, log_probs: torch.Tensor, indices: torch.Tensor, log_rest: torch.Tensor | None
) -> torch.Tensor:
    """KL between the (k + 1)-category coarsenings: the k reference tokens and "all others".

    The model's "others" mass is summed exactly (log-sum-exp over the other tokens); the
    reference's comes from ``log_rest`` when stored, else from 1 - sum of the k probabilities."""
    logp = log_probs.double()
    logq_top = logq.gather(-1, indices).double()
    p = logp.exp()
    head = (p * (logp - logq_top)).sum(-1)
    logq_rest = logq.scatter(-1, indices, -math.inf).logsumexp(-1).double()
    if log_rest is None:
        p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
        log_p_rest = p_rest.log()
    else:
        log_p_rest = log_rest.double()
        p_rest = log_p_rest.exp()
    tail = torch.where(p_rest > 0, p_rest * (log_p_rest - logq_rest), torch.zeros_like(p_rest))
    return (head + tail).float()


def kl_to_dense(
    model: nn.Module,
    batches: Iterable[Any],
    dense_logits: list[Any],
    *,
    chunk_tokens: int = CHUNK_TOKENS,
    forward_fn: ForwardFn | None = None,
) -> float:
    """Mean ``KL(p_dense || p_model)`` of the next-token distributions, over all positions.

    Args:
        model: the (pruned) model.
        batches: the batches the reference was computed on, in the same order.
        dense_logits: one entry per batch: the dense model's logits or log-softmax ``[B, T, V]``
            (any float dtype, any device), or a top-k reference: a :class:`TopK` or a
            ``(log_probs, indices)`` pair (:func:`reference_logits` makes either form).
        chunk_tokens: positions per vocabulary chunk.
        forward_fn: as for :func:`reference_logits` (the same one).

    Returns:
        The mean KL divergence in nats per position (0 for the dense model itself). Positions with
        ``attention_mask == 0`` are not counted.

    Raises:
        ValueError: a different number of references than batches, or a shape mismatch.
    """
    chunk_tokens = _check_chunk(chunk_tokens)
    batches = list(batches)
    if len(dense_logits) != len(batches):
        raise ValueError(f"got {len(dense_logits)} dense references for {len(batches)} batches")
    total, count = 0.0, 0
    with eval_mode(model), torch.no_grad():
        for batch, reference in zip(batches, dense_logits):
            logits, mask = _distributions(model, batch, forward_fn)
            lead, vocab = tuple(logits.shape[:-1]), logits.shape[-1]
            positions = math.prod(lead)
            top = isinstance(reference, tuple)
            ref_values = reference[0] if top else reference
            if tuple(ref_values.shape[:-1]) != lead or (not top and ref_values.shape[-1] != vocab):
                raise ValueError(
                    f"the dense reference has shape {tuple(ref_values.shape)} for logits {tuple(logits.shape)}"
                )
            flat = logits.reshape(-1, vocab)
            ref_flat = ref_values.reshape(positions, -1)
            idx_flat = reference[1].reshape(positions, -1) if top else None
            rest_flat = reference[2].reshape(positions) if top and len(reference) > 2 and reference[2] is not None else None
            keep = None if mask is None else mask.reshape(-1).to(logits.device) != 0
            for start in range(0, flat.shape[0], chunk_tokens):
                stop = start + chunk_tokens
                logq = flat[start:stop].float().log_softmax(-1)
                ref = ref_flat[start:stop].to(logq.device)
                if top:
                    rest = None if rest_flat is None else rest_flat[start:stop].to(logq.device)
                    kl = _kl_top(logq, ref, idx_flat[start:stop].to(logq.device), rest)
                else:
                    kl = _kl_full(logq, ref)
                if keep is not None:
                    part = keep[start:stop]
                    kl = kl[part]
                total += float(kl.double().sum())
                count += kl.numel()
    if count == 0:
        raise ValueError("no position to compare (empty batches, or every position masked)")
    return total / count
