/*
 * fuzz_masking: msp_nm_mask, msp_nm_prune and msp_topk_prune.
 *
 * Sizes, dtypes, N:M patterns, sparsities, scopes, col_scale and payloads (NaN, inf, subnormals,
 * ties) come from the fuzzer. Buffers are exactly rows x cols elements. A call must succeed exactly
 * when the arguments are valid by the header, and then give the reference result (score descending,
 * index ascending; pruned weights +0, kept ones untouched); on error nothing may change.
 * Sizes the header rejects (non-positive, overflowing) are passed with small buffers: the library
 * must refuse them before touching memory.
 */
#include "fuzz_common.h"

/* Sizes whose products overflow int64 or byte counts, or are not positive. */
static const int64_t hostile_sizes[] = {0, -1, -4, INT64_MIN, INT64_MAX, (int64_t)1 << 31, (int64_t)1 << 32,
                                        (int64_t)1 << 62, ((int64_t)1 << 61) + 4, (int64_t)3 << 61};

/* Whether rows x cols elements of `width` bytes cannot exist (the header's size rules fail). */
static int size_invalid(int64_t rows, int64_t cols, size_t width) {
    if (rows <= 0 || cols <= 0) return 1;
    if (rows > INT64_MAX / cols) return 1;
    return rows * cols > INT64_MAX / (int64_t)width;
}

/* Score of element i (column c) as the library defines it. */
static float score_of(const void *buf, msp_dtype dtype, size_t i, int64_t c, int magnitude, const float *scale) {
    float v = fz_element(buf, dtype, i);
    if (!magnitude) return v;
    v = fabsf(v);
    return scale ? v * scale[c] : v;
}

/* Whether element a is ordered before element b (score descending, then index ascending). */
static int before(float sa, size_t a, float sb, size_t b) { return sa > sb || (sa == sb && a < b); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    uint8_t op = fz_u8(&in) % 3; /* 0 nm_mask, 1 nm_prune, 2 topk_prune */
    msp_dtype dtype = fz_dtype(&in);
    size_t width = fz_valid_dtype(dtype) ? fz_width(dtype) : 4;

    int32_t n, m;
    if (fz_u8(&in) < 224) {
        m = (int32_t)fz_range(&in, 1, 33);
        n = (int32_t)fz_range(&in, 0, m);
    } else {
        n = (int32_t)fz_u32(&in);
        m = (int32_t)fz_u32(&in);
    }

    int64_t rows, cols;
    int hostile = fz_u8(&in) >= 240;
    if (hostile) {
        rows = hostile_sizes[fz_u8(&in) % (sizeof hostile_sizes / sizeof *hostile_sizes)];
        cols = hostile_sizes[fz_u8(&in) % (sizeof hostile_sizes / sizeof *hostile_sizes)];
        if (fz_bool(&in)) rows = fz_range(&in, 1, 8);
        if (!size_invalid(rows, cols, width)) return 0; /* no buffer can honour these sizes here */
    } else {
        rows = fz_range(&in, 1, 12);
        if (op != 2 && m > 0 && m <= MSP_MAX_M && fz_u8(&in) < 232) cols = m * fz_range(&in, 1, 40);
        else cols = fz_range(&in, 1, 300);
    }
    size_t count = hostile ? 64 : (size_t)(rows * cols);
    size_t ncols = hostile ? 64 : (size_t)cols;

    int nan_ok = fz_u8(&in) % 4 == 0;
    void *buf = fz_alloc(count * width);
    fz_fill(&in, buf, count, fz_valid_dtype(dtype) ? dtype : MSP_DTYPE_F32, nan_ok);

    float *scale = NULL;
    int scale_ok = 1;
    if (op != 0 && fz_bool(&in)) {
        scale = fz_alloc(ncols * sizeof(float));
        int raw = fz_u8(&in) % 4 == 0;
        fz_fill(&in, scale, ncols, MSP_DTYPE_F32, raw);
        for (size_t c = 0; c < ncols; c++) {
            if (!raw) scale[c] = isfinite(scale[c]) ? fabsf(scale[c]) : 1.0f;
            if (!(isfinite(scale[c]) && scale[c] >= 0)) scale_ok = 0;
        }
    }
    uint8_t *mask = NULL;
    if (op == 0 || fz_u8(&in) % 4 != 0) {
        mask = fz_alloc(count);
        for (size_t i = 0; i < count; i++) mask[i] = fz_u8(&in);
    }
    double sparsity = fz_ratio(&in);
    int32_t scope = fz_u8(&in) < 248 ? (int32_t)(fz_u8(&in) & 1) : (int32_t)fz_u32(&in);

    /* Argument validity by the header. */
    int valid = !hostile && fz_valid_dtype(dtype) && scale_ok;
    if (op != 2) valid = valid && n > 0 && n < m && m <= MSP_MAX_M && cols % m == 0;
    else valid = valid && sparsity >= 0 && sparsity < 1 && (scope == MSP_SCOPE_ROW || scope == MSP_SCOPE_LAYER);
    float *scores = NULL;
    if (!hostile && fz_valid_dtype(dtype)) {
        scores = fz_alloc(count * sizeof(float));
        for (size_t i = 0; i < count; i++) {
            scores[i] = score_of(buf, dtype, i, (int64_t)(i % ncols), op != 0, scale_ok ? scale : NULL);
            if (isnan(scores[i])) valid = 0;
        }
    }

    void *buf0 = fz_copy(buf, count * width);
    void *scale0 = fz_copy(scale, ncols * sizeof(float));
    void *mask0 = fz_copy(mask, count);
    msp_status st;
    const char *name;
    if (op == 0) {
        name = "msp_nm_mask";
        st = fz_status(msp_nm_mask(buf, dtype, rows, cols, n, m, mask), name);
    } else if (op == 1) {
        name = "msp_nm_prune";
        st = fz_status(msp_nm_prune(buf, dtype, rows, cols, n, m, scale, mask), name);
    } else {
        name = "msp_topk_prune";
        st = fz_status(msp_topk_prune(buf, dtype, rows, cols, sparsity, scope, scale, mask), name);
    }

    FZ_CHECK(fz_same(scale, scale0, ncols * sizeof(float)), "%s changed col_scale", name);
    if (st != MSP_OK) {
        FZ_CHECK(!valid, "%s rejected valid arguments (rows %lld, cols %lld, n %d, m %d, dtype %d, sparsity %g)",
                 name, (long long)rows, (long long)cols, (int)n, (int)m, (int)dtype, sparsity);
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "%s: status %d for invalid arguments", name, (int)st);
        FZ_CHECK(fz_same(buf, buf0, count * width), "%s changed its input on error", name);
        FZ_CHECK(fz_same(mask, mask0, count), "%s changed keep_mask_out on error", name);
    } else {
        FZ_CHECK(valid, "%s accepted invalid arguments (rows %lld, cols %lld, n %d, m %d, dtype %d, sparsity %g)",
                 name, (long long)rows, (long long)cols, (int)n, (int)m, (int)dtype, sparsity);
        /* The reference keep decision of every element. */
        uint8_t *keep = fz_alloc(count);
        if (op != 2) {
            for (int64_t r = 0; r < rows; r++)
                for (int64_t g = 0; g < cols; g += m) {
                    size_t base = (size_t)(r * cols + g);
                    int kept = 0;
                    for (int32_t p = 0; p < m; p++) {
                        int ahead = 0;
                        for (int32_t q = 0; q < m; q++)
                            if (q != p && before(scores[base + q], q, scores[base + p], p)) ahead++;
                        keep[base + p] = ahead < n;
                        kept += keep[base + p];
                    }
                    FZ_CHECK(kept == n, "%s reference kept %d of %d", name, kept, (int)n);
                }
        } else if (!mask) {
            /* Without a mask: every weight is unchanged or became +0, at most floor(s * size) per group. */
            for (size_t i = 0; i < count; i++) keep[i] = fz_element_bits(buf, dtype, i) == fz_element_bits(buf0, dtype, i);
        } else {
            /* With a mask: the group's pruned count, and every kept element ordered before every pruned one. */
            int64_t groups = scope == MSP_SCOPE_ROW ? rows : 1;
            size_t group_size = scope == MSP_SCOPE_ROW ? (size_t)cols : count;
            int64_t pruned_want = (int64_t)floor(sparsity * (double)group_size);
            for (int64_t gi = 0; gi < groups; gi++) {
                size_t base = (size_t)gi * group_size;
                int64_t pruned = 0, worst_kept = -1, best_pruned = -1;
                for (size_t i = base; i < base + group_size; i++) {
                    FZ_CHECK(mask[i] <= 1, "%s mask[%zu] = %u", name, i, mask[i]);
                    if (mask[i]) {
                        if (worst_kept < 0 || before(scores[worst_kept], (size_t)worst_kept, scores[i], i))
                            worst_kept = (int64_t)i;
                    } else {
                        pruned++;
                        if (best_pruned < 0 || before(scores[i], i, scores[best_pruned], (size_t)best_pruned))
                            best_pruned = (int64_t)i;
                    }
                }
                FZ_CHECK(pruned == pruned_want, "%s pruned %lld in group %lld, want %lld", name, (long long)pruned,
                         (long long)gi, (long long)pruned_want);
                if (worst_kept >= 0 && best_pruned >= 0)
                    FZ_CHECK(before(scores[worst_kept], (size_t)worst_kept, scores[best_pruned], (size_t)best_pruned),
                             "%s kept %lld (score %g) but pruned %lld (score %g)", name, (long long)worst_kept,
                             scores[worst_kept], (long long)best_pruned, scores[best_pruned]);
            }
            memcpy(keep, mask, count);
        }
        for (size_t i = 0; i < count; i++) {
            if (mask) FZ_CHECK(mask[i] == keep[i], "%s mask[%zu] = %u, want %u", name, i, mask[i], keep[i]);
            if (op == 0) continue;
            uint32_t now = fz_element_bits(buf, dtype, i), was = fz_element_bits(buf0, dtype, i);
            if (keep[i]) FZ_CHECK(now == was, "%s changed kept weight %zu: %x -> %x", name, i, was, now);
            else FZ_CHECK(now == 0, "%s pruned weight %zu is %x, not +0", name, i, now);
        }
        if (op == 0) FZ_CHECK(fz_same(buf, buf0, count * width), "msp_nm_mask changed the scores");
        free(keep);
    }
    free(scores);
    free(buf0);
    free(scale0);
    free(mask0);
    free(buf);
    free(scale);
    free(mask);
    return 0;
}
