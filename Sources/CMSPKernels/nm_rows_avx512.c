/* The AVX-512 kernel of msp_nm_linear: each chunk's kept values are expanded into their 32
 * positions by vpexpandw / vpexpandd under the chunk's index word as a mask, widened to float32 and
 * multiplied with the tokens by fused multiply-adds in the order of mspkernels.h. */
#include "mspkernels.h"

#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

#define AVX512                                                                                          \
    __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi2,avx512bitalg,avx512vpopcntdq,bmi,bmi2," \
                          "popcnt,fma,f16c")))
#define INLINE AVX512 __attribute__((always_inline)) static inline

/* Keeps a loaded vector in a register. Without it the compiler folds the load into vpexpand's
 * memory form, which measured several times slower on AMD Zen 4 (7 cycles per expand against 2). */
#define IN_REGISTER(v) __asm__("" : "+v"(v))

/* Bytes ahead of the reads that the values and index streams are hinted into the cache. */
#define PREFETCH_AHEAD 2048

/* Fully unrolls the next loop (constant trip count), so that arrays indexed by it stay in registers. */
#define UNROLL _Pragma("clang loop unroll(full)")

/* Most tokens per pass over one row, and over a pair of rows: the 4 partial sums of every (row,
 * token) stay in registers. */
#define PASS_TOKENS 4
#define PAIR_TOKENS 3
#define ROWS_MAX 2

/* A chunk's weights as float32 half vectors (see mspkernels.h). */
typedef struct {
    __m512 first, second;
} halves;

/* The 32 words from p on; when `checked`, only the first `count` if a full load would cross `end`. */
INLINE __m512i load_words(const uint16_t *p, unsigned count, const uint16_t *end, int checked) {
    __m512i raw = !checked || end - p >= 32 ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(_bzhi_u32(~0u, count), p);
    IN_REGISTER(raw);
    return raw;
}

/* The 16 floats from p on; when `checked`, only the first `count` if a full load would cross `end`. */
INLINE __m512 load_floats(const float *p, unsigned count, const float *end, int checked) {
    __m512 raw = !checked || end - p >= 16 ? _mm512_loadu_ps(p)
                                           : _mm512_maskz_loadu_ps((__mmask16)_bzhi_u32(~0u, count), p);
    IN_REGISTER(raw);
    return raw;
}

/* The chunk whose index word is `k`, from the values at *p on; advances *p past its kept values.
 * `checked` (known at compile time) keeps the loads from crossing `end`; rows that end 64 bytes or
 * more before it need no check. */
INLINE halves decode(int32_t dtype, const void **p, uint32_t k, const void *end, int checked) {
    halves h;
    unsigned count = (unsigned)_mm_popcnt_u32(k);
    if (dtype == MSPK_F32) {
        const float *v = *p;
        unsigned low = (unsigned)_mm_popcnt_u32(k & 0xFFFF);
        h.first = _mm512_maskz_expand_ps((__mmask16)k, load_floats(v, low, end, checked));
        h.second = _mm512_maskz_expand_ps((__mmask16)(k >> 16), load_floats(v + low, count - low, end, checked));
        *p = v + count;
        return h;
    }
    const uint16_t *v = *p;
    __m512i w = _mm512_maskz_expand_epi16(k, load_words(v, count, end, checked));
    *p = v + count;
    if (dtype == MSPK_BF16) {
        h.first = _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
        h.second = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32((int32_t)0xFFFF0000)));
    } else {
        h.first = _mm512_cvtph_ps(_mm512_castsi512_si256(w));
        h.second = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(w, 1));
    }
    return h;
}

/* Whether index words c .. c + 15 of a row of `words` words (fewer at its end, the last one held to
 * job->check_last) count job->check_full set bits per field of job->check_m bits: the check of
 * mspk_index_first_bad_row, 16 words at a time, run by the kernel as it reads the index so that it
 * overlaps the products (a check of each block ahead of the kernel cost 10-15% of a one-token
 * product, its reads of the index not overlapping any work). */
INLINE int words_ok(const uint8_t *index, int64_t c, int64_t words, const mspk_nm_rows *job) {
    int64_t left = words - c;
    __mmask16 lanes = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
    __m512i w = _mm512_maskz_loadu_epi32(lanes, index + 4 * c), counts;
    __m512i expected = _mm512_set1_epi32((int32_t)job->check_full);
    if (left <= 16) expected = _mm512_mask_set1_epi32(expected, (__mmask16)(1u << (left - 1)), (int32_t)job->check_last);
    switch (job->check_m) {
    case 2: counts = _mm512_sub_epi32(w, _mm512_and_si512(_mm512_srli_epi32(w, 1), _mm512_set1_epi32(0x55555555))); break;
    case 4: {
        /* Each byte's low and high nibble counted, the high count moved back to its nibble. */
        __m512i low = _mm512_set1_epi8(0x0F);
        counts = _mm512_or_si512(_mm512_popcnt_epi8(_mm512_and_si512(w, low)),
                                 _mm512_slli_epi16(_mm512_popcnt_epi8(_mm512_andnot_si512(low, w)), 4));
        break;
    }
    case 8: counts = _mm512_popcnt_epi8(w); break;
    case 16: counts = _mm512_popcnt_epi16(w); break;
    default: counts = _mm512_popcnt_epi32(w); break;
    }
    return _mm512_mask_cmpneq_epi32_mask(lanes, counts, expected) == 0;
}

/* The fold of mspkernels.h: (p00 + p01) + (p10 + p11), then halves down to one lane. */
INLINE float reduce(__m512 p00, __m512 p01, __m512 p10, __m512 p11) {
    __m512 s = _mm512_add_ps(_mm512_add_ps(p00, p01), _mm512_add_ps(p10, p11));
    __m256 s8 = _mm256_add_ps(_mm512_castps512_ps256(s), _mm512_extractf32x8_ps(s, 1));
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    return _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
}

/* Partial sums of up to ROWS_MAX rows and PASS_TOKENS tokens: [row][token][parity][half]. */
typedef __m512 sums[ROWS_MAX][PASS_TOKENS][2][2];

/* Chunk c of R rows (index words k[i], values at p[i]) times T tokens into the partial sums of
 * parity s: each token's chunk is loaded once for the R rows. */
INLINE void step(int32_t dtype, int R, int T, int checked, const void *p[], const uint32_t k[], const void *end,
                 sums acc, int s, const float *x, int64_t chunks, int64_t c) {
    halves h[ROWS_MAX];
    UNROLL for (int i = 0; i < R; i++) h[i] = decode(dtype, &p[i], k[i], end, checked);
    UNROLL for (int t = 0; t < T; t++) {
        const float *xc = x + (t * chunks + c) * MSPK_CHUNK;
        __m512 first_x = _mm512_loadu_ps(xc), second_x = _mm512_loadu_ps(xc + 16);
        UNROLL for (int i = 0; i < R; i++) {
            acc[i][t][s][0] = _mm512_fmadd_ps(h[i].first, first_x, acc[i][t][s][0]);
            acc[i][t][s][1] = _mm512_fmadd_ps(h[i].second, second_x, acc[i][t][s][1]);
        }
    }
}

/* Rows `row` .. row + R - 1 of the job for tokens first .. first + T - 1 (R * T <= 6; R, T and
 * `checked` known at compile time). Chunks go in pairs, one 64-bit index load and one prefetch per
 * pair and row: chunk c takes partial sums 0, chunk c + 1 partial sums 1. With `check`, every 16
 * chunks' index words are checked before they are read (words_ok). Returns -1, or the first row
 * (0 .. R - 1) whose index failed, at once. */
INLINE int pass(int32_t dtype, int R, int T, int checked, int check, const mspk_nm_rows *job, int64_t row,
                int first) {
    const int64_t chunks = job->chunks;
    const void *p[ROWS_MAX];
    const uint8_t *index[ROWS_MAX];
    UNROLL for (int i = 0; i < R; i++) {
        p[i] = (const char *)job->values + (row + i) * job->values_stride;
        index[i] = job->index + (row + i) * job->index_stride;
    }
    const float *x = job->x + (int64_t)first * chunks * MSPK_CHUNK;
    sums acc;
    UNROLL for (int i = 0; i < R; i++) {
        UNROLL for (int t = 0; t < T; t++) {
            UNROLL for (int s = 0; s < 2; s++) acc[i][t][s][0] = acc[i][t][s][1] = _mm512_setzero_ps();
        }
    }
    int64_t c = 0;
    for (; c + 2 <= chunks; c += 2) {
        uint32_t even[ROWS_MAX], odd[ROWS_MAX];
        UNROLL for (int i = 0; i < R; i++) {
            if ((c & 15) == 0) {
                _mm_prefetch((const char *)(index[i] + 4 * c) + PREFETCH_AHEAD, _MM_HINT_T0);
                if (check && !words_ok(index[i], c, chunks, job)) return i;
            }
            uint64_t k;
            memcpy(&k, index[i] + 4 * c, 8);
            even[i] = (uint32_t)k;
            odd[i] = (uint32_t)(k >> 32);
            _mm_prefetch((const char *)p[i] + PREFETCH_AHEAD, _MM_HINT_T0);
        }
        step(dtype, R, T, checked, p, even, job->values_end, acc, 0, x, chunks, c);
        step(dtype, R, T, checked, p, odd, job->values_end, acc, 1, x, chunks, c + 1);
    }
    if (c < chunks) {
        uint32_t last[ROWS_MAX];
        UNROLL for (int i = 0; i < R; i++) {
            if (check && (c & 15) == 0 && !words_ok(index[i], c, chunks, job)) return i;
            memcpy(&last[i], index[i] + 4 * c, 4);
        }
        step(dtype, R, T, checked, p, last, job->values_end, acc, 0, x, chunks, c);
    }
    UNROLL for (int i = 0; i < R; i++) {
        UNROLL for (int t = 0; t < T; t++)
            job->y[(first + t) * job->y_stride + row + i] =
                reduce(acc[i][t][0][0], acc[i][t][0][1], acc[i][t][1][0], acc[i][t][1][1]);
    }
    return -1;
}

/* Rows `row` .. row + R - 1 (R = 1 or 2) for all tokens of the job, in passes of PASS_TOKENS
 * tokens over one row or PAIR_TOKENS over two (the last pass takes the rest); the first pass checks
 * the index when the job asks. Returns -1, or the row (0 .. R - 1) whose index failed. */
INLINE int row_passes(int32_t dtype, int R, int checked, const mspk_nm_rows *job, int64_t row) {
    const int most = R == 1 ? PASS_TOKENS : PAIR_TOKENS;
    for (int first = 0; first < job->tokens; first += most) {
        int left = job->tokens - first, check = first == 0 && job->check_m != 0, bad = -1;
        switch (left < most ? left : most) {
        case 1: bad = pass(dtype, R, 1, checked, check, job, row, first); break;
        case 2: bad = pass(dtype, R, 2, checked, check, job, row, first); break;
        case 3: bad = pass(dtype, R, 3, checked, check, job, row, first); break;
        default:
            if (R == 1) bad = pass(dtype, 1, 4, checked, check, job, row, first);
            break;
        }
        if (bad >= 0) return bad;
    }
    return -1;
}

/* All rows and tokens of the job for weights of `dtype` (known at compile time): one token row by
 * row, several in pairs of rows (each token's chunk then feeds both rows: the tokens, 16 KiB each at
 * 4096 columns, come from L2, and their loads would otherwise bound the pass). A pair or row whose
 * values end 64 bytes or more before the buffer's end loads without checks. Returns -1, or the first
 * row whose index failed (the rows after it are not computed). */
INLINE int64_t rows(int32_t dtype, const mspk_nm_rows *job) {
    const char *values = job->values, *end = job->values_end;
    int64_t row = 0;
    int bad = -1;
    if (job->tokens > 1) {
        for (; row + 2 <= job->rows && bad < 0; row += 2) {
            if (end - (values + (row + 2) * job->values_stride) >= 64) bad = row_passes(dtype, 2, 0, job, row);
            else bad = row_passes(dtype, 2, 1, job, row);
        }
        if (bad >= 0) return row - 2 + bad;
    }
    for (; row < job->rows; row++) {
        if (end - (values + (row + 1) * job->values_stride) >= 64) bad = row_passes(dtype, 1, 0, job, row);
        else bad = row_passes(dtype, 1, 1, job, row);
        if (bad >= 0) return row;
    }
    return -1;
}

AVX512 int64_t mspk_nm_rows_avx512(const mspk_nm_rows *job) {
    switch (job->dtype) {
    case MSPK_F32: return rows(MSPK_F32, job);
    case MSPK_F16: return rows(MSPK_F16, job);
    default: return rows(MSPK_BF16, job);
    }
}

#else

int64_t mspk_nm_rows_avx512(const mspk_nm_rows *job) { return mspk_nm_rows_portable(job); }

#endif
