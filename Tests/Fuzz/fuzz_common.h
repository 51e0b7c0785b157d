/*
 * fuzz_common.h: helpers shared by the libFuzzer harnesses of msp.
 *
 * Each harness drives only the public C API (include/msp.h). It reads its choices (sizes, dtypes,
 * patterns, payloads, call sequences) from the fuzzer's bytes with the `fz_*` readers below, passes
 * real heap buffers of exactly the documented length (so AddressSanitizer sees any read or write
 * past them), and checks the contract with FZ_CHECK, which aborts with a message. Every status
 * must be a known code, MSP_ERR_INTERNAL is a bug, an error must come with a message and leave the
 * caller's buffers byte-identical, and a success must leave the message empty.
 */
#ifndef MSP_FUZZ_COMMON_H
#define MSP_FUZZ_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msp.h"

/* Aborts the run (libFuzzer records the input as a crash) when `cond` is false. */
#define FZ_CHECK(cond, ...)                                                                             \
    do {                                                                                                \
        if (!(cond)) {                                                                                  \
            fprintf(stderr, "\nfuzz check failed at %s:%d: %s\n  ", __FILE__, __LINE__, #cond);         \
            fprintf(stderr, __VA_ARGS__);                                                               \
            fprintf(stderr, "\n  last error: %s\n", msp_last_error_message());                        \
            abort();                                                                                    \
        }                                                                                               \
    } while (0)

/* The fuzzer's bytes, consumed from the front; reads past the end give zeros. */
typedef struct {
    const uint8_t *data;
    size_t size;
} fz_input;

static inline uint8_t fz_u8(fz_input *in) {
    if (in->size == 0) return 0;
    uint8_t v = in->data[0];
    in->data++;
    in->size--;
    return v;
}

static inline uint16_t fz_u16(fz_input *in) { return (uint16_t)(fz_u8(in) | (uint16_t)fz_u8(in) << 8); }
static inline uint32_t fz_u32(fz_input *in) { return fz_u16(in) | (uint32_t)fz_u16(in) << 16; }
static inline uint64_t fz_u64(fz_input *in) { return fz_u32(in) | (uint64_t)fz_u32(in) << 32; }

/* A value in [lo, hi] (inclusive) for hi - lo < 2^32; lo when hi <= lo. */
static inline int64_t fz_range(fz_input *in, int64_t lo, int64_t hi) {
    if (hi <= lo) return lo;
    uint64_t span = (uint64_t)(hi - lo) + 1;
    uint64_t raw = span <= 256 ? fz_u8(in) : span <= 65536 ? fz_u16(in) : fz_u32(in);
    return lo + (int64_t)(raw % span);
}

static inline int fz_bool(fz_input *in) { return fz_u8(in) & 1; }

/* Special double values worth trying anywhere a double is accepted. */
static const double fz_special_doubles[] = {
    0.0, -0.0, 1.0, -1.0, 0.5, 0.25, 0.75, 0.999999999, 1e-300, 4.9e-324, -4.9e-324, 2.2250738585072014e-308,
    1e300, -1e300, 1.7976931348623157e308, INFINITY, -INFINITY, NAN, 0.001, 0.9999999999999999, 1.0000000000000002,
};

/* A double: a special value, a ratio in [0, 1], or raw bits (any payload, NaN and subnormals included). */
static inline double fz_double(fz_input *in) {
    uint8_t mode = fz_u8(in) % 4;
    if (mode == 0) return fz_special_doubles[fz_u8(in) % (sizeof fz_special_doubles / sizeof *fz_special_doubles)];
    if (mode == 1) return fz_u16(in) / 65535.0;
    if (mode == 2) return (double)(int16_t)fz_u16(in) / (double)(1 + fz_u8(in));
    uint64_t bits = fz_u64(in);
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* A ratio in [0, 1) most of the time, sometimes any double (out of range, NaN, inf). */
static inline double fz_ratio(fz_input *in) {
    if (fz_u8(in) % 8 == 0) return fz_double(in);
    return fz_u16(in) / 65536.0;
}

/* An element type: usually a valid MSP_DTYPE_*, sometimes an invalid value. */
static inline msp_dtype fz_dtype(fz_input *in) {
    uint8_t v = fz_u8(in);
    if (v < 240) return (msp_dtype)(v % 3);
    return (msp_dtype)(int32_t)fz_u32(in);
}

static inline size_t fz_width(msp_dtype dtype) { return dtype == MSP_DTYPE_F32 ? 4 : 2; }
static inline int fz_valid_dtype(msp_dtype dtype) { return dtype >= 0 && dtype <= 2; }

/* Float values of element bits (exact widening, as the library does). */
static inline float fz_bits_to_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}
static inline float fz_bf16_to_float(uint16_t bits) { return fz_bits_to_float((uint32_t)bits << 16); }
static inline float fz_f16_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
    if (exp == 0x1F) return fz_bits_to_float(sign | 0x7F800000u | (mant << 13));
    if (exp == 0) {
        float v = (float)mant * 5.9604644775390625e-08f; /* 2^-24: subnormals are exact in float */
        return sign ? -v : v;
    }
    return fz_bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
}

/* Element i of a buffer of `dtype` (a valid one) as float. */
static inline float fz_element(const void *buf, msp_dtype dtype, size_t i) {
    if (dtype == MSP_DTYPE_F32) {
        uint32_t b;
        memcpy(&b, (const uint8_t *)buf + 4 * i, 4);
        return fz_bits_to_float(b);
    }
    uint16_t h;
    memcpy(&h, (const uint8_t *)buf + 2 * i, 2);
    return dtype == MSP_DTYPE_F16 ? fz_f16_to_float(h) : fz_bf16_to_float(h);
}

/* Raw bits of element i. */
static inline uint32_t fz_element_bits(const void *buf, msp_dtype dtype, size_t i) {
    if (dtype == MSP_DTYPE_F32) {
        uint32_t b;
        memcpy(&b, (const uint8_t *)buf + 4 * i, 4);
        return b;
    }
    uint16_t h;
    memcpy(&h, (const uint8_t *)buf + 2 * i, 2);
    return h;
}

/*
 * Fills `count` elements of width `width` (4 or 2 bytes) with a fuzzer-chosen payload: raw bits
 * (any NaN, inf or subnormal), small integers (many ties), special values, or a mix. `dtype` is a
 * valid MSP_DTYPE_*; `nan_ok` = 0 replaces NaN patterns by zero so that success paths get exercised.
 */
static inline void fz_fill(fz_input *in, void *buf, size_t count, msp_dtype dtype, int nan_ok) {
    size_t width = dtype == MSP_DTYPE_F32 ? 4 : 2;
    uint16_t nan16 = dtype == MSP_DTYPE_F16 ? 0x7C00 : 0x7F80;
    uint8_t mode = fz_u8(in) % 5;
    static const uint32_t specials32[] = {0x00000000u, 0x80000000u, 0x7F800000u, 0xFF800000u, 0x00000001u,
                                          0x807FFFFFu, 0x7F7FFFFFu, 0x3F800000u, 0xBF800000u, 0x7FC00000u,
                                          0x00800000u, 0x34000000u};
    static const uint16_t specials16[] = {0x0000, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x83FF, 0x7BFF, 0x3C00,
                                          0x7F80, 0xFF80, 0x0080, 0x7E00, 0x7FC0, 0x3F80, 0xBC00};
    for (size_t i = 0; i < count; i++) {
        uint32_t bits;
        uint8_t m = mode == 4 ? fz_u8(in) % 4 : mode;
        if (m == 0) bits = width == 4 ? fz_u32(in) : fz_u16(in);
        else if (m == 1) {
            /* a small integer: lots of equal scores */
            float f = (float)((int)(fz_u8(in) % 7) - 3);
            if (width == 4) memcpy(&bits, &f, 4);
            else {
                uint32_t b32;
                memcpy(&b32, &f, 4);
                bits = b32 >> 16; /* exact as bf16; as f16 it is some finite or special value */
            }
        } else if (m == 2) bits = width == 4 ? specials32[fz_u8(in) % 12] : specials16[fz_u8(in) % 15];
        else bits = width == 4 ? (uint32_t)fz_u8(in) << 23 | fz_u8(in) : (uint32_t)fz_u8(in) << 7 | (fz_u8(in) & 0x7F);
        if (!nan_ok) {
            if (width == 4 && (bits & 0x7FFFFFFFu) > 0x7F800000u) bits = 0;
            if (width == 2 && (bits & 0x7FFF) > nan16) bits &= 0x8000;
        }
        if (width == 4) memcpy((uint8_t *)buf + 4 * i, &bits, 4);
        else {
            uint16_t h = (uint16_t)bits;
            memcpy((uint8_t *)buf + 2 * i, &h, 2);
        }
    }
}

/* A heap buffer of exactly `bytes` bytes (at least 1 allocated), or aborts. */
static inline void *fz_alloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    if (!p) abort();
    return p;
}

/* A copy of a buffer, for the unchanged-on-error check (NULL for NULL). */
static inline void *fz_copy(const void *src, size_t bytes) {
    if (!src) return NULL;
    void *p = fz_alloc(bytes);
    memcpy(p, src, bytes);
    return p;
}

static inline int fz_same(const void *a, const void *b, size_t bytes) {
    return (a == NULL && b == NULL) || (a && b && memcmp(a, b, bytes) == 0);
}

/* Checks the status/message contract of one call; returns the status. */
static inline msp_status fz_status(msp_status st, const char *call) {
    const char *msg = msp_last_error_message();
    FZ_CHECK(msg != NULL, "%s: msp_last_error_message() returned NULL", call);
    FZ_CHECK(st >= MSP_OK && st <= MSP_ERR_INTERNAL, "%s: unknown status %d", call, (int)st);
    FZ_CHECK(st != MSP_ERR_INTERNAL, "%s: MSP_ERR_INTERNAL (%s)", call, msg);
    if (st == MSP_OK) FZ_CHECK(msg[0] == '\0', "%s: success left a message: %s", call, msg);
    else FZ_CHECK(msg[0] != '\0', "%s: error %d without a message", call, (int)st);
    FZ_CHECK(strcmp(msp_status_string(st), "unknown status") != 0, "%s: no text for status %d", call, (int)st);
    return st;
}

/* Process-wide thread count chosen per input (1 or 2 threads: results must not depend on it). */
static inline void fz_threads(fz_input *in) {
    int32_t n = 1 + (fz_u8(in) & 1);
    FZ_CHECK(msp_set_num_threads(n) == MSP_OK, "msp_set_num_threads(%d)", (int)n);
}

#endif /* MSP_FUZZ_COMMON_H */
