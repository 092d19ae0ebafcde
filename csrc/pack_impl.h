/* Packing routines for one ISA and precision, with the register tile MR x NR as compile-time
 * constants so the copies vectorize under that ISA's flags.  Included by each ISA's kernel.c
 * with T, SUF, MR, NR defined.  Layouts: see gemm_internal.h. */
/* PACK_COPY(dst, src, n, width): dst[0:n] = src[0:n], dst[n:width] = 0 (n <= width, width a
 * constant).  An ISA may define it with masked vector moves before including this file. */
#ifndef PACK_COPY
#define PACK_COPY(dst, src, n, width)                                                            \
    do {                                                                                         \
        for (int pc_j = 0; pc_j < (width); ++pc_j)                                               \
            (dst)[pc_j] = pc_j < (n) ? (src)[pc_j] : (T)0;                                       \
    } while (0)
#define PACK_COPY_DEFAULT
#endif

/* PACK_TRANSPOSE16(dst, ldd, src, lds, rows), optional: dst[q * ldd + j] = src[j * lds + q] for
 * q < 16, j < rows (rows = 8 or 16), an in-register transpose for the packings that transpose
 * (A stored M x K, B stored N x K). */

#define PCAT_(a, b) a##b
#define PCAT(a, b) PCAT_(a, b)
#define P(name) PCAT(name##_, SUF)

/* op(A)[0:mc, 0:kc] -> MR-row micro-panels, depth-major, rows past mc zero. */
static void P(pack_a)(int transa, const T *A, ptrdiff_t lda, ptrdiff_t mc, ptrdiff_t kc, T *dst)
{
    for (ptrdiff_t ir = 0; ir < mc; ir += MR, dst += (ptrdiff_t)MR * kc) {
        const int mm = (int)(mc - ir < MR ? mc - ir : MR);
        if (transa) {  /* each depth step: MR contiguous values */
            const T *src = A + ir;
            if (mm == MR) {
                for (ptrdiff_t p = 0; p < kc; ++p) PACK_COPY(dst + p * MR, src + p * lda, MR, MR);
            } else {
                for (ptrdiff_t p = 0; p < kc; ++p) PACK_COPY(dst + p * MR, src + p * lda, mm, MR);
            }
        } else if (mm == MR) {  /* a transpose of MR rows: blocks of 8 depth steps */
            const T *src = A + ir * lda;
            ptrdiff_t p = 0;
#if defined(PACK_TRANSPOSE16)
            if (MR % 8 == 0)
                for (; p + 16 <= kc; p += 16)
                    for (int r0 = 0; r0 < MR; r0 += 16)
                        PACK_TRANSPOSE16(dst + p * MR + r0, MR, src + r0 * lda + p, lda,
                                         MR - r0 >= 16 ? 16 : 8);
#endif
            for (; p + 8 <= kc; p += 8) {
                T tile[MR][8];
                for (int i = 0; i < MR; ++i)
                    for (int q = 0; q < 8; ++q) tile[i][q] = src[i * lda + p + q];
                for (int q = 0; q < 8; ++q)
                    for (int i = 0; i < MR; ++i) dst[(p + q) * MR + i] = tile[i][q];
            }
            for (; p < kc; ++p)
                for (int i = 0; i < MR; ++i) dst[p * MR + i] = src[i * lda + p];
        } else {
            const T *src = A + ir * lda;
            for (ptrdiff_t p = 0; p < kc; ++p)
                for (int i = 0; i < MR; ++i) dst[p * MR + i] = i < mm ? src[i * lda + p] : (T)0;
        }
    }
}

/* op(B)[0:kc, 0:nc] -> NR-column micro-panels, depth-major, columns past nc zero. */
static void P(pack_b)(int transb, const T *B, ptrdiff_t ldb, ptrdiff_t nc, ptrdiff_t kc, T *dst)
{
    for (ptrdiff_t jr = 0; jr < nc; jr += NR, dst += (ptrdiff_t)NR * kc) {
        const int nn = (int)(nc - jr < NR ? nc - jr : NR);
        if (!transb) {
            const T *src = B + jr;
            if (nn == NR) {
                for (ptrdiff_t p = 0; p < kc; ++p) PACK_COPY(dst + p * NR, src + p * ldb, NR, NR);
            } else {
                for (ptrdiff_t p = 0; p < kc; ++p) PACK_COPY(dst + p * NR, src + p * ldb, nn, NR);
            }
        } else {  /* B stored N x K: a transpose of NR rows */
            const T *src = B + jr * ldb;
            ptrdiff_t p = 0;
            if (nn == NR) {
#if defined(PACK_TRANSPOSE16)
                if (NR % 8 == 0)
                    for (; p + 16 <= kc; p += 16)
                        for (int j0 = 0; j0 < NR; j0 += 16)
                            PACK_TRANSPOSE16(dst + p * NR + j0, NR, src + j0 * ldb + p, ldb,
                                             NR - j0 >= 16 ? 16 : 8);
#endif
                for (; p + 8 <= kc; p += 8) {
                    T tile[NR][8];
                    for (int j = 0; j < NR; ++j)
                        for (int q = 0; q < 8; ++q) tile[j][q] = src[j * ldb + p + q];
                    for (int q = 0; q < 8; ++q)
                        for (int j = 0; j < NR; ++j) dst[(p + q) * NR + j] = tile[j][q];
                }
            }
            for (; p < kc; ++p)
                for (int j = 0; j < NR; ++j) dst[p * NR + j] = j < nn ? src[j * ldb + p] : (T)0;
        }
    }
}

#undef P
#undef PCAT
#undef PCAT_
#ifdef PACK_COPY_DEFAULT
#undef PACK_COPY
#undef PACK_COPY_DEFAULT
#endif
