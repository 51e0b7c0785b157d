/*
 * fuzz_packed: msp_nm_packed_size, msp_nm_pack, msp_nm_unpack and msp_nm_linear.
 *
 * Sizes, dtypes, N:M patterns, weights (NaN, inf, subnormals, ties), col_scale, tokens, batches and
 * packed indexes (valid ones from msp_nm_pack, then perhaps corrupted bit by bit, or raw bytes) come
 * from the fuzzer. Buffers are exactly the documented sizes. A call must succeed exactly when the
 * arguments and the index are valid by the header, and then give the reference: pack = the stable
 * ranking of |w| * col_scale per group (values in column order, one index bit per kept column),
 * unpack = kept values at their columns and +0 elsewhere, linear = within the header's bound of the
 * float64 product of the masked matrix (finite cases), the same bits on 1 and 2 threads, and a
 * 16-bit result equal to the float32 result rounded to nearest even. On error nothing may change.
 */
#include "fuzz_common.h"

static const int64_t hostile_sizes[] = {0, -1, -32, INT64_MIN, INT64_MAX, (int64_t)1 << 31, (int64_t)1 << 32,
                                        (int64_t)1 << 62, ((int64_t)1 << 61) + 8, (int64_t)3 << 61};

/* Whether (rows, cols, n, m, dtype) describe a packed matrix by the header. */
static int layout_valid(int64_t rows, int64_t cols, int32_t n, int32_t m, msp_dtype dtype) {
    if (!fz_valid_dtype(dtype) || rows <= 0 || cols <= 0 || rows > INT64_MAX / cols) return 0;
    if (rows * cols > INT64_MAX / (int64_t)fz_width(dtype)) return 0;
    return n > 0 && n < m && m <= 32 && cols % m == 0;
}

/* Bit c of a row's index. */
static int kept(const uint8_t *row, int64_t c) { return row[c / 8] >> (c % 8) & 1; }

/* Whether an index has exactly n bits in every group and none at or past cols. */
static int index_valid(const uint8_t *index, int64_t rows, int64_t cols, int32_t n, int32_t m) {
    int64_t stride = 4 * ((cols + 31) / 32);
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = index + r * stride;
        for (int64_t g = 0; g < cols; g += m) {
            int count = 0;
            for (int32_t j = 0; j < m; j++) count += kept(row, g + j);
            if (count != n) return 0;
        }
        for (int64_t c = cols; c < 8 * stride; c++)
            if (kept(row, c)) return 0;
    }
    return 1;
}

/* The nearest bfloat16 of a float (ties to even; NaN stays NaN). */
static uint16_t to_bf16(float v) {
    uint32_t b;
    memcpy(&b, &v, 4);
    if (isnan(v)) return (uint16_t)(b >> 16) | 0x40;
    return (uint16_t)((b + 0x7FFF + (b >> 16 & 1)) >> 16);
}

static uint16_t to_f16(float v) {
    _Float16 h = (_Float16)v;
    uint16_t b;
    memcpy(&b, &h, 2);
    return b;
}

/* msp_nm_linear on copies of the inputs, with `threads` threads; returns the status. */
static msp_status linear(const void *values, const uint8_t *index, msp_dtype dtype, int64_t rows, int64_t cols,
                         int32_t n, int32_t m, const void *x, msp_dtype x_dtype, int64_t batch, void *y,
                         msp_dtype y_dtype, int32_t threads) {
    FZ_CHECK(msp_set_num_threads(threads) == MSP_OK, "msp_set_num_threads");
    return fz_status(msp_nm_linear(values, index, dtype, rows, cols, n, m, x, x_dtype, batch, y, y_dtype), "msp_nm_linear");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fz_input in = {data, size};
    fz_threads(&in);
    uint8_t op = fz_u8(&in) % 4; /* 0 packed_size, 1 pack, 2 unpack, 3 linear */
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
        if (layout_valid(rows, cols, n, m, dtype)) return 0; /* no buffer can honour these sizes here */
    } else {
        rows = fz_range(&in, 1, 12);
        cols = m > 0 && m <= 32 && fz_u8(&in) < 232 ? m * fz_range(&in, 1, 40) : fz_range(&in, 1, 300);
    }
    int valid = layout_valid(rows, cols, n, m, dtype);
    /* Exactly the documented sizes for a valid layout; small buffers otherwise. */
    int64_t per_row = valid ? cols / m * n : 0, stride = valid ? 4 * ((cols + 31) / 32) : 0;
    size_t count = valid ? (size_t)(rows * cols) : 64;
    size_t values_bytes = valid ? (size_t)(rows * per_row) * width : 64, index_bytes = valid ? (size_t)(rows * stride) : 64;

    if (op == 0) {
        int64_t sizes[2] = {-7, -7};
        msp_status st = fz_status(msp_nm_packed_size(rows, cols, n, m, dtype, &sizes[0], &sizes[1]), "msp_nm_packed_size");
        FZ_CHECK((st == MSP_OK) == valid, "msp_nm_packed_size: status %d for valid = %d", (int)st, valid);
        if (valid) FZ_CHECK(sizes[0] == (int64_t)values_bytes && sizes[1] == (int64_t)index_bytes, "sizes %lld %lld",
                            (long long)sizes[0], (long long)sizes[1]);
        else FZ_CHECK(sizes[0] == -7 && sizes[1] == -7, "msp_nm_packed_size wrote on error");
        return 0;
    }

    /* Weights and, for pack, a column scale. */
    void *weights = fz_alloc(count * width);
    fz_fill(&in, weights, count, fz_valid_dtype(dtype) ? dtype : MSP_DTYPE_F32, op == 1 && fz_u8(&in) % 4 == 0);
    float *scale = NULL;
    size_t ncols = valid ? (size_t)cols : 64;
    if (op == 1 && fz_bool(&in)) {
        scale = fz_alloc(ncols * sizeof(float));
        int raw = fz_u8(&in) % 4 == 0;
        fz_fill(&in, scale, ncols, MSP_DTYPE_F32, raw);
        for (size_t c = 0; c < ncols; c++) {
            if (!raw) scale[c] = isfinite(scale[c]) ? fabsf(scale[c]) : 1.0f;
            if (!(isfinite(scale[c]) && scale[c] >= 0)) valid = 0;
        }
    }
    float *scores = fz_alloc(count * sizeof(float));
    for (size_t i = 0; valid && i < count; i++) {
        float v = fabsf(fz_element(weights, dtype, i));
        scores[i] = scale ? v * scale[i % ncols] : v;
        if (isnan(scores[i])) valid = op != 1; /* only pack ranks the weights */
    }
    void *values = fz_alloc(values_bytes);
    uint8_t *index = fz_alloc(index_bytes);
    memset(values, 0x5A, values_bytes);
    memset(index, 0xA5, index_bytes);

    /* The reference packing of a valid layout. */
    void *ref_values = fz_alloc(values_bytes);
    uint8_t *ref_index = fz_alloc(index_bytes);
    if (valid) {
        memset(ref_index, 0, index_bytes);
        size_t next = 0;
        for (int64_t r = 0; r < rows; r++)
            for (int64_t g = 0; g < cols; g += m)
                for (int32_t p = 0; p < m; p++) {
                    size_t i = (size_t)(r * cols + g + p);
                    int ahead = 0;
                    for (int32_t q = 0; q < m; q++) {
                        float sq = scores[i - p + q], sp = scores[i];
                        if (q != p && (sq > sp || (sq == sp && q < p))) ahead++;
                    }
                    if (ahead >= n) continue;
                    memcpy((uint8_t *)ref_values + width * next++, (uint8_t *)weights + width * i, width);
                    ref_index[r * stride + (g + p) / 8] |= (uint8_t)(1u << ((g + p) % 8));
                }
    }

    if (op == 1) {
        void *weights0 = fz_copy(weights, count * width), *scale0 = fz_copy(scale, ncols * sizeof(float));
        msp_status st = fz_status(msp_nm_pack(weights, dtype, rows, cols, n, m, scale, values, index), "msp_nm_pack");
        FZ_CHECK((st == MSP_OK) == valid, "msp_nm_pack: status %d for valid = %d (rows %lld cols %lld n %d m %d dtype %d)",
                 (int)st, valid, (long long)rows, (long long)cols, (int)n, (int)m, (int)dtype);
        FZ_CHECK(fz_same(weights, weights0, count * width) && fz_same(scale, scale0, ncols * sizeof(float)),
                 "msp_nm_pack changed its inputs");
        if (valid) {
            FZ_CHECK(memcmp(values, ref_values, values_bytes) == 0, "msp_nm_pack values differ from the reference");
            FZ_CHECK(memcmp(index, ref_index, index_bytes) == 0, "msp_nm_pack index differs from the reference");
        } else {
            FZ_CHECK(st == MSP_ERR_INVALID_ARGUMENT, "msp_nm_pack: status %d", (int)st);
            for (size_t i = 0; i < values_bytes; i++) FZ_CHECK(((uint8_t *)values)[i] == 0x5A, "values written on error");
            for (size_t i = 0; i < index_bytes; i++) FZ_CHECK(index[i] == 0xA5, "index written on error");
        }
        free(weights0);
        free(scale0);
    } else {
        /* A packed matrix: the reference packing, perhaps corrupted, or raw index bytes. */
        uint8_t source = fz_u8(&in) % 8;
        if (valid) {
            memcpy(values, ref_values, values_bytes);
            memcpy(index, ref_index, index_bytes);
        }
        if (source == 0) {
            for (size_t i = 0; i < index_bytes; i++) index[i] = fz_u8(&in);
        } else if (source == 1) {
            for (int flips = 1 + fz_u8(&in) % 3; flips > 0; flips--) {
                size_t bit = fz_u32(&in) % (8 * index_bytes);
                index[bit / 8] ^= (uint8_t)(1u << (bit % 8));
            }
        }
        int shape_valid = valid; /* the sizes of x and y do not depend on the index */
        if (valid) valid = index_valid(index, rows, cols, n, m);
        void *values0 = fz_copy(values, values_bytes), *index0 = fz_copy(index, index_bytes);
        if (op == 2) {
            void *dense = fz_alloc(count * width);
            memset(dense, 0x3C, count * width);
            msp_status st = fz_status(msp_nm_unpack(values, index, dtype, rows, cols, n, m, dense), "msp_nm_unpack");
            FZ_CHECK((st == MSP_OK) == valid, "msp_nm_unpack: status %d for valid = %d", (int)st, valid);
            if (valid) {
                size_t next = 0;
                for (int64_t r = 0; r < rows; r++)
                    for (int64_t c = 0; c < cols; c++) {
                        uint32_t got = fz_element_bits(dense, dtype, (size_t)(r * cols + c));
                        uint32_t want = kept(index + r * stride, c) ? fz_element_bits(values, dtype, next++) : 0;
                        FZ_CHECK(got == want, "msp_nm_unpack [%lld][%lld] = %x, want %x", (long long)r, (long long)c,
                                 got, want);
                    }
            } else {
                for (size_t i = 0; i < count * width; i++)
                    FZ_CHECK(((uint8_t *)dense)[i] == 0x3C, "weights_out written on error");
            }
            free(dense);
        } else {
            msp_dtype x_dtype = fz_dtype(&in), y_dtype = fz_dtype(&in);
            size_t xw = fz_valid_dtype(x_dtype) ? fz_width(x_dtype) : 4;
            size_t yw = fz_valid_dtype(y_dtype) ? fz_width(y_dtype) : 4;
            int64_t batch = fz_range(&in, 1, 20);
            if (fz_u8(&in) >= 248) {
                /* A batch the header rejects: not positive, or too many tokens or results to address. */
                batch = hostile_sizes[fz_u8(&in) % (sizeof hostile_sizes / sizeof *hostile_sizes)];
                int addressable = shape_valid && fz_valid_dtype(x_dtype) && fz_valid_dtype(y_dtype) && batch > 0 &&
                                  batch <= INT64_MAX / cols && batch * cols <= INT64_MAX / (int64_t)xw &&
                                  batch <= INT64_MAX / rows && batch * rows <= INT64_MAX / (int64_t)yw;
                if (addressable) {
                    free(values0);
                    free(index0);
                    goto done; /* no buffer can honour this batch here */
                }
            }
            shape_valid = shape_valid && fz_valid_dtype(x_dtype) && fz_valid_dtype(y_dtype) && batch > 0 && batch <= 20;
            valid = valid && shape_valid;
            size_t tokens = shape_valid ? (size_t)(batch * cols) : 64, results = shape_valid ? (size_t)(batch * rows) : 64;
            void *x = fz_alloc(tokens * xw);
            fz_fill(&in, x, tokens, fz_valid_dtype(x_dtype) ? x_dtype : MSP_DTYPE_F32, fz_u8(&in) % 4 == 0);
            void *x0 = fz_copy(x, tokens * xw);
            void *y = fz_alloc(results * yw), *y2 = fz_alloc(results * yw);
            float *wide = fz_alloc(results * sizeof(float));
            memset(y, 0x3C, results * yw);
            msp_status st = linear(values, index, dtype, rows, cols, n, m, x, x_dtype, batch, y, y_dtype, 1);
            FZ_CHECK((st == MSP_OK) == valid, "msp_nm_linear: status %d for valid = %d (batch %lld, dtypes %d %d)",
                     (int)st, valid, (long long)batch, (int)x_dtype, (int)y_dtype);
            FZ_CHECK(fz_same(x, x0, tokens * xw), "msp_nm_linear changed x");
            if (!valid) {
                for (size_t i = 0; i < results * yw; i++) FZ_CHECK(((uint8_t *)y)[i] == 0x3C, "y written on error");
            } else {
                /* The same bits on 2 threads; the float32 sums, rounded, give a 16-bit y. */
                FZ_CHECK(linear(values, index, dtype, rows, cols, n, m, x, x_dtype, batch, y2, y_dtype, 2) == MSP_OK,
                         "2 threads");
                FZ_CHECK(memcmp(y, y2, results * yw) == 0, "msp_nm_linear differs between 1 and 2 threads");
                FZ_CHECK(linear(values, index, dtype, rows, cols, n, m, x, x_dtype, batch, wide, MSP_DTYPE_F32, 1) ==
                             MSP_OK, "f32");
                for (size_t i = 0; i < results; i++) {
                    if (y_dtype == MSP_DTYPE_F32) continue;
                    uint16_t want = y_dtype == MSP_DTYPE_BF16 ? to_bf16(wide[i]) : to_f16(wide[i]);
                    uint32_t got = fz_element_bits(y, y_dtype, i);
                    FZ_CHECK(got == want || (isnan(wide[i]) && isnan(fz_element(y, y_dtype, i))),
                             "y[%zu] = %x, want %x (the float32 result %g rounded)", i, got, want, wide[i]);
                }
                /* The float64 bound of the header, where every term is finite and far from overflow. */
                double factor = ((double)((cols + 63) / 64) + 6) * 0x1p-24;
                for (int64_t t = 0; t < batch; t++)
                    for (int64_t r = 0; r < rows; r++) {
                        double exact = 0, magnitude = 0;
                        size_t next = (size_t)(r * per_row);
                        int finite = 1;
                        for (int64_t c = 0; c < cols; c++) {
                            double xv = fz_element(x, x_dtype, (size_t)(t * cols + c));
                            double wv = kept(index + r * stride, c) ? fz_element(values, dtype, next++) : 0.0;
                            if (!isfinite(xv) || !isfinite(wv)) finite = 0;
                            exact += wv * xv;
                            magnitude += fabs(wv * xv);
                        }
                        if (!finite || magnitude > 1e37) continue;
                        double got = wide[t * rows + r];
                        /* plus subnormal rounding: 2^-149 per operation at most */
                        FZ_CHECK(fabs(got - exact) <= factor * magnitude + (double)(cols + 8) * 0x1p-149,
                                 "msp_nm_linear y[%lld][%lld] = %.9g, float64 %.9g (bound %.3g)", (long long)t,
                                 (long long)r, got, exact, factor * magnitude);
                    }
            }
            free(x);
            free(x0);
            free(y);
            free(y2);
            free(wide);
        }
        FZ_CHECK(fz_same(values, values0, values_bytes) && fz_same(index, index0, index_bytes), "inputs changed");
        free(values0);
        free(index0);
    }
done:
    free(weights);
    free(scale);
    free(scores);
    free(values);
    free(index);
    free(ref_values);
    free(ref_index);
    return 0;
}
