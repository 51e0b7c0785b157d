"""msp: a mixed-sparsity planner for LLM pruning (Python bindings of ``libmsp.so``).

Masking and pruning work zero-copy on 2-D float32/float16/bfloat16 numpy arrays and CPU torch
tensors::

    import msp
    keep = msp.prune_nm_(layer.weight.data, "2:4")              # in place, returns the keep mask
    keep = msp.prune_topk_(w, 0.5, scope="row", col_scale=norms)  # Wanda, unstructured
    keep = msp.nm_mask(scores, 2, 4)                             # mask only

Library errors raise ``msp.MSPError`` subclasses that are also ``ValueError``, ``MemoryError`` or
``RuntimeError``.
"""

from ._lib import ABI_VERSION
from .errors import (
    InfeasibleError,
    InternalError,
    InvalidArgumentError,
    InvalidStateError,
    MSPCancelled,
    MSPError,
    OutOfMemoryError,
)
from .masking import get_num_threads, nm_mask, prune_nm_, prune_topk_, set_num_threads, version

__version__ = version()

__all__ = [
    "ABI_VERSION",
    "MSPError",
    "InvalidArgumentError",
    "OutOfMemoryError",
    "InfeasibleError",
    "MSPCancelled",
    "InvalidStateError",
    "InternalError",
    "nm_mask",
    "prune_nm_",
    "prune_topk_",
    "set_num_threads",
    "get_num_threads",
    "version",
    "__version__",
]
