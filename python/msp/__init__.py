"""msp: a mixed-sparsity planner for LLM pruning (Python bindings of ``libmsp.so``).

Masking and pruning work zero-copy on 2-D float32/float16/bfloat16 numpy arrays and CPU torch
tensors::

    import msp
    keep = msp.prune_nm_(layer.weight.data, "2:4")              # in place, returns the keep mask
    keep = msp.prune_topk_(w, 0.5, scope="row", col_scale=norms)  # Wanda, unstructured
    keep = msp.nm_mask(scores, 2, 4)                             # mask only

Planning: ``msp.FisherAccumulator`` (sensitivities), ``msp.nm_levels`` / ``msp.ratio_levels`` (level
sets), ``msp.plan`` / ``msp.Search`` (per-layer plans, with ``msp.SearchSettings``),
``msp.cost_table`` (proxy costs). SparseGPT: ``msp.GramAccumulator`` (Gram matrices of layer inputs)
and ``msp.OBS`` (one factorised Gram matrix that prunes any number of levels and weights). The PyTorch helpers live in the package ``msp.torch``, the only
part of msp that imports torch; ``import msp`` alone never does.

This module only re-exports; each name lives in the module of its concern (``msp.masking``,
``msp.fisher``, ``msp.levels``, ``msp.plans``, ``msp.problem``, ``msp.search``,
``msp.search_settings``, ``msp.planner``, ``msp.costs``, ``msp.gram``, ``msp.obs``, ``msp.errors``).

Library errors raise ``msp.MSPError`` subclasses that are also ``ValueError``, ``MemoryError`` or
``RuntimeError``.
"""

from ._lib import ABI_VERSION
from .errors import (  # noqa: F401  (re-exported through __all__)
    _EXCEPTIONS,
    InfeasibleError,
    InternalError,
    InvalidArgumentError,
    InvalidStateError,
    MSPCancelled,
    MSPError,
    OutOfMemoryError,
)
from .masking import get_num_threads, nm_mask, prune_nm_, prune_topk_, set_num_threads, version
from .fisher import FisherAccumulator, add_fisher_diagonal, sum_squares
from .levels import Level, nm_levels, ratio_levels
from .plans import Plan
from .problem import Problem
from .search_settings import SearchSettings
from .search import Search
from .planner import plan
from .costs import cost_table
from .packed import PackedNM, nm_linear, nm_pack
from .gram import GramAccumulator
from .obs import OBS

__version__ = version()

__all__ = [
    "ABI_VERSION",
    *(cls.__name__ for cls in _EXCEPTIONS),
    "nm_mask",
    "prune_nm_",
    "prune_topk_",
    "set_num_threads",
    "get_num_threads",
    "version",
    "__version__",
    "FisherAccumulator",
    "sum_squares",
    "add_fisher_diagonal",
    "Level",
    "nm_levels",
    "ratio_levels",
    "Plan",
    "Problem",
    "Search",
    "SearchSettings",
    "plan",
    "cost_table",
    "PackedNM",
    "nm_pack",
    "nm_linear",
    "GramAccumulator",
    "OBS",
]
