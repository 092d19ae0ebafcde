# cython: language_level=3
"""The inference executor: a whole planned forward pass in one call, without the GIL.

Design
------
``fastnet.inference`` plans a model once per (thread, batch size): it folds BatchNormalization
into the preceding convolution or dense kernel, fuses bias + ReLU into their epilogues, checks
every shape, picks every kernel and thread count, and lays every intermediate array out in one
arena (buffers whose lifetimes do not overlap share memory).  The plan is a list of ``Step``
structs held by a ``Program``; ``Program.run(xs, outs)`` walks them in C: each step reads and
writes through a table of slot pointers (the first slots are the caller's inputs, an output
slot may be the caller's output array) and calls a kernel directly:

``conv`` / ``direct``  the implicit-GEMM and direct convolution kernels of csrc/conv (through
                       ``gemm.pxd``, the same code ``fastnet.ops.conv.conv2d`` runs)
``conv_pool``          a small-patch convolution (+ ReLU) and the max pooling after it in one
                       pass (the first layer of a CNN): the convolution's output is never
                       written
``gemm``               the project GEMM with its bias + ReLU epilogue (Dense)
``smallm``,            a product with few rows on the unpacked kernel (a batch-1 dense layer);
``conv_smallm``        a convolution with few output pixels as im2col + that product
``pool``               max / average pooling, NHWC, windows clipped to the input
``global``             global average / max pooling
``pad``                zero padding
``softmax``            over the last axis
``elementwise``        relu, scale, and add / subtract / multiply / maximum / minimum of two
                       arrays of one shape (the merge layers)
``affine``             y = (x - mean) * scale + shift per channel (a BatchNormalization that
                       could not be folded)
``place``              copy (rows, cols) into columns [offset, offset + cols) of a (rows, width)
                       array (concatenation along any axis: one step per input)
``copy``               memcpy
``python``             a Python callable (with the GIL) for what the kernels above do not cover

The per-step validation of the ops is not repeated: ``Program.add_step`` receives sizes the
planner derived and checked, and refuses a step whose operands do not fit their slots; ``run``
checks the caller's arrays.  The pooling, softmax and reduction loops compute each output
element exactly as ``fastnet._kernels.pool``, ``spatial`` and ``activations`` do (same order,
same clone targets), so where the plan runs the layers' kernels it reproduces the
layer-by-layer forward bit for bit; the small-M products sum in their own (fixed) order.
"""
import sys

import numpy as np

cimport numpy as cnp
from cpython.ref cimport PyObject
from cython cimport floating
from cython.parallel cimport prange
from libc.stdlib cimport calloc, free
from libc.string cimport memcpy, memset
from posix.time cimport clock_gettime, timespec, CLOCK_MONOTONIC

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound
from fastnet._kernels.gemm cimport (
    gemm, fn_conv_geom, conv_workspace, sconv_forward, dconv_forward, sconv_direct_forward,
    dconv_direct_forward, FN_CONV_FORWARD, FN_CONV_DIRECT_FORWARD)

cnp.import_array()

cdef extern from *:
    """
    #include "fastnet_conv.h"      /* fn_conv_geom */
    typedef struct {
        ptrdiff_t n, h, w, c;         /* input */
        ptrdiff_t oh, ow;             /* output */
        ptrdiff_t ph, pw, sh, sw;     /* window and strides */
        ptrdiff_t pt, pl;             /* padding before (top, left) */
    } fn_inf_pool;

    #define FN_INF_DEFINE(T, S, EXP)                                                         \\
    /* Output rows [r0, r1) (r = n * oh + i) of a max / average pooling.  As                 \\
       fastnet._kernels.pool: the window's first real element, then v > m ? v : m (or +=),   \\
       row-major; the mean multiplies by 1 / (number of real elements). */                   \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_pool_##S(const T *restrict x, T *restrict y, const fn_inf_pool *p, ptrdiff_t r0,  \\
                    ptrdiff_t r1, int average)                                               \\
    {                                                                                        \\
        const ptrdiff_t c = p->c;                                                            \\
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                \\
            const ptrdiff_t n = r / p->oh, oh = r - n * p->oh;                               \\
            const ptrdiff_t ih0 = oh * p->sh - p->pt;                                        \\
            const ptrdiff_t ilo = ih0 < 0 ? -ih0 : 0;                                        \\
            const ptrdiff_t ihi = p->ph < p->h - ih0 ? p->ph : p->h - ih0;                   \\
            const T *xn = x + (n * p->h + ih0) * p->w * c;                                   \\
            for (ptrdiff_t ow = 0; ow < p->ow; ++ow) {                                       \\
                const ptrdiff_t iw0 = ow * p->sw - p->pl;                                    \\
                const ptrdiff_t jlo = iw0 < 0 ? -iw0 : 0;                                    \\
                const ptrdiff_t jhi = p->pw < p->w - iw0 ? p->pw : p->w - iw0;               \\
                T *restrict yp = y + (r * p->ow + ow) * c;                                   \\
                const T *first = xn + (ilo * p->w + iw0 + jlo) * c;                          \\
                for (ptrdiff_t k = 0; k < c; ++k) yp[k] = first[k];                          \\
                for (ptrdiff_t i = ilo; i < ihi; ++i)                                        \\
                    for (ptrdiff_t j = jlo; j < jhi; ++j) {                                  \\
                        if (i == ilo && j == jlo) continue;                                  \\
                        const T *restrict v = xn + (i * p->w + iw0 + j) * c;                 \\
                        if (average)                                                         \\
                            for (ptrdiff_t k = 0; k < c; ++k) yp[k] += v[k];                 \\
                        else                                                                 \\
                            for (ptrdiff_t k = 0; k < c; ++k)                                \\
                                yp[k] = v[k] > yp[k] ? v[k] : yp[k];                         \\
                    }                                                                        \\
                if (average) {                                                               \\
                    const T scale = (T)1 / (T)((ihi - ilo) * (jhi - jlo));                   \\
                    for (ptrdiff_t k = 0; k < c; ++k) yp[k] *= scale;                        \\
                }                                                                            \\
            }                                                                                \\
        }                                                                                    \\
    }                                                                                        \\
    /* Images [n0, n1) of a global pooling: y[n, c] over the P pixels of x[n], as          \\
       fastnet._kernels.spatial. */                                                          \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_global_##S(const T *restrict x, T *restrict y, ptrdiff_t P, ptrdiff_t C,          \\
                      ptrdiff_t n0, ptrdiff_t n1, int average)                               \\
    {                                                                                        \\
        for (ptrdiff_t n = n0; n < n1; ++n) {                                                \\
            const T *restrict xn = x + n * P * C;                                            \\
            T *restrict yn = y + n * C;                                                      \\
            for (ptrdiff_t c = 0; c < C; c++) yn[c] = xn[c];                                 \\
            for (ptrdiff_t p = 1; p < P; p++) {                                              \\
                const T *restrict xp = xn + p * C;                                           \\
                if (average)                                                                 \\
                    for (ptrdiff_t c = 0; c < C; c++) yn[c] += xp[c];                        \\
                else                                                                         \\
                    for (ptrdiff_t c = 0; c < C; c++) yn[c] = xp[c] > yn[c] ? xp[c] : yn[c]; \\
            }                                                                                \\
            if (average) {                                                                   \\
                const T scale = (T)1 / (T)P;                                                 \\
                for (ptrdiff_t c = 0; c < C; c++) yn[c] *= scale;                            \\
            }                                                                                \\
        }                                                                                    \\
    }                                                                                        \\
    /* Softmax of rows [r0, r1) of a (rows, cols) matrix, as fastnet._kernels.activations. */ \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_softmax_##S(const T *x, T *y, ptrdiff_t cols, ptrdiff_t r0, ptrdiff_t r1)         \\
    {                                                                                        \\
        for (ptrdiff_t r = r0; r < r1; r++) {                                                \\
            const T *xr = x + r * cols;                                                      \\
            T *yr = y + r * cols;                                                            \\
            T mx = xr[0], sum = 0, inv;                                                      \\
            ptrdiff_t j;                                                                     \\
            for (j = 1; j < cols; j++) mx = xr[j] > mx ? xr[j] : mx;                         \\
            for (j = 0; j < cols; j++) { T e = EXP(xr[j] - mx); yr[j] = e; sum += e; }       \\
            inv = (T)1 / sum;                                                                \\
            for (j = 0; j < cols; j++) yr[j] *= inv;                                         \\
        }                                                                                    \\
    }                                                                                        \\
    /* Elements [lo, hi): op 0 relu (x < 0 ? 0 : x, NaN kept), 1 add, 2 subtract,           \\
       3 multiply, 4 maximum, 5 minimum (as numpy's: NaN propagates), 6 scale a * alpha. */ \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_elementwise_##S(int op, const T *a, const T *b, T *y, T alpha, ptrdiff_t lo,      \\
                           ptrdiff_t hi)                                                     \\
    {                                                                                        \\
        ptrdiff_t i;                                                                         \\
        switch (op) {                                                                        \\
        case 0: for (i = lo; i < hi; i++) y[i] = a[i] < (T)0 ? (T)0 : a[i]; break;           \\
        case 1: for (i = lo; i < hi; i++) y[i] = a[i] + b[i]; break;                         \\
        case 2: for (i = lo; i < hi; i++) y[i] = a[i] - b[i]; break;                         \\
        case 3: for (i = lo; i < hi; i++) y[i] = a[i] * b[i]; break;                         \\
        case 4: for (i = lo; i < hi; i++) y[i] = a[i] >= b[i] || a[i] != a[i] ? a[i] : b[i]; \\
                break;                                                                       \\
        case 5: for (i = lo; i < hi; i++) y[i] = a[i] <= b[i] || a[i] != a[i] ? a[i] : b[i]; \\
                break;                                                                       \\
        case 6: for (i = lo; i < hi; i++) y[i] = a[i] * alpha; break;                        \\
        }                                                                                    \\
    }                                                                                        \\
    /* Rows [r0, r1) of y = (x - m) * a + c, x (rows, C), m, a, c (C,), as the batch norm   \\
       inference of fastnet._kernels.norm; y may be x. */                                    \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_affine_##S(const T *x, const T *restrict m, const T *restrict a,                  \\
                      const T *restrict c, T *y, ptrdiff_t C, ptrdiff_t r0, ptrdiff_t r1)    \\
    {                                                                                        \\
        for (ptrdiff_t r = r0; r < r1; r++) {                                                \\
            const T *xr = x + r * C;                                                         \\
            T *yr = y + r * C;                                                               \\
            for (ptrdiff_t j = 0; j < C; j++) yr[j] = (xr[j] - m[j]) * a[j] + c[j];          \\
        }                                                                                    \\
    }

    /* Small-M matrix product on an unpacked, row-major B (the layer's kernel as stored):
       C[r, :] = act(A[r, :] @ B + bias) for rows [r0, r1).  For the few rows of a batch-1
       dense layer or a late convolution, packing B (what the blocked GEMM does per call)
       costs more than the product; here B streams from cache once per block of 4 rows, and
       the block's 4 x 4 vector accumulators stay in registers.  Each element is a sequential
       fused multiply-add chain over k, then + bias, then the ReLU. */
    #define FN_INF_SMALLM_DEFINE(T, IT, S)                                                   \\
    typedef T fn_inf_v##S __attribute__((vector_size(64)));                                  \\
    typedef IT fn_inf_i##S __attribute__((vector_size(64)));                                 \\
    __attribute__((always_inline)) static inline void                                        \\
    fn_inf_smallm_block_##S(const T *A, ptrdiff_t lda, const T *B, const T *bias, T *C,      \\
                            ptrdiff_t n, ptrdiff_t k, int relu, int rows, int vecs)          \\
    {                                                                                        \\
        typedef fn_inf_v##S V;                                                               \\
        typedef fn_inf_i##S VI;                                                              \\
        enum { VL = 64 / sizeof(T) };                                                        \\
        V acc[4][4];                                                                         \\
        for (int i = 0; i < rows; i++)                                                       \\
            for (int v = 0; v < vecs; v++) acc[i][v] = (V){0};                               \\
        for (ptrdiff_t kk = 0; kk < k; kk++) {                                               \\
            V b[4];                                                                          \\
            for (int v = 0; v < vecs; v++) memcpy(&b[v], B + kk * n + v * VL, sizeof(V));    \\
            for (int i = 0; i < rows; i++) {                                                 \\
                const V a = A[i * lda + kk] - (V){0};    /* a splat: x - 0 == x */  \\
                for (int v = 0; v < vecs; v++) acc[i][v] += a * b[v];                        \\
            }                                                                                \\
        }                                                                                    \\
        for (int i = 0; i < rows; i++)                                                       \\
            for (int v = 0; v < vecs; v++) {                                                 \\
                V c = acc[i][v];                                                             \\
                if (bias) { V bv; memcpy(&bv, bias + v * VL, sizeof(V)); c += bv; }          \\
                if (relu) c = (V)((VI)c & ~(c < (V){0}));     /* x < 0 ? 0 : x */           \\
                memcpy(C + i * n + v * VL, &c, sizeof(V));                                   \\
            }                                                                                \\
    }                                                                                        \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_smallm_##S(const T *A, ptrdiff_t lda, const T *B, const T *bias, T *C,            \\
                      ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t n, ptrdiff_t k, int relu)        \\
    {                                                                                        \\
        enum { VL = 64 / sizeof(T) };                                                        \\
        const ptrdiff_t nv = n / VL;                                                         \\
        for (ptrdiff_t r = r0; r < r1; r += 4) {                                             \\
            const int rows = r1 - r < 4 ? (int)(r1 - r) : 4;                                 \\
            const T *a = A + r * lda;                                                        \\
            T *c = C + r * n;                                                                \\
            for (ptrdiff_t v = 0; v < nv; v += 4) {                                          \\
                const int vecs = nv - v < 4 ? (int)(nv - v) : 4;                             \\
                const T *bb = bias ? bias + v * VL : NULL;                                   \\
                if (rows == 4 && vecs == 4)                                                  \\
                    fn_inf_smallm_block_##S(a, lda, B + v * VL, bb, c + v * VL, n, k, relu,  \\
                                            4, 4);                                           \\
                else                                                                         \\
                    fn_inf_smallm_block_##S(a, lda, B + v * VL, bb, c + v * VL, n, k, relu,  \\
                                            rows, vecs);                                     \\
            }                                                                                \\
            for (ptrdiff_t j = nv * VL; j < n; j++)     /* the columns past whole vectors */ \\
                for (int i = 0; i < rows; i++) {                                             \\
                    T acc = 0;                                                               \\
                    for (ptrdiff_t kk = 0; kk < k; kk++) acc += a[i * lda + kk] * B[kk * n + j]; \\
                    if (bias) acc += bias[j];                                                \\
                    c[i * n + j] = relu && acc < (T)0 ? (T)0 : acc;                          \\
                }                                                                            \\
        }                                                                                    \\
    }                                                                                        \\
    /* im2col of output pixels [m0, m1) of a convolution into col ((m1 - m0) x K), the     \\
       patch laid out (i, j, c) like the kernel; padded positions are zeros. */              \\
    static void fn_inf_im2col_##S(const T *x, T *col, const fn_conv_geom *g, ptrdiff_t m0,   \\
                                  ptrdiff_t m1)                                              \\
    {                                                                                        \\
        const ptrdiff_t K = g->kh * g->kw * g->cin, run = g->kw * g->cin, P = g->oh * g->ow;  \\
        for (ptrdiff_t m = m0; m < m1; m++) {                                                \\
            const ptrdiff_t n = m / P, p = m - n * P, oy = p / g->ow, ox = p - oy * g->ow;   \\
            T *dst = col + (m - m0) * K;                                                     \\
            for (ptrdiff_t i = 0; i < g->kh; i++, dst += run) {                              \\
                const ptrdiff_t iy = oy * g->sh - g->pt + i, ix0 = ox * g->sw - g->pl;       \\
                if (iy < 0 || iy >= g->h) { memset(dst, 0, run * sizeof(T)); continue; }    \\
                const T *src = x + ((n * g->h + iy) * g->w) * g->cin;                        \\
                if (ix0 >= 0 && ix0 + g->kw <= g->w) {                                       \\
                    memcpy(dst, src + ix0 * g->cin, run * sizeof(T));                        \\
                    continue;                                                                \\
                }                                                                            \\
                for (ptrdiff_t j = 0; j < g->kw; j++) {                                      \\
                    const ptrdiff_t ix = ix0 + j;                                            \\
                    if (ix < 0 || ix >= g->w)                                                \\
                        memset(dst + j * g->cin, 0, g->cin * sizeof(T));                     \\
                    else                                                                     \\
                        memcpy(dst + j * g->cin, src + ix * g->cin, g->cin * sizeof(T));     \\
                }                                                                            \\
            }                                                                                \\
        }                                                                                    \\
    }

    /* A convolution with a small patch (K = kh*kw*cin values, the first layer's shapes)
       followed by a max pooling with 'valid' windows, in one pass: the pooled output rows
       [r0, r1) (r = n * qh + qy) of maxpool(act(conv(x, w) + bias)), without writing the
       convolution's output.  Per pooled pixel, the patches of its window's E = ph*pw
       convolution pixels are gathered (E x K, zeros for padding), then register tiles of
       4 window pixels x 2 vectors of output channels accumulate bias + the fused
       multiply-add chain over the patch in (i, j, c) order (as the direct kernel of
       csrc/conv), take the ReLU and fold into the pooling's running maximum (first element,
       then v > m, row-major), so the result equals the two layers run apart.
       patch: E * K scratch values. */
    #define FN_INF_CONV_POOL_DEFINE(T, IT, S)                                                \\
    /* v = relu(v) and the running maximum m (m = v for the window's first element) */       \\
    __attribute__((always_inline)) static inline fn_inf_v##S                                 \\
    fn_inf_pool_step_##S(fn_inf_v##S m, fn_inf_v##S v, int relu, int first)                 \\
    {                                                                                        \\
        typedef fn_inf_v##S V;                                                               \\
        typedef fn_inf_i##S VI;                                                              \\
        if (relu) v = (V)((VI)v & ~(v < (V){0}));                                            \\
        if (first) return v;                                                                 \\
        const VI gt = v > m;                                                                 \\
        return (V)(((VI)v & gt) | ((VI)m & ~gt));                                            \\
    }                                                                                        \\
    /* 4 window pixels x 2 vectors of channels, every accumulator in a register */           \\
    __attribute__((always_inline)) static inline void                                        \\
    fn_inf_conv_pool_tile42_##S(const T *const *px, const ptrdiff_t *off, ptrdiff_t K,       \\
                                const T *w, ptrdiff_t C, const T *bias, int relu, int first, \\
                                T *out)                                                      \\
    {                                                                                        \\
        typedef fn_inf_v##S V;                                                               \\
        enum { VL = 64 / sizeof(T) };                                                        \\
        V b0 = (V){0}, b1 = (V){0}, m0, m1;                                                  \\
        if (bias) { memcpy(&b0, bias, sizeof(V)); memcpy(&b1, bias + VL, sizeof(V)); }       \\
        V a00 = b0, a01 = b1, a10 = b0, a11 = b1, a20 = b0, a21 = b1, a30 = b0, a31 = b1;    \\
        const T *p0 = px[0], *p1 = px[1], *p2 = px[2], *p3 = px[3];                          \\
        for (ptrdiff_t k = 0; k < K; k++) {                                                  \\
            V w0, w1;                                                                        \\
            memcpy(&w0, w + k * C, sizeof(V));                                               \\
            memcpy(&w1, w + k * C + VL, sizeof(V));                                          \\
            const ptrdiff_t o = off[k];                                                      \\
            const V x0 = p0[o] - (V){0}, x1 = p1[o] - (V){0};    /* splats */     \\
            const V x2 = p2[o] - (V){0}, x3 = p3[o] - (V){0};                    \\
            a00 += x0 * w0; a01 += x0 * w1; a10 += x1 * w0; a11 += x1 * w1;                 \\
            a20 += x2 * w0; a21 += x2 * w1; a30 += x3 * w0; a31 += x3 * w1;                 \\
        }                                                                                    \\
        if (!first) { memcpy(&m0, out, sizeof(V)); memcpy(&m1, out + VL, sizeof(V)); }       \\
        else { m0 = a00; m1 = a01; }                                                         \\
        m0 = fn_inf_pool_step_##S(m0, a00, relu, first);                                     \\
        m1 = fn_inf_pool_step_##S(m1, a01, relu, first);                                     \\
        m0 = fn_inf_pool_step_##S(m0, a10, relu, 0);                                         \\
        m1 = fn_inf_pool_step_##S(m1, a11, relu, 0);                                         \\
        m0 = fn_inf_pool_step_##S(m0, a20, relu, 0);                                         \\
        m1 = fn_inf_pool_step_##S(m1, a21, relu, 0);                                         \\
        m0 = fn_inf_pool_step_##S(m0, a30, relu, 0);                                         \\
        m1 = fn_inf_pool_step_##S(m1, a31, relu, 0);                                         \\
        memcpy(out, &m0, sizeof(V));                                                         \\
        memcpy(out + VL, &m1, sizeof(V));                                                    \\
    }                                                                                        \\
    /* the same for fewer pixels or one vector (edges) */                                    \\
    static void                                                                              \\
    fn_inf_conv_pool_tile_##S(const T *const *px, const ptrdiff_t *off, ptrdiff_t K,         \\
                              const T *w, ptrdiff_t C, const T *bias, int relu, int first,   \\
                              int pix, int vecs, T *out)                                     \\
    {                                                                                        \\
        typedef fn_inf_v##S V;                                                               \\
        enum { VL = 64 / sizeof(T) };                                                        \\
        for (int v = 0; v < vecs; v++) {                                                     \\
            V m = (V){0};                                                                    \\
            if (!first) memcpy(&m, out + v * VL, sizeof(V));                                 \\
            for (int e = 0; e < pix; e++) {                                                  \\
                V acc = (V){0};                                                              \\
                if (bias) memcpy(&acc, bias + v * VL, sizeof(V));                            \\
                for (ptrdiff_t k = 0; k < K; k++) {                                          \\
                    V wv;                                                                    \\
                    memcpy(&wv, w + k * C + v * VL, sizeof(V));                              \\
                    acc += (px[e][off[k]] - (V){0}) * wv;                                    \\
                }                                                                            \\
                m = fn_inf_pool_step_##S(m, acc, relu, first && e == 0);                     \\
            }                                                                                \\
            memcpy(out + v * VL, &m, sizeof(V));                                             \\
        }                                                                                    \\
    }                                                                                        \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_inf_conv_pool_##S(const T *x, const T *w, const T *bias, T *y, const fn_conv_geom *g, \\
                         const ptrdiff_t *pool, int relu, ptrdiff_t r0, ptrdiff_t r1,        \\
                         T *patch)                                                           \\
    {                                                                                        \\
        enum { VL = 64 / sizeof(T), MAXK = 256 };                                            \\
        const ptrdiff_t ph = pool[0], pw = pool[1], psh = pool[2], psw = pool[3];            \\
        const ptrdiff_t qh = pool[4], qw = pool[5], E = ph * pw;                             \\
        const ptrdiff_t K = g->kh * g->kw * g->cin, C = g->cout, nv = C / VL;                \\
        ptrdiff_t inner[MAXK], dense[MAXK];   /* patch offsets: in x, and in a gathered patch */ \\
        const T *px[64];                      /* the window's patches (E <= 64) */           \\
        for (ptrdiff_t i = 0, k = 0; i < g->kh; i++)                                         \\
            for (ptrdiff_t j = 0; j < g->kw; j++)                                            \\
                for (ptrdiff_t c = 0; c < g->cin; c++, k++) {                                \\
                    inner[k] = (i * g->w + j) * g->cin + c;                                  \\
                    dense[k] = k;                                                            \\
                }                                                                            \\
        for (ptrdiff_t r = r0; r < r1; r++) {                                                \\
            const ptrdiff_t n = r / qh, qy = r - n * qh;                                     \\
            for (ptrdiff_t qx = 0; qx < qw; qx++) {                                          \\
                T *out = y + (r * qw + qx) * C;                                              \\
                /* every patch of the window inside x: read in place; else gathered */       \\
                const ptrdiff_t top = qy * psh * g->sh - g->pt;                              \\
                const ptrdiff_t left = qx * psw * g->sw - g->pl;                             \\
                const ptrdiff_t bottom = ((qy * psh + ph - 1) * g->sh - g->pt) + g->kh;      \\
                const ptrdiff_t right = ((qx * psw + pw - 1) * g->sw - g->pl) + g->kw;      \\
                const int in_place = top >= 0 && left >= 0 && bottom <= g->h && right <= g->w; \\
                for (ptrdiff_t e = 0; e < E; e++) {                                          \\
                    const ptrdiff_t oy = qy * psh + e / pw, ox = qx * psw + e % pw;          \\
                    const ptrdiff_t iy0 = oy * g->sh - g->pt, ix0 = ox * g->sw - g->pl;      \\
                    if (in_place) {                                                          \\
                        px[e] = x + ((n * g->h + iy0) * g->w + ix0) * g->cin;                \\
                        continue;                                                            \\
                    }                                                                        \\
                    T *dst = patch + e * K;                                                  \\
                    px[e] = dst;                                                             \\
                    for (ptrdiff_t i = 0; i < g->kh; i++)                                    \\
                        for (ptrdiff_t j = 0; j < g->kw; j++, dst += g->cin) {               \\
                            const ptrdiff_t iy = iy0 + i, ix = ix0 + j;                      \\
                            const T *src = x + ((n * g->h + iy) * g->w + ix) * g->cin;       \\
                            if (iy >= 0 && iy < g->h && ix >= 0 && ix < g->w)                \\
                                memcpy(dst, src, g->cin * sizeof(T));                        \\
                            else                                                             \\
                                memset(dst, 0, g->cin * sizeof(T));                         \\
                        }                                                                    \\
                }                                                                            \\
                const ptrdiff_t *off = in_place ? inner : dense;                             \\
                for (ptrdiff_t v = 0; v < nv; v += 2) {                                      \\
                    const int vecs = nv - v < 2 ? 1 : 2;                                     \\
                    const T *bv = bias ? bias + v * VL : NULL;                               \\
                    for (ptrdiff_t e = 0; e < E; e += 4) {                                   \\
                        const int pix = E - e < 4 ? (int)(E - e) : 4;                        \\
                        if (pix == 4 && vecs == 2)                                           \\
                            fn_inf_conv_pool_tile42_##S(px + e, off, K, w + v * VL, C, bv,   \\
                                                        relu, e == 0, out + v * VL);         \\
                        else                                                                 \\
                            fn_inf_conv_pool_tile_##S(px + e, off, K, w + v * VL, C, bv,     \\
                                                      relu, e == 0, pix, vecs,               \\
                                                      out + v * VL);                         \\
                    }                                                                        \\
                }                                                                            \\
                for (ptrdiff_t c = nv * VL; c < C; c++)   /* channels past whole vectors */ \\
                    for (ptrdiff_t e = 0; e < E; e++) {                                      \\
                        T acc = bias ? bias[c] : (T)0;                                       \\
                        for (ptrdiff_t k = 0; k < K; k++)                                    \\
                            acc += px[e][off[k]] * w[k * C + c];                             \\
                        if (relu) acc = acc < (T)0 ? (T)0 : acc;                             \\
                        out[c] = e == 0 || acc > out[c] ? acc : out[c];                      \\
                    }                                                                        \\
            }                                                                                \\
        }                                                                                    \\
    }

    FN_INF_DEFINE(float, s, fn_expf)
    FN_INF_DEFINE(double, d, exp)
    #pragma GCC diagnostic ignored "-Wpsabi"
    FN_INF_SMALLM_DEFINE(float, int32_t, s)
    FN_INF_SMALLM_DEFINE(double, int64_t, d)
    FN_INF_CONV_POOL_DEFINE(float, int32_t, s)
    FN_INF_CONV_POOL_DEFINE(double, int64_t, d)
    """
    ctypedef struct fn_inf_pool:
        Py_ssize_t n, h, w, c, oh, ow, ph, pw, sh, sw, pt, pl
    void fn_inf_pool_s(const float *x, float *y, const fn_inf_pool *p, Py_ssize_t r0,
                       Py_ssize_t r1, int average) noexcept nogil
    void fn_inf_pool_d(const double *x, double *y, const fn_inf_pool *p, Py_ssize_t r0,
                       Py_ssize_t r1, int average) noexcept nogil
    void fn_inf_global_s(const float *x, float *y, Py_ssize_t P, Py_ssize_t C, Py_ssize_t n0,
                         Py_ssize_t n1, int average) noexcept nogil
    void fn_inf_global_d(const double *x, double *y, Py_ssize_t P, Py_ssize_t C, Py_ssize_t n0,
                         Py_ssize_t n1, int average) noexcept nogil
    void fn_inf_softmax_s(const float *x, float *y, Py_ssize_t cols, Py_ssize_t r0,
                          Py_ssize_t r1) noexcept nogil
    void fn_inf_softmax_d(const double *x, double *y, Py_ssize_t cols, Py_ssize_t r0,
                          Py_ssize_t r1) noexcept nogil
    void fn_inf_elementwise_s(int op, const float *a, const float *b, float *y, float alpha,
                              Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    void fn_inf_elementwise_d(int op, const double *a, const double *b, double *y, double alpha,
                              Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    void fn_inf_affine_s(const float *x, const float *m, const float *a, const float *c,
                         float *y, Py_ssize_t C, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void fn_inf_affine_d(const double *x, const double *m, const double *a, const double *c,
                         double *y, Py_ssize_t C, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void fn_inf_smallm_s(const float *A, Py_ssize_t lda, const float *B, const float *bias,
                         float *C, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, Py_ssize_t k,
                         int relu) noexcept nogil
    void fn_inf_smallm_d(const double *A, Py_ssize_t lda, const double *B, const double *bias,
                         double *C, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t n, Py_ssize_t k,
                         int relu) noexcept nogil
    void fn_inf_conv_pool_s(const float *x, const float *w, const float *bias, float *y,
                            const fn_conv_geom *g, const Py_ssize_t *pool, int relu,
                            Py_ssize_t r0, Py_ssize_t r1, float *patch) noexcept nogil
    void fn_inf_conv_pool_d(const double *x, const double *w, const double *bias, double *y,
                            const fn_conv_geom *g, const Py_ssize_t *pool, int relu,
                            Py_ssize_t r0, Py_ssize_t r1, double *patch) noexcept nogil
    void fn_inf_im2col_s(const float *x, float *col, const fn_conv_geom *g, Py_ssize_t m0,
                         Py_ssize_t m1) noexcept nogil
    void fn_inf_im2col_d(const double *x, double *col, const fn_conv_geom *g, Py_ssize_t m0,
                         Py_ssize_t m1) noexcept nogil


cdef enum StepKind:
    K_CONV = 0
    K_DIRECT = 1
    K_GEMM = 2
    K_POOL = 3
    K_GLOBAL = 4
    K_PAD = 5
    K_ELEMENTWISE = 6
    K_SOFTMAX = 7
    K_AFFINE = 8
    K_PLACE = 9
    K_COPY = 10
    K_PYTHON = 11
    K_SMALLM = 12
    K_CONV_SMALLM = 13
    K_CONV_POOL = 14

KINDS = {"conv": K_CONV, "direct": K_DIRECT, "gemm": K_GEMM, "pool": K_POOL,
         "global": K_GLOBAL, "pad": K_PAD, "elementwise": K_ELEMENTWISE, "softmax": K_SOFTMAX,
         "affine": K_AFFINE, "place": K_PLACE, "copy": K_COPY, "python": K_PYTHON,
         "smallm": K_SMALLM, "conv_smallm": K_CONV_SMALLM, "conv_pool": K_CONV_POOL}
ELEMENTWISE_OPS = {"relu": 0, "add": 1, "subtract": 2, "multiply": 3, "maximum": 4,
                   "minimum": 5, "scale": 6}
_UNARY_OPS = (0, 6)

cdef struct Step:
    int kind
    int nthreads
    int a, b, out              # slot indices (b: second input, -1 when none)
    int flag                   # conv/gemm: ReLU epilogue; pool/global: average; elementwise: op
    Py_ssize_t m, n, k         # gemm (m, n, k); global (pixels, channels, images); elementwise,
                               # copy: elements; softmax, affine: (rows, cols)
    Py_ssize_t extra[6]        # pad: (top, bottom, left, right); place: (rows, cols, width,
                               # off); conv_pool: (ph, pw, psh, psw, qh, qw)
    double alpha               # elementwise scale
    fn_conv_geom g             # conv geometry
    fn_inf_pool p              # pooling / padding geometry
    const void *w              # conv/gemm kernel; affine scale
    const void *bias           # conv/gemm bias (may be NULL); affine shift
    const void *aux            # affine mean
    PyObject *callback         # python steps (a reference held in Program._keep)


cdef void _pool_rows(const Step *s, const void *x, void *y, Py_ssize_t r0, Py_ssize_t r1,
                     bint dbl) noexcept nogil:
    if dbl:
        fn_inf_pool_d(<const double *>x, <double *>y, &s.p, r0, r1, s.flag)
    else:
        fn_inf_pool_s(<const float *>x, <float *>y, &s.p, r0, r1, s.flag)


cdef void _global_images(const Step *s, const void *x, void *y, Py_ssize_t n0, Py_ssize_t n1,
                         bint dbl) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if dbl:
        fn_inf_global_d(<const double *>x, <double *>y, s.m, s.n, n0, n1, s.flag)
    else:
        fn_inf_global_s(<const float *>x, <float *>y, s.m, s.n, n0, n1, s.flag)
    fn_ftz_end(csr)


cdef void _softmax_rows(const Step *s, const void *x, void *y, Py_ssize_t r0, Py_ssize_t r1,
                        bint dbl) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if dbl:
        fn_inf_softmax_d(<const double *>x, <double *>y, s.n, r0, r1)
    else:
        fn_inf_softmax_s(<const float *>x, <float *>y, s.n, r0, r1)
    fn_ftz_end(csr)


cdef void _elementwise(const Step *s, const void *a, const void *b, void *y, Py_ssize_t lo,
                       Py_ssize_t hi, bint dbl) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if dbl:
        fn_inf_elementwise_d(s.flag, <const double *>a, <const double *>b, <double *>y,
                             s.alpha, lo, hi)
    else:
        fn_inf_elementwise_s(s.flag, <const float *>a, <const float *>b, <float *>y,
                             <float>s.alpha, lo, hi)
    fn_ftz_end(csr)


cdef void _affine_rows(const Step *s, const void *x, void *y, Py_ssize_t r0, Py_ssize_t r1,
                       bint dbl) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if dbl:
        fn_inf_affine_d(<const double *>x, <const double *>s.aux, <const double *>s.w,
                        <const double *>s.bias, <double *>y, s.n, r0, r1)
    else:
        fn_inf_affine_s(<const float *>x, <const float *>s.aux, <const float *>s.w,
                        <const float *>s.bias, <float *>y, s.n, r0, r1)
    fn_ftz_end(csr)


cdef void _smallm_rows(const Step *s, const void *a, Py_ssize_t lda, void *y, Py_ssize_t r0,
                       Py_ssize_t r1, bint dbl) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if dbl:
        fn_inf_smallm_d(<const double *>a, lda, <const double *>s.w, <const double *>s.bias,
                        <double *>y, r0, r1, s.n, s.k, s.flag)
    else:
        fn_inf_smallm_s(<const float *>a, lda, <const float *>s.w, <const float *>s.bias,
                        <float *>y, r0, r1, s.n, s.k, s.flag)
    fn_ftz_end(csr)


cdef void _smallm(const Step *s, const void *a, void *y, bint dbl) noexcept nogil:
    """Rows split among s.nthreads threads in blocks of 4 (the kernel's row block)."""
    cdef Py_ssize_t t, nt = s.nthreads, blocks = (s.m + 3) // 4
    if nt <= 1:
        _smallm_rows(s, a, s.k, y, 0, s.m, dbl)
        return
    for t in prange(nt, num_threads=nt, schedule='static'):
        _smallm_rows(s, a, s.k, y, 4 * split_bound(blocks, t, nt, 1),
                     min(s.m, 4 * split_bound(blocks, t + 1, nt, 1)), dbl)


cdef void _conv_pool_rows(const Step *s, const void *x, void *y, void *patch, Py_ssize_t r0,
                          Py_ssize_t r1, bint dbl) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if dbl:
        fn_inf_conv_pool_d(<const double *>x, <const double *>s.w, <const double *>s.bias,
                           <double *>y, &s.g, s.extra, s.flag, r0, r1, <double *>patch)
    else:
        fn_inf_conv_pool_s(<const float *>x, <const float *>s.w, <const float *>s.bias,
                           <float *>y, &s.g, s.extra, s.flag, r0, r1, <float *>patch)
    fn_ftz_end(csr)


cdef void _pad(const Step *s, const char *x, char *y, Py_ssize_t item) noexcept nogil:
    """Zero padding of (n, h, w, c) by extra = (top, bottom, left, right)."""
    cdef Py_ssize_t n = s.p.n, h = s.p.h, w = s.p.w, c = s.p.c
    cdef Py_ssize_t top = s.extra[0], left = s.extra[2]
    cdef Py_ssize_t oh = s.p.oh, ow = s.p.ow, i, r
    cdef Py_ssize_t row = ow * c * item, inrow = w * c * item
    memset(y, 0, n * oh * row)
    for i in range(n):
        for r in range(h):
            memcpy(y + ((i * oh + top + r) * ow + left) * c * item,
                   x + (i * h + r) * inrow, inrow)


cdef void _place(const Step *s, const char *x, char *y, Py_ssize_t item) noexcept nogil:
    """x (rows, cols) into columns [off, off + cols) of y (rows, width)."""
    cdef Py_ssize_t rows = s.extra[0], cols = s.extra[1] * item, width = s.extra[2] * item
    cdef Py_ssize_t off = s.extra[3] * item, r
    for r in range(rows):
        memcpy(y + r * width + off, x + r * cols, cols)


cdef void _range(const Step *s, const void *x, const void *x2, void *y, void *scratch,
                 Py_ssize_t lo, Py_ssize_t hi, bint dbl) noexcept nogil:
    """Rows (or elements, or images) [lo, hi) of a step that splits its output evenly."""
    if s.kind == K_CONV_POOL:
        _conv_pool_rows(s, x, y, scratch, lo, hi, dbl)
    elif s.kind == K_POOL:
        _pool_rows(s, x, y, lo, hi, dbl)
    elif s.kind == K_GLOBAL:
        _global_images(s, x, y, lo, hi, dbl)
    elif s.kind == K_ELEMENTWISE:
        _elementwise(s, x, x2, y, lo, hi, dbl)
    elif s.kind == K_SOFTMAX:
        _softmax_rows(s, x, y, lo, hi, dbl)
    elif s.kind == K_AFFINE:
        _affine_rows(s, x, y, lo, hi, dbl)


cdef void _split(const Step *s, const void *x, const void *x2, void *y, void *ws,
                 Py_ssize_t total, Py_ssize_t align, bint dbl, Py_ssize_t item) noexcept nogil:
    """[0, total) on the step's threads, in contiguous ranges starting at multiples of
    ``align``; thread t gets s.k elements of scratch at ws + t * s.k (conv_pool's patches)."""
    cdef Py_ssize_t t, nt = s.nthreads
    if nt <= 1:
        _range(s, x, x2, y, ws, 0, total, dbl)
        return
    for t in prange(nt, num_threads=nt, schedule='static'):
        _range(s, x, x2, y, <char *>ws + t * s.k * item, split_bound(total, t, nt, align),
               split_bound(total, t + 1, nt, align), dbl)


cdef int _conv_geometry(fn_conv_geom *g, tuple shape, int flag) except -1:
    """Fill g from shape = (n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl) after checking
    that every window stays within the input plus at most kernel - 1 rows / columns of
    padding (what 'valid' and 'same' produce), and that flag is 0 or 1 (a fused ReLU)."""
    if len(shape) != 13:
        raise ValueError(f"conv step: shape needs 13 values, got {shape}")
    (g.n, g.h, g.w, g.cin, g.oh, g.ow, g.cout, g.kh, g.kw, g.sh, g.sw, g.pt, g.pl) = shape
    if min(shape[:11]) < 1 or not 0 <= g.pt < g.kh or not 0 <= g.pl < g.kw \
            or (g.oh - 1) * g.sh - g.pt >= g.h or (g.ow - 1) * g.sw - g.pl >= g.w \
            or flag not in (0, 1):
        raise ValueError(f"conv step: inconsistent geometry {shape} or flag {flag}")
    return 0


cdef int _run_step(const Step *s, void **ptr, void *ws, bint dbl, Py_ssize_t item,
                   PyObject *errors) noexcept nogil:
    """One step; returns -1 when a Python step raised (the exception appended to errors)."""
    cdef const void *x = ptr[s.a]
    cdef const void *x2 = ptr[s.b] if s.b >= 0 else NULL
    cdef void *y = ptr[s.out]
    cdef int nt = s.nthreads
    if s.kind == K_CONV:
        if dbl:
            dconv_forward(&s.g, <const double *>x, <const double *>s.w,
                          <const double *>s.bias, <double *>y, s.flag, <double *>ws, nt)
        else:
            sconv_forward(&s.g, <const float *>x, <const float *>s.w, <const float *>s.bias,
                          <float *>y, s.flag, <float *>ws, nt)
    elif s.kind == K_DIRECT:
        if dbl:
            dconv_direct_forward(&s.g, <const double *>x, <const double *>s.w,
                                 <const double *>s.bias, <double *>y, s.flag, <double *>ws, nt)
        else:
            sconv_direct_forward(&s.g, <const float *>x, <const float *>s.w,
                                 <const float *>s.bias, <float *>y, s.flag, <float *>ws, nt)
    elif s.kind == K_GEMM:
        if dbl:
            gemm(False, False, s.m, s.n, s.k, <double>1, <const double *>x, s.k,
                 <const double *>s.w, s.n, <double>0, <double *>y, s.n,
                 <const double *>s.bias, s.flag, nt)
        else:
            gemm(False, False, s.m, s.n, s.k, <float>1, <const float *>x, s.k,
                 <const float *>s.w, s.n, <float>0, <float *>y, s.n,
                 <const float *>s.bias, s.flag, nt)
    elif s.kind == K_SMALLM:
        _smallm(s, x, y, dbl)
    elif s.kind == K_CONV_SMALLM:      # the patches into the workspace, then the product
        if dbl:
            fn_inf_im2col_d(<const double *>x, <double *>ws, &s.g, 0, s.m)
        else:
            fn_inf_im2col_s(<const float *>x, <float *>ws, &s.g, 0, s.m)
        _smallm(s, ws, y, dbl)
    elif s.kind in (K_CONV_POOL, K_POOL, K_GLOBAL):     # by output rows / images
        _split(s, x, x2, y, ws, s.g.n * s.extra[4] if s.kind == K_CONV_POOL else
               s.p.n * s.p.oh if s.kind == K_POOL else s.k, 1, dbl, item)
    elif s.kind == K_PAD:
        _pad(s, <const char *>x, <char *>y, item)
    elif s.kind == K_ELEMENTWISE:
        _split(s, x, x2, y, ws, s.m, 16, dbl, item)
    elif s.kind == K_SOFTMAX or s.kind == K_AFFINE:   # by rows
        _split(s, x, x2, y, ws, s.m, 1, dbl, item)
    elif s.kind == K_PLACE:
        _place(s, <const char *>x, <char *>y, item)
    elif s.kind == K_COPY:
        memcpy(y, x, s.m * item)
    elif s.kind == K_PYTHON:
        with gil:
            try:
                (<object>s.callback)()
            except BaseException:
                (<list>errors).append(sys.exc_info()[1])
                return -1
    return 0


cdef class Program:
    """A planned forward pass (see the module docstring), built by ``fastnet.inference``.

    ``Program(sizes, dtype, n_inputs, outputs, external)``: ``sizes`` the byte size of every
    slot -- the first ``n_inputs`` are the caller's inputs, the next one the convolutions'
    workspace, the rest intermediate arrays; ``outputs`` the slot of each model output, and
    ``external[i]`` whether output i is written straight into the caller's array (else it is
    copied there at the end).  Then ``bind(arena, offsets)``, ``add_step(...)`` in order, and
    ``run(xs, outs)``.
    """

    cdef Step *steps
    cdef int nsteps, cap
    cdef void **ptr
    cdef Py_ssize_t *sizes
    cdef int nslots, n_in, ws_slot, n_out
    cdef int *out_slots
    cdef bint *out_ext
    cdef bint dbl
    cdef Py_ssize_t item
    cdef object dtype
    cdef list _keep
    cdef public object arena

    def __cinit__(self, sizes, dtype, int n_inputs, outputs, external):
        cdef int i
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.dtype("float32"), np.dtype("float64")):
            raise TypeError(f"dtype must be float32 or float64, got {self.dtype}")
        self.dbl = self.dtype == np.dtype("float64")
        self.item = self.dtype.itemsize
        self.nslots, self.n_in, self.n_out = len(sizes), n_inputs, len(outputs)
        self.ws_slot = n_inputs
        if n_inputs < 1 or self.nslots <= n_inputs or self.n_out < 1 \
                or len(external) != self.n_out:
            raise ValueError("a program needs inputs, the workspace slot and outputs")
        self.ptr = <void **>calloc(self.nslots, sizeof(void *))
        self.sizes = <Py_ssize_t *>calloc(self.nslots, sizeof(Py_ssize_t))
        self.out_slots = <int *>calloc(self.n_out, sizeof(int))
        self.out_ext = <bint *>calloc(self.n_out, sizeof(bint))
        self.cap = 16
        self.steps = <Step *>calloc(self.cap, sizeof(Step))
        if self.ptr == NULL or self.sizes == NULL or self.steps == NULL \
                or self.out_slots == NULL or self.out_ext == NULL:
            raise MemoryError()
        for i in range(self.nslots):
            if sizes[i] < 0:
                raise ValueError("slot sizes must be >= 0")
            self.sizes[i] = sizes[i]
        for i in range(self.n_out):
            if not self.ws_slot < outputs[i] < self.nslots:
                raise ValueError(f"output {i}: slot {outputs[i]} is not an intermediate slot")
            if external[i] and list(outputs).count(outputs[i]) > 1:
                raise ValueError(f"output {i}: an external slot must be one output's alone")
            self.out_slots[i], self.out_ext[i] = outputs[i], bool(external[i])
        self._keep = []
        self.arena = None

    def __dealloc__(self):
        free(self.steps)
        free(self.ptr)
        free(self.sizes)
        free(self.out_slots)
        free(self.out_ext)

    cdef bint _external(self, int slot):
        cdef int i
        if slot < self.n_in:
            return True
        for i in range(self.n_out):
            if self.out_slots[i] == slot and self.out_ext[i]:
                return True
        return False

    cdef void _need(self, int slot, Py_ssize_t elements, str what, bint write=False) except *:
        if not 0 <= slot < self.nslots or slot == self.ws_slot:
            raise ValueError(f"{what}: slot {slot} does not exist")
        if write and slot < self.n_in:
            raise ValueError(f"{what}: the inputs are read-only")
        if elements < 0 or elements * self.item > self.sizes[slot]:
            raise ValueError(f"{what}: needs {elements} elements, slot {slot} holds "
                             f"{self.sizes[slot] // self.item}")

    cdef const void *_array(self, object arr, Py_ssize_t elements, str what) except? NULL:
        if arr is None:
            return NULL
        if not isinstance(arr, np.ndarray) or arr.dtype != self.dtype \
                or not arr.flags.c_contiguous or arr.size != elements:
            raise ValueError(f"{what}: expected a C-contiguous {self.dtype} array of "
                             f"{elements} elements")
        self._keep.append(arr)
        return cnp.PyArray_DATA(<cnp.ndarray>arr)

    def add_step(self, str kind, int a, int out, *, int b=-1, int nthreads=1, int flag=0,
                 tuple shape=(), object w=None, object bias=None, object aux=None,
                 tuple extra=(), double alpha=0.0, object callback=None):
        """Append a step after checking that its operands fit their slots.

        conv/direct/conv_smallm: shape = (n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl),
        w the (kh, kw, cin, cout) kernel, flag 1 for a fused ReLU (conv_smallm: im2col into the
        workspace, then the small-M product).  conv_pool: the same shape and extra = (ph, pw,
        psh, psw, qh, qw), a max pooling with 'valid' windows of the convolution's output.
        gemm/smallm: shape = (m, n, k), w (k, n).
        pool: shape = (n, h, w, c, oh, ow, ph, pw, sh, sw, pt, pl), flag 1 for average.
        global: shape = (n, P, C), flag 1 for average.  pad: shape = (n, h, w, c),
        extra = (top, bottom, left, right).  elementwise: shape = (elements,), flag an op of
        ELEMENTWISE_OPS (b the second operand of binary ones, alpha the scale).  softmax:
        shape = (rows, cols).  affine: shape = (rows, C), y = (x - aux) * w + bias with three
        arrays of C.  place: shape = (rows, cols, width, offset).  copy: shape = (elements,).
        python: callback() (it reads and writes arena views, see ``view``; a and out unused).
        """
        cdef Step s
        cdef Step *grown
        cdef Py_ssize_t ws
        if kind not in KINDS:
            raise ValueError(f"unknown step kind {kind!r}")
        if nthreads < 1:
            raise ValueError("nthreads must be >= 1")
        memset(&s, 0, sizeof(Step))
        s.kind, s.a, s.b, s.out, s.nthreads, s.flag = KINDS[kind], a, b, out, nthreads, flag
        s.alpha = alpha
        if s.kind in (K_CONV, K_DIRECT):
            _conv_geometry(&s.g, shape, flag)
            self._need(a, s.g.n * s.g.h * s.g.w * s.g.cin, "conv input")
            self._need(out, s.g.n * s.g.oh * s.g.ow * s.g.cout, "conv output", True)
            s.w = self._array(w, s.g.kh * s.g.kw * s.g.cin * s.g.cout, "conv kernel")
            s.bias = self._array(bias, s.g.cout, "conv bias")
            if s.w == NULL:
                raise ValueError("conv step: a kernel is required")
            ws = conv_workspace(FN_CONV_FORWARD if s.kind == K_CONV else FN_CONV_DIRECT_FORWARD,
                                &s.g, self.dbl, nthreads)
            if ws * self.item > self.sizes[self.ws_slot]:
                raise ValueError(f"conv step: the workspace needs {ws} elements, the program "
                                 f"has {self.sizes[self.ws_slot] // self.item}")
        elif s.kind == K_CONV_SMALLM:
            _conv_geometry(&s.g, shape, flag)
            s.m, s.n, s.k = s.g.n * s.g.oh * s.g.ow, s.g.cout, s.g.kh * s.g.kw * s.g.cin
            self._need(a, s.g.n * s.g.h * s.g.w * s.g.cin, "conv input")
            self._need(out, s.m * s.n, "conv output", True)
            s.w = self._array(w, s.k * s.n, "conv kernel")
            s.bias = self._array(bias, s.n, "conv bias")
            if s.w == NULL:
                raise ValueError("conv step: a kernel is required")
            if s.m * s.k * self.item > self.sizes[self.ws_slot]:
                raise ValueError(f"conv step: the patches need {s.m * s.k} elements, the "
                                 f"workspace has {self.sizes[self.ws_slot] // self.item}")
        elif s.kind == K_CONV_POOL:
            _conv_geometry(&s.g, shape, flag)
            if len(extra) != 6 or min(extra) < 1 or \
                    (extra[4] - 1) * extra[2] + extra[0] > s.g.oh or \
                    (extra[5] - 1) * extra[3] + extra[1] > s.g.ow:
                raise ValueError(f"conv_pool step: pooling {extra} does not fit the "
                                 f"convolution's output {s.g.oh}x{s.g.ow}")
            for i in range(6):
                s.extra[i] = extra[i]
            s.k = s.g.kh * s.g.kw * s.g.cin * extra[0] * extra[1]     # patches per thread
            if s.g.kh * s.g.kw * s.g.cin > 256 or extra[0] * extra[1] > 64:
                raise ValueError("conv_pool step: at most 256 values per patch and 64 window "
                                 "elements")
            self._need(a, s.g.n * s.g.h * s.g.w * s.g.cin, "conv input")
            self._need(out, s.g.n * extra[4] * extra[5] * s.g.cout, "conv_pool output", True)
            s.w = self._array(w, s.g.kh * s.g.kw * s.g.cin * s.g.cout, "conv kernel")
            s.bias = self._array(bias, s.g.cout, "conv bias")
            if s.w == NULL:
                raise ValueError("conv_pool step: a kernel is required")
            if nthreads * s.k * self.item > self.sizes[self.ws_slot]:
                raise ValueError("conv_pool step: the workspace is smaller than the patches")
        elif s.kind == K_GEMM or s.kind == K_SMALLM:
            s.m, s.n, s.k = shape
            if s.m < 1 or s.n < 1 or s.k < 1 or flag not in (0, 1):
                raise ValueError(f"gemm step: bad shape {shape} or flag {flag}")
            self._need(a, s.m * s.k, "gemm input")
            self._need(out, s.m * s.n, "gemm output", True)
            s.w = self._array(w, s.k * s.n, "gemm kernel")
            s.bias = self._array(bias, s.n, "gemm bias")
            if s.w == NULL:
                raise ValueError("gemm step: a kernel is required")
        elif s.kind == K_POOL:
            (s.p.n, s.p.h, s.p.w, s.p.c, s.p.oh, s.p.ow, s.p.ph, s.p.pw, s.p.sh, s.p.sw, s.p.pt,
             s.p.pl) = shape
            if min(shape[:10]) < 1 or not 0 <= s.p.pt < s.p.ph or not 0 <= s.p.pl < s.p.pw \
                    or (s.p.oh - 1) * s.p.sh - s.p.pt >= s.p.h \
                    or (s.p.ow - 1) * s.p.sw - s.p.pl >= s.p.w or flag not in (0, 1):
                raise ValueError(f"pool step: inconsistent geometry {shape} or flag {flag}")
            self._need(a, s.p.n * s.p.h * s.p.w * s.p.c, "pool input")
            self._need(out, s.p.n * s.p.oh * s.p.ow * s.p.c, "pool output", True)
        elif s.kind == K_GLOBAL:
            s.k, s.m, s.n = shape          # images, pixels, channels
            if min(shape) < 1 or flag not in (0, 1):
                raise ValueError(f"global step: bad shape {shape} or flag {flag}")
            self._need(a, s.k * s.m * s.n, "global pool input")
            self._need(out, s.k * s.n, "global pool output", True)
        elif s.kind == K_PAD:
            s.p.n, s.p.h, s.p.w, s.p.c = shape
            s.extra[0], s.extra[1], s.extra[2], s.extra[3] = extra
            if min(shape) < 1 or min(extra) < 0:
                raise ValueError(f"pad step: bad shape {shape} or padding {extra}")
            s.p.oh, s.p.ow = s.p.h + extra[0] + extra[1], s.p.w + extra[2] + extra[3]
            self._need(a, s.p.n * s.p.h * s.p.w * s.p.c, "pad input")
            self._need(out, s.p.n * s.p.oh * s.p.ow * s.p.c, "pad output", True)
        elif s.kind == K_ELEMENTWISE:
            s.m = shape[0]
            if s.m < 1 or flag not in ELEMENTWISE_OPS.values() or (flag in _UNARY_OPS) != (b < 0):
                raise ValueError(f"elementwise step: bad size {shape}, op {flag} or operands")
            self._need(a, s.m, "elementwise input")
            if b >= 0:
                self._need(b, s.m, "elementwise second input")
            self._need(out, s.m, "elementwise output", True)
        elif s.kind == K_SOFTMAX:
            s.m, s.n = shape
            if s.m < 1 or s.n < 1:
                raise ValueError(f"softmax step: bad shape {shape}")
            self._need(a, s.m * s.n, "softmax input")
            self._need(out, s.m * s.n, "softmax output", True)
        elif s.kind == K_AFFINE:
            s.m, s.n = shape
            if s.m < 1 or s.n < 1:
                raise ValueError(f"affine step: bad shape {shape}")
            self._need(a, s.m * s.n, "affine input")
            self._need(out, s.m * s.n, "affine output", True)
            s.w = self._array(w, s.n, "affine scale")
            s.bias = self._array(bias, s.n, "affine shift")
            s.aux = self._array(aux, s.n, "affine mean")
            if s.w == NULL or s.bias == NULL or s.aux == NULL:
                raise ValueError("affine step: scale, shift and mean are required")
        elif s.kind == K_PLACE:
            s.extra[0], s.extra[1], s.extra[2], s.extra[3] = shape
            if min(shape[:3]) < 1 or not 0 <= s.extra[3] <= s.extra[2] - s.extra[1] or a == out:
                raise ValueError(f"place step: bad shape {shape}")
            self._need(a, s.extra[0] * s.extra[1], "place input")
            self._need(out, s.extra[0] * s.extra[2], "place output", True)
        elif s.kind == K_COPY:
            s.m = shape[0]
            if s.m < 0 or a == out:
                raise ValueError(f"copy step: bad size {shape}")
            self._need(a, s.m, "copy input")
            self._need(out, s.m, "copy output", True)
        elif s.kind == K_PYTHON:
            if not callable(callback):
                raise TypeError("python step: callback must be callable")
            self._keep.append(callback)
            s.callback = <PyObject *>callback
            s.a = s.out = self.n_in      # unused: any valid slot
        if s.kind not in (K_ELEMENTWISE, K_SOFTMAX, K_AFFINE, K_PYTHON) and (
                s.a == s.out or (s.b >= 0 and s.b == s.out)):
            raise ValueError(f"{kind} step: the output must not be an input")
        if self.nsteps == self.cap:
            grown = <Step *>calloc(2 * self.cap, sizeof(Step))
            if grown == NULL:
                raise MemoryError()
            memcpy(grown, self.steps, self.nsteps * sizeof(Step))
            free(self.steps)
            self.steps, self.cap = grown, 2 * self.cap
        self.steps[self.nsteps] = s
        self.nsteps += 1

    def bind(self, cnp.ndarray arena, offsets):
        """Point every slot but the inputs and the external outputs into ``arena`` (uint8) at
        ``offsets[slot]`` bytes (multiples of 64); each must fit."""
        cdef int i
        cdef Py_ssize_t off
        if arena.dtype != np.dtype("uint8") or not arena.flags.c_contiguous \
                or not arena.flags.writeable or arena.ndim != 1:
            raise ValueError("arena must be a writeable C-contiguous 1-D uint8 array")
        if len(offsets) != self.nslots:
            raise ValueError("one offset per slot")
        for i in range(self.n_in, self.nslots):
            if self._external(i):
                continue
            off = offsets[i]
            if off < 0 or off + self.sizes[i] > arena.shape[0] or (off & 63):
                raise ValueError(f"slot {i} does not fit the arena at offset {off}")
            self.ptr[i] = <char *>cnp.PyArray_DATA(arena) + off
        self.arena = arena

    def view(self, int slot, shape):
        """A NumPy view of an arena slot (for Python steps), ``shape`` of the program's dtype."""
        cdef Py_ssize_t n = 1, off
        if self.arena is None or not 0 <= slot < self.nslots or self._external(slot) \
                or slot == self.ws_slot:
            raise ValueError(f"slot {slot} has no arena memory")
        for d in shape:
            n *= d
        if n < 0 or n * self.item > self.sizes[slot]:
            raise ValueError(f"slot {slot} is smaller than {shape}")
        off = <char *>self.ptr[slot] - <char *>cnp.PyArray_DATA(self.arena)
        return self.arena[off:off + n * self.item].view(self.dtype).reshape(shape)

    cdef int _check(self, cnp.ndarray arr, int slot, bint write) except -1:
        if arr.dtype != self.dtype or not arr.flags.c_contiguous or \
                (write and not arr.flags.writeable) or \
                cnp.PyArray_NBYTES(arr) != self.sizes[slot]:
            raise ValueError(f"{'outputs' if write else 'inputs'} must be {'writeable ' * write}"
                             f"C-contiguous {self.dtype} arrays of "
                             f"{self.sizes[slot] // self.item} elements")
        return 0

    def run1(self, cnp.ndarray x, cnp.ndarray out):
        """``run([x], [out])`` for a program with one input and one output, without the lists
        (the batch-1 latency path)."""
        if self.n_in != 1 or self.n_out != 1:
            raise ValueError("run1 needs a program with one input and one output")
        return self._execute(x, out)

    cdef object _execute(self, cnp.ndarray x, cnp.ndarray out):
        cdef int i, rc = 0, slot = self.out_slots[0]
        cdef list errors = []
        if self.arena is None:
            raise RuntimeError("the program is not bound to an arena")
        self._check(x, 0, False)
        self._check(out, slot, True)
        self.ptr[0] = cnp.PyArray_DATA(x)
        if self.out_ext[0]:
            self.ptr[slot] = cnp.PyArray_DATA(out)
        try:
            with nogil:
                for i in range(self.nsteps):
                    rc = _run_step(&self.steps[i], self.ptr, self.ptr[self.ws_slot], self.dbl,
                                   self.item, <PyObject *>errors)
                    if rc != 0:
                        break
                if rc == 0 and not self.out_ext[0]:
                    memcpy(cnp.PyArray_DATA(out), self.ptr[slot], self.sizes[slot])
            if rc != 0:
                raise errors[0]
        finally:
            self.ptr[0] = NULL
            if self.out_ext[0]:
                self.ptr[slot] = NULL
        return out

    cdef int _bind(self, xs, outs) except -1:
        """Point the input slots and the caller-owned output slots at the (checked) arrays."""
        cdef int i
        for i in range(self.n_in):
            self.ptr[i] = cnp.PyArray_DATA(<cnp.ndarray>xs[i])
        for i in range(self.n_out):
            if self.out_ext[i]:
                self.ptr[self.out_slots[i]] = cnp.PyArray_DATA(<cnp.ndarray>outs[i])
        return 0

    cdef void _unbind(self):
        cdef int i
        for i in range(self.n_in):
            self.ptr[i] = NULL
        for i in range(self.n_out):
            if self.out_ext[i]:
                self.ptr[self.out_slots[i]] = NULL

    def run(self, xs, outs):
        """Execute every step: ``xs`` (a list, one array per input, the planned sizes) into
        ``outs`` (one array per output); C-contiguous arrays of the program's dtype."""
        cdef int i, rc = 0
        cdef bint dbl = self.dbl
        cdef Py_ssize_t item = self.item
        cdef list errors = []
        cdef void *ws
        if self.arena is None:
            raise RuntimeError("the program is not bound to an arena")
        if len(xs) != self.n_in or len(outs) != self.n_out:
            raise ValueError(f"run needs {self.n_in} input(s) and {self.n_out} output(s)")
        for i in range(self.n_in):
            self._check(xs[i], i, False)
        for i in range(self.n_out):
            self._check(outs[i], self.out_slots[i], True)
        self._bind(xs, outs)
        ws = self.ptr[self.ws_slot]
        try:
            with nogil:
                for i in range(self.nsteps):
                    rc = _run_step(&self.steps[i], self.ptr, ws, dbl, item, <PyObject *>errors)
                    if rc != 0:
                        break
            if rc != 0:
                raise errors[0]
            for i in range(self.n_out):
                if not self.out_ext[i]:
                    memcpy(cnp.PyArray_DATA(<cnp.ndarray>outs[i]),
                           self.ptr[self.out_slots[i]], self.sizes[self.out_slots[i]])
        finally:
            self._unbind()
        return outs

    def step_times(self, xs, outs, int calls=100):
        """Mean seconds per step over ``calls`` runs of ``run(xs, outs)`` (a list, one float
        per step, in order): where a planned forward pass spends its time."""
        cdef int i, c, rc = 0
        cdef double *acc
        cdef timespec t0, t1
        cdef list errors = []
        if calls < 1:
            raise ValueError(f"calls must be >= 1, got {calls}")
        self.run(xs, outs)          # checks the arrays; warms the caches
        acc = <double *>calloc(max(self.nsteps, 1), sizeof(double))
        if acc == NULL:
            raise MemoryError()
        try:
            self._bind(xs, outs)
            with nogil:
                for c in range(calls):
                    for i in range(self.nsteps):
                        clock_gettime(CLOCK_MONOTONIC, &t0)
                        rc = _run_step(&self.steps[i], self.ptr, self.ptr[self.ws_slot],
                                       self.dbl, self.item, <PyObject *>errors)
                        clock_gettime(CLOCK_MONOTONIC, &t1)
                        acc[i] += (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) * 1e-9
                        if rc != 0:
                            break
                    if rc != 0:
                        break
            if rc != 0:
                raise errors[0]
            return [acc[i] / calls for i in range(self.nsteps)]
        finally:
            free(acc)
            self._unbind()

    @property
    def num_steps(self):
        return self.nsteps

    def step_kinds(self):
        """The kind names of the steps, in order (for tests and summaries)."""
        names = {v: k for k, v in KINDS.items()}
        return [names[self.steps[i].kind] for i in range(self.nsteps)]
