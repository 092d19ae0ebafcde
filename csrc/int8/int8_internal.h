/* fastnet int8 GEMM internals: the row-strip kernel contract and the per-ISA table.
 *
 * A path provides one function that computes a strip of m <= mr rows of C over all N columns:
 *   rows(m, n, k, a, lda, bpack, epi, c, ldc, ws)
 * reading the m rows of A in place (never past row m - 1 or byte k - 1 of a row) and the packed
 * panels of B (fastnet_int8.h), and applying the epilogue while the tile is in registers.
 */
#ifndef FASTNET_INT8_INTERNAL_H
#define FASTNET_INT8_INTERNAL_H

#include <string.h>
#include "fastnet_int8.h"

#if defined(__GNUC__) || defined(__clang__)
#define FN_Q8_INLINE static inline __attribute__((always_inline))
#else
#define FN_Q8_INLINE static __forceinline
#endif

#define FN_Q8_QUAD (FN_Q8_PANEL * 4)   /* bytes of one packed quad: 32 columns x 4 depths */
#define FN_Q8_MAX_MR 8                 /* the tallest strip of any path (workspace sizing) */

typedef void (*fn_q8_rows_fn)(int m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                              const int8_t *b, const fn_q8_epi *e, void *c, ptrdiff_t ldc,
                              void *ws);

typedef struct {
    const char *name;
    int mr;
    fn_q8_rows_fn rows;
} fn_q8_table;

extern const fn_q8_table fn_q8_table_generic;
#ifdef FN_HAVE_INT8_AVX2
extern const fn_q8_table fn_q8_table_avx2;
#endif
#ifdef FN_HAVE_INT8_AVX512VNNI
extern const fn_q8_table fn_q8_table_avx512vnni;
#endif

const fn_q8_table *fn_q8_current(void);

/* Four bytes of a row starting at depth p as one little-endian word, zero past depth k. */
FN_Q8_INLINE uint32_t fn_q8_quad(const uint8_t *row, ptrdiff_t p, ptrdiff_t k)
{
    uint32_t v = 0;
    switch (k - p >= 4 ? 4 : k - p) {   /* little-endian: the missing high bytes stay 0 */
    case 4: memcpy(&v, row + p, 4); break;
    case 3: v = (uint32_t)row[p + 2] << 16; /* fall through */
    case 2: v |= (uint32_t)row[p + 1] << 8; /* fall through */
    case 1: v |= row[p]; break;
    default: break;
    }
    return v;
}

/* The scalar epilogue of one element (the vector paths compute the same float operations). */
FN_Q8_INLINE void fn_q8_store1(const fn_q8_epi *e, int32_t acc, ptrdiff_t j, void *c,
                               ptrdiff_t idx)
{
    if (e->out == FN_Q8_OUT_S32) {
        ((int32_t *)c)[idx] = acc;
        return;
    }
    if (e->corr) acc = (int32_t)((uint32_t)acc + (uint32_t)e->corr[j]);  /* wraps as SIMD */
    float f = (float)acc;
    f = f * e->mult[j];
    f = f + e->add[j];
    f = f > e->lo ? f : e->lo;
    f = f < e->hi ? f : e->hi;
    if (e->out == FN_Q8_OUT_F32) ((float *)c)[idx] = f;
    else ((uint8_t *)c)[idx] = (uint8_t)__builtin_lrintf(f);
}

#endif
