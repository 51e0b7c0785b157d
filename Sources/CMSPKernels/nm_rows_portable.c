/* The portable kernel of msp_nm_linear (aarch64 builds, and the reference the vector kernels are
 * tested against): plain C with fmaf, in the order of mspkernels.h. */
#include "mspkernels.h"

#include <math.h>
#include <string.h>

/* The exact float32 value of binary16 bits. */
static float widen_f16(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = h >> 10 & 0x1F, mantissa = h & 0x3FF, bits;
    if (exponent == 0) {
        float v = (float)mantissa * 5.9604644775390625e-08f; /* 2^-24: subnormals are exact in float32 */
        return sign ? -v : v;
    }
    if (exponent == 0x1F) bits = sign | 0x7F800000u | mantissa << 13;
    else bits = sign | (exponent + 112) << 23 | mantissa << 13;
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Element i of a values buffer of `dtype`, widened exactly to float32. */
static float element(int32_t dtype, const void *values, int64_t i) {
    uint32_t bits;
    if (dtype == MSPK_F32) {
        memcpy(&bits, (const char *)values + 4 * i, 4);
    } else {
        uint16_t h;
        memcpy(&h, (const char *)values + 2 * i, 2);
        if (dtype == MSPK_F16) return widen_f16(h);
        bits = (uint32_t)h << 16;
    }
    float v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

int64_t mspk_nm_rows_portable(const mspk_nm_rows *job) {
    const int64_t chunks = job->chunks;
    float acc[MSPK_MAX_TOKENS][2][2][16];
    for (int64_t row = 0; row < job->rows; row++) {
        const void *values = (const char *)job->values + row * job->values_stride;
        const uint8_t *index = job->index + row * job->index_stride;
        int64_t next = 0; /* the next kept value of the row */
        memset(acc, 0, sizeof acc);
        for (int64_t c = 0; c < chunks; c++) {
            uint32_t k = (uint32_t)index[4 * c] | (uint32_t)index[4 * c + 1] << 8 | (uint32_t)index[4 * c + 2] << 16 |
                         (uint32_t)index[4 * c + 3] << 24;
            float w[MSPK_CHUNK], half[2][16];
            for (int pos = 0; pos < MSPK_CHUNK; pos++) w[pos] = k >> pos & 1 ? element(job->dtype, values, next++) : 0.0f;
            for (int j = 0; j < 16; j++) {
                int interleaved = mspk_x_interleaved(job->dtype);
                half[0][j] = w[interleaved ? 2 * j : j];
                half[1][j] = w[interleaved ? 2 * j + 1 : 16 + j];
            }
            const int s = (int)(c & 1);
            for (int t = 0; t < job->tokens; t++) {
                const float *x = job->x + (t * chunks + c) * MSPK_CHUNK;
                for (int h = 0; h < 2; h++)
                    for (int j = 0; j < 16; j++) acc[t][s][h][j] = fmaf(half[h][j], x[16 * h + j], acc[t][s][h][j]);
            }
        }
        for (int t = 0; t < job->tokens; t++) {
            float s[16];
            for (int j = 0; j < 16; j++) s[j] = (acc[t][0][0][j] + acc[t][0][1][j]) + (acc[t][1][0][j] + acc[t][1][1][j]);
            for (int span = 8; span >= 1; span /= 2)
                for (int j = 0; j < span; j++) s[j] = s[j] + s[j + span];
            job->y[t * job->y_stride + row] = s[0];
        }
    }
    return -1;
}
