/* AVX-512 microkernels (compiled with -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma):
 * f32 8 x 32 and f64 8 x 16 register tiles, and their block sizes for the dispatch table.
 * MR = 8 rather than 12: 16 accumulators already cover the FMA latency x throughput of Zen 4
 * (one zmm FMA per cycle) and Skylake-X (two), and 8 divides the batch-64 CNN's row counts
 * (64, 576, 7744, 43264) where 12 wastes up to 11% on a padded edge tile; measured faster on
 * every product here except M = 9, which the half-height edge instance handles.
 * Block sizes (f32), measured on Zen 4 (32 KiB L1d, 1 MiB L2 per core, 32 MiB L3):
 *   A micro-panel MR x KC: 8 x 512 x 4 B = 16 KiB (L1); B block KC x NC: 512 x 640 x 4 B
 *   = 1.25 MiB, streamed from L2 (KC = 512 beat 384 and 256 by 1-5% although this block
 *   overflows the L2 a little: the C tile is reloaded less often); A block MC x KC:
 *   3072 x 512 x 4 B = 6 MiB (L3; packed once per thread for M <= MC, so B is packed once
 *   per depth block). */
#include <immintrin.h>
#include "gemm_internal.h"

#define MR 8

/* 1: the FMAs read A with embedded memory broadcasts; 0: one register broadcast per value
 * (see kernel_impl.h).  Set by fn_gemm_broadcast_init / fn_gemm_set_broadcast. */
int fn_avx512_bcast_mem = 0;

/* dst[0:n] = src[0:n], dst[n:width] = 0 with masked moves: never reads past src[n - 1]. */
FN_INLINE void copy_pad_s(float *dst, const float *src, int n, const int width)
{
    for (int j = 0; j < width; j += 16) {
        const int w = width - j < 16 ? width - j : 16;
        const int c = n - j < 0 ? 0 : n - j > w ? w : n - j;
        const __mmask16 lm = (__mmask16)((1u << c) - 1u), sm = (__mmask16)((1u << w) - 1u);
        _mm512_mask_storeu_ps(dst + j, sm, _mm512_maskz_loadu_ps(lm, src + j));
    }
}

/* dst[q * ldd + j] = src[j * lds + q] for q < 16, j < rows (rows 8 or 16): a 16 x 16 transpose
 * in registers (unpack 32-bit, unpack 64-bit, two 128-bit lane shuffles). */
FN_INLINE void transpose16_s(float *dst, ptrdiff_t ldd, const float *src, ptrdiff_t lds,
                             const int rows)
{
    __m512 r[16], t[16];
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j)
        r[j] = j < rows ? _mm512_loadu_ps(src + j * lds) : _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        const __m512d a0 = _mm512_castps_pd(t[4 * i]), a1 = _mm512_castps_pd(t[4 * i + 1]);
        const __m512d a2 = _mm512_castps_pd(t[4 * i + 2]), a3 = _mm512_castps_pd(t[4 * i + 3]);
        r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a0, a2));
        r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a0, a2));
        r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(a1, a3));
        r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(a1, a3));
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
    }
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
        r[i + 4] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0x88);
        r[i + 12] = _mm512_shuffle_f32x4(t[i + 4], t[i + 12], 0xdd);
    }
#pragma GCC unroll 16
    for (int q = 0; q < 16; ++q) {
        if (rows == 16) _mm512_storeu_ps(dst + q * ldd, r[q]);
        else _mm256_storeu_ps(dst + q * ldd, _mm512_castps512_ps256(r[q]));
    }
}

FN_INLINE void copy_pad_d(double *dst, const double *src, int n, const int width)
{
    for (int j = 0; j < width; j += 8) {
        const int w = width - j < 8 ? width - j : 8;
        const int c = n - j < 0 ? 0 : n - j > w ? w : n - j;
        const __mmask8 lm = (__mmask8)((1u << c) - 1u), sm = (__mmask8)((1u << w) - 1u);
        _mm512_mask_storeu_pd(dst + j, sm, _mm512_maskz_loadu_pd(lm, src + j));
    }
}

#define T float
#define VEC __m512
#define MASK __mmask16
#define FULLMASK 0xFFFFu
#define VL 16
#define SUF s
#define EPI fn_epi_s
#define VZERO() _mm512_setzero_ps()
#define VLOADM(mk, p) _mm512_maskz_loadu_ps((mk), (p))
#define VSTOREM(p, mk, v) _mm512_mask_storeu_ps((p), (mk), (v))
#define VSET1(x) _mm512_set1_ps(x)
#define VFMA(x, y, z) _mm512_fmadd_ps((x), (y), (z))
#define VMUL(x, y) _mm512_mul_ps((x), (y))
#define VADD(x, y) _mm512_add_ps((x), (y))
#define VMAX(x, y) _mm512_max_ps((x), (y))
/* acc += {1to16} broadcast of *p times bv, the broadcast embedded in the FMA (GCC keeps one
 * vbroadcastss for a value used twice, so this is written out). */
#define VFMA_BCAST(acc, bv, p)                                                                   \
    __asm__("vfmadd231ps %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(bv), "m"(*(p)))
#define NR 32
#define PACK_COPY(dst, src, n, width) copy_pad_s((dst), (src), (n), (width))
#define PACK_TRANSPOSE16(dst, ldd, src, lds, rows) transpose16_s(dst, ldd, src, lds, rows)
#include "kernel_impl.h"
#include "pack_impl.h"
#undef PACK_COPY
#undef PACK_TRANSPOSE16
#undef NR
#undef T
#undef VEC
#undef MASK
#undef FULLMASK
#undef VL
#undef SUF
#undef EPI
#undef VZERO
#undef VLOADM
#undef VSTOREM
#undef VSET1
#undef VFMA
#undef VMUL
#undef VADD
#undef VMAX
#undef VFMA_BCAST

#define T double
#define VEC __m512d
#define MASK __mmask8
#define FULLMASK 0xFFu
#define VL 8
#define SUF d
#define EPI fn_epi_d
#define VZERO() _mm512_setzero_pd()
#define VLOADM(mk, p) _mm512_maskz_loadu_pd((mk), (p))
#define VSTOREM(p, mk, v) _mm512_mask_storeu_pd((p), (mk), (v))
#define VSET1(x) _mm512_set1_pd(x)
#define VFMA(x, y, z) _mm512_fmadd_pd((x), (y), (z))
#define VMUL(x, y) _mm512_mul_pd((x), (y))
#define VADD(x, y) _mm512_add_pd((x), (y))
#define VMAX(x, y) _mm512_max_pd((x), (y))
#define VFMA_BCAST(acc, bv, p)                                                                   \
    __asm__("vfmadd231pd %2%{1to8%}, %1, %0" : "+v"(acc) : "v"(bv), "m"(*(p)))
#define NR 16
#define PACK_COPY(dst, src, n, width) copy_pad_d((dst), (src), (n), (width))
#include "kernel_impl.h"
#include "pack_impl.h"
#undef PACK_COPY
#undef NR

/* 16 chains of zmm FMAs: 2 FMA pipes x 4 cycles latency (Skylake-X, Sapphire Rapids) need 8,
 * Zen 4 (one zmm FMA per cycle) 4; 16 leaves no doubt.  Each step is c = c * m + d with m just
 * below 1, so the values stay finite and normal. */
static double fma_loop(long long iters)
{
    __m512 c[16];
    const __m512 m = _mm512_set1_ps(0.999999f), d = _mm512_set1_ps(1e-3f);
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) c[j] = _mm512_set1_ps((float)j);
    for (long long i = 0; i < iters; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < 16; ++j) c[j] = _mm512_fmadd_ps(c[j], m, d);
    }
    __m512 s = c[0];
#pragma GCC unroll 16
    for (int j = 1; j < 16; ++j) s = _mm512_add_ps(s, c[j]);
    volatile float sink = _mm512_reduce_add_ps(s);
    (void)sink;
    return (double)iters * 16.0 * 16.0 * 2.0;
}

const fn_gemm_table fn_table_avx512 = {
    "avx512",
    /* mr, nr, kc, mc, nc */
    {MR, 32, 512, 3072, 640, packed_s, rows_s, cols_s, pack_a_s, pack_b_s},
    {MR, 16, 256, 3072, 512, packed_d, rows_d, cols_d, pack_a_d, pack_b_d},
    fma_loop,
};
