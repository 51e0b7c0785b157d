/* The AVX2 kernel of msp_nm_linear: each byte of a chunk's index word expands its kept values into
 * 8 positions by one shuffle from a table (vpshufb for 16-bit weights, vpermd and a blend for
 * float32), and the tokens are multiplied in the order of mspkernels.h, a 16-lane half vector
 * being two 8-lane registers. One token is multiplied as the chunks are expanded; several tokens
 * read the row expanded once into scratch. */
#include "mspkernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <pthread.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma,f16c,bmi,bmi2,popcnt")))
#define INLINE AVX2 __attribute__((always_inline)) static inline

/* Bytes ahead of the reads that the values and index streams are hinted into the cache. */
#define PREFETCH_AHEAD 2048

/* For each index byte: the vpshufb control that moves its kept 16-bit values to their positions
 * (zero elsewhere), and the vpermd indices that do so for 32-bit values. */
static _Alignas(64) uint8_t shuffle16[256][16];
static _Alignas(64) int32_t permute32[256][8];
static pthread_once_t tables_once = PTHREAD_ONCE_INIT;

static void fill_tables(void) {
    for (int byte = 0; byte < 256; byte++) {
        int kept = 0;
        for (int pos = 0; pos < 8; pos++) {
            int set = byte >> pos & 1;
            shuffle16[byte][2 * pos] = set ? (uint8_t)(2 * kept) : 0x80;
            shuffle16[byte][2 * pos + 1] = set ? (uint8_t)(2 * kept + 1) : 0x80;
            permute32[byte][pos] = set ? kept : 0;
            kept += set;
        }
    }
}

/* A chunk's weights as float32 half vectors, each two 8-lane registers (lanes 0..7, 8..15). */
typedef struct {
    __m256 first_lo, first_hi, second_lo, second_hi;
} halves;

/* The kept 16-bit values of index byte `byte` from p on, moved to their 8 positions. `checked`
 * (known at compile time) keeps the load from crossing `end`. */
INLINE __m128i expand16(const uint16_t *p, unsigned byte, const uint16_t *end, int checked) {
    __m128i raw;
    if (!checked || end - p >= 8) {
        raw = _mm_loadu_si128((const __m128i *)p);
    } else {
        uint16_t tail[8] = {0};
        memcpy(tail, p, (size_t)(end - p) * sizeof *p);
        raw = _mm_loadu_si128((const __m128i *)tail);
    }
    return _mm_shuffle_epi8(raw, _mm_load_si128((const __m128i *)shuffle16[byte]));
}

/* The kept float32 values of index byte `byte` from p on, moved to their 8 positions; `checked` as
 * for expand16. */
INLINE __m256 expand32(const float *p, unsigned byte, const float *end, int checked) {
    __m256 raw;
    if (!checked || end - p >= 8) {
        raw = _mm256_loadu_ps(p);
    } else {
        float tail[8] = {0};
        memcpy(tail, p, (size_t)(end - p) * sizeof *p);
        raw = _mm256_loadu_ps(tail);
    }
    __m256 moved = _mm256_permutevar8x32_ps(raw, _mm256_load_si256((const __m256i *)permute32[byte]));
    /* Bit j of the byte to the sign bit of lane j: the lanes that hold a kept value. */
    __m256i kept = _mm256_sllv_epi32(_mm256_set1_epi32((int32_t)byte), _mm256_setr_epi32(31, 30, 29, 28, 27, 26, 25, 24));
    return _mm256_blendv_ps(_mm256_setzero_ps(), moved, _mm256_castsi256_ps(kept));
}

/* The chunk whose index word is `k`, from the values at *p on; advances *p past its kept values.
 * Rows that end 32 bytes or more before `end` need no `checked` loads. */
INLINE halves decode(int32_t dtype, const void **p, uint32_t k, const void *end, int checked) {
    unsigned b0 = k & 0xFF, b1 = k >> 8 & 0xFF, b2 = k >> 16 & 0xFF, b3 = k >> 24;
    unsigned o1 = (unsigned)_mm_popcnt_u32(b0), o2 = (unsigned)_mm_popcnt_u32(k & 0xFFFF);
    unsigned o3 = (unsigned)_mm_popcnt_u32(k & 0xFFFFFF), count = (unsigned)_mm_popcnt_u32(k);
    halves h;
    if (dtype == MSPK_F32) {
        const float *v = *p;
        h.first_lo = expand32(v, b0, end, checked);
        h.first_hi = expand32(v + o1, b1, end, checked);
        h.second_lo = expand32(v + o2, b2, end, checked);
        h.second_hi = expand32(v + o3, b3, end, checked);
        *p = v + count;
        return h;
    }
    const uint16_t *v = *p;
    __m128i e0 = expand16(v, b0, end, checked), e1 = expand16(v + o1, b1, end, checked);
    __m128i e2 = expand16(v + o2, b2, end, checked), e3 = expand16(v + o3, b3, end, checked);
    *p = v + count;
    if (dtype == MSPK_BF16) {
        /* Lane j of positions 0..15 holds positions 2j (low half) and 2j + 1 (high half). */
        __m256i lo = _mm256_set_m128i(e1, e0), hi = _mm256_set_m128i(e3, e2);
        __m256i odd = _mm256_set1_epi32((int32_t)0xFFFF0000);
        h.first_lo = _mm256_castsi256_ps(_mm256_slli_epi32(lo, 16));
        h.second_lo = _mm256_castsi256_ps(_mm256_and_si256(lo, odd));
        h.first_hi = _mm256_castsi256_ps(_mm256_slli_epi32(hi, 16));
        h.second_hi = _mm256_castsi256_ps(_mm256_and_si256(hi, odd));
    } else {
        h.first_lo = _mm256_cvtph_ps(e0);
        h.first_hi = _mm256_cvtph_ps(e1);
        h.second_lo = _mm256_cvtph_ps(e2);
        h.second_hi = _mm256_cvtph_ps(e3);
    }
    return h;
}

/* Four 16-lane partial sums of one (row, token), as 8-lane pairs: [parity][half][lanes 0..7, 8..15]. */
typedef struct {
    __m256 p[2][2][2];
} partials;

INLINE void clear(partials *a) {
    for (int s = 0; s < 2; s++)
        for (int h = 0; h < 2; h++) a->p[s][h][0] = a->p[s][h][1] = _mm256_setzero_ps();
}

/* Adds chunk weights `w` times the chunk's prepared token `x` (32 floats) to partial sums `s`. */
INLINE void accumulate(partials *a, int s, halves w, const float *x) {
    a->p[s][0][0] = _mm256_fmadd_ps(w.first_lo, _mm256_loadu_ps(x), a->p[s][0][0]);
    a->p[s][0][1] = _mm256_fmadd_ps(w.first_hi, _mm256_loadu_ps(x + 8), a->p[s][0][1]);
    a->p[s][1][0] = _mm256_fmadd_ps(w.second_lo, _mm256_loadu_ps(x + 16), a->p[s][1][0]);
    a->p[s][1][1] = _mm256_fmadd_ps(w.second_hi, _mm256_loadu_ps(x + 24), a->p[s][1][1]);
}

/* The fold of mspkernels.h: (p00 + p01) + (p10 + p11), then halves down to one lane. */
INLINE float reduce(const partials *a) {
    __m256 lo = _mm256_add_ps(_mm256_add_ps(a->p[0][0][0], a->p[0][1][0]), _mm256_add_ps(a->p[1][0][0], a->p[1][1][0]));
    __m256 hi = _mm256_add_ps(_mm256_add_ps(a->p[0][0][1], a->p[0][1][1]), _mm256_add_ps(a->p[1][0][1], a->p[1][1][1]));
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* Decodes chunk c of a row (index bytes `index`, values at *p), hinting the values and the index
 * ahead every other chunk. */
INLINE halves next_chunk(int32_t dtype, int checked, const void **p, const uint8_t *index, int64_t c, const void *end) {
    uint32_t k;
    memcpy(&k, index + 4 * c, 4);
    if ((c & 1) == 0) _mm_prefetch((const char *)*p + PREFETCH_AHEAD, _MM_HINT_T0);
    if ((c & 15) == 0) _mm_prefetch((const char *)(index + 4 * c) + PREFETCH_AHEAD, _MM_HINT_T0);
    return decode(dtype, p, k, end, checked);
}

/* One row (values at p, index bytes `index`) for the job's tokens. One token is multiplied as the
 * chunks are decoded, two at a time so that their partial sums are known at compile time; several
 * read the row decoded once into scratch, in the layout of the prepared tokens. */
INLINE void row(int32_t dtype, int checked, const mspk_nm_rows *job, int64_t r, const void *p, const uint8_t *index) {
    const int64_t chunks = job->chunks;
    const void *end = job->values_end;
    partials a;
    if (job->tokens == 1) {
        clear(&a);
        int64_t c = 0;
        for (; c + 2 <= chunks; c += 2) {
            accumulate(&a, 0, next_chunk(dtype, checked, &p, index, c, end), job->x + c * MSPK_CHUNK);
            accumulate(&a, 1, next_chunk(dtype, checked, &p, index, c + 1, end), job->x + (c + 1) * MSPK_CHUNK);
        }
        if (c < chunks) accumulate(&a, 0, next_chunk(dtype, checked, &p, index, c, end), job->x + c * MSPK_CHUNK);
        job->y[r] = reduce(&a);
        return;
    }
    for (int64_t c = 0; c < chunks; c++) {
        halves w = next_chunk(dtype, checked, &p, index, c, end);
        float *out = job->scratch + c * MSPK_CHUNK;
        _mm256_storeu_ps(out, w.first_lo);
        _mm256_storeu_ps(out + 8, w.first_hi);
        _mm256_storeu_ps(out + 16, w.second_lo);
        _mm256_storeu_ps(out + 24, w.second_hi);
    }
    for (int t = 0; t < job->tokens; t++) {
        const float *x = job->x + t * chunks * MSPK_CHUNK;
        clear(&a);
        for (int64_t c = 0; c < chunks; c += 2) {
            for (int s = 0; s < 2 && c + s < chunks; s++) {
                const float *w = job->scratch + (c + s) * MSPK_CHUNK;
                halves h = {_mm256_loadu_ps(w), _mm256_loadu_ps(w + 8), _mm256_loadu_ps(w + 16), _mm256_loadu_ps(w + 24)};
                accumulate(&a, s, h, x + (c + s) * MSPK_CHUNK);
            }
        }
        job->y[t * job->y_stride + r] = reduce(&a);
    }
}

/* All rows and tokens of the job for weights of `dtype` (known at compile time). */
INLINE void rows(int32_t dtype, const mspk_nm_rows *job) {
    for (int64_t r = 0; r < job->rows; r++) {
        const char *p = (const char *)job->values + r * job->values_stride;
        const uint8_t *index = job->index + r * job->index_stride;
        if ((const char *)job->values_end - (p + job->values_stride) >= 32) row(dtype, 0, job, r, p, index);
        else row(dtype, 1, job, r, p, index);
    }
}

AVX2 int64_t mspk_nm_rows_avx2(const mspk_nm_rows *job) {
    pthread_once(&tables_once, fill_tables);
    switch (job->dtype) {
    case MSPK_F32: rows(MSPK_F32, job); break;
    case MSPK_F16: rows(MSPK_F16, job); break;
    default: rows(MSPK_BF16, job); break;
    }
    return -1;
}

#else

int64_t mspk_nm_rows_avx2(const mspk_nm_rows *job) { return mspk_nm_rows_portable(job); }

#endif
