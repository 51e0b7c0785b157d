/* Row kernels of msp_nm_linear (the product of compressed N:M weights with a few tokens), one per
 * instruction set, the run-time choice among them, and the check of a packed index. Internal to
 * libmsp: MSPCore validates every argument, and a row's index is checked (by MSPCore, or by the
 * AVX-512 kernel itself) before a kernel reads the row's values.
 *
 * Every kernel computes the same float32 result, bit for bit: the summation order below is part of
 * the contract, so that results do not depend on the machine's instruction set or the thread count.
 *
 * A row of `cols` weights is read in chunks of 32 positions (the last one padded with zeros). The
 * chunk's 32 weights, widened exactly to float32, form two 16-lane half vectors `first` and `second`:
 *   bfloat16:        first[j] = w[32c + 2j],  second[j] = w[32c + 2j + 1]
 *   float16, float32: first[j] = w[32c + j],   second[j] = w[32c + 16 + j]
 * (a pruned or padded position is 0). The prepared tokens `x` hold the same half vectors of each
 * token (mspk_x_interleaved says which mapping), as float32, zero past `cols`. Four 16-lane partial sums
 * per (row, token), P[s][h] for chunk parity s = c % 2 and half h, start at +0 and take, chunk by
 * chunk in order, P[s][0] = fma(first, x_first, P[s][0]) then P[s][1] = fma(second, x_second, P[s][1])
 * (fused, one rounding each). Then S = (P[0][0] + P[0][1]) + (P[1][0] + P[1][1]) lane-wise, and S
 * is folded in halves: S8[j] = S[j] + S[j + 8] (j < 8), S4[j] = S8[j] + S8[j + 4],
 * S2[j] = S4[j] + S4[j + 2], y = S2[0] + S2[1].
 */
#ifndef MSPKERNELS_H
#define MSPKERNELS_H

#include <stdint.h>

#define MSPK_HIDDEN __attribute__((visibility("hidden")))

/* Instruction sets, in increasing order. */
#define MSPK_ISA_PORTABLE 0 /* plain C: any machine (aarch64 builds) */
#define MSPK_ISA_AVX2 1     /* x86-64-v3: AVX2, FMA, F16C, BMI2, POPCNT */
#define MSPK_ISA_AVX512 2   /* AVX-512 F, BW, VL, DQ, VBMI2 (vpexpandw), BITALG and VPOPCNTDQ */

/* Element type codes, as MSP_DTYPE_*. */
#define MSPK_F32 0
#define MSPK_F16 1
#define MSPK_BF16 2

/* Positions per chunk, and the most tokens one kernel call takes. */
#define MSPK_CHUNK 32
#define MSPK_MAX_TOKENS 16

/* The best instruction set this CPU (and its operating system) supports. */
MSPK_HIDDEN int32_t mspk_isa_supported(void);

/* The instruction set msp_nm_linear uses: mspk_isa_supported(), capped by the environment variable
 * MSP_ISA ("avx512", "avx2" or "portable"; other values are ignored) read at the first call. */
MSPK_HIDDEN int32_t mspk_isa_selected(void);

/* One call's rows: packed values and index from the first row on, the prepared tokens and where the
 * float32 results go. */
typedef struct mspk_nm_rows {
    const void *values;      /* the first row's kept values */
    const uint8_t *index;    /* the first row's index words (bit p of a row: byte p / 8, bit p % 8) */
    const void *values_end;  /* one past the last byte of the whole values buffer: no load crosses it */
    int64_t rows;            /* rows to compute, >= 1 */
    int64_t chunks;          /* chunks per row, ceil(cols / 32) */
    int64_t values_stride;   /* bytes from one row's values to the next */
    int64_t index_stride;    /* bytes from one row's index to the next (4 * chunks) */
    int32_t dtype;           /* MSPK_F32, MSPK_F16 or MSPK_BF16 */
    int32_t tokens;          /* 1 .. MSPK_MAX_TOKENS */
    const float *x;          /* tokens x chunks x 32 prepared floats: token t, chunk c at x[(t * chunks + c) * 32] */
    float *y;                /* result of row i, token t at y[t * y_stride + i] */
    int64_t y_stride;
    float *scratch;          /* chunks x 32 floats for the AVX2 kernel when tokens > 1, else unused */
    int32_t check_m;         /* AVX-512 only: m (2, 4, 8, 16 or 32) to check each row's index as it is
                                read, as mspk_index_first_bad_row does; 0 when it was checked before */
    uint32_t check_full;     /* with check_m: the count fields of an index word */
    uint32_t check_last;     /* with check_m: those of a row's last word */
} mspk_nm_rows;

/* The first of `rows` rows of a packed index (`words` little-endian 32-bit words per row, 4 * words
 * bytes apart) whose words do not all count exactly `full` set bits per field of m bits (the last
 * word: `last`), or -1: the index check for a group size m = 2, 4, 8, 16 or 32 (groups never straddle
 * words), `full` holding n in every field and `last` the same below cols and 0 above. */
MSPK_HIDDEN int64_t mspk_index_first_bad_row(const uint8_t *index, int64_t rows, int64_t words, int32_t m,
                                             uint32_t full, uint32_t last);

/* Whether prepared tokens use the bfloat16 mapping (even and odd positions) for weights of `dtype`. */
static inline int mspk_x_interleaved(int32_t dtype) { return dtype == MSPK_BF16; }

/* The kernels. Each computes job->rows rows for job->tokens tokens with the summation order above
 * and returns -1; with job->check_m, the AVX-512 kernel checks each row's index before it reads the
 * row's values, and stops at a bad row, returning its number in the job. mspk_nm_rows_avx512 and
 * mspk_nm_rows_avx2 run only on CPUs with those instruction sets. */
MSPK_HIDDEN int64_t mspk_nm_rows_avx512(const mspk_nm_rows *job);
MSPK_HIDDEN int64_t mspk_nm_rows_avx2(const mspk_nm_rows *job);
MSPK_HIDDEN int64_t mspk_nm_rows_portable(const mspk_nm_rows *job);

#endif
