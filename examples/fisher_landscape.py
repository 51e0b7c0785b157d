"""Do Fisher traces rank layers by how much the loss rises when their weights move?

On SmolLM2-135M (see ``real_model.py``) this script

1. computes every linear layer's Fisher trace Tr(F_l) = (1/S) sum_s ||dloss_s/dW_l||^2 on S
   calibration sequences with ``msp.torch.fisher_traces``;
2. for each layer (all of them, or a seeded random subset with ``--layers``), draws random
   directions D scaled to the weight's norm (||D|| = ||W||), and measures the loss on the first
   ``--eval-samples`` of those calibration sequences at W + eps*D and W - eps*D for growing
   relative magnitudes eps (the 1-D loss landscape). The symmetric increase
   (L(W+eps*D) + L(W-eps*D))/2 - L(W) cancels the first-order term and leaves the curvature along
   D; it is averaged over the directions and over the eps values. Every weight is restored exactly
   afterwards;
3. prints the Spearman rank correlation between the traces and the measured loss increases, per
   eps and averaged, plus two variants: the per-parameter trace Tr(F_l)/n_l, and the second-order
   prediction 1/2 * eps^2 * mean(W_l^2) * Tr(F_l) (for a random D with ||D|| = ||W||,
   E[D^T H D] = mean(W^2) * Tr(H)).

Cost: one forward+backward per calibration sequence for the traces, then 2 x len(eps) partial
forwards per perturbed layer. With the defaults (8 traces sequences, 60 of the 210 layers, 3 eps,
2 x 128 landscape tokens) a run took 7 minutes on a 2-core machine shared with other jobs (model
load 36 s, traces 22 s, landscape 350 s); ``--layers 0`` measures every layer.

    python examples/fisher_landscape.py [--samples 8] [--seq-len 128] [--layers 60] [--seed 0]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
try:
    import msp  # noqa: F401
except ImportError:  # running from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent / "python"))

import real_model  # noqa: E402


def rankdata(x) -> np.ndarray:
    """Ranks 0..n-1 of ``x``, ties sharing their average rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation: Pearson's correlation of the ranks."""
    ra, rb = rankdata(a), rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra * ra).sum() * (rb * rb).sum()))


def token_loss(logits, ids) -> float:
    """Mean next-token cross-entropy of ``logits`` [N, T, V] for ``ids`` [N, T], summed in double."""
    import torch.nn.functional as F

    logits = logits[:, :-1].float()
    losses = F.cross_entropy(logits.reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1), reduction="none")
    return float(losses.double().mean())


class SuffixLoss:
    """The loss of a Llama-style model on fixed token ids, recomputed from one decoder block onward.

    Perturbing a weight of block b changes nothing before block b, so the inputs of every block are
    captured once (forward pre-hooks) and a perturbed loss runs blocks b.., the final norm and the
    head only: about 40% less work on average than a full forward. Any other model falls back to
    full forwards.
    """

    def __init__(self, model, ids) -> None:
        import torch

        self.model, self.ids = model, ids
        inner = getattr(model, "model", None)
        self.blocks = getattr(inner, "layers", None)
        self.norm = getattr(inner, "norm", None)
        self.head = getattr(model, "lm_head", None)
        self.inputs: dict[int, tuple] = {}
        if self.blocks is None or self.norm is None or self.head is None:
            self.blocks = None
        else:
            def capture(index, module, args, kwargs):
                self.inputs[index] = (args, dict(kwargs))

            hooks = [
                block.register_forward_pre_hook(
                    lambda m, a, k, i=i: capture(i, m, a, k), with_kwargs=True
                )
                for i, block in enumerate(self.blocks)
            ]
            try:
                self.base = self.full()
            finally:
                for h in hooks:
                    h.remove()
            if len(self.inputs) != len(self.blocks) or abs(self.from_block(0) - self.base) > 1e-6:
                self.blocks = None  # the model does not work as assumed: use full forwards
        if self.blocks is None:
            self.base = self.full()

    def full(self) -> float:
        import torch

        with torch.no_grad():
            return token_loss(self.model(self.ids, use_cache=False).logits, self.ids)

    def from_block(self, b: int) -> float:
        import torch

        with torch.no_grad():
            args, kwargs = self.inputs[b]
            hidden = args[0] if args else kwargs["hidden_states"]
            for j in range(b, len(self.blocks)):
                args, kwargs = self.inputs[j]
                if args:
                    hidden = self.blocks[j](hidden, *args[1:], **kwargs)
                else:
                    hidden = self.blocks[j](**{**kwargs, "hidden_states": hidden})
                if isinstance(hidden, tuple):
                    hidden = hidden[0]
            return token_loss(self.head(self.norm(hidden)), self.ids)

    def loss(self, layer_name: str) -> float:
        """The loss now, assuming only weights of ``layer_name`` changed since construction."""
        match = re.search(r"(?:^|\.)layers\.(\d+)\.", layer_name)
        if self.blocks is None or match is None:
            return self.full()
        return self.from_block(int(match.group(1)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=8, help="calibration sequences for the traces (default 8)")
    parser.add_argument(
        "--eval-samples", type=int, default=2, help="of those, sequences for the landscape loss (default 2)"
    )
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--layers", type=int, default=60, help="layers to perturb, 0 = all (default 60)")
    parser.add_argument("--directions", type=int, default=1, help="random directions per layer (default 1)")
    parser.add_argument(
        "--eps", type=float, nargs="+", default=[0.02, 0.07, 0.2], help="relative magnitudes (default 0.02 0.07 0.2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()

    real_model.ensure_installed()
    import torch

    from msp.torch import fisher_traces, linear_layers

    t0 = time.time()
    model, tokenizer = real_model.load_model()
    calibration_text, _ = real_model.load_corpus()
    batches = real_model.token_batches(tokenizer, calibration_text, args.samples, args.seq_len, args.seed)
    layers = linear_layers(model)  # lm_head (tied to the embedding) is ignored
    print(f"model loaded in {time.time() - t0:.1f}s: {len(layers)} linear layers, "
          f"{args.samples} x {args.seq_len} calibration tokens")

    t0 = time.time()
    traces = fisher_traces(model, layers, batches, progress=not args.no_progress)
    print(f"Fisher traces in {time.time() - t0:.1f}s")

    names = list(layers)
    if 0 < args.layers < len(names):
        pick = np.random.default_rng(args.seed).choice(len(names), args.layers, replace=False)
        names = [names[i] for i in sorted(pick)]
    ids = torch.cat(batches[: args.eval_samples])
    landscape = SuffixLoss(model, ids)
    base = landscape.base
    how = "from the perturbed block on" if landscape.blocks is not None else "full forwards"
    print(f"loss on {ids.shape[0]} x {ids.shape[1]} calibration tokens {base:.4f} ({how}); perturbing "
          f"{len(names)} layers at eps = {args.eps}, {args.directions} direction(s) each, both signs")

    t0 = time.time()
    increases = np.zeros((len(names), len(args.eps)))  # symmetric loss increase per layer and eps
    mean_square = np.zeros(len(names))  # mean(W^2)
    for li, name in enumerate(names):
        weight = layers[name].weight
        original = weight.detach().clone()
        mean_square[li] = float(original.double().pow(2).mean())
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + li)
        try:
            for _ in range(args.directions):
                direction = torch.randn(original.shape, generator=generator, dtype=torch.float32)
                direction *= original.norm() / direction.norm()
                for ei, eps in enumerate(args.eps):
                    losses = []
                    for sign in (1.0, -1.0):
                        with torch.no_grad():
                            weight.copy_(original).add_(direction, alpha=sign * eps)
                        losses.append(landscape.loss(name))
                    increases[li, ei] += (sum(losses) / 2 - base) / args.directions
        finally:
            with torch.no_grad():
                weight.copy_(original)
        if not args.no_progress:
            elapsed = time.time() - t0
            print(f"\r  {li + 1}/{len(names)} layers, {elapsed:.0f}s", end="", file=sys.stderr, flush=True)
    if not args.no_progress:
        print(file=sys.stderr)
    assert landscape.full() == base, "weights were not restored exactly"
    print(f"landscape in {time.time() - t0:.1f}s")

    trace = np.array([traces[n] for n in names])
    sizes = np.array([layers[n].weight.numel() for n in names], dtype=np.float64)
    mean_increase = increases.mean(axis=1)

    print()
    print(f"{'layer':40s} {'Tr(F)':>11s} {'Tr(F)/n':>11s} {'mean dL':>11s}")
    for i in np.argsort(-trace):
        print(f"{names[i]:40s} {trace[i]:11.4e} {trace[i] / sizes[i]:11.4e} {mean_increase[i]:11.4e}")
    print()
    print("Spearman rank correlation with the measured loss increase")
    for ei, eps in enumerate(args.eps):
        print(f"  eps = {eps:<5g}  Tr(F): {spearman(trace, increases[:, ei]):+.3f}")
    print(f"  averaged over eps:")
    print(f"    Tr(F_l)                                 {spearman(trace, mean_increase):+.3f}")
    print(f"    Tr(F_l) / n_l (per parameter)           {spearman(trace / sizes, mean_increase):+.3f}")
    print(f"    mean(W_l^2) * Tr(F_l) (2nd-order model) {spearman(mean_square * trace, mean_increase):+.3f}")
    try:
        from scipy.stats import spearmanr
    except ImportError:
        pass
    else:  # a cross-check of the numpy implementation above
        assert abs(spearmanr(trace, mean_increase).statistic - spearman(trace, mean_increase)) < 1e-9
    print(f"\nSPEARMAN(traces, loss increase) = {spearman(trace, mean_increase):.3f} over {len(names)} layers")


if __name__ == "__main__":
    main()
