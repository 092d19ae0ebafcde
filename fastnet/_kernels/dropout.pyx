# cython: language_level=3
"""Dropout kernels: a counter-based random mask, applied with inverted scaling, and its backward.

Kernel design
-------------
Element i of a call keeps its value when ``bits(i) >= threshold``, where
``bits(i) = mix32(mix32(i ^ k0) ^ k1)`` (``_vecmath.pxd``) and (k0, k1) are the two halves of
``splitmix64(seed ^ splitmix64(step))``: the mask of an element depends only on (seed, step, i),
never on which thread computes it, so the work is split in static contiguous pieces and the
result is bitwise the same for any thread count.  ``threshold = round(rate * 2**32)``, so an
element is dropped with probability ``rate`` (to 2**-32).  The loops are branch-free uint32
arithmetic and vectorize (vpmulld).

Forward writes y = keep ? x * scale : 0 (scale = 1 / (1 - rate), as TensorFlow) and the mask
(uint8, 1 = kept) for the backward, dx = mask ? dy * scale : 0.  ``mask_values`` writes the
multipliers (scale or 0) alone, for a mask broadcast over ``noise_shape``.
Index arithmetic is 32-bit: the op allows fewer than 2**32 elements.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport uint8_t, uint32_t, uint64_t

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, fn_splitmix64, split_bound

cdef extern from *:
    """
    #define FN_DROP_BITS(i, k0, k1) fn_mix32(fn_mix32((uint32_t)(i) ^ (k0)) ^ (k1))

    #define FN_DEFINE_DROPOUT(T, SFX)                                                        \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_dropout_fwd_##SFX(const T *x, T *y, uint8_t *mask, uint32_t lo, uint32_t hi,          \\
                         uint32_t k0, uint32_t k1, uint32_t threshold, T scale)              \\
    {                                                                                        \\
        for (uint32_t i = lo; i < hi; i++) {                                                 \\
            uint32_t keep = FN_DROP_BITS(i, k0, k1) >= threshold;                            \\
            mask[i] = (uint8_t)keep;                                                         \\
            y[i] = keep ? x[i] * scale : (T)0;                                               \\
        }                                                                                    \\
    }                                                                                        \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_dropout_bwd_##SFX(const T *dy, const uint8_t *mask, T *dx, uint32_t lo, uint32_t hi,  \\
                         T scale)                                                            \\
    {                                                                                        \\
        for (uint32_t i = lo; i < hi; i++) dx[i] = mask[i] ? dy[i] * scale : (T)0;           \\
    }                                                                                        \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_dropout_values_##SFX(T *m, uint32_t lo, uint32_t hi, uint32_t k0, uint32_t k1,        \\
                            uint32_t threshold, T scale)                                     \\
    {                                                                                        \\
        for (uint32_t i = lo; i < hi; i++)                                                   \\
            m[i] = FN_DROP_BITS(i, k0, k1) >= threshold ? scale : (T)0;                      \\
    }

    FN_DEFINE_DROPOUT(float, f32)
    FN_DEFINE_DROPOUT(double, f64)
    """
    void fn_dropout_fwd_f32(const float *x, float *y, uint8_t *mask, uint32_t lo, uint32_t hi,
                            uint32_t k0, uint32_t k1, uint32_t threshold,
                            float scale) noexcept nogil
    void fn_dropout_fwd_f64(const double *x, double *y, uint8_t *mask, uint32_t lo, uint32_t hi,
                            uint32_t k0, uint32_t k1, uint32_t threshold,
                            double scale) noexcept nogil
    void fn_dropout_bwd_f32(const float *dy, const uint8_t *mask, float *dx, uint32_t lo,
                            uint32_t hi, float scale) noexcept nogil
    void fn_dropout_bwd_f64(const double *dy, const uint8_t *mask, double *dx, uint32_t lo,
                            uint32_t hi, double scale) noexcept nogil
    void fn_dropout_values_f32(float *m, uint32_t lo, uint32_t hi, uint32_t k0, uint32_t k1,
                               uint32_t threshold, float scale) noexcept nogil
    void fn_dropout_values_f64(double *m, uint32_t lo, uint32_t hi, uint32_t k0, uint32_t k1,
                               uint32_t threshold, double scale) noexcept nogil

cdef enum:
    ALIGN = 64   # thread pieces start at multiples of this many elements


def call_key(uint64_t seed, uint64_t step):
    """(k0, k1): the 32-bit keys of the mask of call ``step`` of a layer seeded ``seed``."""
    cdef uint64_t k = fn_splitmix64(seed ^ fn_splitmix64(step))
    return <uint32_t>k, <uint32_t>(k >> 32)


cdef void _fwd(const floating *x, floating *y, uint8_t *mask, Py_ssize_t lo, Py_ssize_t hi,
               uint32_t k0, uint32_t k1, uint32_t threshold, double scale) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_dropout_fwd_f32(x, y, mask, <uint32_t>lo, <uint32_t>hi, k0, k1, threshold,
                           <float>scale)
    else:
        fn_dropout_fwd_f64(x, y, mask, <uint32_t>lo, <uint32_t>hi, k0, k1, threshold, scale)
    fn_ftz_end(csr)


cdef void _bwd(const floating *dy, const uint8_t *mask, floating *dx, Py_ssize_t lo,
               Py_ssize_t hi, double scale) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_dropout_bwd_f32(dy, mask, dx, <uint32_t>lo, <uint32_t>hi, <float>scale)
    else:
        fn_dropout_bwd_f64(dy, mask, dx, <uint32_t>lo, <uint32_t>hi, scale)
    fn_ftz_end(csr)


def dropout_forward(const floating[::1] x, floating[::1] y, uint8_t[::1] mask, uint32_t k0,
                    uint32_t k1, uint32_t threshold, double scale, int nthreads):
    """y = keep ? x * scale : 0 and mask = keep, keep = bits(i) >= threshold.
    1 <= len < 2**32; y may be x."""
    cdef Py_ssize_t n = x.shape[0], t
    cdef const floating *px = &x[0]
    cdef floating *py = &y[0]
    cdef uint8_t *pm = &mask[0]
    if nthreads <= 1:
        with nogil:
            _fwd(px, py, pm, 0, n, k0, k1, threshold, scale)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _fwd(px, py, pm, split_bound(n, t, nthreads, ALIGN),
             split_bound(n, t + 1, nthreads, ALIGN), k0, k1, threshold, scale)


def dropout_backward(const floating[::1] dy, const uint8_t[::1] mask, floating[::1] dx,
                     double scale, int nthreads):
    """dx = mask ? dy * scale : 0.  1 <= len < 2**32; dx may be dy."""
    cdef Py_ssize_t n = dy.shape[0], t
    cdef const floating *pdy = &dy[0]
    cdef const uint8_t *pm = &mask[0]
    cdef floating *pdx = &dx[0]
    if nthreads <= 1:
        with nogil:
            _bwd(pdy, pm, pdx, 0, n, scale)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _bwd(pdy, pm, pdx, split_bound(n, t, nthreads, ALIGN),
             split_bound(n, t + 1, nthreads, ALIGN), scale)


def mask_values(floating[::1] m, uint32_t k0, uint32_t k1, uint32_t threshold, double scale):
    """m[i] = scale if bits(i) >= threshold else 0 (the multipliers of a broadcast mask);
    1 <= len < 2**32, single-threaded (noise shapes are small)."""
    cdef Py_ssize_t n = m.shape[0]
    with nogil:
        if floating is float:
            fn_dropout_values_f32(&m[0], 0, <uint32_t>n, k0, k1, threshold, <float>scale)
        else:
            fn_dropout_values_f64(&m[0], 0, <uint32_t>n, k0, k1, threshold, scale)
