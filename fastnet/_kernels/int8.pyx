# cython: language_level=3
"""int8 inference kernels: uint8 x int8 GEMM with int32 accumulation and a requantizing
epilogue (C in ``csrc/int8``, one path per ISA chosen at run time), the uint8 convolution built
on it, uint8 pooling, and float32 <-> uint8 (de)quantization.

Design
------
The C GEMM (``fn_q8_gemm``) computes a block of rows on the calling thread; this module splits
the rows of C into blocks, a multiple of the path's row tile, and runs them with ``prange``
(static schedule: each block's result depends on nothing but its rows, and integer sums are
exact, so any thread count gives the same bits).  Each thread owns a scratch buffer, allocated
inside the parallel region and freed there: the path's workspace and, for a convolution, the
im2col panel of its current block.

Convolution: implicit GEMM over NHWC uint8, M = N·OH·OW rows, K = kh·kw·cin, B the packed
weights.  A thread builds the im2col rows of one block at a time (each window row is a
contiguous run of kw·cin bytes of the input, so it is one memcpy unless it crosses the padding)
and multiplies them at once, while they are still in its L2.  Padded positions hold the input's
zero point (they stand for a real 0).  Rows are padded to a multiple of 4 bytes (any value: they
meet the packed weights' zero padding).  A 1x1, stride-1, unpadded convolution is a GEMM on the
input itself.

Pooling and (de)quantization are byte/float loops over the contiguous channel axis that gcc
vectorizes.  Everything here trusts its arguments: ``fastnet.ops.int8`` validated them.
"""
cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.stdint cimport int8_t, int32_t, uint8_t
from libc.stdlib cimport free, malloc

cnp.import_array()

cdef extern from "int8/fastnet_int8.h" nogil:
    enum:
        FN_Q8_OUT_S32
        FN_Q8_OUT_F32
        FN_Q8_OUT_U8
        FN_Q8_MAX_K
    ctypedef struct fn_q8_epi:
        int out
        const int32_t *corr
        const float *mult
        const float *add
        float lo
        float hi
    size_t fn_q8_packed_size(Py_ssize_t k, Py_ssize_t n)
    void fn_q8_pack_b(Py_ssize_t k, Py_ssize_t n, const int8_t *b, Py_ssize_t ldb, int8_t *dst)
    size_t fn_q8_workspace(Py_ssize_t k)
    void fn_q8_gemm(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const uint8_t *a, Py_ssize_t lda,
                    const int8_t *bpack, const fn_q8_epi *epi, void *c, Py_ssize_t ldc, void *ws)
    int fn_q8_mr()
    const char *fn_q8_isa()
    int fn_q8_set_isa(const char *name)
    const char *fn_q8_available_isas()

cdef extern from *:
    r"""
    #include <stddef.h>
    #include <stdint.h>
    #include <stdlib.h>
    /* 64-byte aligned scratch (SIMD loads of the widened A strip). */
    static void *fn_q8_alloc(size_t bytes)
    {
        void *p = NULL;
        return posix_memalign(&p, 64, bytes ? bytes : 64) == 0 ? p : NULL;
    }
    /* One output row of uint8 pooling: ow pixels of ch channels from the rows input rows that
     * start at src (row stride w * ch), windows of pw columns at stride sw, left padding pl,
     * clipped to the input.  acc NULL: max; else the rounded mean, acc holding ch sums. */
    static void fn_q8_pool_row(uint8_t *restrict dst, const uint8_t *restrict src,
                               ptrdiff_t rows, ptrdiff_t w, ptrdiff_t ow, ptrdiff_t ch,
                               ptrdiff_t pw, ptrdiff_t sw, ptrdiff_t pl, uint32_t *restrict acc)
    {
        const ptrdiff_t rs = w * ch;
        for (ptrdiff_t ox = 0; ox < ow; ++ox, dst += ch) {
            const ptrdiff_t ix0 = ox * sw - pl;
            const ptrdiff_t jlo = ix0 < 0 ? -ix0 : 0, jhi = w - ix0 < pw ? w - ix0 : pw;
            const ptrdiff_t cols = jhi - jlo;
            const uint8_t *s0 = src + (ix0 + jlo) * ch;
            if (acc == NULL && rows == 2 && cols == 2) {   /* the common 2x2 window: one pass */
                const uint8_t *restrict a = s0, *restrict b = s0 + ch;
                const uint8_t *restrict c2 = s0 + rs, *restrict d = s0 + rs + ch;
                for (ptrdiff_t c = 0; c < ch; ++c) {
                    const uint8_t m1 = a[c] > b[c] ? a[c] : b[c], m2 = c2[c] > d[c] ? c2[c] : d[c];
                    dst[c] = m1 > m2 ? m1 : m2;
                }
            } else if (acc == NULL) {
                memcpy(dst, s0, (size_t)ch);
                for (ptrdiff_t i = 0; i < rows; ++i)
                    for (ptrdiff_t j = (i == 0); j < cols; ++j) {
                        const uint8_t *restrict s = s0 + i * rs + j * ch;
                        for (ptrdiff_t c = 0; c < ch; ++c) dst[c] = dst[c] > s[c] ? dst[c] : s[c];
                    }
            } else {
                const uint32_t count = (uint32_t)(rows * cols);
                memset(acc, 0, (size_t)ch * sizeof *acc);
                for (ptrdiff_t i = 0; i < rows; ++i)
                    for (ptrdiff_t j = 0; j < cols; ++j) {
                        const uint8_t *restrict s = s0 + i * rs + j * ch;
                        for (ptrdiff_t c = 0; c < ch; ++c) acc[c] += s[c];
                    }
                for (ptrdiff_t c = 0; c < ch; ++c) dst[c] = (uint8_t)((acc[c] + count / 2) / count);
            }
        }
    }
    /* q = rint(min(max(x * inv + zp, 0), 255)): multiply, add, clamp in float32, then round to
     * nearest even by the 1.5 * 2^23 trick (exact for values in [0, 2^22]); vectorizes. */
    static void fn_q8_quantize(const float *restrict x, uint8_t *restrict q, ptrdiff_t n,
                               float inv, float zp)
    {
        for (ptrdiff_t i = 0; i < n; ++i) {
            float v = x[i] * inv;
            v = v + zp;
            v = v > 0.0f ? v : 0.0f;
            v = v < 255.0f ? v : 255.0f;
            q[i] = (uint8_t)(int32_t)((v + 12582912.0f) - 12582912.0f);  /* not reassociated */
        }
    }
    static void fn_q8_dequantize(const uint8_t *restrict q, float *restrict y, ptrdiff_t n,
                                 float scale, int32_t zp)
    {
        for (ptrdiff_t i = 0; i < n; ++i) y[i] = (float)((int32_t)q[i] - zp) * scale;
    }

    typedef struct {
        ptrdiff_t n, h, w, cin, oh, ow, kh, kw, sh, sw, pt, pl, k, kp;
    } fn_q8_geom;

    #define FN_Q8_SLACK 32   /* bytes past a panel that a short-run copy may overwrite */

    /* dst[0:run] = src[0:run].  Short runs (the first layer's 3 x 1 byte window rows) copy a
     * fixed 8, 16 or 32 bytes, spilling into bytes written later (the next window row or the
     * next im2col row; FN_Q8_SLACK past the panel), unless that would read past the input. */
    static inline void fn_q8_copy_run(uint8_t *dst, const uint8_t *src, ptrdiff_t run,
                                      const uint8_t *src_end)
    {
        if (run <= 8 && src + 8 <= src_end) memcpy(dst, src, 8);
        else if (run <= 16 && src + 16 <= src_end) memcpy(dst, src, 16);
        else if (run <= 32 && src + 32 <= src_end) memcpy(dst, src, 32);
        else memcpy(dst, src, (size_t)run);
    }

    /* col[r - r0, :] = the window of output row r = (b, oy, ox) in (kh, kw, cin) order, padded
     * positions = zp, for r0 <= r < r1.  Bytes k..kp-1 are left as they are: they meet the zero
     * rows of the packed weights, so their value never matters.  Runs of output pixels whose
     * windows lie inside the input take a tight loop (no clipping, short fixed-size copies). */
    static void fn_q8_im2col(const fn_q8_geom *g, const uint8_t *x, uint8_t *col, ptrdiff_t r0,
                             ptrdiff_t r1, uint8_t zp)
    {
        const ptrdiff_t run = g->kw * g->cin, ohw = g->oh * g->ow, step = g->sw * g->cin;
        const uint8_t *x_end = x + g->n * g->h * g->w * g->cin;
        ptrdiff_t b = r0 / ohw, oy = (r0 % ohw) / g->ow, ox = r0 % g->ow;
        ptrdiff_t r = r0;
        while (r < r1) {
            uint8_t *row = col + (r - r0) * g->kp;
            const ptrdiff_t iy0 = oy * g->sh - g->pt;
            /* interior pixels of this output row: ox in [ox, x_hi) */
            const ptrdiff_t x_lo = (g->pl + g->sw - 1) / g->sw;
            ptrdiff_t x_hi = g->w - g->kw + g->pl < 0 ? 0 : (g->w - g->kw + g->pl) / g->sw + 1;
            if (x_hi > g->ow) x_hi = g->ow;
            if (x_hi > ox + (r1 - r)) x_hi = ox + (r1 - r);
            if (iy0 >= 0 && iy0 + g->kh <= g->h && ox >= x_lo && ox < x_hi) {
                const uint8_t *src0 = x + ((b * g->h + iy0) * g->w + ox * g->sw - g->pl) * g->cin;
                const ptrdiff_t cnt = x_hi - ox, rstride = g->w * g->cin;
                const uint8_t *last = src0 + (cnt - 1) * step + (g->kh - 1) * rstride;
                if (run <= 8 && last + 8 <= x_end) {
                    for (ptrdiff_t t = 0; t < cnt; ++t, row += g->kp)
                        for (ptrdiff_t i = 0; i < g->kh; ++i)
                            memcpy(row + i * run, src0 + t * step + i * rstride, 8);
                } else {
                    for (ptrdiff_t t = 0; t < cnt; ++t, row += g->kp)
                        for (ptrdiff_t i = 0; i < g->kh; ++i)
                            fn_q8_copy_run(row + i * run, src0 + t * step + i * rstride, run,
                                           x_end);
                }
                r += cnt;
                ox += cnt;
            } else {
                const ptrdiff_t ix0 = ox * g->sw - g->pl;
                const ptrdiff_t jlo = ix0 < 0 ? -ix0 : 0;
                const ptrdiff_t jhi = g->w - ix0 < g->kw ? g->w - ix0 : g->kw;
                uint8_t *dst = row;
                for (ptrdiff_t i = 0; i < g->kh; ++i, dst += run) {
                    const ptrdiff_t iy = iy0 + i;
                    if (iy < 0 || iy >= g->h || jhi <= jlo) {
                        memset(dst, zp, (size_t)run);
                        continue;
                    }
                    const uint8_t *src = x + ((b * g->h + iy) * g->w + ix0) * g->cin;
                    memset(dst, zp, (size_t)(jlo * g->cin));
                    memcpy(dst + jlo * g->cin, src + jlo * g->cin, (size_t)((jhi - jlo) * g->cin));
                    memset(dst + jhi * g->cin, zp, (size_t)((g->kw - jhi) * g->cin));
                }
                ++r;
                ++ox;
            }
            if (ox == g->ow) {
                ox = 0;
                if (++oy == g->oh) { oy = 0; ++b; }
            }
        }
    }
    """
    void *fn_q8_alloc(size_t bytes) nogil
    void fn_q8_pool_row(uint8_t *dst, const uint8_t *src, Py_ssize_t rows, Py_ssize_t w,
                        Py_ssize_t ow, Py_ssize_t ch, Py_ssize_t pw, Py_ssize_t sw,
                        Py_ssize_t pl, unsigned int *acc) nogil
    void fn_q8_quantize(const float *x, uint8_t *q, Py_ssize_t n, float inv, float zp) nogil
    void fn_q8_dequantize(const uint8_t *q, float *y, Py_ssize_t n, float scale,
                          int32_t zp) nogil
    ctypedef struct fn_q8_geom:
        Py_ssize_t n, h, w, cin, oh, ow, kh, kw, sh, sw, pt, pl, k, kp
    enum:
        FN_Q8_SLACK
    void fn_q8_im2col(const fn_q8_geom *g, const uint8_t *x, uint8_t *col, Py_ssize_t r0,
                      Py_ssize_t r1, uint8_t zp) nogil

OUT_S32 = FN_Q8_OUT_S32
OUT_F32 = FN_Q8_OUT_F32
OUT_U8 = FN_Q8_OUT_U8
MAX_K = FN_Q8_MAX_K
PANEL = 32

cdef Py_ssize_t _L2_PANEL_BYTES = 96 * 1024   # im2col rows per block: about this much


# ---- paths ----------------------------------------------------------------------------------
def isa():
    """Name of the int8 GEMM path in use (avx512vnni, avx2 or generic)."""
    return fn_q8_isa().decode()


def available_isas():
    """The int8 paths this build and this CPU can run, best first."""
    return fn_q8_available_isas().decode().split(",")


def set_isa(name):
    """Switch the int8 path (for tests and benchmarks); ValueError if it cannot run here."""
    if not isinstance(name, str) or fn_q8_set_isa(name.encode()) != 0:
        raise ValueError(f"isa must be one of {available_isas()}, got {name!r}")


def row_tile():
    """Rows of one register tile of the path in use."""
    return fn_q8_mr()


# ---- weights --------------------------------------------------------------------------------
def packed_size(Py_ssize_t k, Py_ssize_t n):
    """Bytes of packed weights for a K x N matrix."""
    return fn_q8_packed_size(k, n)


def pack_b(cnp.ndarray b, cnp.ndarray dst):
    """Pack the C-contiguous int8 (K, N) matrix b into the 1-D int8 array dst."""
    cdef Py_ssize_t k = b.shape[0], n = b.shape[1]
    with nogil:
        fn_q8_pack_b(k, n, <const int8_t *>cnp.PyArray_DATA(b), n,
                     <int8_t *>cnp.PyArray_DATA(dst))


# ---- GEMM -----------------------------------------------------------------------------------
cdef inline void _epilogue(fn_q8_epi *e, int out, cnp.ndarray corr, cnp.ndarray mult,
                           cnp.ndarray add, float lo, float hi):
    e.out = out
    e.corr = <const int32_t *>cnp.PyArray_DATA(corr) if corr is not None else NULL
    e.mult = <const float *>cnp.PyArray_DATA(mult) if mult is not None else NULL
    e.add = <const float *>cnp.PyArray_DATA(add) if add is not None else NULL
    e.lo = lo
    e.hi = hi


cdef Py_ssize_t _block_rows(Py_ssize_t m, Py_ssize_t row_bytes, int nthreads) noexcept nogil:
    """Rows per parallel block: about _L2_PANEL_BYTES of A, at least 4 blocks per thread when
    there are enough rows, a multiple of the row tile.  Depends on the shape only."""
    cdef Py_ssize_t mr = fn_q8_mr()
    cdef Py_ssize_t rows = _L2_PANEL_BYTES // (row_bytes if row_bytes > 0 else 1)
    cdef Py_ssize_t share = (m + 4 * nthreads - 1) // (4 * nthreads)
    if share < rows:
        rows = share
    if rows < mr:
        rows = mr
    return (rows + mr - 1) // mr * mr


cdef int _blocked(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const uint8_t *a, Py_ssize_t lda,
                  const fn_q8_geom *g, uint8_t zp, const int8_t *bp, const fn_q8_epi *e,
                  char *cp, Py_ssize_t esize, int nthreads) noexcept nogil:
    """C (m x n, esize-byte elements) = epilogue(A B) in parallel blocks of rows.  g NULL: A is
    a (row stride lda, depth k); else A is the im2col of the input a under g (depth g.kp),
    built per block in the thread's scratch.  Returns -1 if scratch cannot be allocated."""
    cdef Py_ssize_t depth = k if g == NULL else g.kp
    cdef Py_ssize_t rows, nblocks, blk, r0, r1
    cdef size_t wsize = fn_q8_workspace(depth)
    cdef void *ws = NULL
    cdef uint8_t *panel = NULL
    cdef int failed = 0
    cdef int *pfailed = &failed  # written through a pointer: shared, not thread-private
    if m * n * depth < 65536:
        nthreads = 1
    rows = _block_rows(m, depth, nthreads)
    nblocks = (m + rows - 1) // rows
    if nblocks < nthreads:
        nthreads = <int>nblocks
    with parallel(num_threads=nthreads):
        ws = fn_q8_alloc(wsize + (0 if g == NULL else rows * g.kp + FN_Q8_SLACK))
        if ws != NULL:
            panel = <uint8_t *>ws + wsize
            for blk in prange(nblocks, schedule='static'):
                r0 = blk * rows
                r1 = r0 + rows if r0 + rows < m else m
                if g == NULL:
                    fn_q8_gemm(r1 - r0, n, k, a + r0 * lda, lda, bp, e, cp + r0 * n * esize, n,
                               ws)
                else:
                    fn_q8_im2col(g, a, panel, r0, r1, zp)
                    fn_q8_gemm(r1 - r0, n, g.kp, panel, g.kp, bp, e, cp + r0 * n * esize, n,
                               ws)
        else:
            pfailed[0] = 1
        free(ws)
    return -1 if failed else 0


def gemm(cnp.ndarray a, cnp.ndarray bpack, Py_ssize_t n, cnp.ndarray c, int out,
         cnp.ndarray corr, cnp.ndarray mult, cnp.ndarray add, float lo, float hi, int nthreads):
    """c = epilogue(a @ B): a uint8 (M, K) with unit inner stride, B packed for (K, n), c (M, n)
    C-contiguous of the output type (int32, float32 or uint8); see csrc/int8/fastnet_int8.h."""
    cdef fn_q8_epi e
    _epilogue(&e, out, corr, mult, add, lo, hi)
    cdef Py_ssize_t m = a.shape[0], k = a.shape[1], lda = a.strides[0], esize = c.itemsize
    cdef const uint8_t *ap = <const uint8_t *>cnp.PyArray_DATA(a)
    cdef const int8_t *bp = <const int8_t *>cnp.PyArray_DATA(bpack)
    cdef char *cp = <char *>cnp.PyArray_DATA(c)
    cdef int status = 0
    if m == 0 or n == 0:
        return
    with nogil:
        status = _blocked(m, n, k, ap, lda, NULL, 0, bp, &e, cp, esize, nthreads)
    if status:
        raise MemoryError("int8 gemm: cannot allocate the per-thread workspace")


cdef int _conv_pooled(const fn_q8_geom *g, const uint8_t *x, uint8_t zp, const int8_t *bp,
                      const fn_q8_epi *e, Py_ssize_t n, Py_ssize_t ph, Py_ssize_t pw,
                      uint8_t *y, int nthreads) noexcept nogil:
    """y = max_pool(conv(x)) for a uint8 epilogue and a ph x pw pool with strides ph x pw and
    no padding: each block is a run of pooling bands (ph conv rows of one image), convolved
    into the thread's tile and pooled from there, so the conv output is never written out.
    Conv rows and columns that no pooling window reads are not computed (beyond the tile's
    full rows).  Returns -1 if scratch cannot be allocated."""
    cdef Py_ssize_t qh = g.oh // ph, qw = g.ow // pw, band = ph * g.ow
    cdef Py_ssize_t per = _L2_PANEL_BYTES // (band * g.kp) if band * g.kp > 0 else 1
    cdef Py_ssize_t blk, nblocks, per_image, b, j0, j1, j, r0, r1
    cdef size_t wsize = fn_q8_workspace(g.kp)
    cdef void *ws = NULL
    cdef uint8_t *panel = NULL
    cdef uint8_t *tile = NULL
    cdef int failed = 0
    cdef int *pfailed = &failed
    if per < 1:
        per = 1
    if per > qh:
        per = qh
    per_image = (qh + per - 1) // per
    nblocks = g.n * per_image
    if g.n * qh * band * n * g.k < 65536:
        nthreads = 1
    if nblocks < nthreads:
        nthreads = <int>nblocks
    with parallel(num_threads=nthreads):
        ws = fn_q8_alloc(wsize + per * band * (g.kp + n) + FN_Q8_SLACK)
        if ws != NULL:
            tile = <uint8_t *>ws + wsize
            panel = tile + per * band * n
            for blk in prange(nblocks, schedule='static'):
                b = blk // per_image
                j0 = (blk - b * per_image) * per
                j1 = j0 + per if j0 + per < qh else qh
                r0 = (b * g.oh + j0 * ph) * g.ow
                r1 = (b * g.oh + j1 * ph) * g.ow
                fn_q8_im2col(g, x, panel, r0, r1, zp)
                fn_q8_gemm(r1 - r0, n, g.kp, panel, g.kp, bp, e, tile, n, ws)
                for j in range(j0, j1):
                    fn_q8_pool_row(y + (b * qh + j) * qw * n, tile + (j - j0) * band * n, ph,
                                   g.ow, qw, n, pw, pw, 0, NULL)
        else:
            pfailed[0] = 1
        free(ws)
    return -1 if failed else 0


def conv2d(cnp.ndarray x, tuple geometry, cnp.ndarray bpack, int zp, cnp.ndarray c, int out,
           cnp.ndarray corr, cnp.ndarray mult, cnp.ndarray add, float lo, float hi,
           int nthreads, tuple pool=None):
    """c = epilogue(conv(x, W)), (N, OH, OW, cout): x uint8 NHWC C-contiguous with zero point
    zp, W packed for (kh·kw·cin, cout); geometry (kh, kw, sh, sw, pad_top, pad_left, OH, OW).
    pool (ph, pw): c is instead the (N, OH // ph, OW // pw, cout) max pooling of the uint8
    result (strides = pool, no padding), fused (see _conv_pooled)."""
    cdef fn_q8_geom g
    cdef fn_q8_epi e
    _epilogue(&e, out, corr, mult, add, lo, hi)
    g.n, g.h, g.w, g.cin = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl, g.oh, g.ow = geometry
    g.k = g.kh * g.kw * g.cin
    g.kp = (g.k + 3) // 4 * 4
    cdef Py_ssize_t n = c.shape[3], m = g.n * g.oh * g.ow, esize = c.itemsize
    cdef Py_ssize_t ph = 0, pw = 0
    cdef const uint8_t *xp = <const uint8_t *>cnp.PyArray_DATA(x)
    cdef const int8_t *bp = <const int8_t *>cnp.PyArray_DATA(bpack)
    cdef char *cp = <char *>cnp.PyArray_DATA(c)
    cdef int status = 0
    # a 1x1, stride-1, unpadded convolution is a GEMM on the input itself
    cdef bint direct = g.kh == 1 and g.kw == 1 and g.sh == 1 and g.sw == 1 and g.pt == 0 \
        and g.pl == 0 and g.oh == g.h and g.ow == g.w
    if m == 0 or c.size == 0:
        return
    if pool is not None:
        ph, pw = pool
        with nogil:
            status = _conv_pooled(&g, xp, <uint8_t>zp, bp, &e, n, ph, pw, <uint8_t *>cp,
                                  nthreads)
    else:
        with nogil:
            status = _blocked(m, n, g.k, xp, g.cin, NULL if direct else &g, <uint8_t>zp, bp,
                              &e, cp, esize, nthreads)
    if status:
        raise MemoryError("int8 conv2d: cannot allocate the per-thread workspace")


# ---- pooling --------------------------------------------------------------------------------
def pool2d(cnp.ndarray x, cnp.ndarray y, tuple geometry, bint average, int nthreads):
    """y = max (or rounded average) pooling of the uint8 NHWC x over windows clipped to the
    input; geometry (ph, pw, sh, sw, pad_top, pad_left).  Average: (sum + count // 2) // count
    over the real elements (padding is not counted, as TensorFlow).  prange over output rows."""
    cdef Py_ssize_t nb = x.shape[0], h = x.shape[1], w = x.shape[2], ch = x.shape[3]
    cdef Py_ssize_t oh = y.shape[1], ow = y.shape[2]
    cdef Py_ssize_t ph, pw, sh, sw, pt, pl
    ph, pw, sh, sw, pt, pl = geometry
    cdef const uint8_t *xp = <const uint8_t *>cnp.PyArray_DATA(x)
    cdef uint8_t *yp = <uint8_t *>cnp.PyArray_DATA(y)
    cdef Py_ssize_t row, b, iy0, ilo, ihi
    cdef unsigned int *acc = NULL
    cdef int failed = 0
    cdef int *pfailed = &failed
    if nb * oh * ow * ch * ph * pw < 65536:
        nthreads = 1
    with nogil, parallel(num_threads=nthreads):
        acc = <unsigned int *>malloc(ch * sizeof(unsigned int)) if average else NULL
        if average and acc == NULL:
            pfailed[0] = 1
        else:
            for row in prange(nb * oh, schedule='static'):
                b = row // oh
                iy0 = (row - b * oh) * sh - pt
                ilo = -iy0 if iy0 < 0 else 0
                ihi = h - iy0 if h - iy0 < ph else ph
                fn_q8_pool_row(yp + row * ow * ch, xp + (b * h + iy0 + ilo) * w * ch, ihi - ilo,
                               w, ow, ch, pw, sw, pl, acc)
        free(acc)
    if failed:
        raise MemoryError("int8 pool2d: cannot allocate the per-thread accumulator")


# ---- (de)quantization -----------------------------------------------------------------------
cdef void _convert(bint to_uint8, const void *src, void *dst, Py_ssize_t size, float s, int zp,
                   int nthreads) noexcept nogil:
    """quantize (to_uint8, s = 1 / scale) or dequantize (s = scale) in parallel chunks."""
    cdef Py_ssize_t chunk = 16384, nchunks = (size + chunk - 1) // chunk, i, lo, cnt
    if nchunks < 2:
        nthreads = 1
    for i in prange(nchunks, num_threads=nthreads, schedule='static'):
        lo = i * chunk
        cnt = chunk if lo + chunk <= size else size - lo
        if to_uint8:
            fn_q8_quantize(<const float *>src + lo, <uint8_t *>dst + lo, cnt, s, <float>zp)
        else:
            fn_q8_dequantize(<const uint8_t *>src + lo, <float *>dst + lo, cnt, s, zp)


def quantize(cnp.ndarray x, cnp.ndarray q, float inv_scale, int zp, int nthreads):
    """q = rint(clip(x * inv_scale + zp, 0, 255)) in float32: x float32, q uint8, both
    C-contiguous of one size."""
    with nogil:
        _convert(True, cnp.PyArray_DATA(x), cnp.PyArray_DATA(q), x.size, inv_scale, zp,
                 nthreads)


def dequantize(cnp.ndarray q, cnp.ndarray y, float scale, int zp, int nthreads):
    """y = (q - zp) * scale in float32: q uint8, y float32, both C-contiguous of one size."""
    with nogil:
        _convert(False, cnp.PyArray_DATA(q), cnp.PyArray_DATA(y), q.size, scale, zp, nthreads)
