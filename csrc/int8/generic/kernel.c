/* Portable int8 row-strip kernel (baseline flags, no intrinsics): 4 rows x one 32-column panel
 * of int32 accumulators, plain loops over the packed quads that gcc vectorizes along the panel
 * (measured faster than transposing each quad to contiguous int16 rows first).  Rows past m
 * re-read row m - 1 (their results are dropped), so A is never read past its last row. */
#include "../int8_internal.h"

#define GEN_MR 4

static void rows_generic(int m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                         const int8_t *b, const fn_q8_epi *e, void *c, ptrdiff_t ldc, void *ws)
{
    (void)ws;
    const ptrdiff_t quads = (k + 3) / 4;
    const uint8_t *row[GEN_MR];
    for (int r = 0; r < GEN_MR; ++r) row[r] = a + (r < m ? r : m - 1) * lda;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_Q8_PANEL, b += quads * FN_Q8_QUAD) {
        int32_t acc[GEN_MR][FN_Q8_PANEL];
        memset(acc, 0, sizeof acc);
        for (ptrdiff_t q = 0; q < quads; ++q) {
            const int8_t *bq = b + q * FN_Q8_QUAD;
            for (int r = 0; r < GEN_MR; ++r) {
                const uint32_t w = fn_q8_quad(row[r], 4 * q, k);
                const int32_t a0 = (int32_t)(w & 255u), a1 = (int32_t)((w >> 8) & 255u);
                const int32_t a2 = (int32_t)((w >> 16) & 255u), a3 = (int32_t)(w >> 24);
                for (int jj = 0; jj < FN_Q8_PANEL; ++jj)
                    acc[r][jj] += a0 * bq[4 * jj] + a1 * bq[4 * jj + 1] + a2 * bq[4 * jj + 2] +
                                  a3 * bq[4 * jj + 3];
            }
        }
        const int nb = (int)(n - j0 < FN_Q8_PANEL ? n - j0 : FN_Q8_PANEL);
        for (int r = 0; r < m; ++r)
            for (int jj = 0; jj < nb; ++jj)
                fn_q8_store1(e, acc[r][jj], j0 + jj, c, r * ldc + j0 + jj);
    }
}

const fn_q8_table fn_q8_table_generic = {"generic", GEN_MR, rows_generic};
