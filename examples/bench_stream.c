/* bench_stream.c: the machine's memory bandwidth, measured by examples/bench.py in the same run as
 * the kernels it judges. bench.py compiles this file at startup
 * (cc -O3 -march=x86-64-v3 -shared -fPIC -pthread) and calls it through ctypes.
 *
 * Two kernels over a caller's buffers, split into equal contiguous parts, one per thread:
 *   copy: dst = src with ordinary (cached) 32-byte stores, as msp's in-place kernels write;
 *   read: a 64-bit sum of src, as msp_sum_squares reads.
 * On x86-64 the loops use explicit AVX2 loads and stores so that the compiler can neither turn the
 * copy into a memcpy call (which may switch to non-temporal stores) nor drop the read; elsewhere
 * (aarch64) plain 64-bit loops stand in.
 */
#if defined(__AVX2__)
#include <immintrin.h>
#endif
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *dst;
    const char *src;
    size_t bytes;
    uint64_t sum;
} part;

#if defined(__AVX2__)
static void *copy_part(void *arg) {
    part *p = arg;
    size_t i = 0;
    for (; i + 128 <= p->bytes; i += 128) {
        __m256i a = _mm256_loadu_si256((const __m256i *)(p->src + i));
        __m256i b = _mm256_loadu_si256((const __m256i *)(p->src + i + 32));
        __m256i c = _mm256_loadu_si256((const __m256i *)(p->src + i + 64));
        __m256i d = _mm256_loadu_si256((const __m256i *)(p->src + i + 96));
        _mm256_storeu_si256((__m256i *)(p->dst + i), a);
        _mm256_storeu_si256((__m256i *)(p->dst + i + 32), b);
        _mm256_storeu_si256((__m256i *)(p->dst + i + 64), c);
        _mm256_storeu_si256((__m256i *)(p->dst + i + 96), d);
    }
    for (; i < p->bytes; i++) p->dst[i] = p->src[i];
    return NULL;
}

static void *read_part(void *arg) {
    part *p = arg;
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 128 <= p->bytes; i += 128) {
        s0 = _mm256_add_epi64(s0, _mm256_loadu_si256((const __m256i *)(p->src + i)));
        s1 = _mm256_add_epi64(s1, _mm256_loadu_si256((const __m256i *)(p->src + i + 32)));
        s2 = _mm256_add_epi64(s2, _mm256_loadu_si256((const __m256i *)(p->src + i + 64)));
        s3 = _mm256_add_epi64(s3, _mm256_loadu_si256((const __m256i *)(p->src + i + 96)));
    }
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
    uint64_t sum = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < p->bytes; i++) sum += (unsigned char)p->src[i];
    p->sum = sum;
    return NULL;
}
#else
static void *copy_part(void *arg) {
    part *p = arg;
    volatile uint64_t *dst = (volatile uint64_t *)p->dst;  /* volatile: no memcpy call */
    const uint64_t *src = (const uint64_t *)p->src;
    size_t words = p->bytes / 8, i = 0;
    for (; i < words; i++) dst[i] = src[i];
    for (i *= 8; i < p->bytes; i++) p->dst[i] = p->src[i];
    return NULL;
}

static void *read_part(void *arg) {
    part *p = arg;
    const uint64_t *src = (const uint64_t *)p->src;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t words = p->bytes / 8, i = 0;
    for (; i + 4 <= words; i += 4) {
        s0 += src[i];
        s1 += src[i + 1];
        s2 += src[i + 2];
        s3 += src[i + 3];
    }
    uint64_t sum = s0 + s1 + s2 + s3;
    for (i *= 8; i < p->bytes; i++) sum += (unsigned char)p->src[i];
    p->sum = sum;
    return NULL;
}
#endif

/* Runs the copy (op 0: dst must hold `bytes`) or the read (op 1: dst may be NULL) with `threads`
 * threads (1..64). Returns the read's sum (0 for the copy), or UINT64_MAX when a thread could not
 * start. */
uint64_t bench_stream(void *dst, const void *src, size_t bytes, int threads, int op) {
    enum { MAX_THREADS = 64 };
    part parts[MAX_THREADS];
    pthread_t ids[MAX_THREADS];
    if (threads < 1) threads = 1;
    if (threads > MAX_THREADS) threads = MAX_THREADS;
    size_t chunk = (bytes / (size_t)threads) & ~(size_t)127;
    for (int t = 0; t < threads; t++) {
        size_t start = (size_t)t * chunk;
        parts[t].dst = dst ? (char *)dst + start : NULL;
        parts[t].src = (const char *)src + start;
        parts[t].bytes = t == threads - 1 ? bytes - start : chunk;
        parts[t].sum = 0;
    }
    void *(*kernel)(void *) = op == 0 ? copy_part : read_part;
    int started = 1;
    for (int t = 1; t < threads; t++) {
        if (pthread_create(&ids[t], NULL, kernel, &parts[t]) != 0) break;
        started++;
    }
    kernel(&parts[0]);
    uint64_t sum = 0;
    for (int t = 1; t < started; t++) pthread_join(ids[t], NULL);
    if (started < threads) return UINT64_MAX;
    for (int t = 0; t < threads; t++) sum += parts[t].sum;
    return sum;
}
