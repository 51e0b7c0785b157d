/*
 * msp.h: the C interface of msp, a mixed-sparsity planner for pruning large language models.
 *
 * msp measures how sensitive each layer (one weight matrix) of a model is, searches a per-layer
 * sparsity plan under a fixed average sparsity, and applies N:M or unstructured masks to raw weight
 * buffers. The caller owns the model and the data; msp works on plain memory.
 *
 * Usage sketch (prune a float32 matrix 2:4 by magnitude, keeping 2 of every 4 weights along a row):
 *
 *     float w[ROWS * COLS];                       // row-major, COLS % 4 == 0
 *     uint8_t keep[ROWS * COLS];                  // optional: 1 = kept, 0 = pruned
 *     if (msp_nm_prune(w, MSP_DTYPE_F32, ROWS, COLS, 2, 4, NULL, keep) != MSP_OK)
 *         fprintf(stderr, "msp: %s\n", msp_last_error_message());
 *
 * Conventions used throughout:
 *   - A layer is a row-major matrix of `rows` x `cols` elements (an nn.Linear weight: rows =
 *     out_features, cols = in_features). Sizes are int64_t and must be positive.
 *   - N:M keeps N nonzeros in every M consecutive elements along `cols` of each row (NVIDIA's sense:
 *     N counts the *kept* weights). Sparsity = 1 - N/M.
 *   - Within a comparison group (an N:M group, a row, or a whole layer) elements are ordered by score
 *     descending, then index ascending, and the first ones are kept: on ties the lower index is kept.
 *     Results equal a stable sort and do not depend on the thread count.
 *   - Keep masks are uint8_t arrays of rows x cols with 1 = keep, 0 = pruned.
 *   - Every fallible function returns an msp_status, MSP_OK = 0 on success. On error it leaves
 *     every caller buffer unchanged and sets a message readable with msp_last_error_message().
 *   - Pointer arguments are borrowed for the duration of the call; the library never frees caller
 *     memory. Functions without a handle are reentrant and may be called from any thread.
 */
#ifndef MSP_H
#define MSP_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------------
 * Version
 * ------------------------------------------------------------------------------------------- */

/* The version of this header; the library reports its own with msp_version_string(). These three
 * numbers are the only place the version is written: the string, the number and the Python
 * package's version are all derived from them. */
#define MSP_VERSION_MAJOR 0
#define MSP_VERSION_MINOR 1
#define MSP_VERSION_PATCH 0

/* The version as one number for preprocessor comparisons: MAJOR * 10000 + MINOR * 100 + PATCH. */
#define MSP_VERSION_NUMBER (MSP_VERSION_MAJOR * 10000 + MSP_VERSION_MINOR * 100 + MSP_VERSION_PATCH)

/* The version as the string literal "MAJOR.MINOR.PATCH", built from the three numbers. */
#define MSP_STRINGIFY_(x) #x
#define MSP_STRINGIFY(x) MSP_STRINGIFY_(x)
#define MSP_VERSION_STRING \
    MSP_STRINGIFY(MSP_VERSION_MAJOR) "." MSP_STRINGIFY(MSP_VERSION_MINOR) "." MSP_STRINGIFY(MSP_VERSION_PATCH)

/* Incremented whenever a declaration in this header changes incompatibly. */
#define MSP_ABI_VERSION 1

/* The library's version, MSP_VERSION_STRING of the header it was built with; static storage,
 * never NULL. */
const char *msp_version_string(void);

/* The ABI version the library was built with; bindings compare it with MSP_ABI_VERSION. */
int32_t msp_abi_version(void);

/* ---------------------------------------------------------------------------------------------
 * Status codes and error messages
 * ------------------------------------------------------------------------------------------- */

/* Result of every fallible function. Values are pinned and never renumbered. */
typedef int32_t msp_status;

#define MSP_OK 0                    /* success */
#define MSP_ERR_INVALID_ARGUMENT 1  /* a NULL pointer, bad size, bad pattern, NaN data, ... */
#define MSP_ERR_OUT_OF_MEMORY 2     /* the library could not allocate scratch memory */
#define MSP_ERR_INFEASIBLE 3        /* no plan meets the requested budget and bounds */
#define MSP_ERR_CANCELLED 4         /* a callback asked to stop */
#define MSP_ERR_INVALID_STATE 5     /* a call out of order on a handle (e.g. tell before ask) */
#define MSP_ERR_INTERNAL 6          /* a bug in msp; please report it with the message */

/* Static English text for a status code ("unknown status" for values not listed above). */
const char *msp_status_string(msp_status status);

/*
 * Detail of the last error on the calling thread, e.g. "n (4) must be less than m (4)".
 * Owned by the library, valid until the next msp call on the same thread; "" if the last call
 * succeeded or none was made.
 */
const char *msp_last_error_message(void);

/* ---------------------------------------------------------------------------------------------
 * Element types
 * ------------------------------------------------------------------------------------------- */

/* Element type of a weight, score or gradient buffer. Values are pinned. */
typedef int32_t msp_dtype;

#define MSP_DTYPE_F32 0   /* IEEE binary32 */
#define MSP_DTYPE_F16 1   /* IEEE binary16 */
#define MSP_DTYPE_BF16 2  /* bfloat16: the upper 16 bits of a binary32 */

/* ---------------------------------------------------------------------------------------------
 * Threads
 * ------------------------------------------------------------------------------------------- */

/*
 * Sets how many threads the kernels may use: n >= 1, or 0 for one per available core (the
 * default). Results never depend on this setting. Process-wide; safe to call from any thread.
 * Returns MSP_OK, or MSP_ERR_INVALID_ARGUMENT for n < 0.
 *
 * The calling thread takes part in every kernel call. The library starts its worker threads (at
 * most one per further core) on first use and keeps them for the life of the process; after a
 * call a worker spins for up to 2 ms, then sleeps, so that calls in quick succession (the layers
 * of a decoding step) find it awake. A call made while another is running its threads (from a
 * second application thread) runs on libdispatch's threads instead. A forked child starts its own
 * workers.
 */
msp_status msp_set_num_threads(int32_t n);

/* The number of threads the kernels use now (>= 1). */
int32_t msp_get_num_threads(void);

/* ---------------------------------------------------------------------------------------------
 * Limits
 *
 * Every range the library enforces on an argument is a macro of this header, defined next to the
 * functions that use it: MSP_MAX_M, MSP_MAX_TOPK_COLS (masking), MSP_MAX_LEVELS,
 * MSP_LEVEL_SPARSITY_TOLERANCE, MSP_MAX_LAYERS, MSP_MAX_TOLERANCE, MSP_SOLVE_MAX_CELLS,
 * MSP_SOLVE_MAX_STEPS (planning), MSP_MAX_OFFSPRING, MSP_MAX_SURVIVORS, MSP_MAX_FIDELITY_LEVELS and
 * MSP_MAX_PROXIES (search). msp_get_limits reports the values a library was built with, so
 * bindings read them instead of copying them. (Bounds of a C type, such as INT32_MAX columns for
 * BLAS, are stated where they apply.)
 * ------------------------------------------------------------------------------------------- */

/* The limits of a library, one field per limit macro. Fields are only ever appended. */
typedef struct msp_limits {
    uint32_t struct_size;             /* set by the caller: sizeof(msp_limits) */
    int64_t max_m;                    /* MSP_MAX_M */
    int64_t max_levels;               /* MSP_MAX_LEVELS */
    int64_t max_layers;               /* MSP_MAX_LAYERS */
    int64_t max_offspring;            /* MSP_MAX_OFFSPRING */
    int64_t max_survivors;            /* MSP_MAX_SURVIVORS */
    int64_t max_fidelity_levels;      /* MSP_MAX_FIDELITY_LEVELS */
    int64_t max_topk_cols;            /* MSP_MAX_TOPK_COLS */
    int64_t solve_max_cells;          /* MSP_SOLVE_MAX_CELLS */
    int64_t solve_max_steps;          /* MSP_SOLVE_MAX_STEPS */
    double max_tolerance;             /* MSP_MAX_TOLERANCE */
    double level_sparsity_tolerance;  /* MSP_LEVEL_SPARSITY_TOLERANCE */
    int64_t max_proxies;              /* MSP_MAX_PROXIES */
} msp_limits;

/*
 * Fills *out with the limits this library enforces (the macros of the header it was built with).
 *
 *   out  out->struct_size must be set first, to sizeof(msp_limits); a struct_size from an older
 *        header, at least sizeof(uint32_t), gets only the fields that header declares.
 *
 * Reentrant. Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, struct_size smaller than
 * sizeof(uint32_t) or larger than this library's msp_limits; *out unchanged).
 */
msp_status msp_get_limits(msp_limits *out);

/* ---------------------------------------------------------------------------------------------
 * Masking and pruning
 *
 * Kernels split rows across threads. The functions are stateless and reentrant: calls on distinct
 * buffers may run concurrently. A function reads every input before it writes any output, so on
 * error neither the weights nor the keep mask have changed.
 * ------------------------------------------------------------------------------------------- */

/* Comparison group of msp_topk_prune. Values are pinned. */
#define MSP_SCOPE_ROW 0    /* floor(sparsity * cols) weights pruned in every row (Wanda) */
#define MSP_SCOPE_LAYER 1  /* floor(sparsity * rows * cols) weights pruned in the matrix (magnitude) */

/* The largest N:M group size: 0 < n < m <= MSP_MAX_M in msp_nm_mask and msp_nm_prune (and
 * n <= m <= MSP_MAX_M in an N:M msp_level). */
#define MSP_MAX_M 32

/* The most columns msp_topk_prune takes (2^32 - 1: ties within a row are counted in 32 bits); also
 * the cost tables' limit for unstructured levels with MSP_SCOPE_ROW. */
#define MSP_MAX_TOPK_COLS 4294967295

/*
 * Computes the N:M keep mask of explicit scores: in every group of m consecutive elements along a
 * row, the n with the highest score are kept (ties: lower index kept).
 *
 *   scores         rows x cols elements of `dtype`, row-major; must not contain NaN.
 *   dtype          MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16.
 *   rows, cols     > 0, rows * cols must fit in int64_t; cols % m == 0.
 *   n, m           0 < n < m <= MSP_MAX_M.
 *   keep_mask_out  rows x cols bytes, written with 1 = keep, 0 = prune.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT for a NULL pointer, a bad size, dtype or pattern, or a
 * NaN score (the message names its row and column); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_nm_mask(const void *scores, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n,
                       int32_t m, uint8_t *keep_mask_out);

/*
 * Prunes weights in place to an N:M pattern: in every group of m consecutive weights along a row,
 * the n with the highest score |w[r][c]| * col_scale[c] are kept and the others are set to +0.
 * The score is computed on the fly in float32 (16-bit weights are widened exactly); no score matrix
 * is materialised.
 *
 *   weights        rows x cols elements of `dtype`, row-major; modified in place; no NaN.
 *   dtype          MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16.
 *   rows, cols     > 0, rows * cols must fit in int64_t; cols % m == 0.
 *   n, m           0 < n < m <= MSP_MAX_M.
 *   col_scale      NULL for magnitude scores, or `cols` finite non-negative floats (Wanda passes the
 *                  L2 norm of each input feature). A score |w| * col_scale that is NaN (an infinite
 *                  weight times a zero scale) is an error. Must not overlap `weights` (the
 *                  weights change while col_scale is still read).
 *   keep_mask_out  NULL, or rows x cols bytes written with 1 = keep, 0 = prune; must not overlap
 *                  the other buffers.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL weights, bad size, dtype or pattern, NaN weight,
 * negative or non-finite col_scale, NaN score; the message names the argument and position);
 * MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_nm_prune(void *weights, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n,
                        int32_t m, const float *col_scale, uint8_t *keep_mask_out);

/*
 * Prunes weights in place to an unstructured sparsity: in each comparison group (`scope`) the
 * floor(sparsity * group_size) weights with the lowest score |w[r][c]| * col_scale[c] are set to +0
 * (ties: the higher index is pruned first). floor is taken of the double product.
 *
 *   weights, dtype, rows, cols, col_scale, keep_mask_out   as for msp_nm_prune (no cols % m rule;
 *                  cols <= MSP_MAX_TOPK_COLS).
 *   sparsity       in [0, 1).
 *   scope          MSP_SCOPE_ROW or MSP_SCOPE_LAYER.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (as for msp_nm_prune, plus a sparsity outside [0, 1) or an
 * unknown scope); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_topk_prune(void *weights, msp_dtype dtype, int64_t rows, int64_t cols, double sparsity,
                          int32_t scope, const float *col_scale, uint8_t *keep_mask_out);

/* ---------------------------------------------------------------------------------------------
 * Compressed N:M weights
 *
 * An N:M matrix stored as its kept values and a bitmask, and its product with a few tokens
 * computed from that form, so that a pruned layer is smaller in memory and faster to apply: at 2:8
 * a bfloat16 matrix takes 0.31 of its dense bytes.
 *
 * Format of a rows x cols matrix at level n:m (0 < n < m <= MSP_MAX_M, cols % m == 0), dtype:
 *   values  rows x (cols / m * n) elements of dtype, row-major: each row's kept weights in column
 *           order, exactly n of every group of m columns.
 *   index   rows x (4 * ceil(cols / 32)) bytes, row-major: bit (c % 8) of byte (c / 8) of a row is 1
 *           when column c is kept (that is, one little-endian 32-bit word per 32 columns). Each group
 *           of m columns has exactly n bits set; bits at or past cols are 0.
 * Readers check the index (and reject any other) before they read a row's values, so a bad index
 * is an MSP_ERR_INVALID_ARGUMENT, never a read outside the buffers.
 *
 * Functions are stateless and reentrant; rows are split across threads (msp_set_num_threads), and
 * results do not depend on the thread count. On error no output buffer has changed.
 * ------------------------------------------------------------------------------------------- */

/*
 * The sizes of a packed matrix, for allocating its buffers.
 *
 *   rows, cols        > 0, rows * cols must fit in int64_t; cols % m == 0.
 *   n, m              0 < n < m <= MSP_MAX_M.
 *   dtype             MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16.
 *   values_bytes_out  receives rows * (cols / m * n) * sizeof(element).
 *   index_bytes_out   receives rows * 4 * ceil(cols / 32).
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, bad size, dtype or pattern; outputs
 * unchanged).
 */
msp_status msp_nm_packed_size(int64_t rows, int64_t cols, int32_t n, int32_t m, msp_dtype dtype,
                              int64_t *values_bytes_out, int64_t *index_bytes_out);

/*
 * Packs weights into the compressed format: in every group of m consecutive weights along a row the
 * n with the highest score |w[r][c]| * col_scale[c] are kept, with the order and ties of
 * msp_nm_prune (score descending, then column ascending). A matrix already pruned to n:m packs
 * exactly its nonzeros (and zeros where a group holds fewer than n), so msp_nm_unpack gives it back
 * bit for bit. The weights are not modified.
 *
 *   weights     rows x cols elements of `dtype`, row-major; no NaN.
 *   dtype, rows, cols, n, m, col_scale   as for msp_nm_prune.
 *   values_out  the values (see msp_nm_packed_size); must not overlap the other buffers.
 *   index_out   the index (see msp_nm_packed_size); must not overlap the other buffers.
 *
 * Uses a keep mask of at most 1 MiB as scratch. Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL
 * pointer, bad size, dtype or pattern, NaN weight, negative or non-finite col_scale, NaN score: the
 * message names the argument and position); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_nm_pack(const void *weights, msp_dtype dtype, int64_t rows, int64_t cols, int32_t n, int32_t m,
                       const float *col_scale, void *values_out, uint8_t *index_out);

/*
 * Writes the dense masked matrix of a packed one: each kept value at its column, +0 elsewhere.
 *
 *   values, index      a packed matrix of these rows, cols, n, m and dtype.
 *   weights_out        rows x cols elements of `dtype`; must not overlap the inputs.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, bad size, dtype or pattern, an index that
 * breaks the format: the message names the row and group).
 */
msp_status msp_nm_unpack(const void *values, const uint8_t *index, msp_dtype dtype, int64_t rows, int64_t cols,
                         int32_t n, int32_t m, void *weights_out);

/*
 * Multiplies packed weights W (rows x cols) with `batch` tokens: y[t][r] = sum_c W[r][c] * x[t][c],
 * that is Y = X W^T (torch.nn.functional.linear without bias; y = W x for one token). Decoding (1 to
 * 16 tokens) is the case it is made for: the weights are read once per 16 tokens.
 *
 * Arithmetic: every element is widened exactly to float32 and accumulated by fused multiply-adds in
 * float32 in a fixed order (per row: 16-lane partial sums over chunks of 32 columns, folded
 * pairwise), the same on every instruction set and thread count, and for a token alone or in any
 * batch. The result is the float32 product of the dense masked matrix: within about
 * (ceil(cols / 64) + 6) * 2^-24 * sum_c |W[r][c] * x[t][c]| of the exact value; a pruned column
 * contributes 0 * x, so an infinite or NaN x makes the outputs NaN as in a dense product. It is then
 * rounded to nearest even in y_dtype.
 *
 *   values, index   a packed matrix of these rows, cols, n, m and dtype.
 *   x               batch x cols elements of x_dtype, row-major.
 *   x_dtype         MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16.
 *   batch           > 0; batch * cols and batch * rows must fit in int64_t.
 *   y               batch x rows elements of y_dtype, row-major; must not overlap the inputs.
 *   y_dtype         MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16 (x_dtype for torch's behaviour,
 *                   MSP_DTYPE_F32 for the unrounded sums).
 *
 * Kernels: AVX-512 (F, BW, VL, DQ, VBMI2, BITALG, VPOPCNTDQ) where the CPU has it, else AVX2 with
 * FMA, else portable C; all give the same bits. The environment variable MSP_ISA=avx2 or
 * MSP_ISA=portable, read once per process, caps the choice (msp_nm_linear_isa says which runs).
 * Uses scratch of about 16 x (cols + rows) floats.
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, bad size, dtype, pattern or batch, an index
 * that breaks the format: y unchanged); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_nm_linear(const void *values, const uint8_t *index, msp_dtype dtype, int64_t rows, int64_t cols,
                         int32_t n, int32_t m, const void *x, msp_dtype x_dtype, int64_t batch, void *y,
                         msp_dtype y_dtype);

/* The kernels msp_nm_linear uses in this process: "avx512", "avx2" or "portable"; static storage. */
const char *msp_nm_linear_isa(void);

/* ---------------------------------------------------------------------------------------------
 * Fisher traces
 *
 * The sensitivity of layer l is the trace of its Fisher information, Tr(F_l) = (1/S) sum_s ||g_ls||^2,
 * where g_ls is the loss gradient with respect to the layer's weights on calibration sample s.
 * ------------------------------------------------------------------------------------------- */

/*
 * Sum of squares of a buffer in double: exact squares, 16-term runs per vector lane added with
 * Neumaier (Kahan-Babuska) compensation, fixed 4096-element blocks combined in order; within ~2e-15
 * relative of the exact sum, bit-identical for any thread count. 16-bit inputs are widened exactly.
 *
 *   data    `count` elements of `dtype`; must be finite.
 *   count   > 0.
 *   out     receives the sum.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, count <= 0, unknown dtype, non-finite
 * element: the message gives its index); MSP_ERR_OUT_OF_MEMORY (buffers over 4096 elements use 8
 * bytes of scratch per 4096 elements).
 */
msp_status msp_sum_squares(const void *data, msp_dtype dtype, int64_t count, double *out);

/* Accumulator of per-layer squared-gradient sums over calibration samples. Opaque. */
typedef struct msp_fisher msp_fisher;

/*
 * Creates an accumulator over `num_layers` layers of sizes[0 .. num_layers-1] parameters each.
 *
 *   sizes       num_layers values > 0 (copied).
 *   num_layers  > 0.
 *   out         receives the handle; release it with msp_fisher_free.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, num_layers <= 0, a size <= 0);
 * MSP_ERR_OUT_OF_MEMORY. *out is unchanged on error.
 */
msp_status msp_fisher_create(const int64_t *sizes, int64_t num_layers, msp_fisher **out);

/* Releases an accumulator. Accepts NULL. The handle must not be in use by another thread. */
void msp_fisher_free(msp_fisher *fisher);

/*
 * Adds scale * sum(grad^2) of one gradient chunk to layer `layer` for the current sample. A layer's
 * gradient may arrive in several chunks; together they may not exceed the layer's size within one
 * sample.
 *
 *   layer   in [0, num_layers).
 *   grad    `count` elements of `dtype`; must be finite.
 *   count   > 0, at most the layer's size minus the elements already added in this sample.
 *   scale   finite, >= 0 (e.g. 1/loss_scale^2 to undo loss scaling).
 *
 * Thread safety: calls for distinct layers may run concurrently; calls for the same layer, and any
 * call concurrent with end_sample, traces or reset, must be serialised by the caller.
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, bad layer, count, scale or dtype, too many
 * elements, non-finite gradient, a sum that would overflow double: the message names the layer;
 * the accumulator is unchanged); MSP_ERR_OUT_OF_MEMORY (as for msp_sum_squares).
 */
msp_status msp_fisher_add(msp_fisher *fisher, int64_t layer, const void *grad, msp_dtype dtype,
                          int64_t count, double scale);

/* Closes the current calibration sample: S += 1. A layer that received nothing in the sample counts
 * as a zero gradient. Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_fisher_end_sample(msp_fisher *fisher);

/* The number of samples closed so far. Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL pointer). */
msp_status msp_fisher_num_samples(const msp_fisher *fisher, int64_t *out);

/*
 * Writes the traces of all layers into out[0 .. num_layers-1]: sum_s ||g_ls||^2 / S, or, with
 * per_parameter != 0, further divided by the layer's size (the mean per-weight Fisher, comparable
 * across layers of different size). Chunks added since the last end_sample are not included.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer); MSP_ERR_INVALID_STATE when no sample has
 * been closed yet (out unchanged).
 */
msp_status msp_fisher_traces(const msp_fisher *fisher, int32_t per_parameter, double *out);

/* Clears all sums and the sample count, keeping the layer sizes. Returns MSP_OK or
 * MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_fisher_reset(msp_fisher *fisher);

/*
 * Accumulates the diagonal Fisher element-wise: diag_inout[i] += scale * grad[i]^2 (computed in
 * double from the exactly widened gradient, rounded once to float32). With the weights w,
 * 0.5 * diag[i] * w[i]^2 is an OBD-style pruning score that can be passed to msp_nm_mask.
 *
 *   grad        `count` elements of `dtype`; must be finite.
 *   count       > 0.
 *   diag_inout  `count` floats, updated in place; must not overlap `grad`.
 *   scale       finite, >= 0.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, bad count, scale or dtype, non-finite gradient,
 * an updated value that is not finite in float32: the message gives its index; diag_inout
 * unchanged).
 */
msp_status msp_fisher_add_diagonal(const void *grad, msp_dtype dtype, int64_t count, float *diag_inout,
                                   double scale);

/* ---------------------------------------------------------------------------------------------
 * Planning: problems, levels and budgets
 *
 * A plan assigns one level (an index into the level set) to every layer. Its average sparsity is
 * sum_l size_l * sparsity(level_l) / sum_l size_l, and it is feasible when that average is within
 * `tolerance` of `target`, every layer's level lies within its bounds, and layers of one group share
 * one level. Every plan the library emits is feasible.
 * ------------------------------------------------------------------------------------------- */

/*
 * One allowed choice for a layer. For an N:M level 0 < n <= m <= MSP_MAX_M (n == m is dense) and
 * sparsity must equal 1 - n/m within MSP_LEVEL_SPARSITY_TOLERANCE; for an unstructured level
 * n = m = 0.
 */
typedef struct msp_level {
    double sparsity; /* fraction of weights pruned, in [0, 1) */
    int32_t n;       /* kept per group of m, or 0 */
    int32_t m;       /* group size, or 0 */
} msp_level;

/* The most levels a level set holds (num_levels of msp_problem_create and the cost tables). */
#define MSP_MAX_LEVELS 256

/* How far an N:M level's sparsity may differ from 1 - n/m (rounding in the caller's arithmetic). */
#define MSP_LEVEL_SPARSITY_TOLERANCE 1e-12

/* The most layers a problem holds: num_layers < 2^31. */
#define MSP_MAX_LAYERS 2147483647

/* The widest tolerance msp_problem_set_target takes. */
#define MSP_MAX_TOLERANCE 0.5

/* A validated planning problem: layer sizes, level set, groups, bounds, target. Opaque. */
typedef struct msp_problem msp_problem;

/*
 * Creates a problem over `num_layers` layers and a level set, with target 0.5 and tolerance 0.001
 * until msp_problem_set_target is called.
 *
 *   sizes       num_layers parameter counts > 0 whose sum fits in int64_t (copied).
 *   num_layers  in [1, MSP_MAX_LAYERS].
 *   levels      num_levels levels with strictly increasing sparsity in [0, 1) (copied).
 *   num_levels  in [1, MSP_MAX_LEVELS].
 *   out         receives the handle; release it with msp_problem_free.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, num_layers or num_levels out of range, a size
 * <= 0, sizes overflowing, levels unsorted, out of [0, 1) or with an inconsistent N:M);
 * MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_problem_create(const int64_t *sizes, int64_t num_layers, const msp_level *levels,
                              int64_t num_levels, msp_problem **out);

/* Releases a problem. Accepts NULL. Searches created from it keep their own copy. */
void msp_problem_free(msp_problem *problem);

/*
 * Makes layers share levels: layers with equal group ids (>= 0) always get the same level; a
 * group's size is the sum of its layers' sizes. `groups` = NULL makes every layer its own group.
 * Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL problem, a negative id); the problem is
 * unchanged on error.
 */
msp_status msp_problem_set_groups(msp_problem *problem, const int64_t *groups);

/*
 * Bounds each layer's level: min_level[l] <= level_l <= max_level[l] (indices into the level set).
 * Either array may be NULL for no bound on that side. The bounds of a group are the intersection
 * of its layers' bounds. Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (index out of range, min > max,
 * a group whose layers' bounds do not intersect); the problem is unchanged on error.
 */
msp_status msp_problem_set_bounds(msp_problem *problem, const int32_t *min_level, const int32_t *max_level);

/*
 * Sets the average sparsity to reach and the tolerance around it.
 *
 *   target     in [0, 1).
 *   tolerance  in [0, MSP_MAX_TOLERANCE]; 0.001 is a good default.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (out of range); MSP_ERR_INFEASIBLE when no plan reaches
 * [target - tolerance, target + tolerance]: the message gives the reachable range. The problem is
 * unchanged on error.
 */
msp_status msp_problem_set_target(msp_problem *problem, double target, double tolerance);

/* The lowest and highest average sparsity any plan within the bounds reaches. Returns MSP_OK or
 * MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_problem_range(const msp_problem *problem, double *min_sparsity, double *max_sparsity);

/*
 * Checks a plan (num_layers level indices) and gives its average sparsity. Returns MSP_OK when the
 * plan is feasible; MSP_ERR_INFEASIBLE (with *average_out set) when it misses the budget;
 * MSP_ERR_INVALID_ARGUMENT (NULL, index out of range or out of bounds, group members differing).
 */
msp_status msp_problem_check_plan(const msp_problem *problem, const int32_t *plan, double *average_out);

/* ---------------------------------------------------------------------------------------------
 * Planning: the sensitivity prior and the exact solver
 * ------------------------------------------------------------------------------------------- */

/* How sensitivities map to a prior plan. Fields are only ever appended. */
typedef struct msp_prior_params {
    uint32_t struct_size;        /* sizeof(msp_prior_params) */
    double strength;             /* >= 0: spread of sparsity across layers; 0 = uniform (default 1) */
    int32_t per_parameter;       /* != 0: use sensitivity / size (mean Fisher per weight; default 0) */
} msp_prior_params;

/* The default prior parameters. */
msp_prior_params msp_prior_params_default(void);

/*
 * The sensitivity-informed plan: more sensitive layers get less sparsity.
 *
 * Formula. For every group g (a single layer when there are no groups) let u_g = log(sigma_g),
 * where sigma_g is the sum of its layers' sensitivities, divided by the group's size when
 * per_parameter != 0, and z_g = (u_g - mean(u)) / std(u) (size-weighted mean and standard
 * deviation; z = 0 when all are equal). The continuous prior sparsity is
 * s*_g = sigmoid(c - strength * z_g), with c chosen by bisection so that the size-weighted average
 * of s*_g equals the target. The plan is the feasible plan that minimises
 * sum_g size_g * (sparsity(level_g) - s*_g)^2 (solved as in msp_solve_additive); then, among groups
 * of equal size and bounds, levels are re-assigned in sensitivity order so that a strictly more
 * sensitive group never gets a strictly sparser level. With strength 0 every s*_g equals the
 * target, so the plan is uniform whenever a uniform plan is feasible.
 *
 *   sensitivity  num_layers finite values > 0 (e.g. Fisher traces; zeros are raised to the
 *                smallest positive value present).
 *   params       NULL for the defaults.
 *   plan_out     num_layers level indices.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, negative or non-finite sensitivity, bad params);
 * MSP_ERR_INFEASIBLE; MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_prior_plan(const msp_problem *problem, const double *sensitivity, const msp_prior_params *params,
                          int32_t *plan_out);

/* The most budget cells of msp_solve_additive (2^21). */
#define MSP_SOLVE_MAX_CELLS 2097152

/* The most cell x level x group steps msp_solve_additive spends (2^27). */
#define MSP_SOLVE_MAX_STEPS 134217728

/*
 * The feasible plan minimising sum_l cost[l][level_l] (a multiple-choice knapsack solved by dynamic
 * programming). The budget above the lowest reachable average is discretised into cells of width
 * tolerance / groups where the work allows (at most MSP_SOLVE_MAX_CELLS cells and
 * MSP_SOLVE_MAX_STEPS cell x level x group steps),
 * each cell keeping its cheapest partial plan and that plan's exact budget; the answer is the
 * cheapest complete plan whose exact average meets the tolerance, so it always meets it. The result
 * is optimal for the discretised budgets; a cheaper plan whose exact budget lies in a grid cell
 * shared with a cheaper plan outside the tolerance can be missed (rare: about 1 in 3000 random small
 * instances), and with tolerance 0 a reachable target may then be reported infeasible.
 *
 *   costs       num_layers x num_levels finite values, row-major (cost[l][k] of layer l at level
 *               k); a group's cost is the sum over its layers.
 *   plan_out    num_layers level indices.
 *   total_out   NULL, or receives the plan's total cost.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, non-finite cost); MSP_ERR_INFEASIBLE;
 * MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_solve_additive(const msp_problem *problem, const double *costs, int32_t *plan_out, double *total_out);

/* ---------------------------------------------------------------------------------------------
 * Planning: evolutionary search
 *
 * Individuals are plans. Generation 0 evaluates a small grid of prior plans (strengths x
 * normalisations, uniform included) and the exact optimum of every proxy cost table added with
 * msp_search_add_proxy. Each later generation proposes `offspring` plans never proposed before:
 *
 *   - Surrogate (surrogate_candidates of them, 0 = off): an additive model of fitness,
 *     fitness ~ c + sum_j a_j * proxy_j(plan) + sum_g w[g][level_g], is fitted to every plan
 *     evaluated at full fidelity so far (ridge regression: each correction w is pulled toward 0 with
 *     the weight of surrogate_ridge evaluations, so the model leans on the proxy tables where the
 *     data say little; values that are +inf are left out), and the exact solver (as in
 *     msp_solve_additive) proposes the plan minimising it under the budget. The second and later
 *     surrogate candidates of a generation minimise the model plus Gaussian noise of standard
 *     deviation surrogate_exploration * tau * sqrt(ridge / (ridge + n)) per (group, level), where n
 *     counts the evaluations of that choice and tau^2 is the variance of the values per movable
 *     group (a Thompson-style draw). A draw that gives a plan proposed before is replaced by one
 *     twice as wide, up to 2 x surrogate_candidates + 1 solves per generation; breeding fills the
 *     rest. Each proxy column enters centred and scaled to unit variance over the evaluated plans,
 *     so only a table's relative sizes matter (its scale a_j is fitted).
 *     Cost per generation: the model is refitted from scratch, by Cholesky factorisation of the
 *     normal equations when they have at most 512 unknowns (1 + proxies + the allowed levels of
 *     all groups) and that is the cheaper way, else by conjugate gradients preconditioned with the
 *     diagonal, at most max(32, 2^26 / (2 x evaluations x (groups + proxies + 1))) iterations;
 *     then the exact solves. Measured (2 shared cores): 32 groups x 8 levels with 2,000
 *     evaluations about 7 ms per generation; 224 groups x 16 levels about 0.1 s, mostly the exact
 *     solves.
 *   - Breeding (the rest): a parent from the `survivors` best so far by tournament, crossover with
 *     a second parent (uniform per group) at crossover_rate, mutation (one group a level up or down,
 *     more at mutation_rate; at pair_rate each move is paired with the opposite move of the group
 *     that best cancels its change of the average sparsity, so the budget usually holds without
 *     repair), then a budget repair that moves other groups against any excess.
 *
 * Lower fitness is better. Given the seed, the proxy tables and the fitness values, the sequence of
 * candidates is deterministic (and does not depend on the thread count); since the surrogate fits
 * the values, values that differ in their last bit can lead elsewhere.
 *
 * The defaults were chosen with examples/search_bench.py (synthetic problems of 32 layers x 8 N:8
 * levels with a known optimum, additive or with pairwise terms and noise, with and without a
 * proxy table; 60 instances each): with 2 of 8 offspring from the surrogate the separable problem
 * is solved to within 1% on 30 of 30 instances with 1,000 evaluations (without: 3 of 30, and 19 of
 * 30 with 8,000); 4 or 8 of 8, or 1, did worse on the noisy problems or the small budgets; ridge
 * 0.3 beat 1 and 10 (0.1 was better on the separable problem at 160 evaluations, worse with noise);
 * exploration 0.5 and 2 were no better than 1. Paired moves at rate 1 made the search without the
 * surrogate worse; with it, 0.3 and 1 measured the same within the noise.
 *
 * Multi-fidelity (fidelity_levels > 1): each generation's offspring are first scored at fidelity 0
 * (the cheapest), the best `fidelity_keep` fraction of them again at fidelity 1, and so on; only
 * values at the last fidelity (fidelity_levels - 1) count as a plan's fitness.
 * ------------------------------------------------------------------------------------------- */

/* The most offspring per generation (msp_search_params.offspring; 2^20). */
#define MSP_MAX_OFFSPRING 1048576

/* The most survivors kept as parents (msp_search_params.survivors; 2^20). */
#define MSP_MAX_SURVIVORS 1048576

/* The most fidelity levels (msp_search_params.fidelity_levels). */
#define MSP_MAX_FIDELITY_LEVELS 16

/* Search settings. Fields are only ever appended. */
typedef struct msp_search_params {
    uint32_t struct_size;        /* sizeof(msp_search_params) */
    int32_t generations;         /* > 0 (default 20) */
    int32_t offspring;           /* new plans per generation, in [1, MSP_MAX_OFFSPRING] (default 8) */
    int32_t survivors;           /* best plans kept as parents, in [1, MSP_MAX_SURVIVORS] (default 4) */
    double mutation_rate;        /* in [0, 1]: chance per offspring of extra mutation moves (default 0.5) */
    double crossover_rate;       /* in [0, 1]: chance an offspring has two parents (default 0.5) */
    uint64_t seed;               /* random seed (default 0) */
    double prior_strength;       /* >= 0: strength of the seed prior when prior_grid = 0 (default 1) */
    int32_t prior_per_parameter; /* normalisation of the seed prior when prior_grid = 0 (default 0) */
    int32_t prior_grid;          /* != 0: first evaluate priors at strengths {0, .5, 1, 2} x both
                                    normalisations and seed from the best (default 1) */
    int64_t max_evaluations;     /* stop after this many full-fidelity evaluations; 0 = no limit */
    int32_t patience;            /* stop after this many generations without improvement; 0 = never */
    int32_t fidelity_levels;     /* in [1, MSP_MAX_FIDELITY_LEVELS] (default 1: single fidelity) */
    double fidelity_keep;        /* in (0, 1]: fraction promoted to the next fidelity (default 0.25) */
    /* Appended with the surrogate (sizeof(msp_search_params) is 112 on LP64 since then): */
    int32_t surrogate_candidates; /* in [0, MSP_MAX_OFFSPRING]: offspring per generation proposed by
                                     the surrogate; at most `offspring` are used; 0 = off (default 2) */
    double surrogate_ridge;       /* finite, > 0: evaluations' worth of weight pulling each (group,
                                     level) correction toward the proxies (default 0.3) */
    double surrogate_exploration; /* finite, >= 0: scale of the perturbation of the surrogate for its
                                     second and later candidates (default 1) */
    double pair_rate;             /* in [0, 1]: chance a mutation move is paired with the opposite,
                                     budget-cancelling move of another group (default 0.3) */
} msp_search_params;

/* The default search settings. */
msp_search_params msp_search_params_default(void);

/* An evolutionary search over the plans of a problem. Opaque. Not thread-safe: use one handle from
 * one thread at a time (distinct handles are independent). */
typedef struct msp_search msp_search;

/*
 * Creates a search.
 *
 *   problem      copied; may be freed afterwards.
 *   sensitivity  num_layers values as for msp_prior_plan (copied).
 *   params       NULL for the defaults.
 *   out          receives the handle; release it with msp_search_free.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT; MSP_ERR_INFEASIBLE; MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_search_create(const msp_problem *problem, const double *sensitivity, const msp_search_params *params,
                             msp_search **out);

/* Releases a search. Accepts NULL. */
void msp_search_free(msp_search *search);

/* The most proxy tables one search holds. */
#define MSP_MAX_PROXIES 8

/*
 * Adds a proxy cost table (e.g. msp_cost_table_energy or _reconstruction of every layer): the
 * exact optimum of the table under the budget (as msp_solve_additive finds it) joins generation 0
 * after the prior plans unless it is one of them, and the surrogate is regularised toward the
 * table (see above). Call it before the first msp_search_ask; at most MSP_MAX_PROXIES
 * tables.
 *
 *   costs   num_layers x num_levels finite values, row-major, as for msp_solve_additive (copied);
 *           only their relative sizes matter: the surrogate fits each table's scale.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, a non-finite cost, or group sums that overflow);
 * MSP_ERR_INVALID_STATE (after the first ask, or MSP_MAX_PROXIES tables already added);
 * MSP_ERR_INFEASIBLE (the solver's rare miss described at msp_solve_additive); MSP_ERR_OUT_OF_MEMORY.
 * The search is unchanged on error.
 */
msp_status msp_search_add_proxy(msp_search *search, const double *costs);

/* The most candidates one msp_search_ask can return (size plans_out for it): the larger of
 * `offspring` and 8 + MSP_MAX_PROXIES (generation 0), 0 for NULL. */
int64_t msp_search_max_batch(const msp_search *search);

/*
 * Proposes the next batch of candidates: writes count_out plans of num_layers level indices each,
 * plan after plan, into plans_out (capacity plans at most) and the fidelity to score them at.
 * *count_out = 0 means the search has finished. Calling ask again before tell returns the same
 * batch.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, capacity smaller than the batch: see
 * msp_search_max_batch); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_search_ask(msp_search *search, int32_t *plans_out, int64_t capacity, int64_t *count_out,
                          int32_t *fidelity_out);

/*
 * Reports the fitness of the last batch, in the order asked. Lower is better; +inf marks a plan as
 * worst. Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, NaN or -inf value); MSP_ERR_INVALID_STATE
 * (no batch pending, or count differs from the batch's). The search is unchanged on error.
 */
msp_status msp_search_tell(msp_search *search, const double *fitness, int64_t count);

/*
 * The best plan at the last fidelity so far and its fitness. Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT
 * (NULL); MSP_ERR_INVALID_STATE when nothing has been evaluated yet.
 */
msp_status msp_search_best(const msp_search *search, int32_t *plan_out, double *fitness_out);

/* Progress of a search. */
typedef struct msp_search_progress {
    int32_t generation;          /* generations completed (the prior grid is generation 0) */
    int32_t done;                /* != 0 once ask returns no more candidates */
    int64_t evaluations;         /* full-fidelity evaluations told so far */
    int64_t cheap_evaluations;   /* lower-fidelity evaluations told so far */
    double best_fitness;         /* +inf before the first evaluation */
} msp_search_progress;

/* Fills *out with the search's progress. Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_search_get_progress(const msp_search *search, msp_search_progress *out);

/*
 * Fitness callback of msp_search_run: scores `plan` (num_layers level indices) at `fidelity` into
 * *fitness_out. Return 0 to go on, anything else to cancel; a NaN or -inf fitness also cancels
 * (+inf marks the plan as worst).
 */
typedef int32_t (*msp_fitness_fn)(const int32_t *plan, int64_t num_layers, int32_t fidelity, void *user_data,
                                  double *fitness_out);

/* Progress callback of msp_search_run, called after every batch. Return 0 to go on, else cancel. */
typedef int32_t (*msp_progress_fn)(const msp_search_progress *progress, void *user_data);

/*
 * Drives ask/tell until the search finishes, scoring each candidate with `fitness` (called from the
 * calling thread, in batch order). A cancelled run leaves the search valid: the batch in progress
 * is dropped and the best plan so far stays available.
 *
 *   progress   NULL, or called after every batch.
 *   user_data  passed to both callbacks.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL search or fitness); MSP_ERR_CANCELLED.
 */
msp_status msp_search_run(msp_search *search, msp_fitness_fn fitness, msp_progress_fn progress, void *user_data);

/*
 * Checkpoints. A search's complete state (problem, settings, sensitivities, proxy tables, random
 * generator, population, every plan proposed and evaluated, the batch pending if any) saves to
 * bytes; a search loaded from them continues bit-identically to the one saved: the same batches,
 * given the same fitness values. Save between any two calls (with or without a batch pending, also
 * from the callbacks of msp_search_run); a pending batch is asked again after loading. The bytes
 * depend only on the state; they hold about (plans proposed + plans evaluated) x groups bytes plus
 * 8 per evaluation.
 *
 * Format (version 1): the magic bytes "MSPSRCH\0", the format version (uint32_t), the payload length
 * (uint64_t), the payload, then the FNV-1a 64-bit hash of every preceding byte (uint64_t); all
 * little-endian. The payload's fields are listed at Search.checkpoint() in the Swift sources.
 */

/* The size in bytes of the search's checkpoint now. Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL);
 * MSP_ERR_OUT_OF_MEMORY. */
msp_status msp_search_save_size(const msp_search *search, int64_t *size_out);

/*
 * Writes the search's checkpoint into buffer[0 .. *size_out - 1].
 *
 *   buffer     capacity bytes (size it with msp_search_save_size).
 *   size_out   receives the number of bytes written.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, capacity smaller than the checkpoint: nothing is
 * written); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_search_save(const msp_search *search, void *buffer, int64_t capacity, int64_t *size_out);

/*
 * Creates a search from checkpoint bytes (copied; the buffer may be freed afterwards). Everything
 * read is checked: magic, version, length and checksum, then every count against the bytes left (a
 * corrupted count never causes a large allocation), the problem and settings as msp_problem_* and
 * msp_search_create check them, every value's range, and every plan's feasibility.
 *
 *   data, size  the bytes msp_search_save wrote (size >= 0).
 *   out         receives the handle; release it with msp_search_free.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT for NULL or for truncated, corrupted, foreign or
 * inconsistent data (the message says what is wrong); MSP_ERR_OUT_OF_MEMORY. *out is unchanged on
 * error.
 */
msp_status msp_search_load(const void *data, int64_t size, msp_search **out);

/* ---------------------------------------------------------------------------------------------
 * Planning: proxy costs from the weights
 *
 * Additive costs per (layer, level) for msp_solve_additive, computed without running the model.
 * Each level's mask is the one the pruning functions produce: msp_nm_prune for N:M levels (a dense
 * level costs 0), msp_topk_prune with `scope` for unstructured levels, both scoring |w| * col_scale.
 * ------------------------------------------------------------------------------------------- */

/*
 * Pruned energy of one layer at every level: costs_out[k] = scale * sum over the weights pruned at
 * level k of w^2 * (diag ? diag[i] : 1). With scale = Tr(F_l) / size_l this is the Fisher-weighted
 * energy; with diag = the per-weight Fisher diagonal (msp_fisher_add_diagonal) it is an OBD-style cost.
 *
 *   weights            rows x cols elements of `dtype` (read only), finite (no NaN or inf).
 *   levels, num_levels the level set (as for msp_problem_create); every N:M level's m must divide cols.
 *   scope              MSP_SCOPE_ROW or MSP_SCOPE_LAYER, for unstructured levels (with
 *                      MSP_SCOPE_ROW, cols <= MSP_MAX_TOPK_COLS).
 *   col_scale          NULL or cols finite values >= 0, as for msp_nm_prune.
 *   diag               NULL or rows x cols finite floats.
 *   scale              finite, >= 0.
 *   costs_out          num_levels doubles.
 *
 * Uses scratch memory of a few rows per thread. Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (the
 * message names the argument, e.g. an N:M level whose m does not divide cols, or the level whose
 * cost overflows to inf or NaN: every cost written is finite); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_cost_table_energy(const void *weights, msp_dtype dtype, int64_t rows, int64_t cols,
                                 const msp_level *levels, int64_t num_levels, int32_t scope, const float *col_scale,
                                 const float *diag, double scale, double *costs_out);

/*
 * Output reconstruction error of one layer at every level: costs_out[k] = tr(dW H dW^T), where
 * dW = W - W_k is the part pruned at level k and H = X^T X (cols x cols) is the Gram matrix of the
 * layer's calibration inputs. Computed with BLAS in float32 blocks of rows, accumulated in double.
 *
 *   gram   cols x cols finite floats, used as given (symmetry is not checked); cols <= INT32_MAX.
 *   other arguments as for msp_cost_table_energy.
 *
 * Uses scratch memory of a few copies of a block of rows. Returns as msp_cost_table_energy (finite
 * inputs whose float32 products overflow give MSP_ERR_INVALID_ARGUMENT, not an inf or NaN cost).
 */
msp_status msp_cost_table_reconstruction(const void *weights, msp_dtype dtype, int64_t rows, int64_t cols,
                                         const msp_level *levels, int64_t num_levels, int32_t scope,
                                         const float *col_scale, const float *gram, double *costs_out);

/* ---------------------------------------------------------------------------------------------
 * Pruning with second-order information (SparseGPT)
 *
 * SparseGPT (Frantar & Alistarh, 2023) prunes a layer with the Gram matrix of its calibration
 * inputs, H = sum_t x_t x_t^T (cols x cols): it sweeps the columns and spreads each pruned weight's
 * error over the later columns of its row, optimal-brain-surgeon style, so that the layer's output
 * on those inputs changes as little as possible. msp_gram_* accumulates H per layer from activation
 * chunks; msp_obs_create factorises one H once, and msp_obs_prune then prunes any number of levels
 * and weight matrices with it (every level of a layer for a search database; the weights of several
 * layers that share inputs, such as q/k/v or gate/up). Usage sketch:
 *
 *     int64_t cols[1] = {COLS};
 *     msp_gram *acc;  msp_gram_create(cols, 1, &acc);
 *     for each calibration batch:  msp_gram_add(acc, 0, x, MSP_DTYPE_BF16, TOKENS, COLS);
 *     float *h = malloc(sizeof(float) * COLS * COLS);  msp_gram_get(acc, 0, h);
 *     msp_obs *obs;  msp_obs_create(h, COLS, 0.01, &obs);
 *     msp_level level = {0.7, 0, 0};              // 70% unstructured; {0.75, 2, 8} for 2:8
 *     msp_obs_prune(obs, w, MSP_DTYPE_BF16, ROWS, COLS, &level, 128, keep);
 * ------------------------------------------------------------------------------------------- */

/* Accumulator of per-layer Gram matrices of layer inputs. Opaque. */
typedef struct msp_gram msp_gram;

/*
 * Creates an accumulator over `num_layers` layers with cols[l] input features each; every Gram
 * matrix starts at zero. Nothing is allocated per layer until its first msp_gram_add.
 *
 *   cols        num_layers values in [1, INT32_MAX] (copied).
 *   num_layers  > 0.
 *   out         receives the handle; release it with msp_gram_free.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, num_layers <= 0, a bad width);
 * MSP_ERR_OUT_OF_MEMORY. *out is unchanged on error.
 */
msp_status msp_gram_create(const int64_t *cols, int64_t num_layers, msp_gram **out);

/* Releases an accumulator. Accepts NULL. The handle must not be in use by another thread. */
void msp_gram_free(msp_gram *gram);

/*
 * Adds sum_t x_t x_t^T of one activation chunk to layer `layer` and counts its tokens. Each run of
 * at most 128 tokens is multiplied in float32 by BLAS (ssyrk; the columns scaled by powers of two
 * first, so no product overflows) and added into a double accumulator: every entry agrees with a
 * float64 reference to better than 1e-5 of sqrt(H_ii * H_jj). The layer's accumulator (8 * cols^2
 * bytes) is allocated by its first add; each call uses 4 * cols^2 bytes of scratch besides.
 *
 *   layer   in [0, num_layers).
 *   x       tokens x cols elements of `dtype`, row-major (one token per row); must be finite.
 *   tokens  > 0.
 *   cols    the layer's width, as given to msp_gram_create.
 *
 * Thread safety: calls for distinct layers may run concurrently; calls for the same layer, and any
 * call concurrent with msp_gram_reset, must be serialised by the caller.
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, bad layer, size, width or dtype, a non-finite
 * element: the message names the layer, token and column; a diagonal entry that would exceed
 * 2^127, half the float32 range: scale the inputs down); MSP_ERR_OUT_OF_MEMORY. The accumulator is
 * unchanged on error.
 */
msp_status msp_gram_add(msp_gram *gram, int64_t layer, const void *x, msp_dtype dtype, int64_t tokens,
                        int64_t cols);

/* The number of tokens added to layer `layer` since creation or the last reset. Returns MSP_OK or
 * MSP_ERR_INVALID_ARGUMENT (NULL, bad layer). */
msp_status msp_gram_tokens(const msp_gram *gram, int64_t layer, int64_t *out);

/*
 * Writes layer `layer`'s Gram matrix H = sum_t x_t x_t^T into out[0 .. cols^2 - 1], row-major,
 * rounded to float32 and exactly symmetric; all zeros before the first add. Not divided by the
 * token count (SparseGPT's solver does not depend on the scale of H; sqrt(H_jj / tokens) is the
 * root-mean-square of input feature j, and sqrt(H_jj) is the norm Wanda scores with).
 *
 * Thread safety: may run concurrently with calls for other layers.
 * Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL, bad layer; out unchanged).
 */
msp_status msp_gram_get(const msp_gram *gram, int64_t layer, float *out);

/* Clears every layer's Gram matrix and token count (releasing their memory), keeping the widths.
 * Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_gram_reset(msp_gram *gram);

/* A factorised Gram matrix that prunes weights with SparseGPT. Opaque, immutable after creation. */
typedef struct msp_obs msp_obs;

/*
 * Prepares a Gram matrix as SparseGPT's reference (fasterprune) does and factorises it once:
 *   1. an input j whose diagonal H_jj is 0 is dead: H_jj is set to 1, and msp_obs_prune sets the
 *      weights of column j to 0 before its sweep (they score 0, so a level prunes them first);
 *   2. damp * mean(diag H) (the mean after step 1) is added to the diagonal;
 *   3. U, the upper Cholesky factor of H^-1 (H^-1 = U^T U), is computed in double with LAPACK
 *      (dpotrf and dtrtri of the reversed matrix, H being scaled by a power of four first, which
 *      changes no result) and kept in float32 (4 * cols^2 bytes; the computation uses 8 * cols^2
 *      bytes of scratch).
 *
 *   gram   cols x cols floats, row-major; only the lower triangle (j <= i) is read, and must be
 *          finite; the matrix is taken as symmetric (e.g. from msp_gram_get, or X^T X).
 *   cols   in [1, INT32_MAX].
 *   damp   finite, >= 0; SparseGPT's default is 0.01.
 *   out    receives the handle; release it with msp_obs_free.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, bad cols or damp, a non-finite entry: the
 * message names it; a matrix that is not positive definite after damping, or so close to singular
 * that its factor leaves the float32 range: the message says so and suggests a larger damp);
 * MSP_ERR_OUT_OF_MEMORY. *out is unchanged on error.
 */
msp_status msp_obs_create(const float *gram, int64_t cols, double damp, msp_obs **out);

/* Releases a solver. Accepts NULL. No msp_obs_prune on it may be running. */
void msp_obs_free(msp_obs *obs);

/*
 * Prunes weights in place to one level with SparseGPT's sweep and writes the keep mask.
 *
 * The sweep runs on a float32 copy of the weights (dead inputs zeroed) over blocks of `block`
 * columns. When it reaches a pruned weight w in row r and column c, it sets w to 0 and updates the
 * row's later columns j of the block by w_rj -= (w / U_cc) * U_cj (one fused multiply-add); after
 * each block, the columns after it get the block's errors at once (sgemm on panels of 256 rows).
 * Which weights are pruned, by the score w^2 / U_cc^2 (float32) on the weights as updated so far:
 *   - unstructured (level->n = level->m = 0): when the sweep reaches a block of `width` columns,
 *     exactly floor(sparsity * rows * width + 0.5) weights of the whole block (all rows) are pruned:
 *     those with the lowest score, ties pruning the higher row-major index within the block first;
 *   - N:M (0 < n < m): when the sweep reaches a group of m columns in a row, the n with the highest
 *     score are kept (ties: the lower column), the others pruned; `block` is rounded down to a
 *     multiple of m (at least m), which changes no choice, only rounding;
 *   - n == m (dense): nothing is pruned (dead inputs are still zeroed).
 * Weights of dead inputs are zeroed first, so a level prunes them first; when a level prunes fewer
 * weights than score 0 (dead or zero weights), some zeros are counted as kept. The result is
 * computed in float32 (16-bit weights rounded once at the end, to nearest even) and does not
 * depend on the thread count.
 *
 *   obs        a solver from msp_obs_create.
 *   weights    rows x cols elements of `dtype`, row-major, finite; replaced by the pruned weights.
 *   dtype      MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16.
 *   rows       in [1, INT32_MAX]; rows * cols must fit in int64_t.
 *   cols       the solver's cols; for an N:M level a multiple of m.
 *   level      one level, as in a level set: unstructured (n = m = 0) with sparsity in [0, 1), or
 *              N:M with 0 < n <= m <= MSP_MAX_M and sparsity = 1 - n/m within
 *              MSP_LEVEL_SPARSITY_TOLERANCE.
 *   block      > 0; SparseGPT's default is 128 (the unstructured choice is made per block).
 *   keep_out   NULL, or rows x cols bytes written with 1 = keep, 0 = pruned; must not overlap
 *              `weights`.
 *
 * Threads: with a single-threaded OpenBLAS (OPENBLAS_NUM_THREADS=1, the faster setting), panels of
 * 256 rows are split across msp's threads (msp_set_num_threads); next to a multithreaded OpenBLAS
 * (its default) the sweep stays on the calling thread and OpenBLAS parallelises the products, since
 * its idle threads spin and would take the cores from msp's. The result is the same either way.
 * Uses scratch memory of 4 * rows * cols bytes plus 8 * rows * min(block, cols) bytes.
 * Thread safety: the solver is immutable; calls on one solver may run concurrently (on distinct
 * buffers). Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, bad size, dtype, level or block, cols
 * differing from the solver's, an N:M level whose m does not divide cols, a non-finite weight: the
 * message names it; pruned weights that overflow the element type: the message suggests a larger
 * damp); MSP_ERR_OUT_OF_MEMORY. On error neither the weights nor the keep mask have changed.
 */
msp_status msp_obs_prune(const msp_obs *obs, void *weights, msp_dtype dtype, int64_t rows, int64_t cols,
                         const msp_level *level, int64_t block, uint8_t *keep_out);

#ifdef __cplusplus
}
#endif

#endif /* MSP_H */
