/*
 * fuzz_obs: the Gram accumulator (msp_gram_*) and the SparseGPT solver (msp_obs_*).
 *
 * Gram: a fuzzer-chosen call sequence (add with any layer, dtype, size and payload, get, tokens,
 * reset, NULL arguments) against a model kept here in long double: every success must agree with
 * the model within the header's bound, every error must leave the accumulator unchanged.
 *
 * Solver: Gram matrices from fuzzed tokens (X^T X), raw bits, or 4^k * I with dead inputs; any damp;
 * then prunes with any dtype, shape, level, block and payload. A prune must succeed exactly when its
 * arguments are valid by the header (or fail naming an overflow), leave weights and keep mask
 * unchanged on error, and on success prune exactly the header's count (per block, or n kept per
 * group) to +0 bits. With H = 4^k * I and damp 0 every score is w*w in float32 and nothing is
 * updated, so the result must equal the stable-sort reference computed here; otherwise the result
 * must be the same bytes with 1 and 2 threads.
 */
#include "fuzz_common.h"

#define MAX_COLS 24
#define MAX_ROWS 40
#define MAX_LAYERS 3

static long double model_h[MAX_LAYERS][MAX_COLS * MAX_COLS];

static void fuzz_gram(fz_input *in) {
    int64_t layers = fz_range(in, 1, MAX_LAYERS), cols[MAX_LAYERS], tokens_added[MAX_LAYERS] = {0};
    for (int64_t l = 0; l < layers; l++) cols[l] = fz_range(in, 1, MAX_COLS);
    msp_gram *acc = NULL, *sentinel = (msp_gram *)&layers, *out = sentinel;
    int64_t bad_cols[MAX_LAYERS] = {cols[0], 0, -5};
    fz_status(msp_gram_create(bad_cols, 2 + fz_bool(in), &out), "msp_gram_create(bad)");
    FZ_CHECK(out == sentinel, "msp_gram_create changed *out on error");
    FZ_CHECK(msp_gram_create(cols, fz_bool(in) ? 0 : -1, &out) == MSP_ERR_INVALID_ARGUMENT, "num_layers <= 0");
    FZ_CHECK(fz_status(msp_gram_create(cols, layers, &acc), "msp_gram_create") == MSP_OK && acc, "create");
    memset(model_h, 0, sizeof model_h);
    int steps = fz_range(in, 1, 12);
    for (int s = 0; s < steps && in->size > 0; s++) {
        uint8_t op = fz_u8(in) % 6;
        int64_t layer = fz_u8(in) < 240 ? fz_range(in, 0, layers - 1) : (int64_t)(int8_t)fz_u8(in);
        int in_range = layer >= 0 && layer < layers;
        int64_t c = in_range ? cols[layer] : 4;
        if (op <= 2) {
            msp_dtype dtype = fz_dtype(in);
            int dtype_ok = fz_valid_dtype(dtype);
            int64_t t = fz_u8(in) < 250 ? fz_range(in, 1, 150) : -fz_range(in, 0, 2);
            int64_t call_cols = fz_u8(in) < 240 ? c : fz_range(in, 1, MAX_COLS);
            size_t n = t > 0 ? (size_t)(t * call_cols) : 1, width = dtype_ok ? fz_width(dtype) : 4;
            void *x = fz_alloc(n * width);
            fz_fill(in, x, n, dtype_ok ? dtype : MSP_DTYPE_F32, fz_u8(in) % 4 == 0);
            float before[MAX_COLS * MAX_COLS];
            if (in_range) FZ_CHECK(msp_gram_get(acc, layer, before) == MSP_OK, "get");
            msp_status st = fz_status(msp_gram_add(acc, layer, x, dtype, t, call_cols), "msp_gram_add");
            int valid = in_range && dtype_ok && t > 0 && call_cols == c, near = 0;
            long double squares[MAX_COLS] = {0};
            for (size_t i = 0; valid && i < n; i++) {
                float v = fz_element(x, dtype, i);
                if (!isfinite(v)) valid = 0;
                squares[i % (size_t)c] += (long double)v * v;
            }
            for (int64_t j = 0; valid && j < c; j++) {
                long double d = model_h[layer][j * c + j] + squares[j], limit = 0x1p127L;
                /* The library checks its float32-product sums, within 1e-5 of the exact ones. */
                if (d > limit * (1 + 2e-5L)) valid = 0;
                else if (d > limit * (1 - 2e-5L)) near = 1;
            }
            if (st == MSP_OK) {
                FZ_CHECK(valid, "msp_gram_add accepted invalid arguments");
                for (size_t r = 0; r < (size_t)t; r++)
                    for (int64_t i = 0; i < c; i++)
                        for (int64_t j = 0; j < c; j++)
                            model_h[layer][i * c + j] += (long double)fz_element(x, dtype, r * (size_t)c + (size_t)i) *
                                                         fz_element(x, dtype, r * (size_t)c + (size_t)j);
                tokens_added[layer] += t;
            } else {
                FZ_CHECK(!valid || near, "msp_gram_add rejected valid arguments");
                float after[MAX_COLS * MAX_COLS];
                if (in_range) {
                    FZ_CHECK(msp_gram_get(acc, layer, after) == MSP_OK, "get");
                    FZ_CHECK(fz_same(before, after, (size_t)(c * c) * sizeof(float)), "msp_gram_add changed H on error");
                }
            }
            free(x);
        } else if (op == 3) {
            float h[MAX_COLS * MAX_COLS + 1];
            h[c * c] = -7;
            msp_status st = fz_status(msp_gram_get(acc, layer, h), "msp_gram_get");
            FZ_CHECK(h[c * c] == -7, "msp_gram_get wrote past cols^2");
            FZ_CHECK((st == MSP_OK) == in_range, "msp_gram_get status %d for layer %lld", (int)st, (long long)layer);
            for (int64_t i = 0; in_range && i < c; i++)
                for (int64_t j = 0; j < c; j++) {
                    long double want = model_h[layer][i * c + j];
                    long double bound = 1e-5L * sqrtl(model_h[layer][i * c + i] * model_h[layer][j * c + j]) +
                                        0x1p-23L * fabsl(want) + 1e-40L;
                    FZ_CHECK(fabsl((long double)h[i * c + j] - want) <= bound, "H[%lld][%lld] = %.9g, want %.12Lg",
                             (long long)i, (long long)j, h[i * c + j], want);
                    FZ_CHECK(memcmp(&h[i * c + j], &h[j * c + i], 4) == 0, "H not symmetric");
                }
            int64_t t = -1;
            FZ_CHECK((fz_status(msp_gram_tokens(acc, layer, &t), "tokens") == MSP_OK) == in_range, "tokens status");
            if (in_range) FZ_CHECK(t == tokens_added[layer], "tokens %lld, want %lld", (long long)t, (long long)tokens_added[layer]);
        } else if (op == 4) {
            FZ_CHECK(fz_status(msp_gram_reset(acc), "msp_gram_reset") == MSP_OK, "reset");
            memset(model_h, 0, sizeof model_h);
            memset(tokens_added, 0, sizeof tokens_added);
        } else {
            float h[4];
            int64_t t;
            FZ_CHECK(fz_status(msp_gram_add(NULL, 0, h, MSP_DTYPE_F32, 1, 1), "add(NULL)") == MSP_ERR_INVALID_ARGUMENT, "a");
            FZ_CHECK(fz_status(msp_gram_add(acc, 0, NULL, MSP_DTYPE_F32, 1, cols[0]), "add(x NULL)") == MSP_ERR_INVALID_ARGUMENT, "x");
            FZ_CHECK(fz_status(msp_gram_get(NULL, 0, h), "get(NULL)") == MSP_ERR_INVALID_ARGUMENT, "g");
            FZ_CHECK(fz_status(msp_gram_get(acc, 0, NULL), "get(out NULL)") == MSP_ERR_INVALID_ARGUMENT, "o");
            FZ_CHECK(fz_status(msp_gram_tokens(NULL, 0, &t), "tokens(NULL)") == MSP_ERR_INVALID_ARGUMENT, "t");
            FZ_CHECK(fz_status(msp_gram_reset(NULL), "reset(NULL)") == MSP_ERR_INVALID_ARGUMENT, "r");
            msp_gram_free(NULL);
        }
    }
    msp_gram_free(acc);
}

/* Stable-sort reference of the pruned flags of one comparison group: all but the `keep` first by
 * score descending, index ascending. */
static void reference_pruned(const float *scores, const int64_t *index, int64_t count, int64_t keep, uint8_t *pruned) {
    for (int64_t a = 0; a < count; a++) {
        int64_t before = 0;
        for (int64_t b = 0; b < count; b++)
            before += scores[b] > scores[a] || (scores[b] == scores[a] && b < a);
        pruned[index[a]] = before >= keep;
    }
}

static void fuzz_obs(fz_input *in) {
    int64_t cols = fz_range(in, 1, MAX_COLS), rows = fz_range(in, 1, MAX_ROWS);
    uint8_t mode = fz_u8(in) % 3, dead[MAX_COLS] = {0};
    float *gram = fz_alloc((size_t)(cols * cols) * sizeof(float));
    double damp = fz_u8(in) < 200 ? 0.01 : fz_double(in);
    if (mode == 0) { /* 4^k I with dead inputs, damp 0: no updates, scores w*w */
        float diag = (float)(1 << (2 * fz_range(in, 0, 3)));
        for (int64_t i = 0; i < cols * cols; i++) gram[i] = 0;
        for (int64_t j = 0; j < cols; j++) dead[j] = fz_u8(in) % 5 == 0, gram[j * cols + j] = dead[j] ? 0 : diag;
        damp = 0;
    } else if (mode == 1) { /* X^T X of fuzzed tokens */
        int64_t tokens = fz_range(in, 1, 2 * cols);
        float x[2 * MAX_COLS * MAX_COLS];
        fz_fill(in, x, (size_t)(tokens * cols), MSP_DTYPE_F32, 0);
        for (int64_t i = 0; i < cols; i++)
            for (int64_t j = 0; j < cols; j++) {
                double h = 0;
                for (int64_t t = 0; t < tokens; t++) h += (double)x[t * cols + i] * x[t * cols + j];
                gram[i * cols + j] = (float)h;
            }
    } else {
        fz_fill(in, gram, (size_t)(cols * cols), MSP_DTYPE_F32, 1);
    }
    int lower_finite = 1;
    for (int64_t i = 0; i < cols; i++)
        for (int64_t j = 0; j <= i; j++) lower_finite &= isfinite(gram[i * cols + j]) != 0;
    msp_obs *obs = NULL;
    msp_status st = fz_status(msp_obs_create(gram, cols, damp, &obs), "msp_obs_create");
    int create_ok = lower_finite && isfinite(damp) && damp >= 0;
    if (st != MSP_OK) {
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT && obs == NULL, "msp_obs_create: status %d", (int)st);
        FZ_CHECK(!create_ok || mode != 0 || cols == 0, "4^k I was rejected: %s", msp_last_error_message());
        if (create_ok) FZ_CHECK(strstr(msp_last_error_message(), "damp") != NULL, "a rejected Gram matrix's message names no damp");
        free(gram);
        return;
    }
    FZ_CHECK(create_ok, "msp_obs_create accepted a non-finite lower triangle or a bad damp");
    for (int round = fz_range(in, 1, 3); round > 0 && in->size > 0; round--) {
        msp_dtype dtype = fz_dtype(in);
        int dtype_ok = fz_valid_dtype(dtype);
        int64_t call_cols = fz_u8(in) < 245 ? cols : fz_range(in, 1, MAX_COLS);
        size_t count = (size_t)(rows * call_cols), width = dtype_ok ? fz_width(dtype) : 4;
        msp_level level = {fz_ratio(in), 0, 0};
        if (fz_bool(in)) {
            int32_t divisors[32], k = 0;
            for (int32_t m = 1; m <= 32; m++) if (call_cols % m == 0) divisors[k++] = m;
            level.m = fz_u8(in) < 230 ? divisors[fz_u8(in) % k] : (int32_t)fz_range(in, -2, 40);
            level.n = level.m > 0 ? (int32_t)fz_range(in, 1, level.m) : 1;
            level.sparsity = level.m > 0 ? 1.0 - (double)level.n / level.m : 0.5;
            if (fz_u8(in) == 0) level.sparsity += 0.01;
        }
        int64_t block = fz_u8(in) < 240 ? fz_range(in, 1, 150) : (int64_t)(int8_t)fz_u8(in);
        void *w = fz_alloc(count * width);
        fz_fill(in, w, count, dtype_ok ? dtype : MSP_DTYPE_F32, fz_u8(in) % 8 == 0);
        uint8_t *keep = fz_u8(in) % 4 ? fz_alloc(count) : NULL;
        if (keep) memset(keep, 9, count);
        void *w0 = fz_copy(w, count * width);
        st = fz_status(msp_obs_prune(obs, w, dtype, rows, call_cols, &level, block, keep), "msp_obs_prune");
        int nm = level.n != 0 || level.m != 0;
        int valid = dtype_ok && call_cols == cols && block > 0 &&
                    (nm ? level.m >= 1 && level.m <= 32 && level.n >= 1 && level.n <= level.m && cols % level.m == 0 &&
                              fabs(1.0 - (double)level.n / level.m - level.sparsity) <= 1e-12
                        : level.sparsity >= 0 && level.sparsity < 1);
        for (size_t i = 0; valid && i < count; i++) valid = isfinite(fz_element(w0, dtype, i)) != 0;
        if (st != MSP_OK) {
            FZ_CHECK(!valid || strstr(msp_last_error_message(), "overflow"), "msp_obs_prune rejected valid arguments");
            FZ_CHECK(fz_same(w, w0, count * width), "msp_obs_prune changed the weights on error");
            for (size_t i = 0; keep && i < count; i++) FZ_CHECK(keep[i] == 9, "msp_obs_prune wrote keep_out on error");
        } else {
            FZ_CHECK(valid, "msp_obs_prune accepted invalid arguments");
            uint8_t *flags = keep ? keep : fz_alloc(count), *expected = fz_alloc(count);
            if (!keep) {
                void *again = fz_copy(w0, count * width);
                FZ_CHECK(msp_obs_prune(obs, again, dtype, rows, cols, &level, block, flags) == MSP_OK, "repeat");
                FZ_CHECK(fz_same(again, w, count * width), "the keep mask changed the weights");
                free(again);
            }
            /* Counts, zeros and the stable-sort reference (exact for 4^k I). */
            float scores[MAX_ROWS * MAX_COLS];
            int64_t index[MAX_ROWS * MAX_COLS];
            for (size_t i = 0; i < count; i++) {
                FZ_CHECK(flags[i] <= 1, "keep_out[%zu] = %u", i, flags[i]);
                if (!flags[i]) FZ_CHECK(fz_element_bits(w, dtype, i) == 0, "pruned weight %zu is not +0", i);
                float v = dead[i % (size_t)cols] ? 0.0f : fz_element(w0, dtype, i);
                scores[i] = v * v;
            }
            int64_t step = nm ? (level.n < level.m ? (block - block % level.m > level.m ? block - block % level.m : level.m) : cols) : (block < cols ? block : cols);
            for (int64_t i1 = 0; i1 < cols; i1 += step) {
                int64_t i2 = i1 + step < cols ? i1 + step : cols, n = 0;
                if (!nm) {
                    float s[MAX_ROWS * MAX_COLS];
                    for (int64_t r = 0; r < rows; r++)
                        for (int64_t j = i1; j < i2; j++) s[n] = scores[r * cols + j], index[n++] = r * cols + j;
                    int64_t pruned = (int64_t)floor(level.sparsity * (double)n + 0.5), got = 0;
                    for (int64_t k = 0; k < n; k++) got += !flags[index[k]];
                    FZ_CHECK(got == pruned, "block %lld pruned %lld, want %lld", (long long)i1, (long long)got, (long long)pruned);
                    reference_pruned(s, index, n, n - pruned, expected);
                } else {
                    for (int64_t r = 0; r < rows; r++)
                        for (int64_t g = i1; g < i2; g += level.m) {
                            int64_t kept = 0;
                            for (int64_t j = 0; j < level.m; j++) kept += flags[r * cols + g + j], index[j] = r * cols + g + j;
                            FZ_CHECK(kept == level.n, "group (%lld, %lld) keeps %lld", (long long)r, (long long)g, (long long)kept);
                            reference_pruned(scores + r * cols + g, index, level.m, level.n, expected);
                        }
                }
            }
            for (size_t i = 0; mode == 0 && i < count; i++) {
                FZ_CHECK(flags[i] == !expected[i], "keep_out[%zu] = %u differs from the stable-sort reference", i, flags[i]);
                uint32_t want = flags[i] && !dead[i % (size_t)cols] ? fz_element_bits(w0, dtype, i) : 0;
                if (want == (dtype == MSP_DTYPE_F32 ? 0x80000000u : 0x8000u)) want = 0; /* -0 is stored as +0 */
                FZ_CHECK(fz_element_bits(w, dtype, i) == want, "weight %zu changed without updates", i);
            }
            /* The other thread count gives the same bytes. */
            int32_t threads = msp_get_num_threads();
            FZ_CHECK(msp_set_num_threads(threads == 1 ? 2 : 1) == MSP_OK, "threads");
            void *other = fz_copy(w0, count * width);
            FZ_CHECK(msp_obs_prune(obs, other, dtype, rows, cols, &level, block, NULL) == MSP_OK, "rerun");
            FZ_CHECK(fz_same(other, w, count * width), "results differ between 1 and 2 threads");
            FZ_CHECK(msp_set_num_threads(threads) == MSP_OK, "threads");
            free(other);
            free(expected);
            if (!keep) free(flags);
        }
        free(w0);
        free(keep);
        free(w);
    }
    FZ_CHECK(fz_status(msp_obs_prune(NULL, gram, MSP_DTYPE_F32, 1, cols, NULL, 1, NULL), "prune(NULL)") ==
                 MSP_ERR_INVALID_ARGUMENT, "NULL obs");
    msp_obs_free(obs);
    msp_obs_free(NULL);
    free(gram);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    if (fz_bool(&in)) fuzz_gram(&in);
    else fuzz_obs(&in);
    return 0;
}
