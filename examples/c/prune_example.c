/*
 * Prunes a small matrix 2:4 by magnitude with libmsp, checks the result against a direct
 * computation, and prints the library version. Uses only include/msp.h. Builds as C99 and as C++.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "msp.h"

#define ROWS 64
#define COLS 128

/* Kept count of one 2:4 group by the reference rule: the 2 largest |w|, ties to the lower index. */
static int kept_by_reference(const float *group, int index) {
    int before = 0;
    for (int j = 0; j < 4; j++) {
        float a = group[j] < 0 ? -group[j] : group[j];
        float b = group[index] < 0 ? -group[index] : group[index];
        if (a > b || (a == b && j < index)) before++;
    }
    return before < 2;
}

int main(void) {
    static float weights[ROWS * COLS], original[ROWS * COLS];
    static uint8_t keep[ROWS * COLS];
    unsigned state = 12345u;
    for (int i = 0; i < ROWS * COLS; i++) {
        state = state * 1103515245u + 12345u;
        weights[i] = original[i] = (float)((int)(state >> 16) % 2001 - 1000) / 100.0f;
    }

    msp_status status = msp_nm_prune(weights, MSP_DTYPE_F32, ROWS, COLS, 2, 4, NULL, keep);
    if (status != MSP_OK) {
        fprintf(stderr, "msp_nm_prune failed: %s: %s\n", msp_status_string(status), msp_last_error_message());
        return 1;
    }

    long errors = 0, kept = 0;
    for (int i = 0; i < ROWS * COLS; i++) {
        int expected = kept_by_reference(original + (i / 4) * 4, i % 4);
        float expected_value = expected ? original[i] : 0.0f;
        if (keep[i] != expected || weights[i] != expected_value) errors++;
        kept += keep[i];
    }

    /* Bad input is reported, not fatal, and leaves the buffer alone. */
    status = msp_nm_prune(weights, MSP_DTYPE_F32, ROWS, COLS, 4, 4, NULL, NULL);
    if (status != MSP_ERR_INVALID_ARGUMENT) errors++;
    /* The library is the version of this header, and MSP_VERSION_NUMBER encodes the same parts. */
    char number[32];
    snprintf(number, sizeof number, "%d.%d.%d", MSP_VERSION_NUMBER / 10000, MSP_VERSION_NUMBER / 100 % 100,
             MSP_VERSION_NUMBER % 100);
    if (strcmp(msp_version_string(), MSP_VERSION_STRING) != 0 || strcmp(number, MSP_VERSION_STRING) != 0) errors++;
    printf("msp %s (ABI %d): pruned %dx%d 2:4, kept %ld of %d, %ld mismatches; bad pattern -> %s (%s)\n",
           msp_version_string(), (int)msp_abi_version(), ROWS, COLS, kept, ROWS * COLS, errors,
           msp_status_string(status), msp_last_error_message());
    return errors == 0 ? 0 : 1;
}
