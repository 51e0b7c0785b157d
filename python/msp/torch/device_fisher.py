"""Fisher-trace sums on a torch device, bit-identical to the native ``msp.FisherAccumulator``.

``fisher_traces`` uses it for weights off the CPU (or everywhere with ``kernels="torch"``): each
layer's gradient is reduced where it lives, and only the per-layer traces cross to the host at the
end. To give the native result bit for bit, the reduction repeats the library's order of float64
operations (``Sources/MSPCore/SumSquares.swift`` and ``FisherAccumulator.swift``):

1. the gradient is cut into blocks of 4096 elements; in each block, lane ``j`` of 16 takes the
   elements ``j, j + 16, ...`` (bfloat16: the even elements of each complete 16-element group in
   lanes 0-7, the odd ones in lanes 8-15) and sums the squares of runs of 16 of them plainly;
2. each lane adds its run sums to a Neumaier-compensated total; a block's sum is the compensated
   sum of its 16 lane totals and their compensations, in lane order;
3. a gradient's sum is the compensated sum of its block sums in block order; a layer's sample sum
   is the compensated sum of its gradients (chunks), and its total the compensated sum over
   samples; a trace is ``(total + compensation) / samples``.

Step 1 runs when the gradient arrives (it is freed right after); its result, 1/128 of the
gradient's float32 bytes, waits in a queue. Steps 2 and 3 are sequences of vector operations over
every queued gradient at once, run when the queue holds :data:`QUEUE_BYTES` or the traces are read:
a launch count that does not grow with the number of samples in between. Zero padding never
changes a compensated sum, so gradients of different sizes share one pass.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

from .._arrays import layer_sizes
from ..errors import InvalidArgumentError, InvalidStateError

__all__ = ["DeviceFisherAccumulator", "QUEUE_BYTES"]

BLOCK, LANES, RUN = 4096, 16, 16
"""The native block size, vector lanes and plain run length of ``msp_sum_squares``."""

RUNS = BLOCK // (LANES * RUN)
"""Runs per lane in one block."""

QUEUE_BYTES = 64 << 20
"""Queued lane sums (bytes) that trigger steps 2 and 3."""

_BF16_LANES = [*range(0, LANES, 2), *range(1, LANES, 2)]


def _neumaier(total: torch.Tensor, compensation: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One Neumaier-compensated addition of ``x``, element-wise, as the library's ``neumaierAdd``."""
    t = total + x
    compensation = compensation + torch.where(total.abs() >= x.abs(), (total - t) + x, (x - t) + total)
    return t, compensation


def lane_sums(grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Step 1 and the lane half of step 2: every block's 16 compensated lane totals and their
    compensations, two float64 tensors ``[blocks, 16]`` on the gradient's device."""
    flat = grad.reshape(-1)
    count = flat.numel()
    blocks = -(-count // BLOCK)
    if count % BLOCK:
        flat = torch.cat([flat, flat.new_zeros(blocks * BLOCK - count)])
    groups = flat.view(-1, LANES)
    if grad.dtype == torch.bfloat16:
        # The native kernel widens complete groups pairwise (even elements, then odd ones); the
        # group holding the last elements of an incomplete tail keeps its natural order.
        order = torch.tensor(_BF16_LANES, device=groups.device)
        permuted = groups.index_select(1, order)
        if count % LANES:
            permuted[count // LANES] = groups[count // LANES]
        groups = permuted
    x = groups.view(blocks, RUNS, RUN, LANES)
    runs = torch.zeros(blocks, RUNS, LANES, dtype=torch.float64, device=grad.device)
    for k in range(RUN):
        runs.addcmul_(x[:, :, k, :], x[:, :, k, :])  # the exact square, one rounding of the sum
    total = torch.zeros(blocks, LANES, dtype=torch.float64, device=grad.device)
    compensation = torch.zeros_like(total)
    for r in range(RUNS):
        total, compensation = _neumaier(total, compensation, runs[:, r, :])
    return total, compensation


class DeviceFisherAccumulator:
    """Per-layer sums of squared gradients over calibration samples, on a torch device, equal bit
    for bit to ``msp.FisherAccumulator`` fed the same gradients.

    The state lives on the device of the first gradient added; gradients from other devices send
    their lane sums there. Gradients are float32, float16 or bfloat16 tensors of any shape; a
    layer's gradients in one sample may not exceed its size in all.

    Args:
        sizes: the parameter count of every layer (integers > 0; at least one layer).
    """

    def __init__(self, sizes: Iterable[int]) -> None:
        self._sizes = layer_sizes(sizes)
        for layer, size in enumerate(self._sizes):
            if size <= 0:
                raise InvalidArgumentError(f"sizes[{layer}] ({size}) must be > 0")
        self._device: torch.device | None = None
        self._total: torch.Tensor | None = None
        self._compensation: torch.Tensor | None = None
        self._added = [0] * len(self._sizes)
        self._queue: list[tuple[int, int, torch.Tensor, torch.Tensor]] = []  # (sample, layer, lanes)
        self._queued_bytes = 0
        self._samples = 0

    @property
    def num_samples(self) -> int:
        """The number of closed samples."""
        return self._samples

    def add(self, layer: int, grad: torch.Tensor) -> None:
        """Add ``sum(grad**2)`` to layer ``layer`` in the open sample, reducing on the gradient's
        device (nothing crosses to the host).

        Raises:
            TypeError: not a float32/float16/bfloat16 tensor.
            msp.InvalidArgumentError: a bad layer, or more elements than the layer has left in
                this sample. A non-finite gradient is reported when the sums are combined (by
                :meth:`end_sample` or :meth:`traces`), naming the layer and the sample.
        """
        if not isinstance(grad, torch.Tensor) or grad.dtype not in (torch.float32, torch.float16, torch.bfloat16):
            raise TypeError(f"grad must be a float32, float16 or bfloat16 tensor, got {getattr(grad, 'dtype', grad)!r}")
        if not 0 <= layer < len(self._sizes):
            raise InvalidArgumentError(f"layer ({layer}) must be in [0, {len(self._sizes)})")
        count = grad.numel()
        if count == 0:
            return
        left = self._sizes[layer] - self._added[layer]
        if count > left:
            raise InvalidArgumentError(
                f"layer {layer}: count ({count}) exceeds the {left} of its {self._sizes[layer]} elements "
                f"not yet added in this sample")
        total, compensation = lane_sums(grad.detach())
        if self._device is None:
            self._device = total.device
            self._total = torch.zeros(len(self._sizes), dtype=torch.float64, device=self._device)
            self._compensation = torch.zeros_like(self._total)
        self._queue.append((self._samples, layer, total.to(self._device), compensation.to(self._device)))
        self._queued_bytes += 2 * total.numel() * total.element_size()
        self._added[layer] += count

    def end_sample(self) -> None:
        """Close the open sample (S += 1)."""
        self._samples += 1
        self._added = [0] * len(self._sizes)
        if self._queued_bytes >= QUEUE_BYTES:
            self._combine()

    def _combine(self) -> None:
        """Steps 2 and 3 for every queued gradient of a closed sample."""
        ready = [item for item in self._queue if item[0] < self._samples]
        if not ready:
            return
        self._queue = [item for item in self._queue if item[0] >= self._samples]
        self._queued_bytes = sum(2 * t.numel() * t.element_size() for _, _, t, _ in self._queue)
        lanes = torch.cat([t for _, _, t, _ in ready])
        lane_compensations = torch.cat([c for _, _, _, c in ready])
        total = torch.zeros(lanes.shape[0], dtype=torch.float64, device=self._device)
        compensation = torch.zeros_like(total)
        for j in range(LANES):
            total, compensation = _neumaier(total, compensation, lanes[:, j])
            total, compensation = _neumaier(total, compensation, lane_compensations[:, j])
        block_sums = total + compensation
        counts = torch.tensor([t.shape[0] for _, _, t, _ in ready], device=self._device)
        rows = torch.repeat_interleave(torch.arange(len(ready), device=self._device), counts)
        starts = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        padded = torch.zeros(len(ready), int(counts.max()), dtype=torch.float64, device=self._device)
        padded[rows, torch.arange(rows.numel(), device=self._device) - starts] = block_sums
        total = torch.zeros(len(ready), dtype=torch.float64, device=self._device)
        compensation = torch.zeros_like(total)
        for b in range(padded.shape[1]):
            total, compensation = _neumaier(total, compensation, padded[:, b])
        sums = total + compensation  # one per queued gradient
        finite = torch.isfinite(sums)
        if not bool(finite.all()):
            sample, layer, _, _ = ready[int(torch.argmin(finite.to(torch.uint8)))]
            raise InvalidArgumentError(f"layer {layer}: a gradient of sample {sample} is not finite")
        self._fold(ready, sums)

    def _fold(self, ready: list, sums: torch.Tensor) -> None:
        """Step 3 across gradients: each sample's per-layer compensated sums, then the totals."""
        # by_sample[s][k]: (queue indices, layers) of the k-th gradient of each layer in sample s.
        by_sample: dict[int, list[tuple[list[int], list[int]]]] = {}
        seen: dict[tuple[int, int], int] = {}
        for index, (sample, layer, _, _) in enumerate(ready):
            ranks = by_sample.setdefault(sample, [])
            k = seen.get((sample, layer), 0)
            seen[(sample, layer)] = k + 1
            if k == len(ranks):
                ranks.append(([], []))
            ranks[k][0].append(index)
            ranks[k][1].append(layer)
        layers = len(self._sizes)
        for sample in sorted(by_sample):
            open_sum = torch.zeros(layers, dtype=torch.float64, device=self._device)
            open_compensation = torch.zeros_like(open_sum)
            for indices, layer_ids in by_sample[sample]:
                index = torch.tensor(indices, device=self._device)
                where = torch.tensor(layer_ids, device=self._device)
                s, c = _neumaier(open_sum[where], open_compensation[where], sums[index])
                open_sum[where], open_compensation[where] = s, c
            self._total, self._compensation = _neumaier(self._total, self._compensation, open_sum)
            self._total, self._compensation = _neumaier(self._total, self._compensation, open_compensation)
        if not bool(torch.isfinite(self._total + self._compensation).all()):
            raise InvalidArgumentError("a Fisher sum overflows double precision")

    def traces(self, per_parameter: bool = False) -> np.ndarray:
        """Every layer's trace over the closed samples, ``sum_s ||g_ls||^2 / S`` (further divided
        by the layer's size with ``per_parameter``), as a float64 numpy array.

        Raises:
            msp.InvalidStateError: no sample has been closed yet.
            msp.InvalidArgumentError: a non-finite gradient was added.
        """
        if self._samples == 0:
            raise InvalidStateError("no calibration sample has been closed yet (call end_sample first)")
        if self._total is None:
            return np.zeros(len(self._sizes))
        self._combine()
        traces = (self._total + self._compensation) / float(self._samples)
        if per_parameter:
            traces = traces / torch.tensor(self._sizes, dtype=torch.float64, device=self._device)
        return traces.cpu().numpy()
