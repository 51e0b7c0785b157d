#include <cblas.h>

/* LAPACK routines that libopenblas exports (OpenBLAS's own C implementations of the Fortran
 * interface: every argument by pointer, column-major, no hidden string lengths). */
void dpotrf_(const char *uplo, const int *n, double *a, const int *lda, int *info);
void dtrtri_(const char *uplo, const char *diag, const int *n, double *a, const int *lda, int *info);
