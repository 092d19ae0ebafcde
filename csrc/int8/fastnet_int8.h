/* fastnet int8 GEMM: C[M x N] = epilogue(A[M x K] (uint8) * B[K x N] (int8)), int32 accumulation.
 *
 * A is row-major uint8 (lda >= K bytes).  B is packed once (fn_q8_pack_b) into an ISA-neutral
 * layout every path reads: panels of 32 columns, each panel ceil(K / 4) "quads" of 32 columns x
 * 4 consecutive depths (128 bytes), zero-padded past K and past N.  So a quantized model's packed
 * weights run on any CPU and any path gives the same bits.
 *
 * Epilogue, per output element (i, j), acc the exact int32 sum of A[i, p] * B[p, j]:
 *   FN_Q8_OUT_S32:  C = acc                                            (int32 C)
 *   FN_Q8_OUT_F32:  C = min(max(f, lo), hi)                            (float C)
 *   FN_Q8_OUT_U8:   C = rint(min(max(f, lo), hi)), lo >= 0, hi <= 255  (uint8 C)
 *   with f = float(acc + corr[j]) * mult[j] + add[j] in float32, multiply then add (never a
 *   fused multiply-add: the int8 sources are built with -ffp-contract=off) and round to nearest
 *   even, so every path, NumPy's float32 formula included, gives the same bits.
 * corr (may be NULL) folds the activation zero point in: corr[j] = -zp * sum_p B[p, j].
 *
 * fn_q8_gemm runs on the calling thread; callers split M across threads (the Cython module
 * does, with prange).  Sizes are trusted: fastnet.ops.int8 validates them, including
 * K <= FN_Q8_MAX_K so that no int32 sum can overflow (K * 255 * 128 < 2^31).
 */
#ifndef FASTNET_INT8_H
#define FASTNET_INT8_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FN_Q8_OUT_S32 0
#define FN_Q8_OUT_F32 1
#define FN_Q8_OUT_U8 2

#define FN_Q8_PANEL 32        /* columns per packed panel */
#define FN_Q8_MAX_K 65536

typedef struct {
    int out;                  /* FN_Q8_OUT_* */
    const int32_t *corr;      /* N entries or NULL */
    const float *mult, *add;  /* N entries each (unused for S32) */
    float lo, hi;             /* clamp (unused for S32) */
} fn_q8_epi;

/* Bytes of packed B for K x N. */
size_t fn_q8_packed_size(ptrdiff_t k, ptrdiff_t n);
/* Pack B (K x N int8, row stride ldb) into dst (fn_q8_packed_size bytes). */
void fn_q8_pack_b(ptrdiff_t k, ptrdiff_t n, const int8_t *b, ptrdiff_t ldb, int8_t *dst);
/* Bytes of scratch one fn_q8_gemm call needs for depth K (same for every path). */
size_t fn_q8_workspace(ptrdiff_t k);
/* C = epilogue(A B) for M x N x K; ldc in elements of C's type; ws: fn_q8_workspace(k) bytes,
 * 64-byte aligned. */
void fn_q8_gemm(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k, const uint8_t *a, ptrdiff_t lda,
                const int8_t *bpack, const fn_q8_epi *epi, void *c, ptrdiff_t ldc, void *ws);
/* Row-tile height of the path in use (callers split M in multiples of it). */
int fn_q8_mr(void);

/* Run-time path: avx512vnni | avx2 | generic.  Chosen on first use: FASTNET_INT8_ISA if it
 * names a usable path, else the one matching FASTNET_ISA (avx512 -> avx512vnni when the CPU has
 * VNNI, else avx2), else the best this CPU and build support. */
const char *fn_q8_isa(void);
int fn_q8_set_isa(const char *name);        /* 0, or -1 if unknown or not usable here */
const char *fn_q8_available_isas(void);     /* comma-separated, best first */

#ifdef __cplusplus
}
#endif
#endif
