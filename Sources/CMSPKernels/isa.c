/* The run-time choice of the msp_nm_linear kernel: the best instruction set of the CPU, capped by
 * the MSP_ISA environment variable. */
#include "mspkernels.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

int32_t mspk_isa_supported(void) {
#if defined(__x86_64__)
    /* __builtin_cpu_supports also checks that the operating system saves the wider registers. */
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vbmi2") && __builtin_cpu_supports("avx512bitalg") &&
        __builtin_cpu_supports("avx512vpopcntdq"))
        return MSPK_ISA_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt"))
        return MSPK_ISA_AVX2;
#endif
    return MSPK_ISA_PORTABLE;
}

/* The cap MSP_ISA asks for, or the highest level when it is unset or unknown. */
static int32_t requested(void) {
    const char *value = getenv("MSP_ISA");
    if (value == NULL) return MSPK_ISA_AVX512;
    if (strcmp(value, "portable") == 0) return MSPK_ISA_PORTABLE;
    if (strcmp(value, "avx2") == 0) return MSPK_ISA_AVX2;
    return MSPK_ISA_AVX512;
}

int32_t mspk_isa_selected(void) {
    /* -1 until the first call; racing first calls compute the same value. */
    static _Atomic int32_t selected = -1;
    int32_t isa = atomic_load_explicit(&selected, memory_order_relaxed);
    if (isa < 0) {
        int32_t supported = mspk_isa_supported(), cap = requested();
        isa = supported < cap ? supported : cap;
        atomic_store_explicit(&selected, isa, memory_order_relaxed);
    }
    return isa;
}
