/* fastnet GEMM internals: the microkernel contract and the per-ISA table of block sizes.
 *
 * Layout conventions (row-major C, as NumPy):
 *   - A microkernel computes one MR x NR tile of C.  The NR side is the vector side (contiguous
 *     in C and in B); the MR side is broadcast from A.
 *   - A is read as a[i * rsa + p * csa] (row i < MR, depth p < k).  A packed micro-panel has
 *     rsa = 1, csa = MR (MR values per depth step, zero-padded past the last row); the
 *     "rows" kernels read A in place (csa = 1, rsa = lda), the "cols" kernels read a
 *     transposed A in place (rsa = 1, csa = lda); both need m == MR (no overrun).
 *   - B is read as b[p * rsb + j], j < NR: a packed micro-panel has rsb = NR (zero-padded past
 *     the last column); an unpacked B row has rsb = ldb (only columns j < n are touched).
 *   - The epilogue runs while the tile is in registers:
 *       C = act(alpha * acc + beta * C + bias),  beta == 0: C is never read;
 *     bias (already offset to the tile's first column) is NULL for "no bias".
 *     m <= MR rows and n <= NR columns of C are written (edge tiles handled in the kernel).
 */
#ifndef FASTNET_GEMM_INTERNAL_H
#define FASTNET_GEMM_INTERNAL_H

#include <stddef.h>
#include "fastnet_gemm.h"
#include "fn_isa_config.h"

#if defined(__GNUC__) || defined(__clang__)
#define FN_INLINE static inline __attribute__((always_inline))
#else
#define FN_INLINE static __forceinline
#endif

typedef struct {
    float alpha, beta;
    const float *bias;
    int relu;
} fn_epi_s;

typedef struct {
    double alpha, beta;
    const double *bias;
    int relu;
} fn_epi_d;

/* One microkernel signature per precision, for every ISA. */
typedef void (*fn_ukr_s)(ptrdiff_t k, const float *a, ptrdiff_t rsa, ptrdiff_t csa,
                         const float *b, ptrdiff_t rsb, float *c, ptrdiff_t ldc,
                         int m, int n, const fn_epi_s *epi);
typedef void (*fn_ukr_d)(ptrdiff_t k, const double *a, ptrdiff_t rsa, ptrdiff_t csa,
                         const double *b, ptrdiff_t rsb, double *c, ptrdiff_t ldc,
                         int m, int n, const fn_epi_d *epi);

/* Packing: op(A)[0:mc, 0:kc] into MR-row micro-panels, op(B)[0:kc, 0:nc] into NR-column
 * micro-panels (src points at the block's first element; trans says how it is stored). */
typedef void (*fn_pack_s)(int trans, const float *src, ptrdiff_t ld, ptrdiff_t mn,
                          ptrdiff_t kc, float *dst);
typedef void (*fn_pack_d)(int trans, const double *src, ptrdiff_t ld, ptrdiff_t mn,
                          ptrdiff_t kc, double *dst);

/* Block sizes of one precision on one ISA (data, not constants in loops):
 *   mr x nr  register tile;
 *   kc       depth of a packed block (an A micro-panel mr x kc stays in L1);
 *   nc       columns of a packed B block (kc x nc stays in L2);
 *   mc       rows of a packed A block (mc x kc, streamed from L2/L3). */
typedef struct {
    int mr, nr, kc, mc, nc;
    fn_ukr_s packed;  /* A packed (rsa = 1, csa = mr) */
    fn_ukr_s rows;    /* A in place, csa == 1, m == mr */
    fn_ukr_s cols;    /* transposed A in place, rsa == 1, m == mr */
    fn_pack_s pack_a; /* (transa, A, lda, mc, kc, dst) */
    fn_pack_s pack_b; /* (transb, B, ldb, nc, kc, dst) */
} fn_blocking_s;

typedef struct {
    int mr, nr, kc, mc, nc;
    fn_ukr_d packed;
    fn_ukr_d rows;
    fn_ukr_d cols;
    fn_pack_d pack_a;
    fn_pack_d pack_b;
} fn_blocking_d;

typedef struct {
    const char *name;
    fn_blocking_s s;
    fn_blocking_d d;
    /* float32 FMA throughput probe: `iters` steps of independent FMA chains on this ISA's
     * widest vectors (enough chains to cover latency x issue width); returns the FLOPs done. */
    double (*fma_loop)(long long iters);
} fn_gemm_table;

/* The table in use (chosen on first call, or by fn_gemm_set_isa / FASTNET_ISA). */
const fn_gemm_table *fn_gemm_current(void);

extern const fn_gemm_table fn_table_generic;
#ifdef FN_HAVE_AVX2
extern const fn_gemm_table fn_table_avx2;
#endif
#ifdef FN_HAVE_AVX512
extern const fn_gemm_table fn_table_avx512;
/* How the AVX-512 kernels broadcast A: 1 embedded in the FMAs, 0 one register broadcast per
 * value (csrc/avx512/kernel_impl.h); chosen with the path (fn_gemm_set_broadcast). */
extern int fn_avx512_bcast_mem;
#endif

/* The block sizes {mr, nr, kc, mc, nc} of the named usable path (NULL: the current one), for
 * tests and benchmarks; returns -1 if the path is not usable. */
int fn_gemm_blocking(const char *name, int use_double, int sizes[5]);

/* The float32 FMA peak of the current path in GFLOP/s on `nthreads` threads: each thread runs
 * the path's fma_loop for `seconds`, and the per-thread rates are summed. */
double fn_gemm_fma_peak(int nthreads, double seconds);

/* Per-thread, grow-only, 64-byte aligned scratch (slot 0: A panels, 1: B panels, 2: edge
 * tile, 3: split-K partial sums).  Never shared between OS threads, kept until thread exit. */
void *fn_scratch(int slot, size_t bytes);

#endif
