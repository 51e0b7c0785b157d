"""Loads ``libmsp.so`` and declares every function of ``include/msp.h`` for ctypes.

Search order (the first that exists is loaded):

1. the file named by the environment variable ``MSP_LIBRARY_PATH``; when it is set, it is the only
   candidate, so a wrong path fails loudly instead of silently loading another build;
2. ``lib/libmsp.so`` inside this package (wheels ship it there);
3. ``.build/release/libmsp.so`` of the source checkout this file lives in (``make lib``);
4. ``ctypes.util.find_library("msp")``.

If none loads, ``OSError`` lists every path tried and why it failed; when a libmsp.so was found
but a library it needs was not (libopenblas.so.0 on a machine without OpenBLAS), the message
names that library first and says how to get it. The library's
``msp_abi_version()`` must equal ``ABI_VERSION``, and it must export every function of the table
below; otherwise the import fails with ``ImportError`` giving the versions or the missing names.

Functions returning ``msp_status`` get an ``errcheck`` that raises the matching ``msp.errors``
exception carrying ``msp_last_error_message()``; on success they return ``None``. Buffers are
declared ``c_void_p`` so callers pass raw addresses (``ndarray.ctypes.data``, ``Tensor.data_ptr()``).
ctypes releases the GIL for the duration of every call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import re
from collections import namedtuple
from ctypes import CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_int32, c_int64, c_uint32, c_uint64, c_void_p
from pathlib import Path

from .errors import OK, error_for_status

ABI_VERSION = 1
"""The ``MSP_ABI_VERSION`` these declarations were written against."""

# dtype codes (MSP_DTYPE_*) and top-k scopes (MSP_SCOPE_*), pinned in the header.
DTYPE_F32 = 0
DTYPE_F16 = 1
DTYPE_BF16 = 2
SCOPE_ROW = 0
SCOPE_LAYER = 1

_HERE = Path(__file__).resolve().parent
_LIBNAME = "libmsp.so"


# --- structs and callback types of the header (fields in header order, only ever appended) -------


class msp_limits(Structure):
    """``msp_limits``: the limits the library enforces, one field per ``MSP_*`` limit macro."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("max_m", c_int64),
        ("max_levels", c_int64),
        ("max_layers", c_int64),
        ("max_offspring", c_int64),
        ("max_survivors", c_int64),
        ("max_fidelity_levels", c_int64),
        ("max_topk_cols", c_int64),
        ("solve_max_cells", c_int64),
        ("solve_max_steps", c_int64),
        ("max_tolerance", c_double),
        ("level_sparsity_tolerance", c_double),
        ("max_proxies", c_int64),
    ]


class msp_level(Structure):
    """``msp_level``: one allowed choice for a layer (N:M with n, m > 0, or unstructured n = m = 0)."""

    _fields_ = [("sparsity", c_double), ("n", c_int32), ("m", c_int32)]


class msp_prior_params(Structure):
    """``msp_prior_params``: how sensitivities map to a prior plan."""

    _fields_ = [("struct_size", c_uint32), ("strength", c_double), ("per_parameter", c_int32)]


class msp_search_params(Structure):
    """``msp_search_params``: evolutionary search settings."""

    _fields_ = [
        ("struct_size", c_uint32),
        ("generations", c_int32),
        ("offspring", c_int32),
        ("survivors", c_int32),
        ("mutation_rate", c_double),
        ("crossover_rate", c_double),
        ("seed", c_uint64),
        ("prior_strength", c_double),
        ("prior_per_parameter", c_int32),
        ("prior_grid", c_int32),
        ("max_evaluations", c_int64),
        ("patience", c_int32),
        ("fidelity_levels", c_int32),
        ("fidelity_keep", c_double),
        ("surrogate_candidates", c_int32),
        ("surrogate_ridge", c_double),
        ("surrogate_exploration", c_double),
        ("pair_rate", c_double),
    ]


class msp_search_progress(Structure):
    """``msp_search_progress``: progress of a search."""

    _fields_ = [
        ("generation", c_int32),
        ("done", c_int32),
        ("evaluations", c_int64),
        ("cheap_evaluations", c_int64),
        ("best_fitness", c_double),
    ]


# Callback types; pass `msp_progress_fn()` (no argument) for a NULL callback, since None is refused.
# typedef int32_t (*msp_fitness_fn)(const int32_t *plan, int64_t num_layers, int32_t fidelity, void *user_data, double *fitness_out);
msp_fitness_fn = CFUNCTYPE(c_int32, POINTER(c_int32), c_int64, c_int32, c_void_p, POINTER(c_double))
# typedef int32_t (*msp_progress_fn)(const msp_search_progress *progress, void *user_data);
msp_progress_fn = CFUNCTYPE(c_int32, POINTER(msp_search_progress), c_void_p)

# --- functions -------------------------------------------------------------------------------------
# Types: opaque handles are c_void_p; numeric arrays are c_void_p (pass ndarray.ctypes.data);
# scalar out-parameters are POINTER(c_*) (pass ctypes.byref); struct arguments are POINTER(struct).

# Marks a function returning msp_status: restype int32_t plus the raising errcheck.
_STATUS = "msp_status"
_p_int32 = POINTER(c_int32)
_p_int64 = POINTER(c_int64)
_p_double = POINTER(c_double)
_p_handle = POINTER(c_void_p)
_p_level = POINTER(msp_level)

# One line per function of include/msp.h, in header order: (name, restype, argtypes).
_DECLARATIONS = [
    # const char *msp_version_string(void);
    ("msp_version_string", c_char_p, ()),
    # int32_t msp_abi_version(void);
    ("msp_abi_version", c_int32, ()),
    # const char *msp_status_string(msp_status status);
    ("msp_status_string", c_char_p, (c_int32,)),
    # const char *msp_last_error_message(void);
    ("msp_last_error_message", c_char_p, ()),
    # msp_status msp_set_num_threads(int32_t n);
    ("msp_set_num_threads", _STATUS, (c_int32,)),
    # int32_t msp_get_num_threads(void);
    ("msp_get_num_threads", c_int32, ()),
    # msp_status msp_get_limits(msp_limits *out);
    ("msp_get_limits", _STATUS, (POINTER(msp_limits),)),
    # msp_status msp_nm_mask(const void *scores, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n, int32_t m, uint8_t *keep_mask_out);
    ("msp_nm_mask", _STATUS, (c_void_p, c_int32, c_int64, c_int64, c_int32, c_int32, c_void_p)),
    # msp_status msp_nm_prune(void *weights, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n, int32_t m, const float *col_scale, uint8_t *keep_mask_out);
    ("msp_nm_prune", _STATUS, (c_void_p, c_int32, c_int64, c_int64, c_int32, c_int32, c_void_p, c_void_p)),
    # msp_status msp_topk_prune(void *weights, msp_dtype dtype, int64_t rows, int64_t cols, double sparsity, int32_t scope, const float *col_scale, uint8_t *keep_mask_out);
    ("msp_topk_prune", _STATUS, (c_void_p, c_int32, c_int64, c_int64, c_double, c_int32, c_void_p, c_void_p)),
    # msp_status msp_nm_packed_size(int64_t rows, int64_t cols, int32_t n, int32_t m, msp_dtype dtype, int64_t *values_bytes_out, int64_t *index_bytes_out);
    ("msp_nm_packed_size", _STATUS, (c_int64, c_int64, c_int32, c_int32, c_int32, _p_int64, _p_int64)),
    # msp_status msp_nm_pack(const void *weights, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n, int32_t m, const float *col_scale, void *values_out, uint8_t *index_out);
    ("msp_nm_pack", _STATUS, (c_void_p, c_int32, c_int64, c_int64, c_int32, c_int32, c_void_p, c_void_p, c_void_p)),
    # msp_status msp_nm_unpack(const void *values, const uint8_t *index, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n, int32_t m, void *weights_out);
    ("msp_nm_unpack", _STATUS, (c_void_p, c_void_p, c_int32, c_int64, c_int64, c_int32, c_int32, c_void_p)),
    # msp_status msp_nm_linear(const void *values, const uint8_t *index, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n, int32_t m, const void *x, msp_dtype x_dtype, int64_t batch, void *y, msp_dtype y_dtype);
    ("msp_nm_linear", _STATUS, (c_void_p, c_void_p, c_int32, c_int64, c_int64, c_int32, c_int32, c_void_p, c_int32, c_int64, c_void_p, c_int32)),
    # const char *msp_nm_linear_isa(void);
    ("msp_nm_linear_isa", c_char_p, ()),
    # msp_status msp_sum_squares(const void *data, msp_dtype dtype, int64_t count, double *out);
    ("msp_sum_squares", _STATUS, (c_void_p, c_int32, c_int64, _p_double)),
    # msp_status msp_fisher_create(const int64_t *sizes, int64_t num_layers, msp_fisher **out);
    ("msp_fisher_create", _STATUS, (c_void_p, c_int64, _p_handle)),
    # void msp_fisher_free(msp_fisher *fisher);
    ("msp_fisher_free", None, (c_void_p,)),
    # msp_status msp_fisher_add(msp_fisher *fisher, int64_t layer, const void *grad, msp_dtype dtype, int64_t count, double scale);
    ("msp_fisher_add", _STATUS, (c_void_p, c_int64, c_void_p, c_int32, c_int64, c_double)),
    # msp_status msp_fisher_end_sample(msp_fisher *fisher);
    ("msp_fisher_end_sample", _STATUS, (c_void_p,)),
    # msp_status msp_fisher_num_samples(const msp_fisher *fisher, int64_t *out);
    ("msp_fisher_num_samples", _STATUS, (c_void_p, _p_int64)),
    # msp_status msp_fisher_traces(const msp_fisher *fisher, int32_t per_parameter, double *out);
    ("msp_fisher_traces", _STATUS, (c_void_p, c_int32, c_void_p)),
    # msp_status msp_fisher_reset(msp_fisher *fisher);
    ("msp_fisher_reset", _STATUS, (c_void_p,)),
    # msp_status msp_fisher_add_diagonal(const void *grad, msp_dtype dtype, int64_t count, float *diag_inout, double scale);
    ("msp_fisher_add_diagonal", _STATUS, (c_void_p, c_int32, c_int64, c_void_p, c_double)),
    # msp_status msp_problem_create(const int64_t *sizes, int64_t num_layers, const msp_level *levels, int64_t num_levels, msp_problem **out);
    ("msp_problem_create", _STATUS, (c_void_p, c_int64, _p_level, c_int64, _p_handle)),
    # void msp_problem_free(msp_problem *problem);
    ("msp_problem_free", None, (c_void_p,)),
    # msp_status msp_problem_set_groups(msp_problem *problem, const int64_t *groups);
    ("msp_problem_set_groups", _STATUS, (c_void_p, c_void_p)),
    # msp_status msp_problem_set_bounds(msp_problem *problem, const int32_t *min_level, const int32_t *max_level);
    ("msp_problem_set_bounds", _STATUS, (c_void_p, c_void_p, c_void_p)),
    # msp_status msp_problem_set_target(msp_problem *problem, double target, double tolerance);
    ("msp_problem_set_target", _STATUS, (c_void_p, c_double, c_double)),
    # msp_status msp_problem_range(const msp_problem *problem, double *min_sparsity, double *max_sparsity);
    ("msp_problem_range", _STATUS, (c_void_p, _p_double, _p_double)),
    # msp_status msp_problem_check_plan(const msp_problem *problem, const int32_t *plan, double *average_out);
    ("msp_problem_check_plan", _STATUS, (c_void_p, c_void_p, _p_double)),
    # msp_prior_params msp_prior_params_default(void);
    ("msp_prior_params_default", msp_prior_params, ()),
    # msp_status msp_prior_plan(const msp_problem *problem, const double *sensitivity, const msp_prior_params *params, int32_t *plan_out);
    ("msp_prior_plan", _STATUS, (c_void_p, c_void_p, POINTER(msp_prior_params), c_void_p)),
    # msp_status msp_solve_additive(const msp_problem *problem, const double *costs, int32_t *plan_out, double *total_out);
    ("msp_solve_additive", _STATUS, (c_void_p, c_void_p, c_void_p, _p_double)),
    # msp_search_params msp_search_params_default(void);
    ("msp_search_params_default", msp_search_params, ()),
    # msp_status msp_search_create(const msp_problem *problem, const double *sensitivity, const msp_search_params *params, msp_search **out);
    ("msp_search_create", _STATUS, (c_void_p, c_void_p, POINTER(msp_search_params), _p_handle)),
    # void msp_search_free(msp_search *search);
    ("msp_search_free", None, (c_void_p,)),
    # msp_status msp_search_add_proxy(msp_search *search, const double *costs);
    ("msp_search_add_proxy", _STATUS, (c_void_p, c_void_p)),
    # int64_t msp_search_max_batch(const msp_search *search);
    ("msp_search_max_batch", c_int64, (c_void_p,)),
    # msp_status msp_search_ask(msp_search *search, int32_t *plans_out, int64_t capacity, int64_t *count_out, int32_t *fidelity_out);
    ("msp_search_ask", _STATUS, (c_void_p, c_void_p, c_int64, _p_int64, _p_int32)),
    # msp_status msp_search_tell(msp_search *search, const double *fitness, int64_t count);
    ("msp_search_tell", _STATUS, (c_void_p, c_void_p, c_int64)),
    # msp_status msp_search_best(const msp_search *search, int32_t *plan_out, double *fitness_out);
    ("msp_search_best", _STATUS, (c_void_p, c_void_p, _p_double)),
    # msp_status msp_search_get_progress(const msp_search *search, msp_search_progress *out);
    ("msp_search_get_progress", _STATUS, (c_void_p, POINTER(msp_search_progress))),
    # msp_status msp_search_run(msp_search *search, msp_fitness_fn fitness, msp_progress_fn progress, void *user_data);
    ("msp_search_run", _STATUS, (c_void_p, msp_fitness_fn, msp_progress_fn, c_void_p)),
    # msp_status msp_search_save_size(const msp_search *search, int64_t *size_out);
    ("msp_search_save_size", _STATUS, (c_void_p, _p_int64)),
    # msp_status msp_search_save(const msp_search *search, void *buffer, int64_t capacity, int64_t *size_out);
    ("msp_search_save", _STATUS, (c_void_p, c_void_p, c_int64, _p_int64)),
    # msp_status msp_search_load(const void *data, int64_t size, msp_search **out);
    ("msp_search_load", _STATUS, (c_void_p, c_int64, _p_handle)),
    # msp_status msp_cost_table_energy(const void *weights, msp_dtype dtype, int64_t rows, int64_t cols, const msp_level *levels, int64_t num_levels, int32_t scope, const float *col_scale, const float *diag, double scale, double *costs_out);
    ("msp_cost_table_energy", _STATUS, (c_void_p, c_int32, c_int64, c_int64, _p_level, c_int64, c_int32, c_void_p, c_void_p, c_double, c_void_p)),
    # msp_status msp_cost_table_reconstruction(const void *weights, msp_dtype dtype, int64_t rows, int64_t cols, const msp_level *levels, int64_t num_levels, int32_t scope, const float *col_scale, const float *gram, double *costs_out);
    ("msp_cost_table_reconstruction", _STATUS, (c_void_p, c_int32, c_int64, c_int64, _p_level, c_int64, c_int32, c_void_p, c_void_p, c_void_p)),
    # msp_status msp_gram_create(const int64_t *cols, int64_t num_layers, msp_gram **out);
    ("msp_gram_create", _STATUS, (c_void_p, c_int64, _p_handle)),
    # void msp_gram_free(msp_gram *gram);
    ("msp_gram_free", None, (c_void_p,)),
    # msp_status msp_gram_add(msp_gram *gram, int64_t layer, const void *x, msp_dtype dtype, int64_t tokens, int64_t cols);
    ("msp_gram_add", _STATUS, (c_void_p, c_int64, c_void_p, c_int32, c_int64, c_int64)),
    # msp_status msp_gram_tokens(const msp_gram *gram, int64_t layer, int64_t *out);
    ("msp_gram_tokens", _STATUS, (c_void_p, c_int64, _p_int64)),
    # msp_status msp_gram_get(const msp_gram *gram, int64_t layer, float *out);
    ("msp_gram_get", _STATUS, (c_void_p, c_int64, c_void_p)),
    # msp_status msp_gram_reset(msp_gram *gram);
    ("msp_gram_reset", _STATUS, (c_void_p,)),
    # msp_status msp_obs_create(const float *gram, int64_t cols, double damp, msp_obs **out);
    ("msp_obs_create", _STATUS, (c_void_p, c_int64, c_double, _p_handle)),
    # void msp_obs_free(msp_obs *obs);
    ("msp_obs_free", None, (c_void_p,)),
    # msp_status msp_obs_prune(const msp_obs *obs, void *weights, msp_dtype dtype, int64_t rows, int64_t cols, const msp_level *level, int64_t block, uint8_t *keep_out);
    ("msp_obs_prune", _STATUS, (c_void_p, c_void_p, c_int32, c_int64, c_int64, _p_level, c_int64, c_void_p)),
]


def _candidates() -> list[str]:
    """The library paths to try, in search order."""
    explicit = os.environ.get("MSP_LIBRARY_PATH")
    if explicit:
        return [explicit]
    paths = [str(_HERE / "lib" / _LIBNAME), str(_HERE.parent.parent / ".build" / "release" / _LIBNAME)]
    found = ctypes.util.find_library("msp")
    if found:
        paths.append(found)
    return paths


# The dynamic loader's errors name the file they are about first: "<file>: cannot open shared
# object file: ...", "<file>: file too short", "<file>: version `...' not found (required by ...)".
_LOADER_ERROR = re.compile(r"^(?P<name>[^:]+): ")


def missing_dependency(path: str, error: OSError) -> str | None:
    """The library that ``path`` needs and the dynamic loader could not load, read from the loader's
    error when loading ``path`` failed; None when the failure is about ``path`` itself."""
    found = _LOADER_ERROR.match(str(error))
    return found["name"] if found and found["name"] != path else None


def load_failure(tried: list[str], missing: list[str]) -> str:
    """The message of a failed load: what to do first, then every path tried and why it failed."""
    if missing:
        names = ", ".join(dict.fromkeys(missing))
        openblas = any("libopenblas" in name for name in missing)
        headline = (
            f"msp: libmsp.so was found, but the dynamic loader cannot load {names}, which it needs: install it"
            + (" (libopenblas.so.0 comes with OpenBLAS, e.g. `apt-get install libopenblas0`)" if openblas else "")
            + ", or install msp from its manylinux wheel (`pip wheel ./python`), which bundles libopenblas, "
            "libgfortran and libquadmath"
        )
    else:
        headline = "msp: cannot load libmsp.so (build it with `make lib`, or set MSP_LIBRARY_PATH)"
    return headline + "; tried:\n  " + "\n  ".join(tried)


def _load() -> tuple[ctypes.CDLL, str]:
    """Load the first candidate that exists; raise ``OSError`` naming every path tried."""
    tried, missing = [], []
    for path in _candidates():
        # find_library returns a bare soname that only the dynamic loader can resolve.
        if os.sep in path and not os.path.isfile(path):
            tried.append(f"{path} (not found)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as error:
            tried.append(f"{path} ({error})")
            dependency = missing_dependency(path, error)
            if dependency:
                missing.append(dependency)
    if not os.environ.get("MSP_LIBRARY_PATH") and ctypes.util.find_library("msp") is None:
        tried.append('ctypes.util.find_library("msp") (not found)')
    raise OSError(load_failure(tried, missing))


def _check_abi(found: int, path: str) -> None:
    """Raise ``ImportError`` unless the library's ABI version is ``ABI_VERSION``."""
    if found != ABI_VERSION:
        raise ImportError(
            f"msp: {path} has ABI version {found}, but this Python package needs ABI version "
            f"{ABI_VERSION}; rebuild the library or reinstall the package"
        )


def _errcheck(result: int, func, args):
    """Raise the ``msp.errors`` exception for a non-zero ``msp_status``."""
    if result != OK:
        raise error_for_status(result, last_error_message())
    return None


class _Functions:
    """The declared C functions, as attributes named like the C symbols."""


dll, path = _load()
try:
    _abi = dll["msp_abi_version"]
except AttributeError:
    raise ImportError(f"msp: {path} does not export msp_abi_version; is it libmsp?") from None
_abi.restype = c_int32
_abi.argtypes = ()
_check_abi(_abi(), path)

lib = _Functions()
_missing_symbols = []
for _name, _restype, _argtypes in _DECLARATIONS:
    try:
        _fn = dll[_name]  # a fresh function object: `dll.<name>` stays undeclared for raw tests
    except AttributeError:
        _missing_symbols.append(_name)
        continue
    _fn.argtypes = _argtypes
    if _restype is _STATUS:
        _fn.restype = c_int32
        _fn.errcheck = _errcheck
    else:
        _fn.restype = _restype
    setattr(lib, _name, _fn)
if _missing_symbols:
    raise ImportError(
        f"msp: {path} does not export {', '.join(_missing_symbols)}, declared in msp.h (ABI version {ABI_VERSION}); "
        f"it is older than this package: rebuild it with `make lib`"
    )


def last_error_message() -> str:
    """The calling thread's last error message from the library ("" after a success)."""
    raw = lib.msp_last_error_message()
    return raw.decode("utf-8", "replace") if raw else ""


def status_string(status: int) -> str:
    """The library's static text for a status code."""
    return lib.msp_status_string(status).decode("utf-8", "replace")


Limits = namedtuple("Limits", [name for name, _ in msp_limits._fields_[1:]])
"""The limits of ``msp_get_limits`` as an immutable record (fields named as in ``msp_limits``)."""


def _read_limits() -> Limits:
    """The loaded library's limits."""
    raw = msp_limits(struct_size=ctypes.sizeof(msp_limits))
    lib.msp_get_limits(ctypes.byref(raw))
    return Limits(*(getattr(raw, name) for name in Limits._fields))


LIMITS = _read_limits()
"""What the library enforces (``include/msp.h``'s ``MSP_MAX_M``, ``MSP_MAX_LEVELS``, ...): Python checks use these."""
