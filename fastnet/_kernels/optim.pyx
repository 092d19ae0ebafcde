# cython: language_level=3
"""Fused optimizer steps over flat parameter buffers (Adam, SGD with and without momentum).

Kernel design
-------------
An optimizer step is memory bound: Adam reads p, g, m, v and writes p, m, v (28 bytes per float32
parameter) and does a handful of flops per element, so the only goals are one pass over memory
and a vector body that never stalls it.  The per-element update is a C loop over a range
``[lo, hi)`` with ``restrict`` pointers (the op checks the buffers do not overlap), compiled
three times on x86-64 + GCC/glibc (AVX-512, AVX2+FMA, baseline) and chosen by the loader through
an ifunc, so the default build still runs on any x86-64 CPU.  Bias corrections are folded into
one scalar ``lr_t`` by the caller.

Threads split the buffer into ``nthreads`` contiguous ranges whose boundaries are multiples of
64 elements (whole cache lines when the buffers are aligned).  The update is elementwise, so the
result does not depend on the partition: 1 and N threads give bitwise identical results as long
as the vector body and the scalar remainder round alike, which holds because every operation is
an IEEE add/mul/div/sqrt (FMA contraction is switched off in these loops).  Each range runs
with flush-to-zero and denormals-are-zero (the caller's MXCSR restored after), like the GEMM's
workers: Adam's m decays geometrically into the denormals for parameters whose gradient stays
zero (dead units), and denormal operands are slow.
"""
from cython.parallel cimport prange
from cython cimport floating

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>
    #if defined(_MSC_VER) && !defined(restrict)
    #define restrict __restrict
    #endif
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \\
        && defined(__GLIBC__) && __GNUC__ >= 11
    #define FN_OPT_CLONES \\
        __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define FN_OPT_CLONES
    #endif
    /* No a*b+c -> fma contraction: the vector body and the scalar remainder must round alike so
       that any partition of the buffer among threads gives the same bits (and NumPy's). */
    #if defined(__clang__)
    #define FN_OPT_NOCONTRACT
    #define FN_OPT_NOCONTRACT_BODY _Pragma("clang fp contract(off)")
    #elif defined(__GNUC__)
    #define FN_OPT_NOCONTRACT __attribute__((optimize("fp-contract=off")))
    #define FN_OPT_NOCONTRACT_BODY
    #else
    #define FN_OPT_NOCONTRACT
    #define FN_OPT_NOCONTRACT_BODY
    #endif

    /* Flush-to-zero + denormals-are-zero while a kernel runs, restored after (as the GEMM's
       workers do): denormal operands are slow and carry no information for training. */
    #if defined(__x86_64__) || defined(_M_X64)
    #include <xmmintrin.h>
    static inline unsigned fn_ftz_begin(void)
    {
        unsigned csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040u);
        return csr;
    }
    static inline void fn_ftz_end(unsigned csr) { _mm_setcsr(csr); }
    #else
    static inline unsigned fn_ftz_begin(void) { return 0; }
    static inline void fn_ftz_end(unsigned csr) { (void)csr; }
    #endif
    #define FN_DEFINE_OPTIM(T, SFX, SQRT)                                                       \\
    FN_OPT_CLONES FN_OPT_NOCONTRACT static void                                                 \\
    fn_adam_##SFX(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,            \\
                  ptrdiff_t lo, ptrdiff_t hi, T lr_t, T one_minus_b1, T one_minus_b2, T eps)    \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \\
            T gi = g[i];                                                                        \\
            T mi = m[i] + (gi - m[i]) * one_minus_b1;                                           \\
            T vi = v[i] + (gi * gi - v[i]) * one_minus_b2;                                      \\
            m[i] = mi;                                                                          \\
            v[i] = vi;                                                                          \\
            p[i] = p[i] - (mi * lr_t) / (SQRT(vi) + eps);                                       \\
        }                                                                                       \\
    }                                                                                           \\
    FN_OPT_CLONES FN_OPT_NOCONTRACT static void                                                 \\
    fn_sgd_##SFX(T *restrict p, const T *restrict g, ptrdiff_t lo, ptrdiff_t hi, T lr)          \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        for (ptrdiff_t i = lo; i < hi; i++)                                                     \\
            p[i] = p[i] - g[i] * lr;                                                            \\
    }                                                                                           \\
    FN_OPT_CLONES FN_OPT_NOCONTRACT static void                                                 \\
    fn_sgd_momentum_##SFX(T *restrict p, const T *restrict g, T *restrict vel,                  \\
                          ptrdiff_t lo, ptrdiff_t hi, T lr, T momentum, int nesterov)           \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        if (nesterov) {                                                                         \\
            for (ptrdiff_t i = lo; i < hi; i++) {                                               \\
                T vi = vel[i] * momentum - g[i] * lr;                                           \\
                vel[i] = vi;                                                                    \\
                p[i] = p[i] + (vi * momentum - g[i] * lr);                                      \\
            }                                                                                   \\
        } else {                                                                                \\
            for (ptrdiff_t i = lo; i < hi; i++) {                                               \\
                T vi = vel[i] * momentum - g[i] * lr;                                           \\
                vel[i] = vi;                                                                    \\
                p[i] = p[i] + vi;                                                               \\
            }                                                                                   \\
        }                                                                                       \\
    }

    FN_DEFINE_OPTIM(float, f32, sqrtf)
    FN_DEFINE_OPTIM(double, f64, sqrt)
    """
    unsigned fn_ftz_begin() noexcept nogil
    void fn_ftz_end(unsigned csr) noexcept nogil
    void fn_adam_f32(float *p, const float *g, float *m, float *v, Py_ssize_t lo, Py_ssize_t hi,
                     float lr_t, float one_minus_b1, float one_minus_b2, float eps) noexcept nogil
    void fn_adam_f64(double *p, const double *g, double *m, double *v, Py_ssize_t lo,
                     Py_ssize_t hi, double lr_t, double one_minus_b1, double one_minus_b2,
                     double eps) noexcept nogil
    void fn_sgd_f32(float *p, const float *g, Py_ssize_t lo, Py_ssize_t hi,
                    float lr) noexcept nogil
    void fn_sgd_f64(double *p, const double *g, Py_ssize_t lo, Py_ssize_t hi,
                    double lr) noexcept nogil
    void fn_sgd_momentum_f32(float *p, const float *g, float *vel, Py_ssize_t lo, Py_ssize_t hi,
                             float lr, float momentum, int nesterov) noexcept nogil
    void fn_sgd_momentum_f64(double *p, const double *g, double *vel, Py_ssize_t lo,
                             Py_ssize_t hi, double lr, double momentum,
                             int nesterov) noexcept nogil


cdef enum:
    CHUNK_ALIGN = 64   # thread ranges start at multiples of this many elements


cdef inline Py_ssize_t _bound(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nthreads) noexcept nogil:
    """Start of thread t's range (t = nthreads gives n): equal shares rounded to CHUNK_ALIGN."""
    cdef Py_ssize_t b
    if t >= nthreads:
        return n
    b = (n * t // nthreads) // CHUNK_ALIGN * CHUNK_ALIGN
    return b


cdef void _adam_range(floating *p, const floating *g, floating *m, floating *v, Py_ssize_t lo,
                      Py_ssize_t hi, double lr_t, double b1c, double b2c,
                      double eps) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_adam_f32(p, g, m, v, lo, hi, <float>lr_t, <float>b1c, <float>b2c, <float>eps)
    else:
        fn_adam_f64(p, g, m, v, lo, hi, lr_t, b1c, b2c, eps)
    fn_ftz_end(csr)


def adam(floating[::1] p, const floating[::1] g, floating[::1] m, floating[::1] v,
         double lr_t, double one_minus_beta_1, double one_minus_beta_2, double epsilon,
         int nthreads):
    """One Adam step in place: m += (g-m)(1-b1); v += (g²-v)(1-b2); p -= lr_t m/(√v + eps).

    The scalars are rounded to the buffers' dtype before use.  n >= 1 and no overlap assumed.
    """
    cdef Py_ssize_t n = p.shape[0], t
    cdef floating *pp = &p[0]
    cdef const floating *pg = &g[0]
    cdef floating *pm = &m[0]
    cdef floating *pv = &v[0]
    if nthreads <= 1:
        with nogil:
            _adam_range(pp, pg, pm, pv, 0, n, lr_t, one_minus_beta_1, one_minus_beta_2, epsilon)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _adam_range(pp, pg, pm, pv, _bound(n, t, nthreads), _bound(n, t + 1, nthreads),
                    lr_t, one_minus_beta_1, one_minus_beta_2, epsilon)


cdef void _sgd_range(floating *p, const floating *g, floating *vel, Py_ssize_t lo, Py_ssize_t hi,
                     double lr, double momentum, int nesterov) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if vel == NULL:
        if floating is float:
            fn_sgd_f32(p, g, lo, hi, <float>lr)
        else:
            fn_sgd_f64(p, g, lo, hi, lr)
    else:
        if floating is float:
            fn_sgd_momentum_f32(p, g, vel, lo, hi, <float>lr, <float>momentum, nesterov)
        else:
            fn_sgd_momentum_f64(p, g, vel, lo, hi, lr, momentum, nesterov)
    fn_ftz_end(csr)


def sgd(floating[::1] p, const floating[::1] g, floating[::1] velocity, double lr,
        double momentum, bint nesterov, int nthreads):
    """One SGD step in place (Keras formulas).

    velocity None: p -= lr g.  Otherwise v = momentum v - lr g, then p += v, or with nesterov
    p += momentum v - lr g (the new v).  n >= 1 and no overlap assumed.
    """
    cdef Py_ssize_t n = p.shape[0], t
    cdef floating *pp = &p[0]
    cdef const floating *pg = &g[0]
    cdef floating *pvel = NULL
    if velocity is not None:
        pvel = &velocity[0]
    if nthreads <= 1:
        with nogil:
            _sgd_range(pp, pg, pvel, 0, n, lr, momentum, nesterov)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _sgd_range(pp, pg, pvel, _bound(n, t, nthreads), _bound(n, t + 1, nthreads),
                   lr, momentum, nesterov)
