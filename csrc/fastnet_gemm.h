/* fastnet GEMM: the one entry point every layer's matrix product goes through.
 *
 * Row-major (C order) throughout, as NumPy arrays are:
 *   C[M x N] = act(alpha * op(A) * op(B) + beta * C + bias)
 * op(A) is M x K: A is stored M x K (lda >= K) or, with transa, K x M (lda >= M).
 * op(B) is K x N: B is stored K x N (ldb >= N) or, with transb, N x K (ldb >= K).
 * bias (may be NULL) has N entries, added to every row.  act is one of FN_ACT_*.
 * beta == 0 means C is write-only (never read, so it may hold NaN or garbage).
 * nthreads is the OpenMP team size to use (1 = run on the calling thread).
 * All sizes are trusted: the Python ops validate before calling.
 */
#ifndef FASTNET_GEMM_H
#define FASTNET_GEMM_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FN_ACT_NONE 0
#define FN_ACT_RELU 1

void fn_sgemm(int transa, int transb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, float alpha,
              const float *A, ptrdiff_t lda, const float *B, ptrdiff_t ldb, float beta,
              float *C, ptrdiff_t ldc, const float *bias, int act, int nthreads);

void fn_dgemm(int transa, int transb, ptrdiff_t M, ptrdiff_t N, ptrdiff_t K, double alpha,
              const double *A, ptrdiff_t lda, const double *B, ptrdiff_t ldb, double beta,
              double *C, ptrdiff_t ldc, const double *bias, int act, int nthreads);

/* Run-time ISA selection.  The best supported path is chosen on first use unless the
 * environment variable FASTNET_ISA (avx512 | avx2 | generic) names another.
 * fn_gemm_set_isa returns 0 on success, -1 if the name is unknown or not usable here. */
const char *fn_gemm_isa(void);
int fn_gemm_set_isa(const char *name);
/* Comma-separated list of the paths this build and this CPU can run, best first. */
const char *fn_gemm_available_isas(void);
/* How the AVX-512 path's FMAs get their A values: "memory" (embedded broadcasts, the default
 * on AMD) or "register" (one broadcast each, the default elsewhere); FASTNET_GEMM_BROADCAST
 * overrides the default.  Same results either way, bit for bit.  fn_gemm_set_broadcast takes
 * "memory", "register" or "auto" and returns 0, or -1 when the name is unknown or this build
 * has no AVX-512 path; fn_gemm_broadcast returns the mode, "" without an AVX-512 path. */
int fn_gemm_set_broadcast(const char *name);
const char *fn_gemm_broadcast(void);

#ifdef __cplusplus
}
#endif
#endif
