/*
 * fuzz_fisher: msp_sum_squares, msp_fisher_add_diagonal and the msp_fisher_* accumulator handle.
 *
 * The accumulator is driven by a fuzzer-chosen call sequence (add with any layer, count, dtype and
 * scale; end_sample; num_samples; traces before and after samples; reset; free at the end) and
 * compared with a model kept here in long double. Payloads carry NaN, inf and subnormals. Every
 * error must leave the accumulator and the caller's buffers unchanged.
 */
#include "fuzz_common.h"

#define MAX_LAYERS 8
#define MAX_SIZE 96

/* Whether a computed value is close to the model's (non-negative sums, no cancellation). */
static int close_to(double got, long double want) {
    if (!isfinite(got) || !isfinite((double)want)) return isinf(got) && (double)want > 1e307;
    long double diff = fabsl((long double)got - want);
    return diff <= 1e-9L * fabsl(want) + 1e-300L;
}

/* Sum of squares of a buffer in long double; -1 when an element is not finite. */
static long double model_squares(const void *buf, msp_dtype dtype, size_t count) {
    long double sum = 0;
    for (size_t i = 0; i < count; i++) {
        float v = fz_element(buf, dtype, i);
        if (!isfinite(v)) return -1;
        sum += (long double)v * v;
    }
    return sum;
}

static void fuzz_sum_squares(fz_input *in) {
    msp_dtype dtype = fz_dtype(in);
    int valid_dtype = fz_valid_dtype(dtype);
    size_t width = valid_dtype ? fz_width(dtype) : 4;
    int64_t count;
    size_t have;
    if (fz_u8(in) < 240) {
        count = fz_range(in, 1, 5000);
        have = (size_t)count;
    } else {
        static const int64_t hostile[] = {0, -1, INT64_MIN, INT64_MAX, (int64_t)1 << 62, ((int64_t)1 << 62) + 1};
        count = hostile[fz_u8(in) % 6];
        if (count > 0 && count <= INT64_MAX / (int64_t)width) return; /* a real size we cannot back */
        have = 16;
    }
    void *buf = fz_alloc(have * width);
    fz_fill(in, buf, have, valid_dtype ? dtype : MSP_DTYPE_F32, fz_u8(in) % 4 == 0);
    int null_data = fz_u8(in) == 0, null_out = fz_u8(in) == 0;
    double out = 12345.0;
    msp_status st = fz_status(msp_sum_squares(null_data ? NULL : buf, dtype, count, null_out ? NULL : &out),
                              "msp_sum_squares");
    long double want = valid_dtype && count > 0 && have == (size_t)count ? model_squares(buf, dtype, have) : -1;
    int valid = !null_data && !null_out && want >= 0;
    if (st == MSP_OK) {
        FZ_CHECK(valid, "msp_sum_squares accepted invalid arguments (count %lld, dtype %d)", (long long)count, (int)dtype);
        FZ_CHECK(close_to(out, want), "msp_sum_squares = %.17g, want %.17Lg", out, want);
    } else {
        FZ_CHECK(!valid, "msp_sum_squares rejected valid arguments (count %lld, dtype %d)", (long long)count, (int)dtype);
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "msp_sum_squares: status %d", (int)st);
        FZ_CHECK(out == 12345.0, "msp_sum_squares wrote out on error");
    }
    free(buf);
}

static void fuzz_add_diagonal(fz_input *in) {
    msp_dtype dtype = fz_dtype(in);
    int valid_dtype = fz_valid_dtype(dtype);
    int64_t count = fz_u8(in) < 248 ? fz_range(in, 1, 600) : -fz_range(in, 0, 3);
    size_t have = count > 0 ? (size_t)count : 8;
    void *grad = fz_alloc(have * (valid_dtype ? fz_width(dtype) : 4));
    fz_fill(in, grad, have, valid_dtype ? dtype : MSP_DTYPE_F32, fz_u8(in) % 4 == 0);
    float *diag = fz_alloc(have * sizeof(float));
    fz_fill(in, diag, have, MSP_DTYPE_F32, fz_u8(in) % 4 == 0);
    double scale = fz_u8(in) < 200 ? fz_u16(in) / 256.0 : fz_double(in);
    float *diag0 = fz_copy(diag, have * sizeof(float));
    msp_status st = fz_status(msp_fisher_add_diagonal(grad, dtype, count, diag, scale), "msp_fisher_add_diagonal");

    int valid = valid_dtype && count > 0 && isfinite(scale) && scale >= 0, near_overflow = 0;
    float *want = fz_alloc(have * sizeof(float));
    for (size_t i = 0; valid && i < have; i++) {
        double x = fz_element(grad, dtype, i);
        if (!isfinite(x)) valid = 0;
        double v = (double)diag0[i] + scale * (x * x);
        want[i] = (float)v;
        if (!isfinite(want[i])) valid = 0;
        if (fabs(v) > 3.0e38 && fabs(v) < 3.5e38) near_overflow = 1; /* rounding decides there */
    }
    if (st == MSP_OK) {
        FZ_CHECK(valid || near_overflow, "msp_fisher_add_diagonal accepted invalid arguments");
        for (size_t i = 0; valid && i < have; i++)
            FZ_CHECK(memcmp(&diag[i], &want[i], sizeof(float)) == 0 || fabsf(diag[i] - want[i]) <= 1e-6f * fabsf(want[i]),
                     "msp_fisher_add_diagonal: diag[%zu] = %.9g, want %.9g", i, diag[i], want[i]);
    } else {
        FZ_CHECK(!valid || near_overflow, "msp_fisher_add_diagonal rejected valid arguments");
        FZ_CHECK(fz_same(diag, diag0, have * sizeof(float)), "msp_fisher_add_diagonal changed diag_inout on error");
    }
    free(want);
    free(diag0);
    free(diag);
    free(grad);
}

/* The model of an accumulator. */
typedef struct {
    int64_t layers;
    int64_t sizes[MAX_LAYERS];
    int64_t added[MAX_LAYERS];
    long double open[MAX_LAYERS], total[MAX_LAYERS];
    int64_t samples;
} model;

static void fuzz_accumulator(fz_input *in) {
    model md;
    memset(&md, 0, sizeof md);
    md.layers = fz_range(in, 1, MAX_LAYERS);
    for (int64_t l = 0; l < md.layers; l++) md.sizes[l] = fz_range(in, 1, MAX_SIZE);
    msp_fisher *acc = NULL;

    /* Invalid creations first: they must fail and leave *out alone. */
    uint8_t bad = fz_u8(in) % 8;
    if (bad) {
        int64_t sizes[MAX_LAYERS];
        memcpy(sizes, md.sizes, sizeof sizes);
        int64_t layers = md.layers;
        msp_fisher *sentinel = (msp_fisher *)&md, **out = &sentinel;
        const int64_t *sp = sizes;
        if (bad == 1) layers = -fz_range(in, 0, 2);
        else if (bad == 2) sizes[fz_range(in, 0, md.layers - 1)] = -(int64_t)fz_u8(in);
        else if (bad == 3) sp = NULL;
        else if (bad == 4) out = NULL;
        else if (bad == 5) layers = INT64_MIN;
        else if (bad == 6) sizes[fz_range(in, 0, md.layers - 1)] = INT64_MIN;
        else sizes[0] = 0;
        msp_status st = fz_status(msp_fisher_create(sp, layers, out), "msp_fisher_create(bad)");
        FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "msp_fisher_create(bad %u) gave %d", bad, (int)st);
        FZ_CHECK(sentinel == (msp_fisher *)&md, "msp_fisher_create changed *out on error");
    }
    /* Huge (valid) sizes: nothing is allocated per element. */
    if (fz_u8(in) % 8 == 0) md.sizes[0] = INT64_MAX - fz_u8(in);
    fz_status(msp_fisher_create(md.sizes, md.layers, &acc), "msp_fisher_create");
    FZ_CHECK(acc != NULL, "msp_fisher_create gave NULL");

    int steps = fz_range(in, 1, 40);
    for (int s = 0; s < steps && in->size > 0; s++) {
        uint8_t op = fz_u8(in) % 8;
        if (op <= 2) {
            /* add */
            int64_t layer = fz_u8(in) < 240 ? fz_range(in, 0, md.layers - 1) : (int64_t)fz_u64(in);
            msp_dtype dtype = fz_dtype(in);
            int valid_dtype = fz_valid_dtype(dtype);
            int in_range = layer >= 0 && layer < md.layers;
            int64_t left = in_range ? md.sizes[layer] - md.added[layer] : 8;
            int64_t count = fz_range(in, 0, left < MAX_SIZE ? left + 1 : MAX_SIZE);
            if (fz_u8(in) == 255) count = -1;
            size_t have = count > 0 ? (size_t)count : 1;
            void *grad = fz_alloc(have * (valid_dtype ? fz_width(dtype) : 4));
            fz_fill(in, grad, have, valid_dtype ? dtype : MSP_DTYPE_F32, fz_u8(in) % 4 == 0);
            double scale = fz_u8(in) < 200 ? fz_u16(in) / 256.0 : fz_double(in);
            void *grad0 = fz_copy(grad, have * (valid_dtype ? fz_width(dtype) : 4));
            int null_grad = fz_u8(in) == 0;
            msp_status st = fz_status(msp_fisher_add(acc, layer, null_grad ? NULL : grad, dtype, count, scale),
                                      "msp_fisher_add");
            FZ_CHECK(fz_same(grad, grad0, have * (valid_dtype ? fz_width(dtype) : 4)), "msp_fisher_add changed grad");
            long double squares = valid_dtype && count > 0 ? model_squares(grad, dtype, have) : -1;
            int valid = in_range && !null_grad && count > 0 && count <= left && squares >= 0 && isfinite(scale) &&
                        scale >= 0;
            long double term = valid ? (long double)scale * squares : 0;
            int overflow = valid && md.total[layer] + md.open[layer] + term > 1.7e308L;
            int near = valid && md.total[layer] + md.open[layer] + term > 1.0e308L;
            if (st == MSP_OK) {
                FZ_CHECK(valid && (!overflow || near), "msp_fisher_add accepted invalid arguments (layer %lld, count %lld)",
                         (long long)layer, (long long)count);
                md.open[layer] += term;
                md.added[layer] += count;
            } else {
                FZ_CHECK(!valid || near, "msp_fisher_add rejected valid arguments (layer %lld, count %lld, scale %g)",
                         (long long)layer, (long long)count, scale);
                FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "msp_fisher_add: status %d", (int)st);
            }
            free(grad0);
            free(grad);
        } else if (op == 3) {
            fz_status(msp_fisher_end_sample(acc), "msp_fisher_end_sample");
            for (int64_t l = 0; l < md.layers; l++) {
                md.total[l] += md.open[l];
                md.open[l] = 0;
                md.added[l] = 0;
            }
            md.samples++;
        } else if (op == 4 || op == 5) {
            int32_t per_parameter = (int32_t)fz_u8(in) - 128;
            double out[MAX_LAYERS + 1];
            for (int i = 0; i <= MAX_LAYERS; i++) out[i] = -7.0;
            msp_status st = fz_status(msp_fisher_traces(acc, per_parameter, out), "msp_fisher_traces");
            FZ_CHECK(out[md.layers] == -7.0, "msp_fisher_traces wrote past num_layers");
            if (md.samples == 0) {
                FZ_CHECK(st == MSP_ERR_INVALID_STATE, "msp_fisher_traces before a sample gave %d", (int)st);
                for (int i = 0; i < MAX_LAYERS; i++) FZ_CHECK(out[i] == -7.0, "msp_fisher_traces wrote on error");
            } else {
                FZ_CHECK(st == MSP_OK, "msp_fisher_traces gave %d", (int)st);
                for (int64_t l = 0; l < md.layers; l++) {
                    long double want = md.total[l] / md.samples;
                    if (per_parameter) want /= md.sizes[l];
                    FZ_CHECK(close_to(out[l], want), "trace %lld = %.17g, want %.17Lg", (long long)l, out[l], want);
                }
            }
            int64_t samples = -1;
            fz_status(msp_fisher_num_samples(acc, &samples), "msp_fisher_num_samples");
            FZ_CHECK(samples == md.samples, "num_samples %lld, want %lld", (long long)samples, (long long)md.samples);
        } else if (op == 6) {
            fz_status(msp_fisher_reset(acc), "msp_fisher_reset");
            for (int64_t l = 0; l < md.layers; l++) md.open[l] = md.total[l] = 0, md.added[l] = 0;
            md.samples = 0;
        } else {
            /* NULL handles and out-pointers are errors, never crashes. */
            double out[MAX_LAYERS];
            int64_t n;
            FZ_CHECK(fz_status(msp_fisher_add(NULL, 0, out, MSP_DTYPE_F32, 1, 1.0), "msp_fisher_add(NULL)") ==
                         MSP_ERR_INVALID_ARGUMENT, "msp_fisher_add(NULL)");
            FZ_CHECK(fz_status(msp_fisher_end_sample(NULL), "end_sample(NULL)") == MSP_ERR_INVALID_ARGUMENT, "end(NULL)");
            FZ_CHECK(fz_status(msp_fisher_traces(NULL, 0, out), "traces(NULL)") == MSP_ERR_INVALID_ARGUMENT, "traces");
            FZ_CHECK(fz_status(msp_fisher_traces(acc, 0, NULL), "traces(out NULL)") == MSP_ERR_INVALID_ARGUMENT, "out");
            FZ_CHECK(fz_status(msp_fisher_num_samples(NULL, &n), "num_samples(NULL)") == MSP_ERR_INVALID_ARGUMENT, "ns");
            FZ_CHECK(fz_status(msp_fisher_num_samples(acc, NULL), "num_samples(out NULL)") == MSP_ERR_INVALID_ARGUMENT, "o");
            FZ_CHECK(fz_status(msp_fisher_reset(NULL), "reset(NULL)") == MSP_ERR_INVALID_ARGUMENT, "reset(NULL)");
            msp_fisher_free(NULL);
        }
    }
    msp_fisher_free(acc);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    switch (fz_u8(&in) % 3) {
    case 0: fuzz_sum_squares(&in); break;
    case 1: fuzz_add_diagonal(&in); break;
    default: fuzz_accumulator(&in); break;
    }
    return 0;
}
