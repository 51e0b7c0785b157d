"""The numpy reference of the masking kernels: order by score descending, then index ascending (a
stable sort), keep the first ones of each comparison group."""

import numpy as np


def keep_first(scores, k):
    """Keep mask of the first ``k`` of each row of ``scores`` ordered by score desc, index asc."""
    order = np.argsort(-scores, axis=-1, kind="stable")
    keep = np.zeros(scores.shape, bool)
    np.put_along_axis(keep, order[..., :k], True, axis=-1)
    return keep


def ref_nm_keep(scores, n, m):
    """N:M keep mask of a [rows, cols] score array."""
    rows, cols = scores.shape
    return keep_first(scores.reshape(rows, cols // m, m), n).reshape(rows, cols)


def ref_topk_keep(scores, sparsity, scope):
    """Unstructured keep mask: floor(sparsity * group) pruned per row ("row") or in the whole array."""
    rows, cols = scores.shape
    if scope == "row":
        return keep_first(scores, cols - int(np.floor(sparsity * cols)))
    flat = scores.reshape(1, -1)
    return keep_first(flat, flat.size - int(np.floor(sparsity * flat.size))).reshape(rows, cols)
