/* Portable microkernels (baseline flags, no intrinsics): plain loops over a small MR x NR tile
 * of accumulators that gcc -O3 keeps in registers and vectorizes along NR (SSE2 on x86-64,
 * NEON on arm64).  Edge tiles take a bounds-checked copy of the same loops.  The packed kernel
 * sees compile-time A strides (rsa = 1, csa = MR) through an always-inlined body. */
#include "gemm_internal.h"

#define GEN_MR_S 4
#define GEN_NR_S 8
#define GEN_MR_D 4
#define GEN_NR_D 4

#define DEFINE_GENERIC_KERNELS(SUF, T, EPI, MR, NR)                                              \
FN_INLINE void body_##SUF(                                    \
    ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b, ptrdiff_t rsb, T *c,     \
    ptrdiff_t ldc, int m, int n, const EPI *e)                                                   \
{                                                                                                \
    T acc[MR][NR];                                                                               \
    for (int i = 0; i < MR; ++i)                                                                 \
        for (int j = 0; j < NR; ++j) acc[i][j] = 0;                                              \
    if (n == NR) {                                                                               \
        for (ptrdiff_t p = 0; p < k; ++p) {                                                      \
            const T *bp = b + p * rsb;                                                           \
            for (int i = 0; i < MR; ++i) {                                                       \
                const T av = a[i * rsa + p * csa];                                               \
                for (int j = 0; j < NR; ++j) acc[i][j] += av * bp[j];                            \
            }                                                                                    \
        }                                                                                        \
    } else {                                                                                     \
        for (ptrdiff_t p = 0; p < k; ++p) {                                                      \
            const T *bp = b + p * rsb;                                                           \
            for (int i = 0; i < MR; ++i) {                                                       \
                const T av = a[i * rsa + p * csa];                                               \
                for (int j = 0; j < n; ++j) acc[i][j] += av * bp[j];                             \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
    const T alpha = e->alpha, beta = e->beta;                                                    \
    for (int i = 0; i < m; ++i) {                                                                \
        T *ci = c + i * ldc;                                                                     \
        T r[NR];                                                                                 \
        for (int j = 0; j < NR; ++j) r[j] = alpha * acc[i][j];                                   \
        if (beta != (T)0)                                                                        \
            for (int j = 0; j < n; ++j) r[j] += beta * ci[j];                                    \
        if (e->bias)                                                                             \
            for (int j = 0; j < n; ++j) r[j] += e->bias[j];                                      \
        if (e->relu)                                                                             \
            for (int j = 0; j < n; ++j) r[j] = r[j] > (T)0 ? r[j] : (T)0;                        \
        for (int j = 0; j < n; ++j) ci[j] = r[j];                                                \
    }                                                                                            \
}                                                                                                \
static void packed_##SUF(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,      \
                         ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)         \
{                                                                                                \
    (void)rsa; (void)csa;                                                                        \
    body_##SUF(k, a, 1, MR, b, rsb, c, ldc, m, n, e);                                            \
}                                                                                                \
static void rows_##SUF(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,        \
                       ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)           \
{                                                                                                \
    (void)csa;                                                                                   \
    body_##SUF(k, a, rsa, 1, b, rsb, c, ldc, m, n, e);                                           \
}                                                                                                \
static void cols_##SUF(ptrdiff_t k, const T *a, ptrdiff_t rsa, ptrdiff_t csa, const T *b,        \
                       ptrdiff_t rsb, T *c, ptrdiff_t ldc, int m, int n, const EPI *e)           \
{                                                                                                \
    (void)rsa;                                                                                   \
    body_##SUF(k, a, 1, csa, b, rsb, c, ldc, m, n, e);                                           \
}

DEFINE_GENERIC_KERNELS(s, float, fn_epi_s, GEN_MR_S, GEN_NR_S)
DEFINE_GENERIC_KERNELS(d, double, fn_epi_d, GEN_MR_D, GEN_NR_D)

#define T float
#define SUF s
#define MR GEN_MR_S
#define NR GEN_NR_S
#include "pack_impl.h"
#undef T
#undef SUF
#undef MR
#undef NR
#define T double
#define SUF d
#define MR GEN_MR_D
#define NR GEN_NR_D
#include "pack_impl.h"

/* The portable path's multiply-add rate: 32 independent chains of c * m + d (2 FLOPs a step,
 * fused or not, vectorized or not, as the compiler builds this file); no reassociation is
 * allowed, so the loop cannot be folded away. */
static double fma_loop(long long iters)
{
    float c[32];
    for (int j = 0; j < 32; ++j) c[j] = (float)j;
    for (long long i = 0; i < iters; ++i)
        for (int j = 0; j < 32; ++j) c[j] = c[j] * 0.999999f + 1e-3f;
    float s = 0.0f;
    for (int j = 0; j < 32; ++j) s += c[j];
    volatile float sink = s;
    (void)sink;
    return (double)iters * 32.0 * 2.0;
}

const fn_gemm_table fn_table_generic = {
    "generic",
    /* mr, nr, kc, mc, nc */
    {GEN_MR_S, GEN_NR_S, 256, 768, 1024, packed_s, rows_s, cols_s, pack_a_s, pack_b_s},
    {GEN_MR_D, GEN_NR_D, 256, 384, 512, packed_d, rows_d, cols_d, pack_a_d, pack_b_d},
    fma_loop,
};
