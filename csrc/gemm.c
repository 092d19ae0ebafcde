/* First, portable GEMM: correct for every transpose and leading dimension, OpenMP over rows.
 * (The packed, register-tiled, ISA-dispatched version replaces the inner loops.) */
#include <stdlib.h>
#include <string.h>
#include "fastnet_gemm.h"

#define DEFINE_GEMM(NAME, T)                                                                     \
void NAME(int transa, int transb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, T alpha,                \
          const T *A, ptrdiff_t lda, const T *B, ptrdiff_t ldb, T beta,                         \
          T *C, ptrdiff_t ldc, const T *bias, int act, int nthreads)                             \
{                                                                                                \
    if (M <= 0 || N <= 0) return;                                                                \
    T *Bp = NULL; const T *Bk = B; ptrdiff_t ldbk = ldb;                                         \
    int do_product = (K > 0 && alpha != (T)0);                                                   \
    if (do_product && transb) {                                                                  \
        Bp = (T *)malloc(sizeof(T) * (size_t)K * (size_t)N);                                     \
        for (ptrdiff_t j = 0; j < N; ++j)                                                        \
            for (ptrdiff_t k = 0; k < K; ++k) Bp[k * N + j] = B[j * ldb + k];                    \
        Bk = Bp; ldbk = N;                                                                       \
    }                                                                                            \
    if ((double)M * N * (K + 1) < 65536.0) nthreads = 1;                                         \
    _Pragma("omp parallel num_threads(nthreads) if(nthreads > 1)")                               \
    {                                                                                            \
        T *arow = do_product && transa ? (T *)malloc(sizeof(T) * (size_t)K) : NULL;              \
        _Pragma("omp for schedule(static)")                                                      \
        for (ptrdiff_t i = 0; i < M; ++i) {                                                      \
            T *c = C + i * ldc;                                                                  \
            if (beta == (T)0) memset(c, 0, sizeof(T) * (size_t)N);                               \
            else if (beta != (T)1) for (ptrdiff_t j = 0; j < N; ++j) c[j] *= beta;               \
            if (do_product) {                                                                    \
                const T *a = A + i * lda;                                                        \
                if (transa) { for (ptrdiff_t k = 0; k < K; ++k) arow[k] = A[k * lda + i]; a = arow; } \
                for (ptrdiff_t k = 0; k < K; ++k) {                                              \
                    const T av = alpha * a[k];                                                   \
                    const T *b = Bk + k * ldbk;                                                  \
                    for (ptrdiff_t j = 0; j < N; ++j) c[j] += av * b[j];                         \
                }                                                                                \
            }                                                                                    \
            if (bias) for (ptrdiff_t j = 0; j < N; ++j) c[j] += bias[j];                         \
            if (act == FN_ACT_RELU) for (ptrdiff_t j = 0; j < N; ++j) c[j] = c[j] > (T)0 ? c[j] : (T)0; \
        }                                                                                        \
        free(arow);                                                                              \
    }                                                                                            \
    free(Bp);                                                                                    \
}

DEFINE_GEMM(fn_sgemm, float)
DEFINE_GEMM(fn_dgemm, double)

const char *fn_gemm_isa(void) { return "generic"; }
int fn_gemm_set_isa(const char *name) { return strcmp(name, "generic") == 0 ? 0 : -1; }
const char *fn_gemm_available_isas(void) { return "generic"; }
