/* The check of a packed index for group sizes that divide 32, vectorised: msp runs it on every
 * block of rows before a kernel follows their index into the values. */
#include "mspkernels.h"

#include <string.h>

/* The set bits of each 32-bit word counted per field of M bits (M = 2, 4, 8, 16 or 32, known at
 * compile time), each count in its field. */
static inline uint32_t group_counts(uint32_t x, int M) {
    x = x - (x >> 1 & 0x55555555u);
    if (M == 2) return x;
    x = (x & 0x33333333u) + (x >> 2 & 0x33333333u);
    if (M == 4) return x;
    x = (x + (x >> 4)) & 0x0F0F0F0Fu;
    if (M == 8) return x;
    x = (x + (x >> 8)) & 0x00FF00FFu;
    if (M == 16) return x;
    return (x + (x >> 16)) & 0x0000FFFFu;
}

/* Whether `count` words all count `full`: an OR-reduction the compiler vectorises. */
static inline int all_full(const uint8_t *words, int64_t count, uint32_t full, int M) {
    uint32_t bad = 0;
    for (int64_t w = 0; w < count; w++) {
        uint32_t word;
        memcpy(&word, words + 4 * w, 4);
        bad |= group_counts(word, M) ^ full;
    }
    return bad == 0;
}

/* The first bad row for a group size M known at compile time. When every word of a row should count
 * `full` (cols a multiple of 32, the usual case), the rows are one run of words checked at once: a
 * row by row loop leaves most of a row's words to the vector loop's scalar epilogue (measured 0.1 ms
 * of a 0.7 ms one-token product). */
static inline int64_t first_bad_row(const uint8_t *index, int64_t rows, int64_t words, uint32_t full,
                                    uint32_t last, int M) {
    if (full == last && all_full(index, rows * words, full, M)) return -1;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t *row = index + r * 4 * words;
        uint32_t word;
        memcpy(&word, row + 4 * (words - 1), 4);
        if (!all_full(row, words - 1, full, M) || group_counts(word, M) != last) return r;
    }
    return -1;
}

int64_t mspk_index_first_bad_row(const uint8_t *index, int64_t rows, int64_t words, int32_t m, uint32_t full,
                                 uint32_t last) {
    switch (m) {
    case 2: return first_bad_row(index, rows, words, full, last, 2);
    case 4: return first_bad_row(index, rows, words, full, last, 4);
    case 8: return first_bad_row(index, rows, words, full, last, 8);
    case 16: return first_bad_row(index, rows, words, full, last, 16);
    default: return first_bad_row(index, rows, words, full, last, 32);
    }
}
