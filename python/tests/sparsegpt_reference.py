"""A torch transcription of SparseGPT's ``fasterprune`` (IST-DASLab/sparsegpt, ``sparsegpt.py``).

The published algorithm, written out again for msp's tests and benchmark: dead inputs (``H_jj == 0``)
get ``H_jj = 1`` and their weights are zeroed; ``damp * mean(diag H)`` is added to the diagonal; the
upper Cholesky factor ``U`` of ``H^-1`` drives an optimal-brain-surgeon sweep over the columns in
blocks of ``blocksize``, each pruned weight's error ``w / U_jj`` spread over the later columns of its
row (within the block at once, to the later blocks lazily, one matrix product per block).

Three changes make it msp's contract, nothing else differs:

- N:M counts the weights **kept** (msp's ``n``); the published ``prunen`` is ``m - n`` pruned.
- The unstructured count is exact: ``floor(sparsity * rows * width + 0.5)`` weights of each block
  (``width`` its column count) are pruned; the published ``tmp <= thresh`` prunes one more than
  ``int(numel * sparsity)`` (and every weight tied with the threshold).
- Ties follow msp's rule: order by score ``w**2 / U_jj**2`` descending, then by index ascending (the
  row-major position within the block, or the column within the N:M group), and keep the first ones;
  a stable sort instead of ``torch.sort`` / ``torch.topk``.

``choose`` lets a test look at every mask decision: it gets the scores and the reference's mask and
returns the mask to use (a test substitutes msp's mask where the two differ only on near-ties, so
that both sweeps go on from the same decision).
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

Chooser = Callable[[str, int, torch.Tensor, torch.Tensor], torch.Tensor]


def pruned_count(sparsity: float, count: int) -> int:
    """Weights pruned in a block of ``count`` weights: ``floor(sparsity * count + 0.5)`` in double."""
    return int(math.floor(sparsity * count + 0.5))


def upper_inverse_factor(H: torch.Tensor, percdamp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """The published preparation of ``H`` (changed on a copy): returns ``(U, dead)``.

    ``dead`` marks inputs with ``H_jj == 0`` (set to 1), then ``percdamp * mean(diag H)`` is added to
    the diagonal and ``U`` is ``cholesky(cholesky_inverse(cholesky(H)), upper=True)``.
    """
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(H.shape[0])
    H[diag, diag] += damp
    L = torch.linalg.cholesky(H)
    Hinv = torch.cholesky_inverse(L)
    return torch.linalg.cholesky(Hinv, upper=True), dead


def _keep_first(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Mask of the *pruned* entries of each row of ``scores``: all but the first ``keep`` in the
    order score descending, index ascending."""
    order = torch.sort(-scores, dim=-1, stable=True)[1]
    pruned = torch.ones_like(scores, dtype=torch.bool)
    pruned.scatter_(-1, order[..., :keep], False)
    return pruned


def fasterprune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float = 0.0,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    choose: Optional[Chooser] = None,
    factor: Optional[tuple[torch.Tensor, torch.Tensor]] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune a copy of ``W`` (rows x cols) with the Gram matrix ``H`` (cols x cols).

    Args:
        W: the weights; computed in ``H``'s dtype (float32 as published, or float64).
        H: ``sum_t x_t x_t^T`` of the layer's inputs.
        sparsity: the unstructured level (``n = m = 0``).
        n, m: an N:M level keeping ``n`` of every ``m`` along the columns (``cols % m == 0``).
        blocksize: columns per block (for N:M a multiple of ``m``).
        percdamp: the dampening fraction of ``mean(diag H)``.
        choose: ``choose(kind, column, scores, pruned) -> pruned`` at every decision; ``kind`` is
            ``"block"`` (scores of the block, rows x width) or ``"group"`` (rows x m).
        factor: ``upper_inverse_factor(H, percdamp)`` when the caller already has it.

    Returns:
        ``(pruned weights, keep mask)``, both rows x cols.
    """
    rows, cols = W.shape
    W = W.to(H.dtype).clone()
    Hinv, dead = factor if factor is not None else upper_inverse_factor(H, percdamp)
    W[:, dead] = 0
    keep = torch.ones(rows, cols, dtype=torch.bool)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1

        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]

        if n == 0:
            tmp = W1**2 / (torch.diag(Hinv1).reshape((1, -1))) ** 2
            flat = tmp.reshape(1, -1)
            mask1 = _keep_first(flat, flat.numel() - pruned_count(sparsity, flat.numel())).reshape(rows, count)
            if choose is not None:
                mask1 = choose("block", i1, tmp, mask1)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]

            if n != 0 and i % m == 0:
                tmp = W1[:, i : (i + m)] ** 2 / (torch.diag(Hinv1)[i : (i + m)].reshape((1, -1))) ** 2
                group = _keep_first(tmp, n)
                if choose is not None:
                    group = choose("group", i1 + i, tmp, group)
                mask1[:, i : i + m] = group

            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q

            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1

        W[:, i1:i2] = Q1
        keep[:, i1:i2] = ~mask1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])

    return W, keep
