/* Convolution drivers and microkernels for one ISA and one precision (see fastnet_conv.h).
 *
 * Included by csrc/<isa>/conv.c with
 *   T      float / double            SUF    s / d
 *   IT     the same-size integer      ISA    avx512 / avx2 / generic (names the table entry)
 *   VBYTES vector size in bytes (64 zmm, 32 ymm, 16 xmm): GCC vector types, so each ISA
 *          object (compiled with its -m flags) gets its own register allocation
 *   FMR, FNV  forward register tile: FMR pixels x FNV vectors of output channels
 *   BMR, BNV  backward-input tile: BMR dy pixels x BNV vectors of input channels
 *   WMR, WNV  backward-weight tile: WMR input channels x WNV vectors of output channels
 * (see each ISA's conv.c for the shapes and why).
 *
 * Design
 * ------
 * Forward.  With NHWC tensors the patch of output pixel (n, oh, ow) is, for each kernel row i,
 * one contiguous run of kw*Cin input values (when the window is inside the row), laid out (j, c)
 * like the kernel.  So a register tile of FMR pixels x FNR = FNV*VL output channels is
 *     acc[r][:] = bias + sum over segments s, sum over q < L of  a[s][r][q] * B[s][q][:]
 * where a[s][r] points at pixel r's run for segment s and B is the kernel packed in FNR-column
 * panels (k-major, zero-padded columns), once per call.  A segment is a kernel row (L = kw*Cin)
 * when every pixel's window is inside its input row, else a single tap (i, j) (L = Cin).
 * Segments wholly in the padding are dropped from the table; a padded segment of some pixels
 * points at a zero row.  The table for a tile costs FMR*kh*kw pointer computations (no
 * divisions: the pixel index is walked), against FMR*K*FNR multiply-adds: nothing is copied,
 * the windows are read in place from L1.  The tiles are flattened pixel indices, so a tile may
 * straddle output rows and images: no edge tiles except the last.  Threads take even shares of
 * the (tile, panel) units (a batch of 1 still fills the team); panels are swept in groups that
 * stay in L2 (CV_FWD_GROUP_BYTES).  Each output is computed by one thread in a fixed order:
 * results do not depend on the team size.
 *
 * Backward input is the same GEMM transposed: dcol (pixels x K) = dy (pixels x Cout) @ W^T,
 * computed tile by tile (BMR dy pixels x one tap's BNR input channels, depth Cout) and added in
 * the epilogue straight into dx at each pixel's window position (per-row destination pointers;
 * NULL = padding).  Every multiply-add is useful (no zero-padded dy, no col2im matrix; a
 * flipped-kernel "full" convolution of dy would waste 28% on the MNIST CNN's valid 13x13 layer).
 * dy rows are masked by relu_y into a small per-tile buffer when it is given.  Threads take even
 * ranges of dy pixels; a thread owns the dx images whose first pixel is in its range and zeroes
 * each just before its first tile (still in L2 when the tiles add); the contributions to an
 * image that starts in an earlier thread's range go to a private one-image buffer, added in
 * block order after the team's barrier.  The per-element summation order is fixed by the
 * tiling, which depends on the partition only through the range starts: reproducible for a
 * given team size, and for any team size with a fixed g->nparts (a block per range, with its
 * own buffers, the threads taking blocks in turn).
 *
 * Backward weight: dW (K x Cout) = sum over pixels of patch^T dy.  A register tile is WMR input
 * channels of one tap (contiguous in x) x WNV vectors of output channels; the depth is the
 * pixels.  Each thread walks its share of output rows in chunks of whole rows: the chunk's
 * input rows are copied zero-padded (so every tap of every pixel is a valid address: no bounds
 * checks, no zero tables) and its dy block (ReLU-masked, column-padded, column sums into the
 * bias gradient) into L1/L2-sized buffers; one table of window pointers then feeds every tile
 * (tap, channel block, output block), the tap a constant offset.  The rows are cut in one block
 * per thread (or g->nparts blocks taken in turn); block 0 accumulates into dw, the others into
 * partial sums added in block order.
 *
 * The direct kernels for small kw*Cin (the first layer) are in direct_impl.h.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#define CV_CAT3_(a, b, c, d) a##_##b##_##c##_##d
#define CV_CAT3(a, b, c, d) CV_CAT3_(a, b, c, d)
#define F(name) CV_CAT3(fn_conv, name, ISA, SUF)
#define CV_CAT_(a, b) a##b
#define CV_CAT(a, b) CV_CAT_(a, b)
#define V CV_CAT(fn_cv_vec_, SUF)
#define VI CV_CAT(fn_cv_ivec_, SUF)
#define VL ((int)(VBYTES / sizeof(T)))
#define FNR (FNV * VL)
#define BNR (BNV * VL)
#define NRW (WNV * VL)

#ifndef FN_CONV_COMMON_DEFINED
#define FN_CONV_COMMON_DEFINED
#define CV_INLINE static inline __attribute__((always_inline))
#define CV_ALIGN_BYTES 64
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <xmmintrin.h>
#define CV_FTZ_BEGIN                                                                             \
    const unsigned cv_saved_csr = _mm_getcsr();                                                  \
    _mm_setcsr(cv_saved_csr | 0x8040u);
#define CV_FTZ_END _mm_setcsr(cv_saved_csr);
#else
#define CV_FTZ_BEGIN
#define CV_FTZ_END
#endif
static inline ptrdiff_t cv_min(ptrdiff_t a, ptrdiff_t b) { return a < b ? a : b; }
static inline ptrdiff_t cv_max(ptrdiff_t a, ptrdiff_t b) { return a > b ? a : b; }
static inline ptrdiff_t cv_cdiv(ptrdiff_t a, ptrdiff_t b) { return (a + b - 1) / b; }
#ifdef _OPENMP
#define CV_TEAM_SIZE() omp_get_num_threads()
#define CV_THREAD_ID() omp_get_thread_num()
#define CV_PRAGMA(x) _Pragma(#x)
#else
#define CV_TEAM_SIZE() 1
#define CV_THREAD_ID() 0
#define CV_PRAGMA(x)
#endif
#endif

#if VBYTES == 64 && defined(__AVX512F__) && defined(__GNUC__)
#ifndef CV_BCAST_MEM
extern int fn_avx512_bcast_mem;
#define CV_BCAST_MEM() __atomic_load_n(&fn_avx512_bcast_mem, __ATOMIC_RELAXED)
#endif
#else
#define CV_BCAST_MEM() 0
#endif

typedef T V __attribute__((vector_size(VBYTES)));
typedef IT VI __attribute__((vector_size(VBYTES)));

CV_INLINE V F(ld)(const T *p) { V v; memcpy(&v, p, sizeof v); return v; }
CV_INLINE void F(st)(T *p, V v) { memcpy(p, &v, sizeof v); }
CV_INLINE V F(relu)(V v) { const V z = {0}; return (V)((VI)v & (VI)(v > z)); }

/* acc[0:nv] += *x * w[0:nv].  mem: with embedded {1toN} memory broadcasts, the AVX-512 GEMM's
 * broadcast mode (csrc/avx512/kernel_impl.h says why; fn_gemm_set_broadcast switches both). */
CV_INLINE void F(fma_row)(V *acc, const V *w, const T *x, const int nv, const int mem)
{
#if VBYTES == 64 && defined(__AVX512F__) && defined(__GNUC__)
    if (mem) {
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) {
            if (sizeof(T) == 4)
                __asm__("vfmadd231ps %2%{1to16%}, %1, %0" : "+v"(acc[v]) : "v"(w[v]), "m"(*x));
            else
                __asm__("vfmadd231pd %2%{1to8%}, %1, %0" : "+v"(acc[v]) : "v"(w[v]), "m"(*x));
        }
        return;
    }
#else
    (void)mem;
#endif
    const T xv = *x;
#pragma GCC unroll 4
    for (int v = 0; v < nv; ++v) acc[v] += xv * w[v];
}

/* Elements of T for `bytes`, rounded up to whole 64-byte lines (every region stays aligned). */
static ptrdiff_t F(elems)(size_t bytes)
{
    const size_t line = CV_ALIGN_BYTES;
    return (ptrdiff_t)(((bytes + line - 1) / line * line) / sizeof(T));
}

/* dst[0:n] = v's first n lanes of nv <= FNV vectors (n <= nv * VL). */
CV_INLINE void F(store_part)(T *dst, const V *v, int nv, int n)
{
    T t[FNV * VL];
    for (int q = 0; q < nv; ++q) F(st)(t + q * VL, v[q]);
    memcpy(dst, t, (size_t)n * sizeof(T));
}

/* ==================================================================================== forward */
/* One FMR x (nv vectors) tile: c[r][0:n] = act(bias + sum_s sum_q a[s*FMR + r][q] * b[boff[s] +
 * q*ldb + :]) for rows r < m.  bias: nv*VL entries (zero-padded). */
CV_INLINE void F(fwd_body)(ptrdiff_t nseg, ptrdiff_t L, const T *const *a, const ptrdiff_t *boff,
                           const T *b, ptrdiff_t ldb, const T *bias, T *c, ptrdiff_t ldc, int m,
                           int n, int relu, const int nv, const int mem)
{
    V acc[FMR][FNV];
#pragma GCC unroll 16
    for (int r = 0; r < FMR; ++r)
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[r][v] = F(ld)(bias + v * VL);
    for (ptrdiff_t s = 0; s < nseg; ++s) {
        const T *p[FMR];
#pragma GCC unroll 16
        for (int r = 0; r < FMR; ++r) p[r] = a[s * FMR + r];
        const T *bb = b + boff[s];
        for (ptrdiff_t q = 0; q < L; ++q) {
            V w[FNV];
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) w[v] = F(ld)(bb + q * ldb + v * VL);
#pragma GCC unroll 16
            for (int r = 0; r < FMR; ++r) F(fma_row)(acc[r], w, p[r] + q, nv, mem);
        }
    }
#pragma GCC unroll 16
    for (int r = 0; r < FMR; ++r) {
        if (r >= m) break;
        T *cr = c + r * ldc;
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v)
            if (relu) acc[r][v] = F(relu)(acc[r][v]);
        if (n == nv * VL) {
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) F(st)(cr + v * VL, acc[r][v]);
        } else {
            F(store_part)(cr, acc[r], nv, n);
        }
    }
}

CV_INLINE void F(fwd_tile_)(ptrdiff_t nseg, ptrdiff_t L, const T *const *a, const ptrdiff_t *boff,
                            const T *b, ptrdiff_t ldb, const T *bias, T *c, ptrdiff_t ldc, int m,
                            int n, int relu, const int mem)
{
    switch (cv_cdiv(n, VL)) {   /* vectors of columns: fewer FMAs on narrow edge panels */
#if FNV > 3
    case 3: F(fwd_body)(nseg, L, a, boff, b, ldb, bias, c, ldc, m, n, relu, 3, mem); break;
#endif
#if FNV > 2
    case 2: F(fwd_body)(nseg, L, a, boff, b, ldb, bias, c, ldc, m, n, relu, 2, mem); break;
#endif
#if FNV > 1
    case 1: F(fwd_body)(nseg, L, a, boff, b, ldb, bias, c, ldc, m, n, relu, 1, mem); break;
#endif
    default: F(fwd_body)(nseg, L, a, boff, b, ldb, bias, c, ldc, m, n, relu, FNV, mem);
    }
}

static void F(fwd_tile)(ptrdiff_t nseg, ptrdiff_t L, const T *const *a, const ptrdiff_t *boff,
                        const T *b, ptrdiff_t ldb, const T *bias, T *c, ptrdiff_t ldc, int m,
                        int n, int relu)
{
    if (CV_BCAST_MEM()) F(fwd_tile_)(nseg, L, a, boff, b, ldb, bias, c, ldc, m, n, relu, 1);
    else F(fwd_tile_)(nseg, L, a, boff, b, ldb, bias, c, ldc, m, n, relu, 0);
}

typedef struct {
    ptrdiff_t K, npanel, zero_len, wp, bp, thread_base, per_thread, ptrs, boff, zero, total;
} F(fwd_layout);

static F(fwd_layout) F(fwd_plan)(const fn_conv_geom *g, int nthreads)
{
    F(fwd_layout) l;
    l.K = g->kh * g->kw * g->cin;
    l.npanel = cv_cdiv(g->cout, FNR);
    l.zero_len = cv_max(g->kw * g->cin, FNR);   /* a padded window row; a zero bias */
    l.wp = 0;
    l.bp = l.wp + F(elems)(sizeof(T) * (size_t)(l.npanel * l.K * FNR));
    l.thread_base = l.bp + F(elems)(sizeof(T) * (size_t)(l.npanel * FNR));
    l.ptrs = 0;  /* offsets inside a thread's region */
    l.boff = F(elems)(sizeof(T *) * (size_t)(g->kh * g->kw * FMR));
    l.zero = l.boff + F(elems)(sizeof(ptrdiff_t) * (size_t)(g->kh * g->kw));
    l.per_thread = l.zero + F(elems)(sizeof(T) * (size_t)l.zero_len);
    l.total = l.thread_base + (ptrdiff_t)nthreads * l.per_thread;
    return l;
}

/* The segment table of the tile of pixels [m0, m0 + m): returns the segment count, sets *L. */
/* The output pixel (n, oh, ow) advanced by `by` pixels (by small). */
static inline void F(advance)(const fn_conv_geom *g, ptrdiff_t by, ptrdiff_t *n, ptrdiff_t *oh,
                              ptrdiff_t *ow)
{
    *ow += by;
    while (*ow >= g->ow) {
        *ow -= g->ow;
        if (++*oh == g->oh) { *oh = 0; ++*n; }
    }
}

/* The segment table of the tile of pixels [m0, m0 + m) starting at output pixel (n, oh, ow):
 * returns the segment count, sets *L. */
static ptrdiff_t F(fwd_table)(const fn_conv_geom *g, const T *x, const T *zero, ptrdiff_t n,
                              ptrdiff_t oh, ptrdiff_t ow, int m, ptrdiff_t ldb, const T **a,
                              ptrdiff_t *boff, ptrdiff_t *L)
{
    const ptrdiff_t cin = g->cin;
    ptrdiff_t ih0[FMR], iw0[FMR];
    const T *img[FMR];
    int rows_inside = 1;
    for (int r = 0; r < FMR; ++r) {   /* pixels past m repeat the last one (not stored) */
        ih0[r] = oh * g->sh - g->pt;
        iw0[r] = ow * g->sw - g->pl;
        img[r] = x + n * g->h * g->w * cin;
        rows_inside &= iw0[r] >= 0 && iw0[r] + g->kw <= g->w;
        if (r + 1 < m && ++ow == g->ow) {
            ow = 0;
            if (++oh == g->oh) { oh = 0; ++n; }
        }
    }
    ptrdiff_t nseg = 0;
    if (rows_inside) {  /* one segment per kernel row: kw*Cin contiguous values */
        *L = g->kw * cin;
        for (ptrdiff_t i = 0; i < g->kh; ++i) {
            int any = 0;
            for (int r = 0; r < FMR; ++r) {
                const ptrdiff_t ih = ih0[r] + i;
                const int ok = ih >= 0 && ih < g->h;
                a[nseg * FMR + r] = ok ? img[r] + (ih * g->w + iw0[r]) * cin : zero;
                any |= ok;
            }
            if (any) boff[nseg++] = i * g->kw * cin * ldb;
        }
    } else {            /* one segment per tap: Cin contiguous values */
        *L = cin;
        for (ptrdiff_t i = 0; i < g->kh; ++i)
            for (ptrdiff_t j = 0; j < g->kw; ++j) {
                int any = 0;
                for (int r = 0; r < FMR; ++r) {
                    const ptrdiff_t ih = ih0[r] + i, iw = iw0[r] + j;
                    const int ok = ih >= 0 && ih < g->h && iw >= 0 && iw < g->w;
                    a[nseg * FMR + r] = ok ? img[r] + (ih * g->w + iw) * cin : zero;
                    any |= ok;
                }
                if (any) boff[nseg++] = (i * g->kw + j) * cin * ldb;
            }
    }
    return nseg;
}

/* Panels of this many bytes of packed kernel are swept over all the pixel tiles before the next
 * group: the group stays in L2 while the windows stream through L1. */
#define CV_FWD_GROUP_BYTES (512 * 1024)

static void F(forward)(const fn_conv_geom *g, const T *x, const T *w, const T *bias, T *y,
                       int relu, T *ws, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    const F(fwd_layout) l = F(fwd_plan)(g, nthreads);
    const ptrdiff_t K = l.K, cout = g->cout, npanel = l.npanel;
    const ptrdiff_t P = g->oh * g->ow, M = g->n * P, ntiles = cv_cdiv(M, FMR);
    const ptrdiff_t gsize = cv_max(1, cv_min(npanel, CV_FWD_GROUP_BYTES /
                                             cv_max(1, K * FNR * (ptrdiff_t)sizeof(T))));
    /* One panel of whole vectors is already the packed layout with row stride cout: the kernel
     * is read in place (no copy, no barrier: a batch-1 call is a few microseconds). */
    const int in_place = npanel == 1 && cout % VL == 0;
    const ptrdiff_t ldb = in_place ? cout : FNR;
    T *wp = in_place ? (T *)w : ws + l.wp, *bp = ws + l.bp;
    CV_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
    {
        CV_FTZ_BEGIN
        const int team = CV_TEAM_SIZE(), tid = CV_THREAD_ID();
        T *mine = ws + l.thread_base + (ptrdiff_t)tid * l.per_thread;
        const T **a = (const T **)(mine + l.ptrs);
        ptrdiff_t *boff = (ptrdiff_t *)(mine + l.boff);
        T *zero = mine + l.zero;
        memset(zero, 0, (size_t)l.zero_len * sizeof(T));
        const T *bv = in_place ? (bias ? bias : zero) : bp;
        if (!in_place) {
            /* pack: wp[p][k][0:FNR] = w[k][p*FNR : p*FNR + FNR], zero-padded columns */
            CV_PRAGMA(omp for schedule(static))
            for (ptrdiff_t pk = 0; pk < npanel * K; ++pk) {
                const ptrdiff_t p = pk / K, k = pk - p * K, c0 = p * FNR;
                const ptrdiff_t nc = cv_min(FNR, cout - c0);
                T *d = wp + pk * FNR;
                memcpy(d, w + k * cout + c0, (size_t)nc * sizeof(T));
                if (nc < FNR) memset(d + nc, 0, (size_t)(FNR - nc) * sizeof(T));
            }
            CV_PRAGMA(omp single)
            for (ptrdiff_t c = 0; c < npanel * FNR; ++c) bp[c] = bias && c < cout ? bias[c] : (T)0;
            /* implicit barriers above: the packed kernel is complete */
        }
        /* Units (panel group, tile, panel): an even contiguous share per thread. */
        const ptrdiff_t U = ntiles * npanel;
        const ptrdiff_t u0 = U * tid / team, u1 = U * (tid + 1) / team;
        /* the first unit's (group, tile, panel) and pixel; then walked without divisions */
        ptrdiff_t grp = u0 / (ntiles * gsize), gs = cv_min(gsize, npanel - grp * gsize);
        ptrdiff_t tile = (u0 - grp * ntiles * gsize) / gs;
        ptrdiff_t pi = u0 - grp * ntiles * gsize - tile * gs;
        ptrdiff_t n = tile * FMR / P, oh = (tile * FMR - n * P) / g->ow;
        ptrdiff_t ow = tile * FMR - n * P - oh * g->ow, nseg = 0, L = 0;
        int fresh = 1;
        for (ptrdiff_t u = u0; u < u1; ++u) {
            const ptrdiff_t m0 = tile * FMR, p = grp * gsize + pi;
            const int m = (int)cv_min(FMR, M - m0);
            if (fresh) nseg = F(fwd_table)(g, x, zero, n, oh, ow, m, ldb, a, boff, &L);
            F(fwd_tile)(nseg, L, a, boff, wp + p * K * FNR, ldb, bv + p * FNR,
                        y + m0 * cout + p * FNR, cout, m, (int)cv_min(FNR, cout - p * FNR), relu);
            fresh = ++pi == gs;
            if (fresh) {    /* next tile (or the next group's first tile) */
                pi = 0;
                if (++tile == ntiles) {
                    tile = 0;
                    n = oh = ow = 0;
                    gs = cv_min(gsize, npanel - ++grp * gsize);
                } else {
                    F(advance)(g, FMR, &n, &oh, &ow);
                }
            }
        }
        CV_FTZ_END
    }
}

/* ============================================================================= backward input */
/* dst[r][0:n] += sum_q a[r][q] * b[q*BNR + :] for rows with dst[r] != NULL. */
CV_INLINE void F(bwd_body)(ptrdiff_t L, const T *const *a, const T *b, T *const *dst, int n,
                           const int nv, const int mem)
{
    V acc[BMR][BNV];
    const T *p[BMR];
#pragma GCC unroll 16
    for (int r = 0; r < BMR; ++r) {
        p[r] = a[r];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[r][v] = (V){0};
    }
    for (ptrdiff_t q = 0; q < L; ++q) {
        V w[BNV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) w[v] = F(ld)(b + q * BNR + v * VL);
#pragma GCC unroll 16
        for (int r = 0; r < BMR; ++r) F(fma_row)(acc[r], w, p[r] + q, nv, mem);
    }
#pragma GCC unroll 16
    for (int r = 0; r < BMR; ++r) {
        T *d = dst[r];
        if (d == NULL) continue;
        if (n == nv * VL) {
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) F(st)(d + v * VL, F(ld)(d + v * VL) + acc[r][v]);
        } else {
            T t[BNV * VL];
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) F(st)(t + v * VL, acc[r][v]);
            for (int j = 0; j < n && j < nv * VL; ++j) d[j] += t[j];
        }
    }
}

CV_INLINE void F(bwd_tile_)(ptrdiff_t L, const T *const *a, const T *b, T *const *dst, int n,
                            const int mem)
{
    switch (cv_cdiv(n, VL)) {
#if BNV > 3
    case 3: F(bwd_body)(L, a, b, dst, n, 3, mem); break;
#endif
#if BNV > 2
    case 2: F(bwd_body)(L, a, b, dst, n, 2, mem); break;
#endif
#if BNV > 1
    case 1: F(bwd_body)(L, a, b, dst, n, 1, mem); break;
#endif
    default: F(bwd_body)(L, a, b, dst, n, BNV, mem);
    }
}

static void F(bwd_tile)(ptrdiff_t L, const T *const *a, const T *b, T *const *dst, int n)
{
    if (CV_BCAST_MEM()) F(bwd_tile_)(L, a, b, dst, n, 1);
    else F(bwd_tile_)(L, a, b, dst, n, 0);
}

typedef struct {
    ptrdiff_t ncb, bt, thread_base, per_thread, abuf, priv, aptr, dst, total;
} F(bwd_layout);

static F(bwd_layout) F(bwd_plan)(const fn_conv_geom *g, int nthreads)
{
    F(bwd_layout) l;
    l.ncb = cv_cdiv(g->cin, BNR);
    l.bt = 0;
    l.abuf = 0;
    l.priv = l.abuf + F(elems)(sizeof(T) * (size_t)(BMR * g->cout));
    l.aptr = l.priv + F(elems)(sizeof(T) * (size_t)(g->h * g->w * g->cin));
    l.dst = l.aptr + F(elems)(sizeof(T *) * BMR);
    l.per_thread = l.dst + F(elems)(sizeof(T *) * BMR);
    l.thread_base = F(elems)(sizeof(T) * (size_t)(g->kh * g->kw * l.ncb * g->cout * BNR));
    l.total = l.thread_base + (ptrdiff_t)nthreads * l.per_thread;
    return l;
}

static void F(backward_input)(const fn_conv_geom *g, const T *dy, const T *w, const T *relu_y,
                              T *dx, T *ws, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    const int nblocks = (int)cv_max(nthreads, g->nparts);
    const F(bwd_layout) l = F(bwd_plan)(g, nblocks);
    const ptrdiff_t cin = g->cin, cout = g->cout, ncb = l.ncb, ntap = g->kh * g->kw;
    const ptrdiff_t P = g->oh * g->ow, M = g->n * P, image = g->h * g->w * cin;
    const ptrdiff_t thread_base = l.thread_base;
    T *bt = ws + l.bt;
    ptrdiff_t shared_image[nblocks];   /* the image of each block's private buffer, or -1 */
    CV_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
    {
        CV_FTZ_BEGIN
        const int team = CV_TEAM_SIZE(), tid = CV_THREAD_ID();
        /* pack: bt[tap][cb][co][0:BNR] = w[tap][cb*BNR + :][co], zero-padded */
        CV_PRAGMA(omp for schedule(static))
        for (ptrdiff_t u = 0; u < ntap * ncb * cout; ++u) {
            const ptrdiff_t tc = u / cout, co = u - tc * cout, tap = tc / ncb, cb = tc - tap * ncb;
            const ptrdiff_t c0 = cb * BNR, nc = cv_min(BNR, cin - c0);
            const T *src = w + (tap * cin + c0) * cout + co;
            T *d = bt + u * BNR;
            for (ptrdiff_t j = 0; j < nc; ++j) d[j] = src[j * cout];
            for (ptrdiff_t j = nc; j < BNR; ++j) d[j] = 0;
        }
        const int nparts = g->nparts > 0 ? (int)g->nparts : team;
        /* block `part` of the dy pixels, with its own buffers; by default one per thread */
        for (int part = tid; part < nparts; part += team) {
            T *mine = ws + thread_base + (ptrdiff_t)part * l.per_thread;
            T *abuf = mine + l.abuf, *priv = mine + l.priv;
            const T **a = (const T **)(mine + l.aptr);
            T **dst = (T **)(mine + l.dst);
            const ptrdiff_t p0 = M * part / nparts, p1 = M * (part + 1) / nparts;
            const ptrdiff_t shared = p0 < p1 && p0 % P != 0 ? p0 / P : -1;
            shared_image[part] = shared;
            /* The images this thread owns (first pixel in range) and its private image are zeroed
             * just before the first tile that reaches them: still in L2 when the tiles add. */
            ptrdiff_t zeroed = p0 / P - 1;  /* images up to this one are ready */
            ptrdiff_t tn = p0 / P, toh = (p0 - tn * P) / g->ow, tow = p0 - tn * P - toh * g->ow;
            for (ptrdiff_t m0 = p0; m0 < p1; m0 += BMR) {
                const int m = (int)cv_min(BMR, p1 - m0);
                for (const ptrdiff_t last = (m0 + m - 1) / P; zeroed < last;) {
                    ++zeroed;
                    memset(zeroed == shared ? priv : dx + zeroed * image, 0,
                           (size_t)image * sizeof(T));
                }
                ptrdiff_t ih0[BMR], iw0[BMR];
                T *base[BMR];
                int inside = 1;     /* every tap of every pixel inside the input */
                ptrdiff_t n = tn, oh = toh, ow = tow;
                for (int r = 0; r < BMR; ++r) {
                    const ptrdiff_t pm = m0 + (r < m ? r : m - 1);
                    ih0[r] = oh * g->sh - g->pt;
                    iw0[r] = ow * g->sw - g->pl;
                    base[r] = n == shared ? priv : dx + n * image;
                    inside &= ih0[r] >= 0 && ih0[r] + g->kh <= g->h && iw0[r] >= 0 &&
                              iw0[r] + g->kw <= g->w;
                    if (r + 1 < m && ++ow == g->ow) {
                        ow = 0;
                        if (++oh == g->oh) { oh = 0; ++n; }
                    }
                    if (relu_y) {
                        const T *src = dy + pm * cout, *yr = relu_y + pm * cout;
                        T *d = abuf + r * cout;
                        for (ptrdiff_t c = 0; c < cout; ++c) d[c] = yr[c] > (T)0 ? src[c] : (T)0;
                        a[r] = d;
                    } else {
                        a[r] = dy + pm * cout;
                    }
                }
                F(advance)(g, BMR, &tn, &toh, &tow);
                if (inside)     /* the window corners, offset per tap below */
                    for (int r = 0; r < BMR; ++r)
                        base[r] = r < m ? base[r] + (ih0[r] * g->w + iw0[r]) * cin : NULL;
                for (ptrdiff_t i = 0; i < g->kh; ++i)
                    for (ptrdiff_t j = 0; j < g->kw; ++j) {
                        int any = 0;
                        if (inside) {
                            const ptrdiff_t off = (i * g->w + j) * cin;
                            for (int r = 0; r < BMR; ++r) dst[r] = base[r] ? base[r] + off : NULL;
                            any = 1;
                        } else {
                            for (int r = 0; r < BMR; ++r) {
                                const ptrdiff_t ih = ih0[r] + i, iw = iw0[r] + j;
                                const int ok = r < m && ih >= 0 && ih < g->h && iw >= 0 &&
                                               iw < g->w;
                                dst[r] = ok ? base[r] + (ih * g->w + iw) * cin : NULL;
                                any |= ok;
                            }
                        }
                        if (!any) continue;
                        const T *bp = bt + (i * g->kw + j) * ncb * cout * BNR;
                        for (ptrdiff_t cb = 0; cb < ncb; ++cb) {
                            F(bwd_tile)(cout, a, bp + cb * cout * BNR, dst,
                                        (int)cv_min(BNR, cin - cb * BNR));
                            if (cb + 1 < ncb)
                                for (int r = 0; r < BMR; ++r)
                                    if (dst[r]) dst[r] += BNR;
                        }
                    }
            }
        }
        CV_PRAGMA(omp barrier)
        /* private images into dx, in block order (an image may have several) */
        CV_PRAGMA(omp for schedule(static))
        for (ptrdiff_t e = 0; e < image; ++e)
            for (int t = 1; t < nparts; ++t) {
                const ptrdiff_t n = shared_image[t];
                if (n >= 0)
                    dx[n * image + e] += ws[thread_base + (ptrdiff_t)t * l.per_thread + l.priv + e];
            }
        CV_FTZ_END
    }
}

/* ============================================================================ backward weight */
/* c[r][0:n] (+)= sum_q ap[q][off + r] * b[q*NRW + :], rows r < m (ap rows past m clamped). */
CV_INLINE void F(wgrad_body)(ptrdiff_t nq, const T *const *ap, ptrdiff_t off, const T *b, T *c,
                             ptrdiff_t ldc, int m, int n, int beta, const int full, const int nv,
                             const int mem)
{
    V acc[WMR][WNV];
#pragma GCC unroll 16
    for (int r = 0; r < WMR; ++r) {
        if (beta && r < m)   /* the partial sums are read back at the end: fetch them now */
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) __builtin_prefetch(c + r * ldc + v * VL, 1);
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) acc[r][v] = (V){0};
    }
    for (ptrdiff_t q = 0; q < nq; ++q) {
        const T *pa = ap[q] + off, *pb = b + q * NRW;
        V w[WNV];
#pragma GCC unroll 4
        for (int v = 0; v < nv; ++v) w[v] = F(ld)(pb + v * VL);
#pragma GCC unroll 16
        for (int r = 0; r < WMR; ++r)
            F(fma_row)(acc[r], w, pa + (full ? r : (r < m ? r : m - 1)), nv, mem);
    }
#pragma GCC unroll 16
    for (int r = 0; r < WMR; ++r) {
        if (r >= m) break;
        T *cr = c + r * ldc;
        if (n == nv * VL) {
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v)
                F(st)(cr + v * VL, beta ? F(ld)(cr + v * VL) + acc[r][v] : acc[r][v]);
        } else {
            T t[WNV * VL];
#pragma GCC unroll 4
            for (int v = 0; v < nv; ++v) F(st)(t + v * VL, acc[r][v]);
            for (int j = 0; j < n && j < nv * VL; ++j) cr[j] = beta ? cr[j] + t[j] : t[j];
        }
    }
}

CV_INLINE void F(wgrad_tile_)(ptrdiff_t nq, const T *const *ap, ptrdiff_t off, const T *b, T *c,
                              ptrdiff_t ldc, int m, int n, int beta, const int mem)
{
    if (m == WMR) {
        switch (cv_cdiv(n, VL)) {
#if WNV > 3
        case 3: F(wgrad_body)(nq, ap, off, b, c, ldc, m, n, beta, 1, 3, mem); break;
#endif
#if WNV > 2
        case 2: F(wgrad_body)(nq, ap, off, b, c, ldc, m, n, beta, 1, 2, mem); break;
#endif
#if WNV > 1
        case 1: F(wgrad_body)(nq, ap, off, b, c, ldc, m, n, beta, 1, 1, mem); break;
#endif
        default: F(wgrad_body)(nq, ap, off, b, c, ldc, m, n, beta, 1, WNV, mem);
        }
    } else {
        F(wgrad_body)(nq, ap, off, b, c, ldc, m, n, beta, 0, WNV, mem);
    }
}

static void F(wgrad_tile)(ptrdiff_t nq, const T *const *ap, ptrdiff_t off, const T *b, T *c,
                          ptrdiff_t ldc, int m, int n, int beta)
{
    if (CV_BCAST_MEM()) F(wgrad_tile_)(nq, ap, off, b, c, ldc, m, n, beta, 1);
    else F(wgrad_tile_)(nq, ap, off, b, c, ldc, m, n, beta, 0);
}

/* A chunk is a run of whole output rows holding about CV_WGRAD_CHUNK_BYTES of one column block
 * of dy (at least one row): that block and the chunk's input rows stay in L1/L2 for all tiles. */
#ifndef CV_WGRAD_CHUNK_BYTES
#define CV_WGRAD_CHUNK_BYTES (24 * 1024)
#endif

typedef struct {
    ptrdiff_t K, cp, wp, rows, pch, xlen, parts, bparts, thread_base, per_thread, cbuf, xbuf,
        aptr, total;
} F(wgrad_layout);

static F(wgrad_layout) F(wgrad_plan)(const fn_conv_geom *g, int nthreads)
{
    F(wgrad_layout) l;
    l.K = g->kh * g->kw * g->cin;
    l.cp = cv_cdiv(g->cout, NRW) * NRW;
    l.wp = (g->ow - 1) * g->sw + g->kw;     /* columns of a padded input row */
    l.rows = cv_max(1, (ptrdiff_t)(CV_WGRAD_CHUNK_BYTES / (sizeof(T) * NRW)) / g->ow);
    l.pch = l.rows * g->ow;
    /* padded input rows of a chunk: at most (rows - 1) * sh + kh per image it meets */
    l.xlen = (l.rows * cv_max(g->sh, g->kh) + g->kh) * l.wp * g->cin;
    const ptrdiff_t others = nthreads > 1 ? nthreads - 1 : 0;
    l.parts = 0;
    l.bparts = l.parts + others * F(elems)(sizeof(T) * (size_t)(l.K * g->cout));
    l.thread_base = l.bparts + others * F(elems)(sizeof(T) * (size_t)g->cout);
    l.cbuf = 0;
    l.xbuf = l.cbuf + F(elems)(sizeof(T) * (size_t)(l.pch * l.cp));
    l.aptr = l.xbuf + F(elems)(sizeof(T) * (size_t)l.xlen);
    l.per_thread = l.aptr + F(elems)(sizeof(T *) * (size_t)l.pch);
    l.total = l.thread_base + (ptrdiff_t)nthreads * l.per_thread;
    return l;
}

static void F(backward_weight)(const fn_conv_geom *g, const T *x, const T *dy, const T *relu_y,
                               T *dw, T *db, T *ws, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    const F(wgrad_layout) l = F(wgrad_plan)(g, (int)cv_max(nthreads, g->nparts));
    const ptrdiff_t K = l.K, cin = g->cin, cout = g->cout, cp = l.cp, pch = l.pch, wp = l.wp;
    const ptrdiff_t R = g->n * g->oh;   /* output rows */
    const ptrdiff_t part_stride = F(elems)(sizeof(T) * (size_t)(K * cout));
    const ptrdiff_t bpart_stride = F(elems)(sizeof(T) * (size_t)cout);
    CV_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
    {
        CV_FTZ_BEGIN
        const int team = CV_TEAM_SIZE(), tid = CV_THREAD_ID();
        const int nparts = g->nparts > 0 ? (int)g->nparts : team;
        T *mine = ws + l.thread_base + (ptrdiff_t)tid * l.per_thread;
        T *cbuf = mine + l.cbuf, *xbuf = mine + l.xbuf;
        const T **ap = (const T **)(mine + l.aptr);
        /* block `part` of the output rows; by default one per thread (part = tid) */
        for (int part = tid; part < nparts; part += team) {
            T *acc = part == 0 ? dw : ws + l.parts + (ptrdiff_t)(part - 1) * part_stride;
            T *bsum = db == NULL ? NULL
                      : part == 0 ? db : ws + l.bparts + (part - 1) * bpart_stride;
            const ptrdiff_t r0 = R * part / nparts, r1 = R * (part + 1) / nparts;
            if (bsum) memset(bsum, 0, (size_t)cout * sizeof(T));
            if (r0 >= r1) memset(acc, 0, (size_t)(K * cout) * sizeof(T));
            int beta = 0;
            for (ptrdiff_t ra = r0; ra < r1; ra += l.rows) {
                const ptrdiff_t rb = cv_min(ra + l.rows, r1), np = (rb - ra) * g->ow;
                /* cbuf[cb][q][0:NRW] = dy[pixel q][cb*NRW + :], masked, zero-padded columns */
                for (ptrdiff_t q = 0; q < np; ++q) {
                    const T *src = dy + (ra * g->ow + q) * cout;
                    const T *yr = relu_y ? relu_y + (ra * g->ow + q) * cout : NULL;
                    for (ptrdiff_t cb0 = 0; cb0 < cp; cb0 += NRW) {
                        T *d = cbuf + cb0 * pch + q * NRW;
                        const ptrdiff_t nc = cv_max(0, cv_min(NRW, cout - cb0));
                        if (yr)
                            for (ptrdiff_t c = 0; c < nc; ++c)
                                d[c] = yr[cb0 + c] > (T)0 ? src[cb0 + c] : (T)0;
                        else    /* a loop, not memcpy: a call per 128 bytes costs more */
                            for (ptrdiff_t c = 0; c < nc; ++c) d[c] = src[cb0 + c];
                        for (ptrdiff_t c = nc; c < NRW; ++c) d[c] = 0;
                        if (bsum)
                            for (ptrdiff_t c = 0; c < nc; ++c) bsum[cb0 + c] += d[c];
                    }
                }
                /* the chunk's input rows, zero-padded to wp columns, one block per image it meets;
                 * ap[q] = pixel q's window (tap (0, 0), channel 0) in that copy */
                T *xb = xbuf;
                for (ptrdiff_t r = ra; r < rb;) {
                    const ptrdiff_t n = r / g->oh, oh0 = r - n * g->oh;
                    const ptrdiff_t oh1 = cv_min(g->oh, oh0 + (rb - r));   /* rows of this image */
                    const ptrdiff_t ih0 = oh0 * g->sh - g->pt;
                    const ptrdiff_t nrows = (oh1 - oh0 - 1) * g->sh + g->kh;
                    for (ptrdiff_t v = 0; v < nrows; ++v) {
                        const ptrdiff_t ih = ih0 + v;
                        T *d = xb + v * wp * cin;
                        if (ih < 0 || ih >= g->h) {
                            memset(d, 0, (size_t)(wp * cin) * sizeof(T));
                            continue;
                        }
                        const ptrdiff_t lo = cv_min(wp, cv_max(0, g->pl));       /* pad left */
                        const ptrdiff_t hi = cv_max(lo, cv_min(wp, g->w + g->pl)); /* real cols */
                        if (lo) memset(d, 0, (size_t)(lo * cin) * sizeof(T));
                        memcpy(d + lo * cin, x + ((n * g->h + ih) * g->w + lo - g->pl) * cin,
                               (size_t)((hi - lo) * cin) * sizeof(T));
                        if (hi < wp)
                            memset(d + hi * cin, 0, (size_t)((wp - hi) * cin) * sizeof(T));
                    }
                    for (ptrdiff_t oh = oh0; oh < oh1; ++oh) {
                        const T *row = xb + (oh - oh0) * g->sh * wp * cin;
                        const ptrdiff_t q0 = (r + oh - oh0 - ra) * g->ow;
                        for (ptrdiff_t ow = 0; ow < g->ow; ++ow)
                            ap[q0 + ow] = row + ow * g->sw * cin;
                    }
                    xb += nrows * wp * cin;
                    r += oh1 - oh0;
                }
                for (ptrdiff_t co0 = 0; co0 < cout; co0 += NRW) {
                    const int nn = (int)cv_min(NRW, cout - co0);
                    const T *b = cbuf + co0 * pch;
                    for (ptrdiff_t i = 0; i < g->kh; ++i)
                        for (ptrdiff_t j = 0; j < g->kw; ++j) {
                            T *c = acc + (i * g->kw + j) * cin * cout + co0;
                            const ptrdiff_t tap = (i * wp + j) * cin;
                            for (ptrdiff_t c0 = 0; c0 < cin; c0 += WMR)
                                F(wgrad_tile)(np, ap, tap + c0, b, c + c0 * cout, cout,
                                              (int)cv_min(WMR, cin - c0), nn, beta);
                        }
                }
                beta = 1;
            }
        }
        CV_PRAGMA(omp barrier)
        if (nparts > 1) {
            /* partial sums in block order, rows shared out */
            CV_PRAGMA(omp for schedule(static))
            for (ptrdiff_t k = 0; k < K; ++k)
                for (int t = 1; t < nparts; ++t) {
                    const T *src = ws + l.parts + (ptrdiff_t)(t - 1) * part_stride + k * cout;
                    T *d = dw + k * cout;
                    for (ptrdiff_t c = 0; c < cout; ++c) d[c] += src[c];
                }
            CV_PRAGMA(omp single)
            if (db)
                for (int t = 1; t < nparts; ++t) {
                    const T *src = ws + l.bparts + (ptrdiff_t)(t - 1) * bpart_stride;
                    for (ptrdiff_t c = 0; c < cout; ++c) db[c] += src[c];
                }
        }
        CV_FTZ_END
    }
}

#include "conv/direct_impl.h"

static ptrdiff_t F(workspace)(int op, const fn_conv_geom *g, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    switch (op) {
    case FN_CONV_FORWARD: return F(fwd_plan)(g, nthreads).total;
    case FN_CONV_BACKWARD_INPUT: return F(bwd_plan)(g, (int)cv_max(nthreads, g->nparts)).total;
    case FN_CONV_BACKWARD_WEIGHT:
        return F(wgrad_plan)(g, (int)cv_max(nthreads, g->nparts)).total;
    case FN_CONV_DIRECT_FORWARD:
        return F(elems)(sizeof(T) * (size_t)((g->kh * g->kw * g->cin + 1) * F(direct_cp)(g)));
    default: return F(direct_wplan)(g, (int)cv_max(nthreads, g->nparts)).total;
    }
}

#undef F
#undef V
#undef VI
#undef VL
#undef FNR
#undef BNR
#undef NRW
#undef CV_CAT3_
#undef CV_CAT3
#undef CV_CAT_
#undef CV_CAT
