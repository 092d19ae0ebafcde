/* AVX2 int8 row-strip kernel (compiled with -mavx2 -mfma).  AVX2 has no vpdpbusd, and the usual
 * vpmaddubsw route adds two uint8 x int8 products into a saturating int16 (2 x 255 x 127 >
 * 32767), which is not exact; so this path widens both operands to int16 and uses vpmaddwd
 * (two int16 products summed into int32: exact), then vpaddd.
 *
 * A strip of 4 rows is widened once into the workspace as [quad][row][4] int16, so each row's
 * four depths are one 64-bit broadcast; a packed quad of 4 columns x 4 depths (16 bytes) widens
 * to one ymm with vpmovsxbw.  vpmaddwd then yields, per column, the sums of depths 0-1 and 2-3
 * in adjacent lanes, folded by one vphaddd per tile at the end.  Tile: 4 rows x 8 columns = 8
 * accumulators + 2 weights + 1 activation + 1 product: 6 rows would need all 16 ymm and gcc
 * then spills on every iteration. */
#include <immintrin.h>
#include "../int8_internal.h"

#define AVX2_MR 4

/* ws[(q * R + r) * 4 + t] = row r's depth 4q + t as int16 (zero past k and for rows >= m). */
FN_Q8_INLINE void widen_strip(const int R, int m, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                              int16_t *ws)
{
    const ptrdiff_t quads = (k + 3) / 4, full = k / 4;
    for (int r = 0; r < R; ++r) {
        int16_t *d = ws + 4 * r;
        if (r >= m) {
            for (ptrdiff_t q = 0; q < quads; ++q) memset(d + q * 4 * R, 0, 8);
            continue;
        }
        const uint8_t *src = a + r * lda;
        for (ptrdiff_t q = 0; q < full; ++q) {
            int32_t w;
            memcpy(&w, src + 4 * q, 4);
            _mm_storel_epi64((__m128i *)(d + q * 4 * R), _mm_cvtepu8_epi16(_mm_cvtsi32_si128(w)));
        }
        if (quads > full) {
            const uint32_t w = fn_q8_quad(src, 4 * full, k);
            _mm_storel_epi64((__m128i *)(d + full * 4 * R),
                             _mm_cvtepu8_epi16(_mm_cvtsi32_si128((int)w)));
        }
    }
}

FN_Q8_INLINE void store8(const fn_q8_epi *e, __m256i acc, ptrdiff_t j, int nv, void *c,
                         ptrdiff_t idx)
{
    const __m256i mk = _mm256_cmpgt_epi32(_mm256_set1_epi32(nv),
                                          _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    if (e->out == FN_Q8_OUT_S32) {
        _mm256_maskstore_epi32((int *)((int32_t *)c + idx), mk, acc);
        return;
    }
    if (e->corr) acc = _mm256_add_epi32(acc, _mm256_maskload_epi32((const int *)(e->corr + j), mk));
    __m256 f = _mm256_cvtepi32_ps(acc);
    f = _mm256_mul_ps(f, _mm256_maskload_ps(e->mult + j, mk));
    f = _mm256_add_ps(f, _mm256_maskload_ps(e->add + j, mk));
    f = _mm256_max_ps(f, _mm256_set1_ps(e->lo));
    f = _mm256_min_ps(f, _mm256_set1_ps(e->hi));
    if (e->out == FN_Q8_OUT_F32) {
        _mm256_maskstore_ps((float *)c + idx, mk, f);
        return;
    }
    const __m256i q = _mm256_cvtps_epi32(f);
    const __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(q), _mm256_extracti128_si256(q, 1));
    const __m128i w8 = _mm_packus_epi16(w16, w16);
    uint8_t bytes[16];
    _mm_storeu_si128((__m128i *)bytes, w8);
    memcpy((uint8_t *)c + idx, bytes, (size_t)nv);
}

/* acc + x with the accumulator tied to its register (inline asm): as for vpdpbusd on the VNNI
 * path, gcc 12 otherwise moves every accumulator to a new register, and some to the stack, on
 * each iteration of the depth loop. */
FN_Q8_INLINE __m256i add_acc(__m256i acc, __m256i x)
{
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(x));
    return acc;
#else
    return _mm256_add_epi32(acc, x);
#endif
}

/* R rows x 8 columns (columns sub*8.. of the panel b), named accumulators. */
#define Q8_ROW(r)                                                                                \
    if (R > r) {                                                                                 \
        long long w_;                                                                            \
        memcpy(&w_, ws + 4 * r, 8);                                                              \
        const __m256i av_ = _mm256_set1_epi64x(w_);                                              \
        c##r##0 = add_acc(c##r##0, _mm256_madd_epi16(av_, b0));                         \
        c##r##1 = add_acc(c##r##1, _mm256_madd_epi16(av_, b1));                         \
    }
FN_Q8_INLINE void tile(const int R, int m, int nv, ptrdiff_t quads, const int16_t *ws,
                       const int8_t *b, const fn_q8_epi *e, ptrdiff_t j, void *c, ptrdiff_t ldc)
{
    const __m256i z = _mm256_setzero_si256();
    __m256i c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    for (ptrdiff_t q = 0; q < quads; ++q, b += FN_Q8_QUAD, ws += 4 * R) {
        const __m256i b0 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b));
        const __m256i b1 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(b + 16)));
        Q8_ROW(0) Q8_ROW(1) Q8_ROW(2) Q8_ROW(3)
    }
    const __m256i acc[AVX2_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31}};
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
        if (r < m) {
            const __m256i s = _mm256_permute4x64_epi64(_mm256_hadd_epi32(acc[r][0], acc[r][1]),
                                                       0xD8);
            store8(e, s, j, nv, c, r * ldc + j);
        }
}
#undef Q8_ROW

FN_Q8_INLINE void strip(const int R, int m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a,
                        ptrdiff_t lda, const int8_t *b, const fn_q8_epi *e, void *c,
                        ptrdiff_t ldc, int16_t *ws)
{
    const ptrdiff_t quads = (k + 3) / 4;
    widen_strip(R, m, k, a, lda, ws);
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_Q8_PANEL, b += quads * FN_Q8_QUAD)
        for (int s = 0; s < FN_Q8_PANEL / 8 && j0 + 8 * s < n; ++s) {
            const int nv = (int)(n - j0 - 8 * s < 8 ? n - j0 - 8 * s : 8);
            tile(R, m, nv, quads, ws, b + 32 * s, e, j0 + 8 * s, c, ldc);
        }
}

static void rows_avx2(int m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                      const int8_t *b, const fn_q8_epi *e, void *c, ptrdiff_t ldc, void *ws)
{
    if (m > 2) strip(AVX2_MR, m, n, k, a, lda, b, e, c, ldc, (int16_t *)ws);
    else strip(2, m, n, k, a, lda, b, e, c, ldc, (int16_t *)ws);   /* batch-1 Dense */
}

const fn_q8_table fn_q8_table_avx2 = {"avx2", AVX2_MR, rows_avx2};
