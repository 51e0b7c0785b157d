/* CPU hints Swift has no intrinsic for: software prefetch for libmsp's streaming kernels, and the
 * spin-wait pause of its worker threads. Header-only, internal to libmsp. */
#ifndef MSP_PREFETCH_H
#define MSP_PREFETCH_H

#include <stdint.h>

/* Hints the cache line holding address `base + offset` into the L2 cache for reading. Any address
 * is allowed: a prefetch never faults, so callers may hint past the end of their buffer. */
static inline void msp_prefetch(const void *base, intptr_t offset) {
    __builtin_prefetch((const void *)((uintptr_t)base + (uintptr_t)offset), 0, 2);
}

/* Tells the CPU that the caller is in a spin-wait loop (x86 `pause`, Arm `yield`): it saves power and
 * leaves the core's resources to a sibling hardware thread. */
static inline void msp_spin_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#endif
