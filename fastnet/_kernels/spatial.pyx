# cython: language_level=3
"""Spatial kernels on NHWC tensors: global average / max pooling and zero padding, with their
backwards.

Kernel design
-------------
Channels are the contiguous axis, so every inner loop runs over C and vectorizes.  Work is split
by whole images (global pooling) or whole output rows (padding) with a static schedule; each
output element is computed by one thread in a fixed order, so results do not depend on the
thread count.

Global average: y[n, c] = sum over the H*W pixels in pixel order, times 1 / (H*W).  Global max:
the first pixel, then ``v > m ? v : m``.  Max backward splits each gradient evenly among the
pixels equal to the maximum (TensorFlow's ``reduce_max`` gradient, which Keras's
GlobalMaxPooling2D uses): a counting pass, then a writing pass, per image.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memcpy, memset

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end

cdef extern from *:
    """
    #define FN_DEFINE_SPATIAL(T, SFX)                                                        \\
    /* y[c] = mean (or max) over p of x[p, c], x an (P, C) image */                          \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_global_pool_##SFX(const T *restrict x, T *restrict y, ptrdiff_t P, ptrdiff_t C,       \\
                         int average)                                                        \\
    {                                                                                        \\
        for (ptrdiff_t c = 0; c < C; c++) y[c] = x[c];                                       \\
        for (ptrdiff_t p = 1; p < P; p++) {                                                  \\
            const T *restrict xp = x + p * C;                                                \\
            if (average)                                                                     \\
                for (ptrdiff_t c = 0; c < C; c++) y[c] += xp[c];                             \\
            else                                                                             \\
                for (ptrdiff_t c = 0; c < C; c++) y[c] = xp[c] > y[c] ? xp[c] : y[c];        \\
        }                                                                                    \\
        if (average) {                                                                       \\
            const T scale = (T)1 / (T)P;                                                     \\
            for (ptrdiff_t c = 0; c < C; c++) y[c] *= scale;                                 \\
        }                                                                                    \\
    }                                                                                        \\
    /* dx[p, c] = dy[c] / P */                                                               \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_global_avg_bwd_##SFX(const T *restrict dy, T *restrict dx, ptrdiff_t P, ptrdiff_t C,  \\
                            T *restrict g)                                                   \\
    {                                                                                        \\
        const T scale = (T)1 / (T)P;                                                         \\
        for (ptrdiff_t c = 0; c < C; c++) g[c] = dy[c] * scale;                              \\
        for (ptrdiff_t p = 0; p < P; p++) {                                                  \\
            T *restrict dxp = dx + p * C;                                                    \\
            for (ptrdiff_t c = 0; c < C; c++) dxp[c] = g[c];                                 \\
        }                                                                                    \\
    }                                                                                        \\
    /* dx[p, c] = x[p, c] == y[c] ? dy[c] / count[c] : 0, count[c] = #{p: x[p, c] == y[c]} */ \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_global_max_bwd_##SFX(const T *restrict x, const T *restrict y, const T *restrict dy,  \\
                            T *restrict dx, ptrdiff_t P, ptrdiff_t C, T *restrict g)         \\
    {                                                                                        \\
        for (ptrdiff_t c = 0; c < C; c++) g[c] = 0;                                          \\
        for (ptrdiff_t p = 0; p < P; p++) {                                                  \\
            const T *restrict xp = x + p * C;                                                \\
            for (ptrdiff_t c = 0; c < C; c++) g[c] += xp[c] == y[c] ? (T)1 : (T)0;           \\
        }                                                                                    \\
        for (ptrdiff_t c = 0; c < C; c++) g[c] = g[c] > (T)0 ? dy[c] / g[c] : (T)0;          \\
        for (ptrdiff_t p = 0; p < P; p++) {                                                  \\
            const T *restrict xp = x + p * C;                                                \\
            T *restrict dxp = dx + p * C;                                                    \\
            for (ptrdiff_t c = 0; c < C; c++) dxp[c] = xp[c] == y[c] ? g[c] : (T)0;          \\
        }                                                                                    \\
    }

    FN_DEFINE_SPATIAL(float, f32)
    FN_DEFINE_SPATIAL(double, f64)
    """
    void fn_global_pool_f32(const float *x, float *y, Py_ssize_t P, Py_ssize_t C,
                            int average) noexcept nogil
    void fn_global_pool_f64(const double *x, double *y, Py_ssize_t P, Py_ssize_t C,
                            int average) noexcept nogil
    void fn_global_avg_bwd_f32(const float *dy, float *dx, Py_ssize_t P, Py_ssize_t C,
                               float *g) noexcept nogil
    void fn_global_avg_bwd_f64(const double *dy, double *dx, Py_ssize_t P, Py_ssize_t C,
                               double *g) noexcept nogil
    void fn_global_max_bwd_f32(const float *x, const float *y, const float *dy, float *dx,
                               Py_ssize_t P, Py_ssize_t C, float *g) noexcept nogil
    void fn_global_max_bwd_f64(const double *x, const double *y, const double *dy, double *dx,
                               Py_ssize_t P, Py_ssize_t C, double *g) noexcept nogil


cdef void _pool_image(const floating *x, floating *y, Py_ssize_t P, Py_ssize_t C,
                      bint average) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_global_pool_f32(x, y, P, C, average)
    else:
        fn_global_pool_f64(x, y, P, C, average)
    fn_ftz_end(csr)


def global_pool2d(const floating[:, :, :, ::1] x, floating[:, ::1] y, bint average,
                  int nthreads):
    """y[n, c] = mean (average) or max of x[n, :, :, c]; N, H, W, C >= 1."""
    cdef Py_ssize_t N = x.shape[0], P = x.shape[1] * x.shape[2], C = x.shape[3], n
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0]
    for n in prange(N, nogil=True, num_threads=nthreads, schedule='static'):
        _pool_image(px + n * P * C, py + n * C, P, C, average)


cdef void _bwd_image(const floating *x, const floating *y, const floating *dy, floating *dx,
                     Py_ssize_t P, Py_ssize_t C, bint average, floating *g) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        if average:
            fn_global_avg_bwd_f32(dy, dx, P, C, g)
        else:
            fn_global_max_bwd_f32(x, y, dy, dx, P, C, g)
    else:
        if average:
            fn_global_avg_bwd_f64(dy, dx, P, C, g)
        else:
            fn_global_max_bwd_f64(x, y, dy, dx, P, C, g)
    fn_ftz_end(csr)


def global_pool2d_backward(const floating[:, :, :, ::1] x, const floating[:, ::1] y,
                           const floating[:, ::1] dy, floating[:, :, :, ::1] dx, bint average,
                           floating[::1] scratch, int nthreads):
    """dx of global pooling (x, y only read for max; pass dy for both otherwise).
    ``scratch``: nthreads slices of C elements, ``len // nthreads`` apart."""
    cdef Py_ssize_t N = dx.shape[0], P = dx.shape[1] * dx.shape[2], C = dx.shape[3], n
    cdef Py_ssize_t stride = scratch.shape[0] // nthreads
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *py = &y[0, 0]
    cdef const floating *pdy = &dy[0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    cdef floating *ps = &scratch[0]
    for n in prange(N, nogil=True, num_threads=nthreads, schedule='static'):
        _bwd_image(px + n * P * C, py + n * C, pdy + n * C, pdx + n * P * C, P, C, average,
                   ps + threadid() * stride)


cdef void _pad_row(const floating *x, floating *y, Py_ssize_t r, Py_ssize_t OH, Py_ssize_t OW,
                   Py_ssize_t H, Py_ssize_t W, Py_ssize_t C, Py_ssize_t top,
                   Py_ssize_t left) noexcept nogil:
    cdef Py_ssize_t n = r // OH, oh = r - n * OH, h = oh - top
    cdef floating *yr = y + r * OW * C
    if h < 0 or h >= H:
        memset(yr, 0, OW * C * sizeof(floating))
        return
    memset(yr, 0, left * C * sizeof(floating))
    memcpy(yr + left * C, x + (n * H + h) * W * C, W * C * sizeof(floating))
    memset(yr + (left + W) * C, 0, (OW - left - W) * C * sizeof(floating))


def zero_pad2d(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, Py_ssize_t top,
               Py_ssize_t left, int nthreads):
    """y = x surrounded by zeros, x at rows [top, top + H) and columns [left, left + W)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2], r
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    for r in prange(N * OH, nogil=True, num_threads=nthreads, schedule='static'):
        _pad_row(px, py, r, OH, OW, H, W, C, top, left)


def crop2d(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx, Py_ssize_t top,
           Py_ssize_t left, int nthreads):
    """dx = dy[:, top:top + H, left:left + W, :] (the backward of zero_pad2d)."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[1], OW = dy.shape[2], r, n, h
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    for r in prange(N * H, nogil=True, num_threads=nthreads, schedule='static'):
        n = r // H
        h = r - n * H
        memcpy(pdx + r * W * C, pdy + ((n * OH + h + top) * OW + left) * C,
               W * C * sizeof(floating))
