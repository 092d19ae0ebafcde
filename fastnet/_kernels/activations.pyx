# cython: language_level=3
"""Activation kernels: relu, sigmoid, tanh (elementwise) and softmax (over rows), with backwards.

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

In-place use: ``out`` may be the same buffer as ``x`` (forward) or ``dy`` (backward): each loop
reads element i (or a whole row, before writing it) before writing element i, and the pointers
are not declared ``restrict``.

Numerics: sigmoid uses exp(-|x|) so it never overflows; softmax subtracts the row maximum.
relu keeps NaN (x < 0 ? 0 : x).  float64 calls libm's exp/tanh.  float32 uses the branch-free
``fn_expf``/``fn_tanhf`` below (about 2 ulp), because gcc cannot vectorize calls to libm's expf
without -ffast-math and the scalar calls cost 5-10 ns per element, more than the memory traffic.
"""
from cython.parallel cimport prange
from cython cimport floating

cdef extern from *:
    """
    #include <math.h>
    #include <stddef.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \\
        && defined(__GLIBC__) && __GNUC__ >= 11
    #define FN_ACT_CLONES \\
        __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define FN_ACT_CLONES
    #endif
    #if defined(__GNUC__) && !defined(__clang__)
    /* Without it gcc will not if-convert the selects in sigmoid/exp below (a comparison could
       raise an FP exception flag) and leaves the loops scalar except with AVX-512 masks.  The
       kernels never read the exception flags. */
    #define FN_ACT_NOTRAP __attribute__((optimize("no-trapping-math")))
    #else
    #define FN_ACT_NOTRAP
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
    #include <stdint.h>
    #include <string.h>

    enum { FN_ACT_RELU = 0, FN_ACT_SIGMOID = 1, FN_ACT_TANH = 2 };

    /* exp and tanh for float32 without branches or calls, so that gcc vectorizes the loops
       around them (libm's expf/tanhf are scalar calls without -ffast-math).  Cephes's
       polynomials: relative error below 2e-7 (about 2 ulp) over the whole range; +-inf, NaN,
       overflow to inf and underflow through the subnormals to 0 behave like libm's. */
    FN_ACT_NOTRAP static inline float fn_pow2i(int32_t k)      /* 2**k for -126 <= k <= 127 */
    {
        uint32_t bits = (uint32_t)(k + 127) << 23;
        float f;
        memcpy(&f, &bits, sizeof f);
        return f;
    }

    FN_ACT_NOTRAP static inline float fn_expf(float x)
    {
        const float round_magic = 12582912.0f;          /* 1.5 * 2**23: round to nearest */
        float xc, n, r, p;
        int32_t k, k1;
        xc = x < -105.0f ? -105.0f : x;                  /* exp(-105) rounds to 0 */
        xc = xc > 89.0f ? 89.0f : xc;                    /* exp(89) overflows to inf */
        xc = xc == xc ? xc : 0.0f;                       /* NaN: keep the int cast defined */
        n = (xc * 1.44269504088896341f + round_magic) - round_magic;
        r = xc - n * 0.693359375f;                       /* ln 2 in two pieces (Cody-Waite) */
        r = r - n * -2.12194440e-4f;
        p = 1.9875691500e-4f;
        p = p * r + 1.3981999507e-3f;
        p = p * r + 8.3334519073e-3f;
        p = p * r + 4.1665795894e-2f;
        p = p * r + 1.6666665459e-1f;
        p = p * r + 5.0000001201e-1f;
        p = p * (r * r) + r + 1.0f;
        k = (int32_t)n;                                  /* -152..129 */
        k1 = k / 2;                                      /* 2**k as two factors in range */
        p = p * fn_pow2i(k1) * fn_pow2i(k - k1);
        return x == x ? p : x;
    }

    FN_ACT_NOTRAP static inline float fn_tanhf(float x)
    {
        float ax = fabsf(x), z = x * x, small, large, e;
        small = -5.70498872745e-3f;                      /* |x| < 0.625: odd polynomial */
        small = small * z + 2.06390887954e-2f;
        small = small * z - 5.37397155531e-2f;
        small = small * z + 1.33314422036e-1f;
        small = small * z - 3.33332819422e-1f;
        small = small * z * x + x;
        e = fn_expf(2.0f * ax);                          /* else 1 - 2 / (exp(2|x|) + 1) */
        large = 1.0f - 2.0f / (e + 1.0f);
        return copysignf(ax < 0.625f ? small : large, x);   /* odd; keeps tanh(-0) = -0 */
    }

    #define FN_DEFINE_ACT(T, SFX, EXP, TANH, FABS)                                              \\
    FN_ACT_CLONES FN_ACT_NOTRAP static void                                                     \\
    fn_act_fwd_##SFX(int act, const T *x, T *y, ptrdiff_t lo, ptrdiff_t hi)                     \\
    {                                                                                           \\
        ptrdiff_t i;                                                                            \\
        switch (act) {                                                                          \\
        case FN_ACT_RELU:                                                                       \\
            for (i = lo; i < hi; i++) { T xi = x[i]; y[i] = xi < (T)0 ? (T)0 : xi; }             \\
            break;                                                                              \\
        case FN_ACT_SIGMOID:                                                                    \\
            for (i = lo; i < hi; i++) {                                                         \\
                T xi = x[i];                                                                    \\
                T z = EXP(-FABS(xi));           /* in (0, 1]: never overflows */                 \\
                T s = (T)1 / ((T)1 + z);                                                        \\
                y[i] = xi >= (T)0 ? s : z * s;                                                  \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_ACT_TANH:                                                                       \\
            for (i = lo; i < hi; i++) y[i] = TANH(x[i]);                                        \\
            break;                                                                              \\
        }                                                                                       \\
    }                                                                                           \\
    FN_ACT_CLONES FN_ACT_NOTRAP static void                                                     \\
    fn_act_bwd_##SFX(int act, const T *dy, const T *y, T *dx, ptrdiff_t lo, ptrdiff_t hi)       \\
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
        }                                                                                       \\
    }                                                                                           \\
    /* Rows [r0, r1) of a (rows, cols) matrix, cols >= 1. */                                    \\
    FN_ACT_CLONES FN_ACT_NOTRAP static void                                                     \\
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
    FN_ACT_CLONES FN_ACT_NOTRAP static void                                                     \\
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

    FN_DEFINE_ACT(float, f32, fn_expf, fn_tanhf, fabsf)
    FN_DEFINE_ACT(double, f64, exp, tanh, fabs)
    """
    unsigned fn_ftz_begin() noexcept nogil
    void fn_ftz_end(unsigned csr) noexcept nogil
    enum:
        FN_ACT_RELU
        FN_ACT_SIGMOID
        FN_ACT_TANH
    void fn_act_fwd_f32(int act, const float *x, float *y, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil
    void fn_act_fwd_f64(int act, const double *x, double *y, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil
    void fn_act_bwd_f32(int act, const float *dy, const float *y, float *dx, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil
    void fn_act_bwd_f64(int act, const double *dy, const double *y, double *dx, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil
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

cdef enum:
    CHUNK_ALIGN = 64   # elementwise thread ranges start at multiples of this many elements


cdef inline Py_ssize_t _bound(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nthreads,
                              Py_ssize_t align) noexcept nogil:
    """Start of piece t of n items split in nthreads (t = nthreads gives n)."""
    if t >= nthreads:
        return n
    return (n * t // nthreads) // align * align


cdef void _fwd_range(int act, const floating *x, floating *y, Py_ssize_t lo,
                     Py_ssize_t hi) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_act_fwd_f32(act, x, y, lo, hi)
    else:
        fn_act_fwd_f64(act, x, y, lo, hi)
    fn_ftz_end(csr)


cdef void _bwd_range(int act, const floating *dy, const floating *y, floating *dx, Py_ssize_t lo,
                     Py_ssize_t hi) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_act_bwd_f32(act, dy, y, dx, lo, hi)
    else:
        fn_act_bwd_f64(act, dy, y, dx, lo, hi)
    fn_ftz_end(csr)


def elementwise_forward(int act, const floating[::1] x, floating[::1] out, int nthreads):
    """out = act(x) elementwise for act in RELU, SIGMOID, TANH; out may be x.  len >= 1."""
    cdef Py_ssize_t n = x.shape[0], t
    cdef const floating *px = &x[0]
    cdef floating *py = &out[0]
    if nthreads <= 1:
        with nogil:
            _fwd_range(act, px, py, 0, n)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _fwd_range(act, px, py, _bound(n, t, nthreads, CHUNK_ALIGN),
                   _bound(n, t + 1, nthreads, CHUNK_ALIGN))


def elementwise_backward(int act, const floating[::1] dy, const floating[::1] y,
                         floating[::1] out, int nthreads):
    """out = dy * act'(x), written with the forward output y; out may be dy.  len >= 1."""
    cdef Py_ssize_t n = dy.shape[0], t
    cdef const floating *pdy = &dy[0]
    cdef const floating *py = &y[0]
    cdef floating *pdx = &out[0]
    if nthreads <= 1:
        with nogil:
            _bwd_range(act, pdy, py, pdx, 0, n)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _bwd_range(act, pdy, py, pdx, _bound(n, t, nthreads, CHUNK_ALIGN),
                   _bound(n, t + 1, nthreads, CHUNK_ALIGN))


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
        _softmax_fwd_rows(px, py, cols, _bound(rows, t, nthreads, 1),
                          _bound(rows, t + 1, nthreads, 1))


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
        _softmax_bwd_rows(pdy, py, pdx, cols, _bound(rows, t, nthreads, 1),
                          _bound(rows, t + 1, nthreads, 1))
