"""PyTorch helpers: find a model's layers, collect calibration statistics, apply plans, evaluate.

This package is the only part of msp that imports torch; it only re-exports the modules of its
concerns:

- ``msp.torch.layers``: ``linear_layers``, ``block_groups``;
- ``msp.torch.batches``: the calibration forms (a list of batches, one tensor ``[N, ...]``, an
  iterable) and per-sample splitting;
- ``msp.torch.calibration``: ``causal_lm_loss``, ``fisher_traces``, ``activation_norms`` (and the
  collector of layer-input statistics they share);
- ``msp.torch.grams``: ``gram_matrices``, SparseGPT's statistic (``Grams``);
- ``msp.torch.criteria``: the pruning criteria of ``pruner=`` and the statistic each needs;
- ``msp.torch.kernels``: where pruning runs (``kernels=``): native kernels on CPU tensors, torch
  operations with the same masks on any other device;
- ``msp.torch.device_fisher``: Fisher sums on a torch device, bit-identical to the native ones;
- ``msp.torch.pruner``: ``Pruner``, ``apply_plan`` (the pruning criterion is ``pruner=``), with
  ``msp.torch.records`` (the checks before any weight is written) and ``msp.torch.database``
  (the cache of pruned weights: SparseGPT's search database, in memory and on disk);
- ``msp.torch.pipeline``: ``prune``, the whole pipeline in one call (``msp.torch.sequential``: its
  block-by-block SparseGPT application, ``sequential=True``);
- ``msp.torch.staging``: the search inside ``prune``: staged fidelity on token prefixes and
  checkpoints that resume;
- ``msp.torch.evaluation``: ``perplexity``, ``kl_to_dense``, ``reference_logits``, ``TopK``;
- ``msp.torch.forward``: the device and forward utilities they share;
- ``msp.torch.packed_linear``: ``PackedLinear``, a layer holding its N:M weight compressed;
- ``msp.torch.compression``: ``compress``, a pruned model's N:M layers packed in place;
- ``msp.torch.compressed_file``: ``save_compressed``, ``load_compressed`` (safetensors).

Models may be any ``nn.Module`` on any torch device::

    from msp.torch import linear_layers, fisher_traces, activation_norms, Pruner
    layers = linear_layers(model)                          # {name: nn.Linear}, lm_head ignored
    traces = fisher_traces(model, layers, calibration)     # {name: Tr(F_l)}
"""

from .calibration import activation_norms, causal_lm_loss, fisher_traces
from .evaluation import TopK, kl_to_dense, perplexity, reference_logits
from .compressed_file import load_compressed, save_compressed
from .compression import compress
from .grams import Grams, gram_matrices
from .layers import block_groups, linear_layers
from .packed_linear import PackedLinear
from .pipeline import prune
from .pruner import Pruner, apply_plan

__all__ = [
    "linear_layers",
    "fisher_traces",
    "causal_lm_loss",
    "Pruner",
    "activation_norms",
    "gram_matrices",
    "Grams",
    "apply_plan",
    "block_groups",
    "prune",
    "perplexity",
    "kl_to_dense",
    "reference_logits",
    "TopK",
    "compress",
    "PackedLinear",
    "save_compressed",
    "load_compressed",
]
