/* AVX-512 microkernels (compiled with -mavx512f -mavx512dq -mavx512vl -mavx512bw -mfma):
 * f32 8 x 32 and f64 8 x 16 register tiles, and their block sizes for the dispatch table.
 * MR = 8 rather than 12: 16 accumulators already cover the FMA latency x throughput of Zen 4
 * (one zmm FMA per cycle) and Skylake-X (two), and 8 divides the batch-64 CNN's row counts
 * (64, 576, 7744, 43264) where 12 wastes up to 11% on a padded edge tile; measured faster on
 * every product here except M = 9, which the half-height edge instance handles.
 * Block sizes for Zen 4 / Skylake-X class cores (32-48 KiB L1d, 1-2 MiB L2):
 *   A micro-panel MR x KC: 8 x 384 x 4 B = 12 KiB (L1); B block KC x NC: 384 x 640 x 4 B
 *   = 960 KiB (L2); A block MC x KC: 3072 x 384 x 4 B = 4.5 MiB (L3; packed once
 *   per thread for M <= MC, so B is packed once per depth block). */
#include <immintrin.h>
#include "gemm_internal.h"

#define MR 8

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
#define NR 32
#define PACK_COPY(dst, src, n, width) copy_pad_s((dst), (src), (n), (width))
#include "kernel_impl.h"
#include "pack_impl.h"
#undef PACK_COPY
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
#define NR 16
#define PACK_COPY(dst, src, n, width) copy_pad_d((dst), (src), (n), (width))
#include "kernel_impl.h"
#include "pack_impl.h"
#undef PACK_COPY
#undef NR

const fn_gemm_table fn_table_avx512 = {
    "avx512",
    /* mr, nr, kc, mc, nc */
    {MR, 32, 384, 3072, 640, packed_s, rows_s, cols_s, pack_a_s, pack_b_s},
    {MR, 16, 256, 3072, 512, packed_d, rows_d, cols_d, pack_a_d, pack_b_d},
};
