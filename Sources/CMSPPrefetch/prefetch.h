/* Software prefetch for libmsp's streaming kernels (Swift has no prefetch intrinsic). Header-only,
 * internal to libmsp. */
#ifndef MSP_PREFETCH_H
#define MSP_PREFETCH_H

#include <stdint.h>

/* Hints the cache line holding address `base + offset` into the L2 cache for reading. Any address
 * is allowed: a prefetch never faults, so callers may hint past the end of their buffer. */
static inline void msp_prefetch(const void *base, intptr_t offset) {
    __builtin_prefetch((const void *)((uintptr_t)base + (uintptr_t)offset), 0, 2);
}

#endif
