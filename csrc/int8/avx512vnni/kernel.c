/* AVX-512 VNNI int8 row-strip kernel (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq
 * -mavx512vnni): vpdpbusd multiplies 4 uint8 activations by 4 int8 weights and adds the four
 * products to an int32 lane in one instruction (64 multiply-adds per zmm), exactly (no int16
 * saturation, unlike vpmaddubsw).
 *
 * Tile: 8 rows x one 32-column panel = 16 zmm accumulators (as the float kernel's 8 x 32: covers
 * vpdpbusd's latency x throughput on Zen 4 and Skylake-X, and 8 divides the CNN's row counts).
 * Per depth quad: two 64-byte loads of the packed panel, and per row one 32-bit broadcast of A
 * read in place (no packing of A: rows past m re-read row m - 1, the tail quad is assembled
 * bytewise, so nothing past the matrix is touched).  Panels of <= 16 live columns use one zmm
 * per row; strips of <= 4 rows (batch-1 Dense) a 4-row instance.  The epilogue runs on the
 * registers with masked loads and stores for the edge columns. */
#include <immintrin.h>
#include "../int8_internal.h"

#define VNNI_MR 8

/* The epilogue parameters of 16 columns, loaded once per panel into registers (not per row:
 * the compiler cannot prove that the stores to C leave them unchanged). */
typedef struct {
    __m512 mult, add, lo, hi;
    __mmask16 mk;
    int clamp_hi;   /* uint8 output with hi = 255: the saturating store clamps instead */
} epi16;

FN_Q8_INLINE epi16 load_epi16(const int OUT, const fn_q8_epi *e, ptrdiff_t j, int nv)
{
    epi16 p;
    p.mk = (__mmask16)(nv >= 16 ? 0xFFFFu : (1u << nv) - 1u);
    p.mult = p.add = p.lo = p.hi = _mm512_setzero_ps();
    if (OUT != FN_Q8_OUT_S32) {
        p.mult = _mm512_maskz_loadu_ps(p.mk, e->mult + j);
        p.add = _mm512_maskz_loadu_ps(p.mk, e->add + j);
        p.lo = _mm512_set1_ps(e->lo);
        p.hi = _mm512_set1_ps(e->hi);
    }
    p.clamp_hi = OUT != FN_Q8_OUT_U8 || e->hi < 255.0f;
    return p;
}

/* acc already holds acc + corr (the accumulators start from corr). */
FN_Q8_INLINE void store16(const int OUT, const epi16 *p, __m512i acc, void *c, ptrdiff_t idx)
{
    if (OUT == FN_Q8_OUT_S32) {
        _mm512_mask_storeu_epi32((int32_t *)c + idx, p->mk, acc);
        return;
    }
    __m512 f = _mm512_cvtepi32_ps(acc);
    f = _mm512_mul_ps(f, p->mult);
    f = _mm512_add_ps(f, p->add);
    f = _mm512_max_ps(f, p->lo);
    if (p->clamp_hi) f = _mm512_min_ps(f, p->hi);
    if (OUT == FN_Q8_OUT_F32)
        _mm512_mask_storeu_ps((float *)c + idx, p->mk, f);
    else  /* >= lo >= 0 here; above 255 (or 2^31, read as 0x80000000) saturates to 255, which
           * is what min(f, 255) then rounding gives */
        _mm512_mask_cvtusepi32_storeu_epi8((uint8_t *)c + idx, p->mk, _mm512_cvtps_epi32(f));
}

/* acc += u8 (4 per lane) . s8 (4 per lane).  Inline asm: with the intrinsic, gcc 12 copies
 * every accumulator to a new register (and some to the stack) on each iteration of the depth
 * loop, about doubling its instruction count; the tied "+v" operand keeps them in place. */
FN_Q8_INLINE __m512i dpbusd(__m512i acc, __m512i u8, __m512i s8)
{
#if defined(__GNUC__) && !defined(__clang__)
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u8), "v"(s8));
    return acc;
#else
    return _mm512_dpbusd_epi32(acc, u8, s8);
#endif
}

FN_Q8_INLINE __m512i bcast_quad(const uint8_t *row, ptrdiff_t p)
{
    int32_t v;
    memcpy(&v, row + p, 4);
    return _mm512_set1_epi32(v);
}

/* One depth quad for rows 0..R-1: the accumulators are named variables (not an array), which
 * keeps gcc from shuffling them between registers on every iteration. */
#define Q8_ROW(r, AV)                                                                            \
    if (R > r) {                                                                                 \
        const __m512i av_ = (AV);                                                                \
        c##r##0 = dpbusd(c##r##0, av_, b0);                                         \
        if (V == 2) c##r##1 = dpbusd(c##r##1, av_, b1);                             \
    }
#define Q8_QUAD(AV_OF)                                                                           \
    Q8_ROW(0, AV_OF(0)) Q8_ROW(1, AV_OF(1)) Q8_ROW(2, AV_OF(2)) Q8_ROW(3, AV_OF(3))             \
    Q8_ROW(4, AV_OF(4)) Q8_ROW(5, AV_OF(5)) Q8_ROW(6, AV_OF(6)) Q8_ROW(7, AV_OF(7))

/* R rows x V zmm (1 or 2) of one panel, epilogue OUT (all three compile-time). */
FN_Q8_INLINE void panel(const int R, const int V, const int OUT, int m, int nb, ptrdiff_t k,
                        const uint8_t *const *row, const int8_t *b, const fn_q8_epi *e,
                        ptrdiff_t j0, void *c, ptrdiff_t ldc)
{
    epi16 ep[2];
    __m512i s0 = _mm512_setzero_si512(), s1 = s0;
    for (int v = 0; v < V; ++v) {
        const int nv = nb - 16 * v > 16 ? 16 : nb - 16 * v;
        ep[v] = load_epi16(OUT, e, j0 + 16 * v, nv);
        if (OUT != FN_Q8_OUT_S32 && e->corr) {   /* the accumulators start from corr */
            const __m512i cv = _mm512_maskz_loadu_epi32(ep[v].mk, e->corr + j0 + 16 * v);
            if (v == 0) s0 = cv; else s1 = cv;
        }
    }
    __m512i c00 = s0, c01 = s1, c10 = s0, c11 = s1, c20 = s0, c21 = s1, c30 = s0, c31 = s1;
    __m512i c40 = s0, c41 = s1, c50 = s0, c51 = s1, c60 = s0, c61 = s1, c70 = s0, c71 = s1;
    const uint8_t *p0 = row[0], *p1 = row[R > 1 ? 1 : 0], *p2 = row[R > 2 ? 2 : 0];
    const uint8_t *p3 = row[R > 3 ? 3 : 0], *p4 = row[R > 4 ? 4 : 0], *p5 = row[R > 5 ? 5 : 0];
    const uint8_t *p6 = row[R > 6 ? 6 : 0], *p7 = row[R > 7 ? 7 : 0];
    const ptrdiff_t full = k / 4;
    const int8_t *bq = b;
    for (ptrdiff_t q = 0; q < full; ++q, bq += FN_Q8_QUAD) {
        const __m512i b0 = _mm512_loadu_si512(bq);
        const __m512i b1 = V == 2 ? _mm512_loadu_si512(bq + 64) : b0;
#define Q8_FULL(r) bcast_quad(p##r, 4 * q)
        Q8_QUAD(Q8_FULL)
#undef Q8_FULL
    }
    if (k & 3) {   /* the last, partial quad: assembled bytewise, never read past the row */
        const __m512i b0 = _mm512_loadu_si512(bq);
        const __m512i b1 = V == 2 ? _mm512_loadu_si512(bq + 64) : b0;
#define Q8_TAIL(r) _mm512_set1_epi32((int32_t)fn_q8_quad(p##r, 4 * full, k))
        Q8_QUAD(Q8_TAIL)
#undef Q8_TAIL
    }
    const __m512i tile[VNNI_MR][2] = {{c00, c01}, {c10, c11}, {c20, c21}, {c30, c31},
                                      {c40, c41}, {c50, c51}, {c60, c61}, {c70, c71}};
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
        if (r < m)
            for (int v = 0; v < V; ++v) store16(OUT, &ep[v], tile[r][v], c, r * ldc + j0 + 16 * v);
}
#undef Q8_QUAD
#undef Q8_ROW

FN_Q8_INLINE void strip(const int R, const int OUT, int m, ptrdiff_t n, ptrdiff_t k,
                        const uint8_t *a, ptrdiff_t lda, const int8_t *b, const fn_q8_epi *e,
                        void *c, ptrdiff_t ldc)
{
    const uint8_t *row[VNNI_MR];
    for (int r = 0; r < R; ++r) row[r] = a + (r < m ? r : m - 1) * lda;
    const ptrdiff_t panel_bytes = (k + 3) / 4 * FN_Q8_QUAD;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_Q8_PANEL, b += panel_bytes) {
        const int nb = (int)(n - j0 < FN_Q8_PANEL ? n - j0 : FN_Q8_PANEL);
        if (nb > 16) panel(R, 2, OUT, m, nb, k, row, b, e, j0, c, ldc);
        else panel(R, 1, OUT, m, nb, k, row, b, e, j0, c, ldc);
    }
}

#define STRIP_FN(R, OUT, name)                                                                   \
    static void name(int m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,          \
                     const int8_t *b, const fn_q8_epi *e, void *c, ptrdiff_t ldc)              \
    {                                                                                            \
        strip(R, OUT, m, n, k, a, lda, b, e, c, ldc);                                            \
    }
STRIP_FN(VNNI_MR, FN_Q8_OUT_S32, strip8_s32)
STRIP_FN(VNNI_MR, FN_Q8_OUT_F32, strip8_f32)
STRIP_FN(VNNI_MR, FN_Q8_OUT_U8, strip8_u8)
STRIP_FN(4, FN_Q8_OUT_S32, strip4_s32)
STRIP_FN(4, FN_Q8_OUT_F32, strip4_f32)
STRIP_FN(4, FN_Q8_OUT_U8, strip4_u8)

static void rows_vnni(int m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                      const int8_t *b, const fn_q8_epi *e, void *c, ptrdiff_t ldc, void *ws)
{
    (void)ws;
    if (m > 4) {
        if (e->out == FN_Q8_OUT_U8) strip8_u8(m, n, k, a, lda, b, e, c, ldc);
        else if (e->out == FN_Q8_OUT_F32) strip8_f32(m, n, k, a, lda, b, e, c, ldc);
        else strip8_s32(m, n, k, a, lda, b, e, c, ldc);
    } else {
        if (e->out == FN_Q8_OUT_U8) strip4_u8(m, n, k, a, lda, b, e, c, ldc);
        else if (e->out == FN_Q8_OUT_F32) strip4_f32(m, n, k, a, lda, b, e, c, ldc);
        else strip4_s32(m, n, k, a, lda, b, e, c, ldc);
    }
}

const fn_q8_table fn_q8_table_avx512vnni = {"avx512vnni", VNNI_MR, rows_vnni};
