"""N:M keep masks and in-place N:M and unstructured pruning of numpy arrays and CPU torch tensors.

Within a comparison group (an N:M group, a row or a whole layer) weights are ordered by score
descending, then by index ascending, and the first ones are kept: on ties the lower index is kept,
exactly as a stable sort would. Results do not depend on the thread count. NaN in the data is an
error naming its row and column. Buffer rules (dtypes, contiguity, no hidden copies): see
``msp._arrays``. The calls release the GIL while the library works.
"""

from __future__ import annotations

from typing import Any

from . import _arrays
from ._convert import c_integer, nm_text, real, scope as scope_of
from ._lib import lib



def _pattern(n: Any, m: Any) -> tuple[int, int]:
    """Parse ``(n, m)``, ``"n:m"`` or ``((n, m), None)`` into two int32 values (ranges: library)."""
    if m is None:
        if isinstance(n, str):
            n, m = nm_text(n, "pattern", "2:4")
        elif isinstance(n, (tuple, list)) and len(n) == 2:
            n, m = n
        else:
            raise TypeError(f'give the pattern as n, m or "n:m" or (n, m), got n={n!r} and no m')
    elif isinstance(n, (str, tuple, list)):
        raise TypeError(f"pattern {n!r} already names m; do not pass m={m!r} too")
    return c_integer(n, "n"), c_integer(m, "m")


def _pruning_buffers(weight: Any, col_scale: Any, return_mask: bool) -> tuple:
    """``(matrix, scale, (mask, mask pointer))`` of an in-place pruning call: the weight's view, the
    private col_scale copy (or None) and the keep mask (``(None, None)`` without one)."""
    matrix = _arrays.as_matrix(weight, "weight", inplace=True)
    scale = _arrays.col_scale(col_scale, matrix.cols)
    return matrix, scale, _arrays.new_keep_mask(matrix) if return_mask else (None, None)


def nm_mask(scores: Any, n: Any, m: Any = None) -> Any:
    """Return the N:M keep mask of explicit scores.

    In every group of ``m`` consecutive elements along a row, the ``n`` highest scores are kept
    (ties: lower index kept).

    Args:
        scores: 2-D float32/float16/bfloat16 numpy array or CPU torch tensor, ``cols % m == 0``,
            no NaN. Not modified; a non-contiguous input is copied first.
        n, m: the pattern, ``0 < n < m <= 32``; also ``nm_mask(s, "2:4")`` or ``nm_mask(s, (2, 4))``.

    Returns:
        A bool keep mask of the same shape (True = keep): a numpy array for numpy scores, a torch
        tensor for torch scores.

    Raises:
        TypeError: unsupported object or dtype.
        ValueError: bad shape; ``msp.InvalidArgumentError`` (a ValueError) for a bad pattern or a
            NaN score.
    """
    n, m = _pattern(n, m)
    matrix = _arrays.as_matrix(scores, "scores", inplace=False)
    mask, mask_ptr = _arrays.new_keep_mask(matrix)
    lib.msp_nm_mask(matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, n, m, mask_ptr)
    return mask


def prune_nm_(
    weight: Any, n: Any, m: Any = None, col_scale: Any = None, *, return_mask: bool = True
) -> Any:
    """Prune ``weight`` in place to an N:M pattern and return its keep mask.

    In every group of ``m`` consecutive weights along a row the ``n`` with the highest score
    ``|w| * col_scale[col]`` are kept and the others set to +0 (ties: lower index kept).

    Args:
        weight: 2-D ``[out_features, in_features]`` float32/float16/bfloat16 numpy array or CPU
            torch tensor, C-contiguous and writable, ``cols % m == 0``, no NaN. Modified in place.
        n, m: the pattern, ``0 < n < m <= 32`` (n = kept); also ``"2:4"`` or ``(2, 4)`` as ``n``.
        col_scale: None for magnitude, or ``cols`` finite non-negative numbers (Wanda: the L2 norm
            of each input feature); converted to float32.
        return_mask: False skips writing the mask and returns None.

    Returns:
        The bool keep mask (numpy for numpy input, torch for torch input), or None.

    Raises:
        TypeError, ValueError: see ``msp._arrays``; ``msp.InvalidArgumentError`` for a bad pattern,
            NaN weight, bad col_scale or NaN score (inf weight times zero scale). On any error
            ``weight`` is unchanged.
    """
    n, m = _pattern(n, m)
    matrix, scale, (mask, mask_ptr) = _pruning_buffers(weight, col_scale, return_mask)
    lib.msp_nm_prune(matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, n, m, _arrays.pointer(scale), mask_ptr)
    _arrays.written(matrix)
    return mask


def prune_topk_(
    weight: Any,
    sparsity: float,
    scope: str = "row",
    col_scale: Any = None,
    *,
    return_mask: bool = True,
) -> Any:
    """Prune ``weight`` in place to an unstructured sparsity and return its keep mask.

    In each comparison group the ``floor(sparsity * group_size)`` weights with the lowest score
    ``|w| * col_scale[col]`` are set to +0 (ties: the higher index is pruned first).

    Args:
        weight: as for ``prune_nm_`` (no ``cols % m`` rule).
        sparsity: fraction to prune, in [0, 1).
        scope: ``"row"`` (Wanda: every row pruned to the sparsity) or ``"layer"`` (magnitude
            pruning over the whole matrix).
        col_scale: as for ``prune_nm_``.
        return_mask: False skips writing the mask and returns None.

    Returns:
        The bool keep mask (numpy for numpy input, torch for torch input), or None.

    Raises:
        TypeError, ValueError: as for ``prune_nm_``; ``msp.InvalidArgumentError`` also for a
            sparsity outside [0, 1) or NaN. On any error ``weight`` is unchanged.
    """
    scope_code = scope_of(scope)
    sparsity = real(sparsity, "sparsity")
    matrix, scale, (mask, mask_ptr) = _pruning_buffers(weight, col_scale, return_mask)
    lib.msp_topk_prune(
        matrix.ptr, matrix.dtype, matrix.rows, matrix.cols, sparsity, scope_code, _arrays.pointer(scale), mask_ptr
    )
    _arrays.written(matrix)
    return mask


def set_num_threads(n: int) -> None:
    """Set how many threads the kernels use: ``n >= 1``, or 0 for one per core (the default).

    Process-wide. Results never depend on it. Raises ``msp.InvalidArgumentError`` for ``n < 0``.
    """
    lib.msp_set_num_threads(c_integer(n, "n"))


def get_num_threads() -> int:
    """The number of threads the kernels use now (>= 1)."""
    return int(lib.msp_get_num_threads())


def version() -> str:
    """The library's version, ``"MAJOR.MINOR.PATCH"``."""
    return lib.msp_version_string().decode("ascii")
