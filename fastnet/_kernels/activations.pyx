# cython: language_level=3
"""Activation kernels: relu, sigmoid, tanh, softplus, swish, gelu (erf and tanh forms), elu,
leaky_relu (elementwise) and softmax (over rows), with their backwards.

Kernel design
-------------
Each kernel is a C loop over a range (elements ``[lo, hi)`` for the elementwise functions, rows
``[r0, r1)`` of a C-contiguous (rows, cols) matrix for softmax), written once for float and
double through a macro and compiled per ISA (AVX-512 / AVX2 / baseline, chosen at load time) on
x86-64 GCC.  The Python-visible wrappers below split the work among ``nthreads`` threads in
contiguous, statically assigned pieces; the op decides the thread count (1 when the work is too
small to pay for a parallel region).

Every element, and every row of softmax, is computed the same way whatever the partition, so
the results do not depend on the thread count.  Each piece runs with flush-to-zero and
denormals-are-zero set (and the caller's MXCSR restored), like the GEMM's workers.

Backward passes read the forward OUTPUT y where it determines the derivative (relu, sigmoid,
tanh, elu, leaky_relu, softmax) and the forward INPUT x otherwise (softplus, swish, gelu); see
``NEEDS_INPUT``.  ``alpha`` is elu's alpha and leaky_relu's negative slope (>= 0, so that
y > 0 exactly when x > 0), ignored by the others.

In-place use: ``out`` may be the same buffer as ``x`` (forward) or ``dy`` (backward): each loop
reads element i (or a whole row, before writing it) before writing element i, and the pointers
are not declared ``restrict``.

Numerics: sigmoid uses exp(-|x|) so it never overflows; softplus is max(x, 0) + log1p(exp(-|x|));
gelu is x/2 erfc(-x/sqrt 2) (no cancellation for negative x); softmax subtracts the row maximum.
relu keeps NaN (x < 0 ? 0 : x).  float64 calls libm.  float32 uses the branch-free
``fn_expf``/``fn_tanhf``/``fn_erfcf``... of ``_vecmath.pxd`` (a few ulp), because gcc cannot
vectorize calls to libm's float functions without -ffast-math and the scalar calls cost
5-10 ns per element, more than the memory traffic.
"""
from cython.parallel cimport prange
from cython cimport floating

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound

cdef extern from *:
    """
    enum { FN_ACT_RELU = 0, FN_ACT_SIGMOID = 1, FN_ACT_TANH = 2, FN_ACT_SOFTPLUS = 3,
           FN_ACT_SWISH = 4, FN_ACT_GELU = 5, FN_ACT_GELU_TANH = 6, FN_ACT_ELU = 7,
           FN_ACT_LEAKY_RELU = 8 };

    FN_VEC_INLINE double fn_expm1_neg(double x) { return expm1(x > 0.0 ? 0.0 : x); }

    #define FN_SIGMOID(T, EXP, FABS, xi, out)                                                   \\
        do {                                                                                    \\
            T z_ = EXP(-FABS(xi));              /* in (0, 1]: never overflows */                 \\
            T s_ = (T)1 / ((T)1 + z_);                                                          \\
            out = (xi) >= (T)0 ? s_ : z_ * s_;                                                  \\
        } while (0)

    /* GELU's tanh form: u = sqrt(2/pi) (x + 0.044715 x**3). */
    #define FN_GELU_C(T) ((T)0.7978845608028654)
    #define FN_GELU_A(T) ((T)0.044715)

    #define FN_DEFINE_ACT(T, SFX, EXP, TANH, FABS, EXPM1NEG, LOG1PUNIT, ERFC)                   \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_act_fwd_##SFX(int act, T alpha, const T *x, T *y, ptrdiff_t lo, ptrdiff_t hi)            \\
    {                                                                                           \\
        ptrdiff_t i;                                                                            \\
        switch (act) {                                                                          \\
        case FN_ACT_RELU:                                                                       \\
            for (i = lo; i < hi; i++) { T xi = x[i]; y[i] = xi < (T)0 ? (T)0 : xi; }             \\
            break;                                                                              \\
        case FN_ACT_SIGMOID:                                                                    \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i], s;                                                                 \\
                FN_SIGMOID(T, EXP, FABS, xi, s);                                                \\
                y[i] = s;                                                                       \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_TANH:                                                                       \\
            for (i = lo; i < hi; i++) y[i] = TANH(x[i]);                                        \\
            break;                                                                              \\
        case FN_ACT_SOFTPLUS:                                                                   \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i];                                                                    \\
                y[i] = (xi > (T)0 ? xi : (T)0) + LOG1PUNIT(EXP(-FABS(xi)));                     \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_SWISH:                                                                      \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i], s;                                                                 \\
                FN_SIGMOID(T, EXP, FABS, xi, s);                                                \\
                y[i] = xi * s;                                                                  \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_GELU:                                                                       \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i];                                                                    \\
                y[i] = (T)0.5 * xi * ERFC(xi * (T)-0.7071067811865476);                         \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_GELU_TANH:                                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i];                                                                    \\
                T t = TANH(FN_GELU_C(T) * (xi + FN_GELU_A(T) * xi * xi * xi));                  \\
                y[i] = (T)0.5 * xi * ((T)1 + t);                                                \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_ELU:                                                                        \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i];                                                                    \\
                y[i] = xi > (T)0 ? xi : alpha * EXPM1NEG(xi);                                   \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_LEAKY_RELU:                                                                 \\
            for (i = lo; i < hi; i++) { T xi = x[i]; y[i] = xi > (T)0 ? xi : alpha * xi; }       \\
            break;                                                                              \\
        }                                                                                       \\
    }                                                                                           \\
    /* y is read by relu, sigmoid, tanh, elu, leaky_relu; x by the others (NULL allowed for   \\
       the one not read). */                                                                    \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_act_bwd_##SFX(int act, T alpha, const T *dy, const T *y, const T *x, T *dx,              \\
                     ptrdiff_t lo, ptrdiff_t hi)                                                \\
    {                                                                                           \\
        ptrdiff_t i;                                                                            \\
        switch (act) {                                                                          \\
        case FN_ACT_RELU:                                                                       \\
            for (i = lo; i < hi; i++) dx[i] = y[i] > (T)0 ? dy[i] : (T)0;                       \\
            break;                                                                              \\
        case FN_ACT_SIGMOID:                                                                    \\
            for (i = lo; i < hi; i++) { T yi = y[i]; dx[i] = dy[i] * yi * ((T)1 - yi); }         \\
            break;                                                                              \\
        case FN_ACT_TANH:                                                                       \\
            for (i = lo; i < hi; i++) { T yi = y[i]; dx[i] = dy[i] * ((T)1 - yi * yi); }         \\
            break;                                                                              \\
        case FN_ACT_SOFTPLUS:                   /* sigmoid(x) */                                 \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i], s;                                                                 \\
                FN_SIGMOID(T, EXP, FABS, xi, s);                                                \\
                dx[i] = dy[i] * s;                                                              \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_SWISH:                      /* s (1 + x (1 - s)) */                          \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i], s;                                                                 \\
                FN_SIGMOID(T, EXP, FABS, xi, s);                                                \\
                dx[i] = dy[i] * (s * ((T)1 + xi * ((T)1 - s)));                                 \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_GELU:                       /* Phi(x) + x phi(x) */                          \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i];                                                                    \\
                T cdf = (T)0.5 * ERFC(xi * (T)-0.7071067811865476);                             \\
                T pdf = (T)0.3989422804014327 * EXP((T)-0.5 * xi * xi);                         \\
                dx[i] = dy[i] * (cdf + xi * pdf);                                               \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_GELU_TANH:                                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i], x2 = xi * xi;                                                      \\
                T t = TANH(FN_GELU_C(T) * (xi + FN_GELU_A(T) * x2 * xi));                       \\
                T du = FN_GELU_C(T) * ((T)1 + (T)3 * FN_GELU_A(T) * x2);                        \\
                dx[i] = dy[i] * ((T)0.5 * ((T)1 + t) + (T)0.5 * xi * ((T)1 - t * t) * du);     \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_ELU:                        /* x <= 0: alpha exp(x) = y + alpha */           \\
            for (i = lo; i < hi; i++) {                                                         \\
                T yi = y[i];                                                                    \\
                dx[i] = yi > (T)0 ? dy[i] : dy[i] * (yi + alpha);                               \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_LEAKY_RELU:                                                                 \\
            for (i = lo; i < hi; i++) dx[i] = y[i] > (T)0 ? dy[i] : alpha * dy[i];              \\
            break;                                                                              \\
        }                                                                                       \\
    }                                                                                           \\
    /* Rows [r0, r1) of a (rows, cols) matrix, cols >= 1. */                                    \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_softmax_fwd_##SFX(const T *x, T *y, ptrdiff_t cols, ptrdiff_t r0, ptrdiff_t r1)          \\
    {                                                                                           \\
        for (ptrdiff_t r = r0; r < r1; r++) {                                                   \\
            const T *xr = x + r * cols;                                                         \\
            T *yr = y + r * cols;                                                               \\
            T mx = xr[0], sum = 0, inv;                                                         \\
            ptrdiff_t j;                                                                        \\
            for (j = 1; j < cols; j++) mx = xr[j] > mx ? xr[j] : mx;                            \\
            for (j = 0; j < cols; j++) { T e = EXP(xr[j] - mx); yr[j] = e; sum += e; }          \\
            inv = (T)1 / sum;                                                                   \\
            for (j = 0; j < cols; j++) yr[j] *= inv;                                            \\
        }                                                                                       \\
    }                                                                                           \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_softmax_bwd_##SFX(const T *dy, const T *y, T *dx, ptrdiff_t cols, ptrdiff_t r0,          \\
                         ptrdiff_t r1)                                                          \\
    {                                                                                           \\
        for (ptrdiff_t r = r0; r < r1; r++) {                                                   \\
            const T *dyr = dy + r * cols, *yr = y + r * cols;                                   \\
            T *dxr = dx + r * cols;                                                             \\
            T dot = 0;                                                                          \\
            ptrdiff_t j;                                                                        \\
            for (j = 0; j < cols; j++) dot += dyr[j] * yr[j];                                   \\
            for (j = 0; j < cols; j++) dxr[j] = yr[j] * (dyr[j] - dot);                         \\
        }                                                                                       \\
    }

    FN_DEFINE_ACT(float, f32, fn_expf, fn_tanhf, fabsf, fn_expm1f_neg, fn_log1pf_unit, fn_erfcf)
    FN_DEFINE_ACT(double, f64, exp, tanh, fabs, fn_expm1_neg, log1p, erfc)
    """
    enum:
        FN_ACT_RELU
        FN_ACT_SIGMOID
        FN_ACT_TANH
        FN_ACT_SOFTPLUS
        FN_ACT_SWISH
        FN_ACT_GELU
        FN_ACT_GELU_TANH
        FN_ACT_ELU
        FN_ACT_LEAKY_RELU
    void fn_act_fwd_f32(int act, float alpha, const float *x, float *y, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil
    void fn_act_fwd_f64(int act, double alpha, const double *x, double *y, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil
    void fn_act_bwd_f32(int act, float alpha, const float *dy, const float *y, const float *x,
                        float *dx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    void fn_act_bwd_f64(int act, double alpha, const double *dy, const double *y,
                        const double *x, double *dx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    void fn_softmax_fwd_f32(const float *x, float *y, Py_ssize_t cols, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil
    void fn_softmax_fwd_f64(const double *x, double *y, Py_ssize_t cols, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil
    void fn_softmax_bwd_f32(const float *dy, const float *y, float *dx, Py_ssize_t cols,
                            Py_ssize_t r0, Py_ssize_t r1) noexcept nogil
    void fn_softmax_bwd_f64(const double *dy, const double *y, double *dx, Py_ssize_t cols,
                            Py_ssize_t r0, Py_ssize_t r1) noexcept nogil


RELU = FN_ACT_RELU
SIGMOID = FN_ACT_SIGMOID
TANH = FN_ACT_TANH
SOFTPLUS = FN_ACT_SOFTPLUS
SWISH = FN_ACT_SWISH
GELU = FN_ACT_GELU
GELU_TANH = FN_ACT_GELU_TANH
ELU = FN_ACT_ELU
LEAKY_RELU = FN_ACT_LEAKY_RELU
# The activations whose backward reads the forward input x (the others read the output y).
NEEDS_INPUT = frozenset((SOFTPLUS, SWISH, GELU, GELU_TANH))

cdef enum:
    CHUNK_ALIGN = 64   # elementwise thread ranges start at multiples of this many elements


cdef void _fwd_range(int act, double alpha, const floating *x, floating *y, Py_ssize_t lo,
                     Py_ssize_t hi) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_act_fwd_f32(act, <float>alpha, x, y, lo, hi)
    else:
        fn_act_fwd_f64(act, alpha, x, y, lo, hi)
    fn_ftz_end(csr)


cdef void _bwd_range(int act, double alpha, const floating *dy, const floating *y,
                     const floating *x, floating *dx, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_act_bwd_f32(act, <float>alpha, dy, y, x, dx, lo, hi)
    else:
        fn_act_bwd_f64(act, alpha, dy, y, x, dx, lo, hi)
    fn_ftz_end(csr)


def elementwise_forward(int act, const floating[::1] x, floating[::1] out, int nthreads,
                        double alpha=0.0):
    """out = act(x) elementwise (act one of the codes above, alpha for elu / leaky_relu);
    out may be x.  len >= 1."""
    cdef Py_ssize_t n = x.shape[0], t
    cdef const floating *px = &x[0]
    cdef floating *py = &out[0]
    if nthreads <= 1:
        with nogil:
            _fwd_range(act, alpha, px, py, 0, n)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _fwd_range(act, alpha, px, py, split_bound(n, t, nthreads, CHUNK_ALIGN),
                   split_bound(n, t + 1, nthreads, CHUNK_ALIGN))


def elementwise_backward(int act, const floating[::1] dy, const floating[::1] y,
                         floating[::1] out, int nthreads, double alpha=0.0,
                         const floating[::1] x=None):
    """out = dy * act'(x), from the forward output y, or from the forward input x for the
    codes in NEEDS_INPUT (x required then; y may be any array of the same length); out may
    be dy.  len >= 1."""
    cdef Py_ssize_t n = dy.shape[0], t
    cdef const floating *pdy = &dy[0]
    cdef const floating *py = &y[0]
    cdef const floating *px = NULL
    cdef floating *pdx = &out[0]
    if x is not None:
        px = &x[0]
    if nthreads <= 1:
        with nogil:
            _bwd_range(act, alpha, pdy, py, px, pdx, 0, n)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _bwd_range(act, alpha, pdy, py, px, pdx, split_bound(n, t, nthreads, CHUNK_ALIGN),
                   split_bound(n, t + 1, nthreads, CHUNK_ALIGN))


cdef void _softmax_fwd_rows(const floating *x, floating *y, Py_ssize_t cols, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_softmax_fwd_f32(x, y, cols, r0, r1)
    else:
        fn_softmax_fwd_f64(x, y, cols, r0, r1)
    fn_ftz_end(csr)


cdef void _softmax_bwd_rows(const floating *dy, const floating *y, floating *dx, Py_ssize_t cols,
                            Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_softmax_bwd_f32(dy, y, dx, cols, r0, r1)
    else:
        fn_softmax_bwd_f64(dy, y, dx, cols, r0, r1)
    fn_ftz_end(csr)


def softmax_forward(const floating[:, ::1] x, floating[:, ::1] out, int nthreads):
    """Row-wise softmax of a (rows, cols) matrix, rows, cols >= 1; out may be x."""
    cdef Py_ssize_t rows = x.shape[0], cols = x.shape[1], t
    cdef const floating *px = &x[0, 0]
    cdef floating *py = &out[0, 0]
    if nthreads <= 1:
        with nogil:
            _softmax_fwd_rows(px, py, cols, 0, rows)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _softmax_fwd_rows(px, py, cols, split_bound(rows, t, nthreads, 1),
                          split_bound(rows, t + 1, nthreads, 1))


def softmax_backward(const floating[:, ::1] dy, const floating[:, ::1] y, floating[:, ::1] out,
                     int nthreads):
    """out = y * (dy - sum(dy * y, axis=1)) for (rows, cols) matrices; out may be dy."""
    cdef Py_ssize_t rows = dy.shape[0], cols = dy.shape[1], t
    cdef const floating *pdy = &dy[0, 0]
    cdef const floating *py = &y[0, 0]
    cdef floating *pdx = &out[0, 0]
    if nthreads <= 1:
        with nogil:
            _softmax_bwd_rows(pdy, py, pdx, cols, 0, rows)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _softmax_bwd_rows(pdy, py, pdx, cols, split_bound(rows, t, nthreads, 1),
                          split_bound(rows, t + 1, nthreads, 1))
