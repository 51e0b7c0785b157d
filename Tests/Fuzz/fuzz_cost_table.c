/*
 * fuzz_cost_table: msp_cost_table_energy and msp_cost_table_reconstruction.
 *
 * Sizes, dtypes, level sets (N:M with m dividing cols or not, unstructured, raw values), scope,
 * col_scale, diag, scale, the Gram matrix and payloads come from the fuzzer. A call must succeed
 * exactly when the arguments are valid by the header; then every level's cost must equal the cost
 * of the mask that msp_nm_prune / msp_topk_prune produce for it (the header's definition), computed
 * here in long double. costs_out must be unchanged on error.
 */
#include "fuzz_common.h"

#define MAX_LEVELS 10

/* The level-set rules of msp_problem_create, plus m dividing cols. An N:M level's sparsity counts as
 * 1 - n/m when within 1e-12 of it (the library's rounding allowance). */
static int valid_levels(const msp_level *levels, int64_t k, int64_t cols) {
    if (k < 1 || k > MSP_MAX_LEVELS) return 0;
    double previous = -1;
    for (int64_t i = 0; i < k; i++) {
        const msp_level *l = &levels[i];
        double s = l->sparsity;
        if (l->n == 0 && l->m == 0) {
            if (!(s >= 0 && s < 1)) return 0;
        } else {
            if (!(l->n > 0 && l->n <= l->m && l->m <= MSP_MAX_M)) return 0;
            s = 1.0 - (double)l->n / (double)l->m;
            if (!(fabs(s - l->sparsity) <= 1e-12)) return 0;
            if (cols % l->m != 0) return 0;
        }
        if (!(s > previous)) return 0;
        previous = s;
    }
    return 1;
}

/* The keep mask of one level as the pruning functions give it. */
static void level_mask(const void *w, msp_dtype dtype, int64_t rows, int64_t cols, const msp_level *level,
                       int32_t scope, const float *col_scale, uint8_t *keep) {
    size_t count = (size_t)(rows * cols), bytes = count * fz_width(dtype);
    if (level->n != 0 && level->n == level->m) {
        memset(keep, 1, count);
        return;
    }
    void *copy = fz_copy(w, bytes);
    msp_status st = level->n ? msp_nm_prune(copy, dtype, rows, cols, level->n, level->m, col_scale, keep)
                             : msp_topk_prune(copy, dtype, rows, cols, level->sparsity, scope, col_scale, keep);
    FZ_CHECK(st == MSP_OK, "reference pruning of level (%g, %d:%d) failed: %d", level->sparsity, (int)level->n,
             (int)level->m, (int)st);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    int recon = fz_bool(&in);
    msp_dtype dtype = fz_dtype(&in);
    int dtype_ok = fz_valid_dtype(dtype);
    msp_dtype fill_type = dtype_ok ? dtype : MSP_DTYPE_F32;
    int64_t rows = fz_range(&in, 1, 10);
    int64_t cols = fz_u8(&in) < 200 ? 4 * fz_range(&in, 1, 16) : fz_range(&in, 1, 70);
    int hostile = fz_u8(&in) >= 250;
    if (hostile) {
        static const int64_t bad[] = {0, -1, INT64_MIN, INT64_MAX, (int64_t)1 << 62};
        if (fz_bool(&in)) rows = bad[fz_u8(&in) % 5];
        else cols = bad[fz_u8(&in) % 5];
        if (rows > 0 && cols > 0 && !(rows > INT64_MAX / cols) && rows * cols <= INT64_MAX / 4 &&
            (!recon || !(cols > INT64_MAX / cols)))
            return 0; /* sizes that would need a real buffer this big */
    }
    size_t count = hostile ? 64 : (size_t)(rows * cols), ncols = hostile ? 8 : (size_t)cols;

    msp_level levels[MAX_LEVELS];
    int64_t num_levels = fz_range(&in, 1, MAX_LEVELS);
    uint8_t lmode = fz_u8(&in) % 4;
    for (int64_t i = 0; i < num_levels; i++) {
        if (lmode == 0) {
            int32_t m = (int32_t)(fz_bool(&in) ? 4 : 8);
            int32_t n = m - (int32_t)(i % m);
            levels[i] = (msp_level){1.0 - (double)n / m, n, m};
        } else if (lmode == 1) {
            levels[i] = (msp_level){(double)i / (double)(num_levels + fz_range(&in, 0, 3)), 0, 0};
        } else if (lmode == 2) {
            int32_t m = (int32_t)fz_range(&in, 1, MSP_MAX_M), n = (int32_t)fz_range(&in, 1, m);
            levels[i] = fz_bool(&in) ? (msp_level){1.0 - (double)n / m, n, m} : (msp_level){fz_u8(&in) / 256.0, 0, 0};
        } else {
            levels[i] = (msp_level){fz_double(&in), (int32_t)fz_range(&in, -1, 33), (int32_t)fz_range(&in, -1, 33)};
        }
    }
    if (lmode == 2) /* sort by sparsity so that mixed sets are often valid */
        for (int64_t i = 1; i < num_levels; i++)
            for (int64_t j = i; j > 0 && levels[j].sparsity < levels[j - 1].sparsity; j--) {
                msp_level t = levels[j];
                levels[j] = levels[j - 1];
                levels[j - 1] = t;
            }
    int64_t pass_levels = fz_u8(&in) == 0 ? (fz_bool(&in) ? 0 : 257) : num_levels;
    int32_t scope = fz_u8(&in) < 250 ? (int32_t)fz_bool(&in) : (int32_t)fz_u32(&in);

    int nonfinite_ok = fz_u8(&in) % 4 == 0;
    void *w = fz_alloc(count * (dtype_ok ? fz_width(dtype) : 4));
    fz_fill(&in, w, count, fill_type, nonfinite_ok);
    if (!nonfinite_ok) /* keep most weights finite so that the success path is fuzzed */
        for (size_t i = 0; i < count; i++)
            if (!isfinite(fz_element(w, fill_type, i))) memset((uint8_t *)w + i * fz_width(fill_type), 0, fz_width(fill_type));
    float *col_scale = NULL, *diag = NULL, *gram = NULL;
    if (fz_bool(&in)) {
        col_scale = fz_alloc(ncols * sizeof(float));
        fz_fill(&in, col_scale, ncols, MSP_DTYPE_F32, nonfinite_ok);
        if (!nonfinite_ok)
            for (size_t c = 0; c < ncols; c++) col_scale[c] = isfinite(col_scale[c]) ? fabsf(col_scale[c]) : 1.0f;
    }
    double scale = 1.0;
    if (!recon) {
        if (fz_bool(&in)) {
            diag = fz_alloc(count * sizeof(float));
            fz_fill(&in, diag, count, MSP_DTYPE_F32, nonfinite_ok);
            if (!nonfinite_ok)
                for (size_t i = 0; i < count; i++) if (!isfinite(diag[i])) diag[i] = 0.5f;
        }
        scale = fz_u8(&in) < 200 ? fz_u16(&in) / 1024.0 : fz_double(&in);
    } else if (fz_u8(&in) != 0) {
        gram = fz_alloc(ncols * ncols * sizeof(float));
        fz_fill(&in, gram, ncols * ncols, MSP_DTYPE_F32, nonfinite_ok);
        if (!nonfinite_ok)
            for (size_t i = 0; i < ncols * ncols; i++) if (!isfinite(gram[i])) gram[i] = 0;
    }

    /* Validity by the header; `why` names the first rule broken. */
    const char *why = hostile ? "sizes" : !dtype_ok ? "dtype" : pass_levels != num_levels ? "num_levels"
                    : !valid_levels(levels, num_levels, cols) ? "levels"
                    : !(scope == MSP_SCOPE_ROW || scope == MSP_SCOPE_LAYER) ? "scope" : NULL;
    for (size_t i = 0; !why && i < count; i++) if (!isfinite(fz_element(w, dtype, i))) why = "weights";
    for (size_t c = 0; !why && col_scale && c < ncols; c++) if (!(isfinite(col_scale[c]) && col_scale[c] >= 0)) why = "col_scale";
    for (size_t i = 0; !why && diag && i < count; i++) if (!isfinite(diag[i])) why = "diag";
    if (recon) {
        if (!why && !gram) why = "gram NULL";
        for (size_t i = 0; !why && i < ncols * ncols; i++) if (!isfinite(gram[i])) why = "gram";
    } else if (!why && !(isfinite(scale) && scale >= 0)) {
        why = "scale";
    }
    int valid = why == NULL;

    /* The reference costs: the pruned part of every level's mask, in long double. */
    long double wants[MAX_LEVELS] = {0}, mags[MAX_LEVELS] = {0}, errs[MAX_LEVELS] = {0}, limit = recon ? 1e30L : 1e300L;
    int may_overflow = 0;
    if (valid) {
        uint8_t *keep = fz_alloc(count);
        for (int64_t k = 0; k < num_levels; k++) {
            level_mask(w, dtype, rows, cols, &levels[k], scope, col_scale, keep);
            long double want = 0, mag = 0, floor_err = 0;
            if (!recon) {
                for (size_t i = 0; i < count; i++) {
                    if (keep[i]) continue;
                    long double x = fz_element(w, dtype, i), t = x * x * (diag ? diag[i] : 1.0f);
                    want += t;
                    mag += fabsl(t);
                }
                want *= scale;
                mag *= scale;
            } else {
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t a = 0; a < cols; a++) {
                        size_t ia = (size_t)(r * cols + a);
                        if (keep[ia]) continue;
                        for (int64_t b = 0; b < cols; b++) {
                            size_t ib = (size_t)(r * cols + b);
                            if (keep[ib]) continue;
                            long double t = (long double)fz_element(w, dtype, ia) * gram[a * cols + b] * fz_element(w, dtype, ib);
                            want += t;
                            mag += fabsl(t);
                        }
                    }
            }
            if (recon) /* the float32 product dW H itself may overflow although the cost would not */
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++) {
                        /* float32 underflow: each product element is off by up to cols subnormal steps */
                        if (!keep[r * cols + c]) floor_err += fabsl((long double)fz_element(w, dtype, (size_t)(r * cols + c))) * cols * 1.5e-45L;
                        long double p = 0;
                        for (int64_t b = 0; b < cols; b++)
                            if (!keep[r * cols + b]) p += fabsl((long double)fz_element(w, dtype, (size_t)(r * cols + b)) * gram[b * cols + c]);
                        if (p >= 1e37L) may_overflow = 1, mag = limit;
                    }
            wants[k] = want;
            mags[k] = mag;
            errs[k] = floor_err;
            if (mag >= limit) may_overflow = 1;
        }
        free(keep);
    }

    double costs[MAX_LEVELS + 1];
    for (int i = 0; i <= MAX_LEVELS; i++) costs[i] = -31.0;
    void *w0 = fz_copy(w, count * (dtype_ok ? fz_width(dtype) : 4));
    const char *name = recon ? "msp_cost_table_reconstruction" : "msp_cost_table_energy";
    msp_status st = recon ? msp_cost_table_reconstruction(w, dtype, rows, cols, levels, pass_levels, scope, col_scale, gram, costs)
                          : msp_cost_table_energy(w, dtype, rows, cols, levels, pass_levels, scope, col_scale, diag, scale, costs);
    fz_status(st, name);
    FZ_CHECK(fz_same(w, w0, count * (dtype_ok ? fz_width(dtype) : 4)), "%s changed the weights", name);
    FZ_CHECK(costs[MAX_LEVELS] == -31.0 && (num_levels == MAX_LEVELS || costs[num_levels] == -31.0),
             "%s wrote past num_levels", name);
    if (st != MSP_OK) {
        FZ_CHECK(!valid || may_overflow, "%s rejected valid arguments (%d)", name, (int)st);
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "%s: status %d", name, (int)st);
        for (int i = 0; i < MAX_LEVELS; i++) FZ_CHECK(costs[i] == -31.0, "%s wrote costs_out on error", name);
    } else {
        FZ_CHECK(valid, "%s accepted invalid arguments (%s)", name, why);
        for (int64_t k = 0; k < num_levels; k++) {
            FZ_CHECK(isfinite(costs[k]), "%s: costs[%lld] = %g is not finite", name, (long long)k, costs[k]);
            if (mags[k] < limit) /* beyond that float32 (double) products may overflow */
                FZ_CHECK(fabsl(costs[k] - wants[k]) <= (recon ? 1e-4L : 1e-9L) * mags[k] + errs[k] + 1e-300L,
                         "%s: costs[%lld] = %.17g, want %.17Lg (magnitude %.3Lg)", name, (long long)k, costs[k], wants[k], mags[k]);
        }
    }
    free(w0);
    free(w);
    free(col_scale);
    free(diag);
    free(gram);
    return 0;
}
