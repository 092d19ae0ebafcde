/* The int8 GEMM driver: packing of B and the loop over row strips of the path in use. */
#include "int8_internal.h"

size_t fn_q8_packed_size(ptrdiff_t k, ptrdiff_t n)
{
    const size_t panels = (size_t)((n + FN_Q8_PANEL - 1) / FN_Q8_PANEL);
    const size_t quads = (size_t)((k + 3) / 4);
    return panels * quads * FN_Q8_QUAD;
}

void fn_q8_pack_b(ptrdiff_t k, ptrdiff_t n, const int8_t *b, ptrdiff_t ldb, int8_t *dst)
{
    const ptrdiff_t quads = (k + 3) / 4;
    for (ptrdiff_t j0 = 0; j0 < n; j0 += FN_Q8_PANEL) {
        for (ptrdiff_t q = 0; q < quads; ++q, dst += FN_Q8_QUAD) {
            for (int jj = 0; jj < FN_Q8_PANEL; ++jj)
                for (int t = 0; t < 4; ++t) {
                    const ptrdiff_t p = 4 * q + t, j = j0 + jj;
                    dst[jj * 4 + t] = (p < k && j < n) ? b[p * ldb + j] : 0;
                }
        }
    }
}

size_t fn_q8_workspace(ptrdiff_t k)
{
    /* the AVX2 path widens a strip of A to int16: MAX_MR rows x 4 depths x 2 bytes per quad */
    return (size_t)FN_Q8_MAX_MR * 8u * (size_t)((k + 3) / 4) + 64u;
}

void fn_q8_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                const int8_t *bpack, const fn_q8_epi *epi, void *c, ptrdiff_t ldc, void *ws)
{
    const fn_q8_table *t = fn_q8_current();   /* read once: a concurrent switch never tears */
    const size_t esize = epi->out == FN_Q8_OUT_U8 ? 1 : 4;
    for (ptrdiff_t i = 0; i < m; i += t->mr) {
        const int mm = (int)(m - i < t->mr ? m - i : t->mr);
        t->rows(mm, n, k, a + i * lda, lda, bpack, epi, (char *)c + (size_t)(i * ldc) * esize,
                ldc, ws);
    }
}
