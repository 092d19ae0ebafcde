# cython: language_level=3
"""Weight-penalty kernels for the L1/L2 regularizers: the sums sum|w| and sum w**2, and the
in-place gradient update g += l1 sign(w) + 2 l2 w.

Kernel design
-------------
The sums are accumulated in double over fixed chunks of ``CHUNK`` elements (32 explicit vector
lanes inside a chunk), each chunk's partials stored in caller scratch, then added in chunk
order: the
partition depends on the length only, so the result is bitwise the same for any thread count.
The gradient update is elementwise, split into static contiguous pieces per thread.
"""
from cython cimport floating
from cython.parallel cimport prange

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound

cdef extern from *:
    """
    /* GCC vector types of 64 bytes (one zmm, two ymm or four xmm, per clone): gcc does not
       vectorize a plain double reduction (it may not reassociate), so the sums run in
       4 x 8 explicit lanes, added in a fixed order at the end. */
    typedef float fn_pen_f8 __attribute__((vector_size(32)));
    typedef double fn_pen_d8 __attribute__((vector_size(64)));
    typedef int64_t fn_pen_l8 __attribute__((vector_size(64)));
    #define FN_PEN_LOAD_f32(dst, p)                                                          \
        do { fn_pen_f8 v_; memcpy(&v_, (p), sizeof v_);                                      \
             (dst) = __builtin_convertvector(v_, fn_pen_d8); } while (0)
    #define FN_PEN_LOAD_f64(dst, p) memcpy(&(dst), (p), sizeof(dst))
    #define FN_PEN_ABS(dst, v)                                                               \
        do { fn_pen_l8 b_; memcpy(&b_, &(v), sizeof b_); b_ &= INT64_MAX;                   \
             memcpy(&(dst), &b_, sizeof b_); } while (0)

    #define FN_DEFINE_PENALTY(T, SFX)                                                        \
    /* partial[0] = sum |w|, partial[1] = sum w**2 over w[lo:hi], in double */               \
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \
    fn_penalty_sums_##SFX(const T *w, ptrdiff_t lo, ptrdiff_t hi, double *partial)           \
    {                                                                                        \
        fn_pen_d8 a1[4] = {{0}}, a2[4] = {{0}}, v, av;                                       \
        double s1 = 0.0, s2 = 0.0;                                                           \
        ptrdiff_t i = lo;                                                                    \
        for (; i + 32 <= hi; i += 32)                                                        \
            for (int k = 0; k < 4; k++) {                                                    \
                FN_PEN_LOAD_##SFX(v, w + i + 8 * k);                                         \
                FN_PEN_ABS(av, v);                                                           \
                a1[k] += av;                                                                 \
                a2[k] += v * v;                                                              \
            }                                                                                \
        for (int k = 0; k < 4; k++)                                                          \
            for (int j = 0; j < 8; j++) { s1 += a1[k][j]; s2 += a2[k][j]; }                  \
        for (; i < hi; i++) { double x = (double)w[i]; s1 += fabs(x); s2 += x * x; }         \
        partial[0] = s1;                                                                     \
        partial[1] = s2;                                                                     \
    }                                                                                        \
    /* g[lo:hi] += l1 sign(w) + (2 l2) w, sign(0) = 0 */                                     \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_penalty_grad_##SFX(const T *w, T *g, T l1, T two_l2, ptrdiff_t lo, ptrdiff_t hi)      \\
    {                                                                                        \\
        for (ptrdiff_t i = lo; i < hi; i++) {                                                \\
            T v = w[i];                                                                      \\
            T s = v > (T)0 ? l1 : (v < (T)0 ? -l1 : (T)0);                                   \\
            g[i] += s + two_l2 * v;                                                          \\
        }                                                                                    \\
    }

    FN_DEFINE_PENALTY(float, f32)
    FN_DEFINE_PENALTY(double, f64)
    """
    void fn_penalty_sums_f32(const float *w, Py_ssize_t lo, Py_ssize_t hi,
                             double *partial) noexcept nogil
    void fn_penalty_sums_f64(const double *w, Py_ssize_t lo, Py_ssize_t hi,
                             double *partial) noexcept nogil
    void fn_penalty_grad_f32(const float *w, float *g, float l1, float two_l2, Py_ssize_t lo,
                             Py_ssize_t hi) noexcept nogil
    void fn_penalty_grad_f64(const double *w, double *g, double l1, double two_l2,
                             Py_ssize_t lo, Py_ssize_t hi) noexcept nogil

cdef enum:
    CHUNK_ELEMS = 4096   # elements per partial sum (fixed: the order does not depend on threads)

CHUNK = CHUNK_ELEMS


cdef void _sums(const floating *w, Py_ssize_t lo, Py_ssize_t hi, double *partial) noexcept nogil:
    if floating is float:
        fn_penalty_sums_f32(w, lo, hi, partial)
    else:
        fn_penalty_sums_f64(w, lo, hi, partial)


def penalty_sums(const floating[::1] w, double[::1] partials, int nthreads):
    """(sum |w|, sum w**2) accumulated in double; ``partials`` holds at least
    2 * ceil(len(w) / CHUNK) doubles of scratch.  len(w) >= 1."""
    cdef Py_ssize_t n = w.shape[0], nchunks = (n + CHUNK_ELEMS - 1) // CHUNK_ELEMS, c
    cdef const floating *pw = &w[0]
    cdef double *pp = &partials[0]
    cdef double s1 = 0.0, s2 = 0.0
    with nogil:
        if nthreads <= 1 or nchunks == 1:
            for c in range(nchunks):
                _sums(pw, c * CHUNK_ELEMS, min((c + 1) * CHUNK_ELEMS, n), pp + 2 * c)
        else:
            for c in prange(nchunks, num_threads=nthreads, schedule='static'):
                _sums(pw, c * CHUNK_ELEMS, min((c + 1) * CHUNK_ELEMS, n), pp + 2 * c)
        for c in range(nchunks):
            s1 += pp[2 * c]
            s2 += pp[2 * c + 1]
    return s1, s2


cdef void _grad(const floating *w, floating *g, double l1, double two_l2, Py_ssize_t lo,
                Py_ssize_t hi) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_penalty_grad_f32(w, g, <float>l1, <float>two_l2, lo, hi)
    else:
        fn_penalty_grad_f64(w, g, l1, two_l2, lo, hi)
    fn_ftz_end(csr)


def penalty_grad_add(const floating[::1] w, floating[::1] g, double l1, double l2, int nthreads):
    """g += l1 * sign(w) + 2 * l2 * w in place (sign(0) = 0).  len >= 1."""
    cdef Py_ssize_t n = w.shape[0], t
    cdef const floating *pw = &w[0]
    cdef floating *pg = &g[0]
    cdef double two_l2 = 2.0 * l2
    if nthreads <= 1:
        with nogil:
            _grad(pw, pg, l1, two_l2, 0, n)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _grad(pw, pg, l1, two_l2, split_bound(n, t, nthreads, 64),
              split_bound(n, t + 1, nthreads, 64))
