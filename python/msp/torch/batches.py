"""Calibration data as msp takes it: the accepted forms, and samples cut out of a batch.

``calibration`` (the ``batches`` of ``fisher_traces`` and ``activation_norms``, the calibration
of ``prune``) is one of:

- a list of batches (any batch your model, ``forward_fn`` or ``loss_fn`` takes: a tensor of token
  ids ``[B, T]``, a dict of model inputs, an ``(x, y)`` tuple, ...);
- one tensor ``[N, ...]`` of N samples, cut along dim 0 into batches of :data:`BATCH_SIZE`
  (``ids[:32]`` gives 4 batches ``[8, T]``);
- any other iterable of batches, such as a ``torch.utils.data.DataLoader`` (read once per pass).

A dict, a tuple, a string, a numpy array or a module is refused with a ``TypeError`` naming these
forms: a dict or a tuple is one batch (wrap it in a list), not a collection of batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["BATCH_SIZE", "calibration_batches", "split_samples"]

BATCH_SIZE = 8
"""Samples per batch when the calibration is one tensor ``[N, ...]``."""

FORMS = (
    "a list of batches (e.g. [ids[0:8], ids[8:16]], or [(x, y), ...]), one tensor [N, ...] of N samples "
    f"(cut into batches of {BATCH_SIZE}), or an iterable of batches such as a DataLoader"
)
"""The accepted calibration forms, as error messages name them."""


def calibration_batches(calibration: Any, what: str = "calibration") -> Iterable[Any]:
    """``calibration`` as an iterable of batches (see the module docstring for the forms).

    Args:
        calibration: a list of batches, one tensor ``[N, ...]``, or an iterable of batches.
        what: the argument's name in messages.

    Returns:
        The list itself, the tensor cut into a list of batches of :data:`BATCH_SIZE` along dim 0,
        or the iterable itself.

    Raises:
        TypeError: another kind of object (the message names the accepted forms).
        ValueError: a tensor with fewer than two dimensions (a single sequence ``[T]`` is
            ``ids[None]``), or with no samples.
    """
    if isinstance(calibration, list):
        return calibration
    if isinstance(calibration, torch.Tensor):
        if calibration.dim() < 2:
            raise ValueError(
                f"{what} as one tensor must be [N, ...] with N samples (at least 2-D), got shape "
                f"{tuple(calibration.shape)}; one sequence [T] is ids[None]. Accepted: {FORMS}"
            )
        if calibration.shape[0] == 0:
            raise ValueError(f"{what} is an empty tensor (no samples)")
        return list(calibration.split(BATCH_SIZE))
    refused = (str, bytes, Mapping, tuple, nn.Module)
    if isinstance(calibration, refused) or not isinstance(calibration, Iterable) or _is_numpy(calibration):
        kind = type(calibration).__name__
        note = " (one batch: wrap it in a list)" if isinstance(calibration, (Mapping, tuple)) else ""
        raise TypeError(f"{what} must be {FORMS}; got a {kind}{note}")
    return calibration


def _is_numpy(value: Any) -> bool:
    return type(value).__module__ == "numpy"


def _rows(batch: Any) -> int | None:
    """The leading size of the first tensor in ``batch`` (a dict's ``input_ids`` first), or None."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() > 0 else None
    if isinstance(batch, Mapping):
        ids = batch.get("input_ids")
        if isinstance(ids, torch.Tensor) and ids.dim() > 0:
            return int(ids.shape[0])
        values = batch.values()
    elif isinstance(batch, (tuple, list)):
        values = batch
    else:
        return None
    for value in values:
        rows = _rows(value)
        if rows is not None:
            return rows
    return None


def _row(batch: Any, i: int, rows: int) -> Any:
    """Sample ``i`` of ``batch``: every tensor with ``rows`` leading rows cut to ``[i : i + 1]``,
    inside dicts, tuples and lists alike; other values (and tensors of another leading size) are
    shared by every sample."""
    if isinstance(batch, torch.Tensor):
        return batch[i : i + 1] if batch.dim() > 0 and batch.shape[0] == rows else batch
    if isinstance(batch, Mapping):
        return {k: _row(v, i, rows) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
        return type(batch)(*(_row(v, i, rows) for v in batch))
    if isinstance(batch, (tuple, list)):
        return type(batch)(_row(v, i, rows) for v in batch)
    return batch


def split_samples(batch: Any) -> list[Any]:
    """One calibration sample per row of ``batch``: a tensor ``[B, ...]``, a dict (its
    ``input_ids``, else its first tensor, gives B) or a tuple or list (its first tensor gives B),
    nested alike, is cut into B single-row batches of the same structure; a batch of one row, or
    without a tensor, is one sample."""
    rows = _rows(batch)
    if rows is None or rows <= 1:
        return [batch]
    return [_row(batch, i, rows) for i in range(rows)]
