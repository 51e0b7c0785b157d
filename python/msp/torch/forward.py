"""Small device and forward utilities shared by the ``msp.torch`` modules: a model's device,
moving a batch to it, calling the model on a batch, reading its logits, and eval mode."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn


def device_of(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def to_device(batch: Any, device: torch.device) -> Any:
    """``batch`` with every tensor in it (also inside dicts, tuples and lists) moved to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(v, device) for v in batch)
    return batch


def call_model(model: nn.Module, batch: Any) -> Any:
    """Run ``model`` on one batch: ``model(ids)`` for a tensor, ``model(**inputs)`` for a dict
    (a ``"labels"`` entry is not passed, so no loss is computed), ``model(*batch)`` for a tuple or
    list. Tensors are moved to the model's device first."""
    batch = to_device(batch, device_of(model))
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k != "labels"})
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    raise TypeError(
        f"a batch is a LongTensor of token ids, a dict of model inputs or a tuple of positional inputs; "
        f"got {type(batch).__name__}"
    )


def logits_of(output: Any, hint: str = "") -> torch.Tensor:
    """The logits of a model's output: the output itself, ``output.logits`` or ``output[0]``.

    Raises ``TypeError`` (ending with ``hint``) when there is none."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise TypeError(f"the model returned {type(output).__name__} without a .logits tensor{hint}")


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Switch every module to eval mode; restore each module's own mode on exit."""
    saved = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        yield
    finally:
        for m, mode in saved:
            m.training = mode
