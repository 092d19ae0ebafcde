/* AVX2 + FMA microkernels (compiled with -mavx2 -mfma): f32 6 x 16 and f64 6 x 8 register
 * tiles, and their block sizes (A micro-panel 6 x 256 in L1, B block 256 x NC in L2). */
#include <immintrin.h>
#include "gemm_internal.h"

#define MR 6

/* lanes j < n (n may be <= 0 or >= VL) of a vmaskmov mask */
static inline __m256i mask_s(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256i mask_d(int n)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}

#define T float
#define VEC __m256
#define VMASKT __m256i
#define VL 8
#define SUF s
#define EPI fn_epi_s
#define VMASK(n) mask_s(n)
#define VZERO() _mm256_setzero_ps()
#define VLOADU(p) _mm256_loadu_ps(p)
#define VSTOREU(p, v) _mm256_storeu_ps((p), (v))
#define VMASKLOAD(p, mk) _mm256_maskload_ps((p), (mk))
#define VMASKSTORE(p, mk, v) _mm256_maskstore_ps((p), (mk), (v))
#define VSET1(x) _mm256_set1_ps(x)
#define VFMA(x, y, z) _mm256_fmadd_ps((x), (y), (z))
#define VMUL(x, y) _mm256_mul_ps((x), (y))
#define VADD(x, y) _mm256_add_ps((x), (y))
#define VMAX(x, y) _mm256_max_ps((x), (y))
#define NR 16
#include "kernel_impl.h"
#include "pack_impl.h"
#undef NR
#undef T
#undef VEC
#undef VMASKT
#undef VL
#undef SUF
#undef EPI
#undef VMASK
#undef VZERO
#undef VLOADU
#undef VSTOREU
#undef VMASKLOAD
#undef VMASKSTORE
#undef VSET1
#undef VFMA
#undef VMUL
#undef VADD
#undef VMAX

#define T double
#define VEC __m256d
#define VMASKT __m256i
#define VL 4
#define SUF d
#define EPI fn_epi_d
#define VMASK(n) mask_d(n)
#define VZERO() _mm256_setzero_pd()
#define VLOADU(p) _mm256_loadu_pd(p)
#define VSTOREU(p, v) _mm256_storeu_pd((p), (v))
#define VMASKLOAD(p, mk) _mm256_maskload_pd((p), (mk))
#define VMASKSTORE(p, mk, v) _mm256_maskstore_pd((p), (mk), (v))
#define VSET1(x) _mm256_set1_pd(x)
#define VFMA(x, y, z) _mm256_fmadd_pd((x), (y), (z))
#define VMUL(x, y) _mm256_mul_pd((x), (y))
#define VADD(x, y) _mm256_add_pd((x), (y))
#define VMAX(x, y) _mm256_max_pd((x), (y))
#define NR 8
#include "kernel_impl.h"
#include "pack_impl.h"
#undef NR

/* 12 chains of ymm FMAs: 2 pipes x 4-5 cycles latency need 8-10. */
static double fma_loop(long long iters)
{
    __m256 c[12];
    const __m256 m = _mm256_set1_ps(0.999999f), d = _mm256_set1_ps(1e-3f);
#pragma GCC unroll 12
    for (int j = 0; j < 12; ++j) c[j] = _mm256_set1_ps((float)j);
    for (long long i = 0; i < iters; ++i) {
#pragma GCC unroll 12
        for (int j = 0; j < 12; ++j) c[j] = _mm256_fmadd_ps(c[j], m, d);
    }
    __m256 s = c[0];
#pragma GCC unroll 12
    for (int j = 1; j < 12; ++j) s = _mm256_add_ps(s, c[j]);
    float lanes[8];
    _mm256_storeu_ps(lanes, s);
    volatile float sink = lanes[0] + lanes[7];
    (void)sink;
    return (double)iters * 12.0 * 8.0 * 2.0;
}

const fn_gemm_table fn_table_avx2 = {
    "avx2",
    /* mr, nr, kc, mc, nc */
    {MR, 16, 256, 3072, 960, packed_s, rows_s, cols_s, pack_a_s, pack_b_s},
    {MR, 8, 256, 3072, 480, packed_d, rows_d, cols_d, pack_a_d, pack_b_d},
    fma_loop,
};
