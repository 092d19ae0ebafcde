# cython: language_level=3
"""2-D convolution kernels, NHWC activations and Keras (kh, kw, Cin, Cout) kernels.

Design
------
With channels last, a convolution is an implicit GEMM: row m = (n, oh, ow) of the im2col matrix
``col`` (M x K, M = N*OH*OW, K = kh*kw*Cin) holds the input patch under output pixel m, laid out
(i, j, c) exactly like the first three axes of the kernel, so the kernel reshaped (K, Cout) is the
GEMM's B matrix as-is and ``y (M x Cout) = col @ W + bias`` (bias and ReLU in the epilogue).
A patch row i is ``kw*Cin`` contiguous input values.  Three families of kernels, picked by the
op from the shape (``fastnet.ops.conv``; each can be forced with ``_algorithm``):

``implicit`` (the default for most shapes; C in ``csrc/conv/conv_impl.h``, reached through
``gemm.pxd``, one instance per ISA following the GEMM's dispatch): no col matrix at all.  The
forward's register tiles (pixels x output channels) read each pixel's window in place through a
per-tile table of row pointers (padding: a zero row, or the segment is dropped); the kernel is
packed once per call.  The backward input is the transposed product dy @ W^T computed tile by
tile and added straight into dx at the window positions (no col2im matrix, every multiply-add
useful); the backward weight walks chunks of output rows, copies the chunk's input rows
zero-padded (no bounds checks in the loop) and its dy block (ReLU-masked) into L1-sized
buffers and accumulates patch^T dy in registers.  Both backward kernels take ``relu_y``, the
output of a fused ReLU, and mask dy on the fly.  Threads: even ranges of output pixels / rows
(forward: of (pixel tile, channel panel) units, so batch 1 fills the team too); per-thread
buffers live in one workspace the op keeps (``implicit_workspace`` elements).

``direct`` (small kw*Cin: the first layer, K = 9; C in ``csrc/conv/direct_impl.h``, per ISA
too), where the implicit GEMM's segments would be too short: forward tiles of 4 output pixels x
2 vectors of output channels accumulate bias + sum_k x * W[k] from x and a zero-padded copy of
the kernel; the backward weight tiles are 3 or 4 kernel rows x 2 vectors, patch values read from
x through per-k offsets, dy masked by ``relu_y`` a run of pixels at a time.

``gemm`` / ``shared`` / ``1x1`` / ``1x1_shared``: im2col panels + the project GEMM, kept for
the shapes the others do not cover well (K > 4096, backward with few input channels).  blocks
(``gemm``): rows [0, M) cut into ``nparts`` contiguous blocks, each walked in tiles of
``tile_rows`` (im2col into its own panel, then a 1-thread GEMM); ``shared``: chunks im2col'ed
by the whole team, then one GEMM with every thread (small M).  ``1x1``: the input viewed (M, Cin)
is col.  Backward input: ``dcol = dY @ W^T`` then col2im, a gather by input row (rows in
parallel, no races); backward weight: ``dW = col^T @ dY`` with per-block partial sums.  These
take an already masked dy (the op masks it first when ``relu_output`` is given).

Reductions over pixels (weight and bias gradients, and the implicit backward input's images
shared by two blocks' ranges) add per-block partial sums in block order.  ``nparts`` is the
number of blocks (rows of the blocks schedule, ranges of the csrc kernels), the threads taking
blocks in turn: by default (0) one per thread, so results are bitwise reproducible for a given
thread count; a fixed ``nparts`` (``fastnet.config.deterministic``) makes them independent of
it (panels and partials are then sized by nparts).  The implicit and direct forwards compute
each output element on one thread in a fixed order, the same for any thread count.

All functions trust their arguments: ``fastnet.ops.conv`` validated them.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from fastnet._kernels.gemm cimport (
    gemm, ACT_NONE, ACT_RELU, fn_conv_geom, conv_workspace, sconv_forward, dconv_forward,
    sconv_backward_input, dconv_backward_input, sconv_backward_weight, dconv_backward_weight,
    sconv_direct_forward, dconv_direct_forward, sconv_direct_weight, dconv_direct_weight)

# The helper loops of the im2col paths, in C: the build uses no -m flags (it runs on any x86-64),
# so each is compiled for AVX-512, AVX2+FMA and baseline and the loader picks one per CPU (GCC
# target_clones, an ifunc).  The convolution kernels proper are in csrc/conv (per-ISA objects).
cdef extern from *:
    r"""
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    /* FASTNET_CFLAGS=-DFN_NO_TARGET_CLONES builds the baseline code only (to test it). */
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) \
        && defined(__linux__) && !defined(FN_NO_TARGET_CLONES)
    #  define FN_CLONES \
           __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #  define FN_CLONES
    #endif

    #include "fastnet_conv.h"      /* fn_conv_geom */

    #define FN_CONV_DEFINE(T, IT, S)                                                               \
    /* dst[0:n] += src[0:n] */                                                                   \
    FN_CLONES static void fn_conv_add_##S(T *restrict dst, const T *restrict src, ptrdiff_t n)  \
    {                                                                                            \
        for (ptrdiff_t i = 0; i < n; ++i) dst[i] += src[i];                                      \
    }                                                                                            \
                                                                                                 \
    /* out[0:cols] += a[0:rows, 0:cols].sum(axis=0), rows in order */                            \
    FN_CLONES static void fn_conv_colsum_##S(const T *restrict a, ptrdiff_t rows, ptrdiff_t cols, \
                                             T *restrict out)                                    \
    {                                                                                            \
        for (ptrdiff_t i = 0; i < rows; ++i)                                                     \
            for (ptrdiff_t j = 0; j < cols; ++j) out[j] += a[i * cols + j];                      \
    }                                                                                            \
                                                                                                 \
    /* out[0:n] = dy where y > 0, else 0 (the fused ReLU's backward). */                         \
    FN_CLONES static void fn_conv_relu_mask_##S(const T *restrict dy, const T *restrict y,       \
                                                T *restrict out, ptrdiff_t n)                    \
    {                                                                                            \
        for (ptrdiff_t i = 0; i < n; ++i) out[i] = y[i] > (T)0 ? dy[i] : (T)0;                   \
    }

    FN_CONV_DEFINE(float, int32_t, s)
    FN_CONV_DEFINE(double, int64_t, d)
    """
    void fn_conv_relu_mask_s(const float *dy, const float *y, float *out, Py_ssize_t n) nogil
    void fn_conv_relu_mask_d(const double *dy, const double *y, double *out, Py_ssize_t n) nogil
    void fn_conv_add_s(float *dst, const float *src, Py_ssize_t n) nogil
    void fn_conv_add_d(double *dst, const double *src, Py_ssize_t n) nogil
    void fn_conv_colsum_s(const float *a, Py_ssize_t rows, Py_ssize_t cols, float *out) nogil
    void fn_conv_colsum_d(const double *a, Py_ssize_t rows, Py_ssize_t cols, double *out) nogil

ctypedef fn_conv_geom Geometry


cdef inline void add(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    """dst[0:n] += src[0:n]"""
    if floating is float:
        fn_conv_add_s(dst, src, n)
    else:
        fn_conv_add_d(dst, src, n)


cdef inline void column_sums(const floating *a, Py_ssize_t rows, Py_ssize_t cols,
                             floating *out) noexcept nogil:
    """out[0:cols] += a[0:rows, 0:cols].sum(axis=0), rows in order."""
    if floating is float:
        fn_conv_colsum_s(a, rows, cols, out)
    else:
        fn_conv_colsum_d(a, rows, cols, out)


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef Geometry _geometry(const Py_ssize_t *xshape, const Py_ssize_t *yshape, Py_ssize_t kh,
                        Py_ssize_t kw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    cdef Geometry g
    g.n, g.h, g.w, g.cin = xshape[0], xshape[1], xshape[2], xshape[3]
    g.oh, g.ow, g.cout = yshape[1], yshape[2], yshape[3]
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = kh, kw, sh, sw, pt, pl
    g.nparts = 0
    return g


# ---------------------------------------------------------------------------------- im2col
cdef void im2col(const floating *x, floating *col, Py_ssize_t ld, Py_ssize_t m0, Py_ssize_t m1,
                 const Geometry *g) noexcept nogil:
    """col[m - m0, :K] = patch under output pixel m, for m in [m0, m1); zeros in the padding and
    in the columns [K, ld) (row stride ld >= K)."""
    cdef Py_ssize_t K = g.kh * g.kw * g.cin, rowlen = g.kw * g.cin
    cdef Py_ssize_t m, n, r, oh, ow, ih, iw0, i, jlo, jhi
    cdef floating *d
    for m in range(m0, m1):
        n = m // (g.oh * g.ow)
        r = m - n * g.oh * g.ow
        oh = r // g.ow
        ow = r - oh * g.ow
        iw0 = ow * g.sw - g.pl
        jlo = imax(0, -iw0)
        jhi = imin(g.kw, g.w - iw0)
        for i in range(g.kh):
            d = col + (m - m0) * ld + i * rowlen
            ih = oh * g.sh - g.pt + i
            if ih < 0 or ih >= g.h or jlo >= jhi:
                memset(d, 0, rowlen * sizeof(floating))
                continue
            if jlo > 0:
                memset(d, 0, jlo * g.cin * sizeof(floating))
            memcpy(d + jlo * g.cin, x + ((n * g.h + ih) * g.w + iw0 + jlo) * g.cin,
                   (jhi - jlo) * g.cin * sizeof(floating))
            if jhi < g.kw:
                memset(d + jhi * g.cin, 0, (g.kw - jhi) * g.cin * sizeof(floating))
        if ld > K:
            memset(col + (m - m0) * ld + K, 0, (ld - K) * sizeof(floating))


cdef void im2col_parallel(const floating *x, floating *col, Py_ssize_t m0, Py_ssize_t m1,
                          const Geometry *g, int nthreads) noexcept nogil:
    cdef Py_ssize_t K = g.kh * g.kw * g.cin, m
    for m in prange(m0, m1, num_threads=nthreads, schedule='static'):
        im2col(x, col + (m - m0) * K, K, m, m + 1, g)


# ---------------------------------------------------------------------------------- col2im
cdef void col2im_row(const floating *dcol, Py_ssize_t m0, Py_ssize_t m1, floating *dx,
                     Py_ssize_t r, const Geometry *g) noexcept nogil:
    """dx row r = (n, ih) += the entries of dcol rows [m0, m1) (output pixels) that cover it."""
    cdef Py_ssize_t K = g.kh * g.kw * g.cin
    cdef Py_ssize_t n = r // g.h, ih = r - n * g.h
    cdef Py_ssize_t i, t, oh, p0, ow, owlo, owhi, iw0, jlo, jhi
    for i in range(g.kh):
        t = ih + g.pt - i
        if t < 0 or t % g.sh != 0:
            continue
        oh = t // g.sh
        if oh >= g.oh:
            continue
        p0 = (n * g.oh + oh) * g.ow
        owlo = imax(m0 - p0, 0)
        owhi = imin(m1 - p0, g.ow)
        for ow in range(owlo, owhi):
            iw0 = ow * g.sw - g.pl
            jlo = imax(0, -iw0)
            jhi = imin(g.kw, g.w - iw0)
            if jlo < jhi:
                add(dx + (r * g.w + iw0 + jlo) * g.cin,
                    dcol + (p0 + ow - m0) * K + (i * g.kw + jlo) * g.cin, (jhi - jlo) * g.cin)


cdef inline void affected_rows(Py_ssize_t m0, Py_ssize_t m1, const Geometry *g,
                               Py_ssize_t *r_lo, Py_ssize_t *r_hi) noexcept nogil:
    """The input rows (global n*H + ih) that output pixels [m0, m1) touch, as a range."""
    cdef Py_ssize_t g0 = m0 // g.ow, g1 = (m1 - 1) // g.ow
    cdef Py_ssize_t n0 = g0 // g.oh, n1 = g1 // g.oh
    cdef Py_ssize_t oh0 = g0 - n0 * g.oh, oh1 = g1 - n1 * g.oh
    r_lo[0] = n0 * g.h + imax(0, oh0 * g.sh - g.pt)
    r_hi[0] = n1 * g.h + imin(g.h, oh1 * g.sh - g.pt + g.kh)


# ----------------------------------------------------------- implicit and direct (csrc/conv)
def implicit_workspace(int op, tuple xshape, tuple yshape, Py_ssize_t kh, Py_ssize_t kw,
                       Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                       bint use_double, int nthreads, int nparts=0):
    """Elements of workspace the csrc/conv kernel ``op`` (FN_CONV_*: 0 forward, 1 backward
    input, 2 backward weight, 3 direct forward, 4 direct weight) needs for these NHWC shapes:
    x (N, H, W, Cin), y (N, OH, OW, Cout), with ``nthreads`` and ``nparts`` blocks."""
    cdef Geometry g
    g.n, g.h, g.w, g.cin = xshape
    g.oh, g.ow, g.cout = yshape[1], yshape[2], yshape[3]
    g.kh, g.kw, g.sh, g.sw, g.pt, g.pl = kh, kw, sh, sw, pt, pl
    g.nparts = nparts
    return conv_workspace(op, &g, use_double, nthreads)


def relu_mask(const floating[::1] dy, const floating[::1] y, floating[::1] out, int nthreads):
    """out = dy where y > 0, else 0: the fused ReLU's backward, for the paths that cannot apply
    it on the fly."""
    cdef Py_ssize_t n = dy.shape[0], chunk = 1 << 16, b
    cdef Py_ssize_t nb = (n + chunk - 1) // chunk
    with nogil:
        for b in prange(nb, num_threads=nthreads, schedule='static'):
            if floating is float:
                fn_conv_relu_mask_s(&dy[b * chunk], &y[b * chunk], &out[b * chunk],
                                    imin(chunk, n - b * chunk))
            else:
                fn_conv_relu_mask_d(&dy[b * chunk], &y[b * chunk], &out[b * chunk],
                                    imin(chunk, n - b * chunk))


# ---------------------------------------------------------------------------------- forward
cdef void forward_block(const floating *x, const floating *w, const floating *bias, floating *y,
                        const Geometry *g, bint lower, int act, floating *panel,
                        Py_ssize_t tile_rows, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t K = g.kh * g.kw * g.cin, m0 = lo, m1
    cdef const floating *a
    while m0 < hi:
        m1 = imin(m0 + tile_rows, hi)
        if lower:
            im2col(x, panel, K, m0, m1, g)
            a = panel
        else:
            a = x + m0 * K
        gemm(False, False, m1 - m0, g.cout, K, <floating>1, a, K, w, g.cout, <floating>0,
             y + m0 * g.cout, g.cout, bias, act, 1)
        m0 = m1


cdef void forward_gemm(const floating *x, const floating *w, const floating *bias, floating *y,
                       const Geometry *g, bint lower, bint shared, int act, floating *panel,
                       Py_ssize_t tile_rows, int nthreads, int nparts) noexcept nogil:
    cdef Py_ssize_t M = g.n * g.oh * g.ow, K = g.kh * g.kw * g.cin, b, m0, m1
    cdef const floating *a
    if not shared:
        for b in prange(nparts, num_threads=nthreads, schedule='static'):
            forward_block(x, w, bias, y, g, lower, act, panel + b * tile_rows * K, tile_rows,
                          M * b // nparts, M * (b + 1) // nparts)
        return
    m0 = 0
    while m0 < M:
        m1 = imin(m0 + tile_rows, M)
        if lower:
            im2col_parallel(x, panel, m0, m1, g, nthreads)
            a = panel
        else:
            a = x + m0 * K
        gemm(False, False, m1 - m0, g.cout, K, <floating>1, a, K, w, g.cout, <floating>0,
             y + m0 * g.cout, g.cout, bias, act, nthreads)
        m0 = m1


def conv2d_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] kernel,
                   const floating[::1] bias, floating[:, :, :, ::1] y,
                   Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl, int act,
                   str algorithm, floating[::1] panel, Py_ssize_t tile_rows, int nthreads,
                   int nparts=0):
    """y = act(conv(x, kernel) + bias).

    algorithm 'implicit' / 'direct': the kernels of csrc/conv, ``panel`` their workspace
    (``implicit_workspace``); 'gemm' / 'shared': im2col in the blocks / shared schedule,
    ``panel`` holds nparts*tile_rows*K / tile_rows*K elements (nparts <= 0: nthreads blocks);
    '1x1' / '1x1_shared': no im2col, no panel.
    """
    if nparts <= 0:
        nparts = nthreads
    cdef Geometry g = _geometry(x.shape, y.shape, kernel.shape[0], kernel.shape[1], sh, sw, pt,
                                pl)
    cdef const floating *pbias = &bias[0] if bias is not None else NULL
    cdef floating *ppanel = &panel[0] if panel is not None else NULL
    cdef bint lower = not algorithm.startswith("1x1")
    cdef bint shared = algorithm.endswith("shared")
    cdef bint direct = algorithm == "direct"
    cdef bint implicit = algorithm == "implicit"
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    with nogil:
        if implicit:
            if floating is float:
                sconv_forward(&g, px, &kernel[0, 0, 0, 0], pbias, py, act == ACT_RELU, ppanel,
                              nthreads)
            else:
                dconv_forward(&g, px, &kernel[0, 0, 0, 0], pbias, py, act == ACT_RELU, ppanel,
                              nthreads)
        elif direct:
            if floating is float:
                sconv_direct_forward(&g, px, &kernel[0, 0, 0, 0], pbias, py, act == ACT_RELU,
                                     ppanel, nthreads)
            else:
                dconv_direct_forward(&g, px, &kernel[0, 0, 0, 0], pbias, py, act == ACT_RELU,
                                     ppanel, nthreads)
        else:
            forward_gemm(px, &kernel[0, 0, 0, 0], pbias, py, &g, lower, shared, act, ppanel,
                         tile_rows, nthreads, nparts)


# ---------------------------------------------------------------------------- backward input
cdef void backward_input_images(const floating *dy, const floating *w, floating *dx,
                                const Geometry *g, bint lower, floating *panel,
                                Py_ssize_t tile_rows, Py_ssize_t n_lo,
                                Py_ssize_t n_hi) noexcept nogil:
    """Images [n_lo, n_hi) on the calling thread: dcol tiles (which may span images) by a
    1-thread GEMM, each scattered by col2im into these images only."""
    cdef Py_ssize_t K = g.kh * g.kw * g.cin, P = g.oh * g.ow, m0 = n_lo * P, m1, r, r_lo, r_hi
    if n_lo >= n_hi:
        return
    if not lower:
        gemm(False, True, (n_hi - n_lo) * P, g.cin, g.cout, <floating>1, dy + m0 * g.cout,
             g.cout, w, g.cout, <floating>0, dx + m0 * g.cin, g.cin, <const floating *>NULL,
             ACT_NONE, 1)
        return
    memset(dx + n_lo * g.h * g.w * g.cin, 0, (n_hi - n_lo) * g.h * g.w * g.cin * sizeof(floating))
    while m0 < n_hi * P:
        m1 = imin(m0 + tile_rows, n_hi * P)
        gemm(False, True, m1 - m0, K, g.cout, <floating>1, dy + m0 * g.cout, g.cout, w, g.cout,
             <floating>0, panel, K, <const floating *>NULL, ACT_NONE, 1)
        affected_rows(m0, m1, g, &r_lo, &r_hi)
        for r in range(r_lo, r_hi):
            col2im_row(panel, m0, m1, dx, r, g)
        m0 = m1


def conv2d_backward_input(const floating[:, :, :, ::1] dy, const floating[:, ::1] w,
                          floating[:, :, :, ::1] dx, Py_ssize_t kh, Py_ssize_t kw,
                          Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                          str algorithm, floating[::1] panel, Py_ssize_t tile_rows, int nthreads,
                          const floating[:, :, :, ::1] relu_y=None, int nparts=0):
    """dx = col2im(dy @ w^T), w = the kernel reshaped (K, Cout) (the GEMM's transposed B).
    algorithm: 'implicit' (csrc/conv; ``panel`` its workspace, sized for ``nparts``; ``relu_y``
    masks dy on the fly), 'gemm' (whole images per block, nparts blocks; ``panel``
    nparts*tile_rows*K), 'shared' (``panel`` tile_rows*K), '1x1' / '1x1_shared' (dy @ w^T
    straight into dx); these four take an already masked dy.  nparts <= 0: one block per
    thread."""
    cdef Geometry g = _geometry(dx.shape, dy.shape, kh, kw, sh, sw, pt, pl)
    g.nparts = nparts
    if nparts <= 0:
        nparts = nthreads
    cdef const floating *pry = &relu_y[0, 0, 0, 0] if relu_y is not None else NULL
    if algorithm == "implicit":
        with nogil:
            if floating is float:
                sconv_backward_input(&g, &dy[0, 0, 0, 0], &w[0, 0], pry, &dx[0, 0, 0, 0],
                                     &panel[0], nthreads)
            else:
                dconv_backward_input(&g, &dy[0, 0, 0, 0], &w[0, 0], pry, &dx[0, 0, 0, 0],
                                     &panel[0], nthreads)
        return
    cdef Py_ssize_t K = kh * kw * g.cin, M = g.n * g.oh * g.ow, b, n, m0, m1, r, r_lo, r_hi
    cdef floating *ppanel = &panel[0] if panel is not None else NULL
    cdef bint lower = not algorithm.startswith("1x1")
    cdef bint shared = algorithm.endswith("shared")
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef const floating *pw = &w[0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    with nogil:
        if not shared:
            for b in prange(nparts, num_threads=nthreads, schedule='static'):
                backward_input_images(pdy, pw, pdx, &g, lower,
                                      ppanel + b * tile_rows * K if lower else ppanel, tile_rows,
                                      g.n * b // nparts, g.n * (b + 1) // nparts)
        elif not lower:
            gemm(False, True, M, g.cin, g.cout, <floating>1, pdy, g.cout, pw, g.cout,
                 <floating>0, pdx, g.cin, <const floating *>NULL, ACT_NONE, nthreads)
        else:
            for n in prange(g.n, num_threads=nthreads, schedule='static'):
                memset(pdx + n * g.h * g.w * g.cin, 0, g.h * g.w * g.cin * sizeof(floating))
            m0 = 0
            while m0 < M:
                m1 = imin(m0 + tile_rows, M)
                gemm(False, True, m1 - m0, K, g.cout, <floating>1, pdy + m0 * g.cout, g.cout,
                     pw, g.cout, <floating>0, ppanel, K, <const floating *>NULL, ACT_NONE,
                     nthreads)
                affected_rows(m0, m1, &g, &r_lo, &r_hi)
                for r in prange(r_lo, r_hi, num_threads=nthreads, schedule='static'):
                    col2im_row(ppanel, m0, m1, pdx, r, &g)
                m0 = m1


# --------------------------------------------------------------------------- backward weight
cdef void backward_weight_block(const floating *x, const floating *dy, floating *acc,
                                floating *bacc, const Geometry *g, bint lower, floating *panel,
                                Py_ssize_t tile_rows, Py_ssize_t lo,
                                Py_ssize_t hi) noexcept nogil:
    """Pixels [lo, hi) on the calling thread: acc (K, Cout) = col^T @ dy, bacc = column sums
    of dy; im2col tiles + GEMM (lower) or x itself as col (1x1)."""
    cdef Py_ssize_t K = g.kh * g.kw * g.cin, m0 = lo, m1
    cdef const floating *a
    cdef floating beta = 0
    if lo >= hi:
        memset(acc, 0, K * g.cout * sizeof(floating))
    if bacc != NULL:
        memset(bacc, 0, g.cout * sizeof(floating))
    while m0 < hi:
        m1 = imin(m0 + tile_rows, hi)
        if lower:
            im2col(x, panel, K, m0, m1, g)
            a = panel
        else:
            a = x + m0 * K
        gemm(True, False, K, g.cout, m1 - m0, <floating>1, a, K, dy + m0 * g.cout, g.cout,
             beta, acc, g.cout, <const floating *>NULL, ACT_NONE, 1)
        if bacc != NULL:
            column_sums(dy + m0 * g.cout, m1 - m0, g.cout, bacc)
        beta = 1
        m0 = m1


def conv2d_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                           floating[:, ::1] dw, floating[::1] dbias, Py_ssize_t kh, Py_ssize_t kw,
                           Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl,
                           str algorithm, floating[::1] panel, Py_ssize_t tile_rows,
                           floating[::1] partials, floating[::1] bias_partials, int nthreads,
                           const floating[:, :, :, ::1] relu_y=None, int nparts=0):
    """dw (K, Cout) = col^T @ dy summed over all rows; dbias (Cout,) = dy summed (if not None).

    'implicit' / 'direct' (csrc/conv): ``panel`` their workspace, partials unused; dy masked
    with ``relu_y`` > 0 on the fly.  The other paths take an already masked dy:
    'gemm' / '1x1' (blocks schedule): ``partials`` holds (nparts-1)*K*Cout elements (block 0
    accumulates straight into dw), ``panel`` nparts*tile_rows*K.  'shared' / '1x1_shared':
    chunks with all threads in the GEMM, ``panel`` tile_rows*K.  ``bias_partials`` holds
    (nparts-1)*Cout elements.  ``nparts`` blocks of rows (<= 0: one per thread), the csrc
    kernels' workspace sized for them.
    """
    cdef Geometry g = _geometry(x.shape, dy.shape, kh, kw, sh, sw, pt, pl)
    g.nparts = nparts
    if nparts <= 0:
        nparts = nthreads
    cdef Py_ssize_t K = kh * kw * g.cin, M = g.n * g.oh * g.ow, KC = K * g.cout
    cdef Py_ssize_t b, q, m0, m1, r
    cdef floating *ppanel = &panel[0] if panel is not None else NULL
    cdef floating *ppart = &partials[0] if partials is not None else NULL
    cdef floating *pbpart = &bias_partials[0] if bias_partials is not None else NULL
    cdef floating *pdb = &dbias[0] if dbias is not None else NULL
    cdef bint lower = not algorithm.startswith("1x1")
    cdef bint shared = algorithm.endswith("shared")
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdw = &dw[0, 0]
    cdef floating beta = 0
    cdef Py_ssize_t ptile = tile_rows * K if lower else 0
    cdef const floating *pry = &relu_y[0, 0, 0, 0] if relu_y is not None else NULL
    if algorithm == "implicit" or algorithm == "direct":
        with nogil:
            if algorithm == "direct":
                if floating is float:
                    sconv_direct_weight(&g, px, pdy, pry, pdw, pdb, ppanel, nthreads)
                else:
                    dconv_direct_weight(&g, px, pdy, pry, pdw, pdb, ppanel, nthreads)
            elif floating is float:
                sconv_backward_weight(&g, px, pdy, pry, pdw, pdb, ppanel, nthreads)
            else:
                dconv_backward_weight(&g, px, pdy, pry, pdw, pdb, ppanel, nthreads)
        return
    with nogil:
        if not shared:
            for b in prange(nparts, num_threads=nthreads, schedule='static'):
                backward_weight_block(
                    px, pdy, pdw if b == 0 else ppart + (b - 1) * KC,
                    NULL if pdb == NULL else (pdb if b == 0 else pbpart + (b - 1) * g.cout),
                    &g, lower, ppanel + b * ptile, tile_rows,
                    M * b // nparts, M * (b + 1) // nparts)
            # Fixed order b = 1, 2, ... for every element, whichever thread does the row.
            if nparts > 1:
                for r in prange(K, num_threads=nthreads, schedule='static'):
                    for q in range(1, nparts):
                        add(pdw + r * g.cout, ppart + (q - 1) * KC + r * g.cout, g.cout)
        else:
            m0 = 0
            while m0 < M:
                m1 = imin(m0 + tile_rows, M)
                if lower:
                    im2col_parallel(px, ppanel, m0, m1, &g, nthreads)
                    gemm(True, False, K, g.cout, m1 - m0, <floating>1, <const floating *>ppanel,
                         K, pdy + m0 * g.cout, g.cout, beta, pdw, g.cout,
                         <const floating *>NULL, ACT_NONE, nthreads)
                else:
                    gemm(True, False, K, g.cout, m1 - m0, <floating>1, px + m0 * K, K,
                         pdy + m0 * g.cout, g.cout, beta, pdw, g.cout, <const floating *>NULL,
                         ACT_NONE, nthreads)
                beta = 1
                m0 = m1
            if pdb != NULL:
                # Same fixed partition as the blocks schedule: nparts row blocks.
                for b in prange(nparts, num_threads=nthreads, schedule='static'):
                    m0 = M * b // nparts
                    m1 = M * (b + 1) // nparts
                    memset(pdb if b == 0 else pbpart + (b - 1) * g.cout, 0,
                           g.cout * sizeof(floating))
                    column_sums(pdy + m0 * g.cout, m1 - m0, g.cout,
                                pdb if b == 0 else pbpart + (b - 1) * g.cout)
        if pdb != NULL:
            for q in range(1, nparts):
                add(pdb, pbpart + (q - 1) * g.cout, g.cout)
