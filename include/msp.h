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
 *   - Every fallible function returns an msp_status (MSP_OK = 0). On error it leaves every caller
 *     buffer unchanged and sets a message readable with msp_last_error_message().
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

#define MSP_VERSION_MAJOR 0
#define MSP_VERSION_MINOR 1
#define MSP_VERSION_PATCH 0

/* Incremented whenever a declaration in this header changes incompatibly. */
#define MSP_ABI_VERSION 1

/* The library's version as "MAJOR.MINOR.PATCH"; static storage, never NULL. */
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
 */
msp_status msp_set_num_threads(int32_t n);

/* The number of threads the kernels use now (>= 1). */
int32_t msp_get_num_threads(void);

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

/*
 * Computes the N:M keep mask of explicit scores: in every group of m consecutive elements along a
 * row, the n with the highest score are kept (ties: lower index kept).
 *
 *   scores         rows x cols elements of `dtype`, row-major; must not contain NaN.
 *   dtype          MSP_DTYPE_F32, MSP_DTYPE_F16 or MSP_DTYPE_BF16.
 *   rows, cols     > 0, rows * cols must fit in int64_t; cols % m == 0.
 *   n, m           0 < n < m <= 32.
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
 *   n, m           0 < n < m <= 32.
 *   col_scale      NULL for magnitude scores, or `cols` finite non-negative floats (Wanda passes the
 *                  L2 norm of each input feature). A score |w| * col_scale that is NaN (an infinite
 *                  weight times a zero scale) is an error.
 *   keep_mask_out  NULL, or rows x cols bytes written with 1 = keep, 0 = prune.
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
 *   weights, dtype, rows, cols, col_scale, keep_mask_out   as for msp_nm_prune (no cols % m rule).
 *   sparsity       in [0, 1).
 *   scope          MSP_SCOPE_ROW or MSP_SCOPE_LAYER.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (as for msp_nm_prune, plus a sparsity outside [0, 1) or an
 * unknown scope); MSP_ERR_OUT_OF_MEMORY.
 */
msp_status msp_topk_prune(void *weights, msp_dtype dtype, int64_t rows, int64_t cols, double sparsity,
                          int32_t scope, const float *col_scale, uint8_t *keep_mask_out);

/* ---------------------------------------------------------------------------------------------
 * Fisher traces
 *
 * The sensitivity of layer l is the trace of its Fisher information, Tr(F_l) = (1/S) sum_s ||g_ls||^2,
 * where g_ls is the loss gradient with respect to the layer's weights on calibration sample s.
 * ------------------------------------------------------------------------------------------- */

/*
 * Sum of squares of a buffer, accumulated in double with compensated (Kahan-Babuska) summation.
 * 16-bit inputs are widened exactly. Deterministic for any thread count.
 *
 *   data    `count` elements of `dtype`; must be finite.
 *   count   > 0.
 *   out     receives the sum.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer, count <= 0, unknown dtype, non-finite
 * element: the message gives its index).
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
 * elements, non-finite gradient: the message names the layer; the accumulator is unchanged).
 */
msp_status msp_fisher_add(msp_fisher *fisher, int64_t layer, const void *grad, msp_dtype dtype,
                          int64_t count, double scale);

/* Closes the current calibration sample: S += 1. Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_fisher_end_sample(msp_fisher *fisher);

/* The number of samples closed so far. Returns MSP_OK or MSP_ERR_INVALID_ARGUMENT (NULL pointer). */
msp_status msp_fisher_num_samples(const msp_fisher *fisher, int64_t *out);

/*
 * Writes the traces of all layers into out[0 .. num_layers-1]: sum_s ||g_ls||^2 / S, or, with
 * per_parameter != 0, further divided by the layer's size (the mean per-weight Fisher, comparable
 * across layers of different size).
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL pointer); MSP_ERR_INVALID_STATE when no sample has
 * been closed yet (out unchanged).
 */
msp_status msp_fisher_traces(const msp_fisher *fisher, int32_t per_parameter, double *out);

/* Clears all sums and the sample count, keeping the layer sizes. Returns MSP_OK or
 * MSP_ERR_INVALID_ARGUMENT (NULL). */
msp_status msp_fisher_reset(msp_fisher *fisher);

/*
 * Accumulates the diagonal Fisher element-wise: diag_inout[i] += scale * grad[i]^2 (in float32 after
 * widening grad exactly). With the weights w, 0.5 * diag[i] * w[i]^2 is an OBD-style pruning score
 * that can be passed to msp_nm_mask.
 *
 *   grad        `count` elements of `dtype`; must be finite.
 *   count       > 0.
 *   diag_inout  `count` floats, updated in place.
 *   scale       finite, >= 0.
 *
 * Returns MSP_OK; MSP_ERR_INVALID_ARGUMENT (NULL, bad count, scale or dtype, non-finite gradient:
 * the message gives its index; diag_inout unchanged).
 */
msp_status msp_fisher_add_diagonal(const void *grad, msp_dtype dtype, int64_t count, float *diag_inout,
                                   double scale);

#ifdef __cplusplus
}
#endif

#endif /* MSP_H */
