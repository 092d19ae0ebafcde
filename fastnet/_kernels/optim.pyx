# cython: language_level=3
"""Fused optimizer steps over flat parameter buffers (SGD, Adam, RMSprop, Adagrad) and the
deterministic sums of squares that gradient clipping by norm needs.

Kernel design
-------------
An optimizer step is memory bound: Adam reads p, g, m, v and writes p, m, v (28 bytes per float32
parameter) and does a handful of flops per element, so the only goals are one pass over memory
and a vector body that never stalls it.  Every rule is one C loop over a range ``[lo, hi)`` with
``restrict`` pointers (the op checks the buffers do not overlap), compiled three times on
x86-64 + GCC/glibc (AVX-512, AVX2+FMA, baseline) and chosen by the loader through an ifunc, so
the default build still runs on any x86-64 CPU.

One loop does everything Keras does to a variable in a step, in Keras's order:

    g = clamp(g * scale, -clip, clip)      gradient clipping (scale: clipnorm / global_clipnorm,
                                           clip: clipvalue; scale 1 and clip +inf are exact
                                           no-ops, so the loop never branches on them)
    p = p - (p * wd) * lr                  decoupled weight decay (a compile-time variant)
    the rule's update of p and its slots   (SGD, SGD + momentum, Nesterov, Adam, AMSGrad,
                                           RMSprop plain / momentum / centered, Adagrad)

The rule and its boolean options are compile-time constants of an always-inlined loop, so each
combination is its own tight vector loop; a small switch picks one per call.  Scalars (bias
corrections, 1 - beta) are computed once by the caller.

Per-variable clipping (``clipnorm``) needs a different scale for each variable of the flat
buffer.  The caller describes the buffer as pieces ``[starts[k], starts[k+1])`` with a scale
each (gaps between variables get 1); a thread walks the pieces that intersect its range, so the
scale costs no extra pass over memory.

Threads split the buffer into ``nthreads`` contiguous ranges whose boundaries are multiples of
64 elements (whole cache lines when the buffers are aligned).  Each range is peeled to a 64-byte
boundary of ``p`` first: NumPy allocates with 16-byte alignment, and AVX-512 vectors that
straddle cache lines cost about 9% of a 10M-parameter step.  The update is elementwise, so the
result does not depend on the partition: 1 and N threads give bitwise identical results as long
as the vector body and the scalar remainder round alike, which holds because every operation is
an IEEE add/mul/div/sqrt/compare (FMA contraction is switched off in these loops).  Each range
runs with flush-to-zero and denormals-are-zero (the caller's MXCSR restored after), like the
GEMM's workers: Adam's m decays geometrically into the denormals for parameters whose gradient
stays zero (dead units), and denormal operands are slow.

Sums of squares (for the norms) are computed per fixed chunk chosen by the caller, never per
thread, each chunk with 32 independent double accumulators combined in a fixed tree; the chunk
sums are then added in chunk order by the caller.  The partition of the reduction therefore
never depends on the thread count or on timing, and the result is bitwise reproducible (the
explicit lanes also make it identical across the three ISA clones).
"""
from cython.parallel cimport prange
from cython cimport floating

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound

cdef extern from *:
    """
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

    enum {
        FN_RULE_SGD = 0, FN_RULE_SGD_MOMENTUM = 1, FN_RULE_SGD_NESTEROV = 2,
        FN_RULE_ADAM = 3, FN_RULE_ADAM_AMSGRAD = 4,
        FN_RULE_RMSPROP = 5, FN_RULE_RMSPROP_MOMENTUM = 6, FN_RULE_RMSPROP_CENTERED = 7,
        FN_RULE_RMSPROP_CENTERED_MOMENTUM = 8,
        FN_RULE_ADAGRAD = 9
    };

    /* One step's scalars.  c1..c3 by rule: SGD (momentum, -, -); Adam (lr_t, 1-beta_1,
       1-beta_2); RMSprop (rho, 1-rho, momentum); Adagrad (-, -, -). */
    typedef struct {
        int rule, decay;
        double lr, wd, c1, c2, c3, eps, clip;
    } fn_optim_rule;

    /* The gradient as the rule sees it: scaled, then clamped to [-clip, clip].  Comparisons
       rather than fmin/fmax so that a NaN gradient stays NaN (as in Keras). */
    #define FN_GRAD(T, i) T gi = g[i] * scale; gi = gi < nclip ? nclip : gi; \\
                          gi = gi > clip ? clip : gi
    /* Keras's BaseOptimizer._apply_weight_decay: variable - variable * wd * lr. */
    #define FN_DECAY(pi) if (decay) pi = pi - (pi * wd) * lr

    #define FN_DEFINE_OPTIM(T, SFX, SQRT)                                                       \\
    FN_VEC_INLINE FN_OPT_NOCONTRACT void                                                        \\
    fn_sgd_loop_##SFX(T *restrict p, const T *restrict g, T *restrict vel, ptrdiff_t lo,       \\
                      ptrdiff_t hi, T scale, T clip, T lr, T wd, T mom, const int decay,        \\
                      const int kind)                                                           \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        const T nclip = -clip;                                                                  \\
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \\
            FN_GRAD(T, i);                                                                      \\
            T pi = p[i];                                                                        \\
            FN_DECAY(pi);                                                                       \\
            if (kind == 0) {                                                                    \\
                pi = pi - gi * lr;                                                              \\
            } else {                                                                            \\
                T vi = vel[i] * mom - gi * lr;                                                  \\
                vel[i] = vi;                                                                    \\
                pi = kind == 1 ? pi + vi : pi + (vi * mom - gi * lr);                           \\
            }                                                                                   \\
            p[i] = pi;                                                                          \\
        }                                                                                       \\
    }                                                                                           \\
    FN_VEC_INLINE FN_OPT_NOCONTRACT void                                                        \\
    fn_adam_loop_##SFX(T *restrict p, const T *restrict g, T *restrict m, T *restrict v,       \\
                       T *restrict vhat, ptrdiff_t lo, ptrdiff_t hi, T scale, T clip, T lr,     \\
                       T wd, T lr_t, T omb1, T omb2, T eps, const int decay, const int amsgrad) \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        const T nclip = -clip;                                                                  \\
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \\
            FN_GRAD(T, i);                                                                      \\
            T pi = p[i];                                                                        \\
            FN_DECAY(pi);                                                                       \\
            T mi = m[i] + (gi - m[i]) * omb1;                                                   \\
            T vi = v[i] + (gi * gi - v[i]) * omb2;                                              \\
            m[i] = mi;                                                                          \\
            v[i] = vi;                                                                          \\
            if (amsgrad) {                                                                      \\
                T hv = vhat[i];                                                                 \\
                hv = hv < vi ? vi : hv;                                                         \\
                vhat[i] = hv;                                                                   \\
                vi = hv;                                                                        \\
            }                                                                                   \\
            p[i] = pi - (mi * lr_t) / (SQRT(vi) + eps);                                         \\
        }                                                                                       \\
    }                                                                                           \\
    FN_VEC_INLINE FN_OPT_NOCONTRACT void                                                        \\
    fn_rmsprop_loop_##SFX(T *restrict p, const T *restrict g, T *restrict vel,                 \\
                          T *restrict mom_buf, T *restrict avg, ptrdiff_t lo, ptrdiff_t hi,     \\
                          T scale, T clip, T lr, T wd, T rho, T one_minus_rho, T momentum,      \\
                          T eps, const int decay, const int centered, const int use_momentum)   \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        const T nclip = -clip;                                                                  \\
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \\
            FN_GRAD(T, i);                                                                      \\
            T pi = p[i];                                                                        \\
            FN_DECAY(pi);                                                                       \\
            T ve = rho * vel[i] + one_minus_rho * (gi * gi);                                    \\
            T den;                                                                              \\
            vel[i] = ve;                                                                        \\
            if (centered) {                                                                     \\
                T ag = rho * avg[i] + one_minus_rho * gi;                                       \\
                avg[i] = ag;                                                                    \\
                den = (ve - ag * ag) + eps;                                                     \\
            } else {                                                                            \\
                den = ve + eps;                                                                 \\
            }                                                                                   \\
            T inc = (lr * gi) / SQRT(den);                                                      \\
            if (use_momentum) {                                                                 \\
                T mb = momentum * mom_buf[i] + inc;                                             \\
                mom_buf[i] = mb;                                                                \\
                pi = pi - mb;                                                                   \\
            } else {                                                                            \\
                pi = pi - inc;                                                                  \\
            }                                                                                   \\
            p[i] = pi;                                                                          \\
        }                                                                                       \\
    }                                                                                           \\
    FN_VEC_INLINE FN_OPT_NOCONTRACT void                                                        \\
    fn_adagrad_loop_##SFX(T *restrict p, const T *restrict g, T *restrict acc, ptrdiff_t lo,   \\
                          ptrdiff_t hi, T scale, T clip, T lr, T wd, T eps, const int decay)    \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        const T nclip = -clip;                                                                  \\
        for (ptrdiff_t i = lo; i < hi; i++) {                                                   \\
            FN_GRAD(T, i);                                                                      \\
            T pi = p[i];                                                                        \\
            FN_DECAY(pi);                                                                       \\
            T ac = acc[i] + gi * gi;                                                            \\
            acc[i] = ac;                                                                        \\
            p[i] = pi - (lr * gi) / SQRT(ac + eps);                                             \\
        }                                                                                       \\
    }                                                                                           \\
    FN_VEC_INLINE FN_OPT_NOCONTRACT void                                                        \\
    fn_optim_run_##SFX(const fn_optim_rule *r, T *restrict p, const T *restrict g,             \\
                       T *restrict s1, T *restrict s2, T *restrict s3, ptrdiff_t lo,            \\
                       ptrdiff_t hi, double scale_d)                                            \\
    {                                                                                           \\
        const T scale = (T)scale_d, clip = (T)r->clip, lr = (T)r->lr, wd = (T)r->wd;           \\
        const T c1 = (T)r->c1, c2 = (T)r->c2, c3 = (T)r->c3, eps = (T)r->eps;                  \\
        const int d = r->decay;                                                                 \\
        switch (r->rule) {                                                                      \\
        case FN_RULE_SGD:                                                                       \\
            if (d) fn_sgd_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, c1, 1, 0);          \\
            else fn_sgd_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, c1, 0, 0);            \\
            break;                                                                              \\
        case FN_RULE_SGD_MOMENTUM:                                                              \\
            if (d) fn_sgd_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, c1, 1, 1);          \\
            else fn_sgd_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, c1, 0, 1);            \\
            break;                                                                              \\
        case FN_RULE_SGD_NESTEROV:                                                              \\
            if (d) fn_sgd_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, c1, 1, 2);          \\
            else fn_sgd_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, c1, 0, 2);            \\
            break;                                                                              \\
        case FN_RULE_ADAM:                                                                      \\
            if (d) fn_adam_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2,    \\
                                      c3, eps, 1, 0);                                           \\
            else fn_adam_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2, c3,  \\
                                    eps, 0, 0);                                                 \\
            break;                                                                              \\
        case FN_RULE_ADAM_AMSGRAD:                                                              \\
            if (d) fn_adam_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2,    \\
                                      c3, eps, 1, 1);                                           \\
            else fn_adam_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2, c3,  \\
                                    eps, 0, 1);                                                 \\
            break;                                                                              \\
        case FN_RULE_RMSPROP:                                                                   \\
            if (d) fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2, \\
                                         c3, eps, 1, 0, 0);                                     \\
            else fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2,   \\
                                       c3, eps, 0, 0, 0);                                       \\
            break;                                                                              \\
        case FN_RULE_RMSPROP_MOMENTUM:                                                          \\
            if (d) fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2, \\
                                         c3, eps, 1, 0, 1);                                     \\
            else fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2,   \\
                                       c3, eps, 0, 0, 1);                                       \\
            break;                                                                              \\
        case FN_RULE_RMSPROP_CENTERED:                                                          \\
            if (d) fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2, \\
                                         c3, eps, 1, 1, 0);                                     \\
            else fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2,   \\
                                       c3, eps, 0, 1, 0);                                       \\
            break;                                                                              \\
        case FN_RULE_RMSPROP_CENTERED_MOMENTUM:                                                 \\
            if (d) fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2, \\
                                         c3, eps, 1, 1, 1);                                     \\
            else fn_rmsprop_loop_##SFX(p, g, s1, s2, s3, lo, hi, scale, clip, lr, wd, c1, c2,   \\
                                       c3, eps, 0, 1, 1);                                       \\
            break;                                                                              \\
        case FN_RULE_ADAGRAD:                                                                   \\
            if (d) fn_adagrad_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, eps, 1);        \\
            else fn_adagrad_loop_##SFX(p, g, s1, lo, hi, scale, clip, lr, wd, eps, 0);          \\
            break;                                                                              \\
        default:                                                                                \\
            break;                                                                              \\
        }                                                                                       \\
    }                                                                                           \\
    /* [lo, hi) in two parts, the first up to a 64-byte boundary of p: NumPy's buffers are     \\
       16-byte aligned, vectors that straddle cache lines cost about 5% here, and the other     \\
       buffers usually share p's offset so they align too.  Same bits either way (the scalar    \\
       and vector code round alike). */                                                         \\
    FN_VEC_CLONES FN_OPT_NOCONTRACT static void                                                 \\
    fn_optim_##SFX(const fn_optim_rule *r, T *restrict p, const T *restrict g, T *restrict s1, \\
                   T *restrict s2, T *restrict s3, ptrdiff_t lo, ptrdiff_t hi, double scale_d)  \\
    {                                                                                           \\
        ptrdiff_t cut = lo + (ptrdiff_t)((64u - ((uintptr_t)(p + lo) & 63u)) & 63u)            \\
                                 / (ptrdiff_t)sizeof(T);                                        \\
        ptrdiff_t bounds[3];                                                                    \\
        bounds[0] = lo;                                                                         \\
        bounds[1] = cut < hi ? cut : hi;                                                        \\
        bounds[2] = hi;                                                                         \\
        for (int k = 0; k < 2; k++)                                                             \\
            if (bounds[k] < bounds[k + 1])                                                      \\
                fn_optim_run_##SFX(r, p, g, s1, s2, s3, bounds[k], bounds[k + 1], scale_d);     \\
    }                                                                                           \\
    /* Sum of x[i]^2 over [lo, hi) in double: 32 independent lanes (the lane of an element is  \\
       fixed by its distance from lo), folded in a fixed tree, then the scalar tail. */          \\
    FN_VEC_CLONES FN_OPT_NOCONTRACT static double                                               \\
    fn_sumsq_##SFX(const T *restrict x, ptrdiff_t lo, ptrdiff_t hi)                             \\
    {                                                                                           \\
        FN_OPT_NOCONTRACT_BODY                                                                  \\
        double acc[32];                                                                         \\
        double tail = 0.0;                                                                      \\
        ptrdiff_t i = lo;                                                                       \\
        for (int j = 0; j < 32; j++)                                                            \\
            acc[j] = 0.0;                                                                       \\
        for (; i + 32 <= hi; i += 32) {                                                         \\
            for (int j = 0; j < 32; j++) {                                                      \\
                double t = (double)x[i + j];                                                    \\
                acc[j] = acc[j] + t * t;                                                        \\
            }                                                                                   \\
        }                                                                                       \\
        for (; i < hi; i++) {                                                                   \\
            double t = (double)x[i];                                                            \\
            tail = tail + t * t;                                                                \\
        }                                                                                       \\
        for (int w = 16; w >= 1; w /= 2)                                                        \\
            for (int j = 0; j < w; j++)                                                         \\
                acc[j] = acc[j] + acc[j + w];                                                   \\
        return acc[0] + tail;                                                                   \\
    }

    FN_DEFINE_OPTIM(float, f32, sqrtf)
    FN_DEFINE_OPTIM(double, f64, sqrt)
    """
    ctypedef struct fn_optim_rule:
        int rule
        int decay
        double lr
        double wd
        double c1
        double c2
        double c3
        double eps
        double clip
    void fn_optim_f32(const fn_optim_rule *r, float *p, const float *g, float *s1, float *s2,
                      float *s3, Py_ssize_t lo, Py_ssize_t hi, double scale) noexcept nogil
    void fn_optim_f64(const fn_optim_rule *r, double *p, const double *g, double *s1,
                      double *s2, double *s3, Py_ssize_t lo, Py_ssize_t hi,
                      double scale) noexcept nogil
    double fn_sumsq_f32(const float *x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil
    double fn_sumsq_f64(const double *x, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil


# Rule codes (the C enum), for the ops layer.
RULE_SGD = 0
RULE_SGD_MOMENTUM = 1
RULE_SGD_NESTEROV = 2
RULE_ADAM = 3
RULE_ADAM_AMSGRAD = 4
RULE_RMSPROP = 5
RULE_RMSPROP_MOMENTUM = 6
RULE_RMSPROP_CENTERED = 7
RULE_RMSPROP_CENTERED_MOMENTUM = 8
RULE_ADAGRAD = 9

cdef enum:
    CHUNK_ALIGN = 64   # thread ranges start at multiples of this many elements


cdef inline void _call(const fn_optim_rule *r, floating *p, const floating *g, floating *s1,
                       floating *s2, floating *s3, Py_ssize_t lo, Py_ssize_t hi,
                       double scale) noexcept nogil:
    if floating is float:
        fn_optim_f32(r, p, g, s1, s2, s3, lo, hi, scale)
    else:
        fn_optim_f64(r, p, g, s1, s2, s3, lo, hi, scale)


cdef void _step_range(const fn_optim_rule *r, floating *p, const floating *g, floating *s1,
                      floating *s2, floating *s3, Py_ssize_t lo, Py_ssize_t hi, double scale,
                      const Py_ssize_t *starts, const double *scales,
                      Py_ssize_t npieces) noexcept nogil:
    """Update [lo, hi): with one scale, or walking the pieces (starts, scales) that meet it."""
    cdef unsigned csr
    cdef Py_ssize_t a, b, mid, end
    if lo >= hi:
        return
    csr = fn_ftz_begin()
    if npieces == 0:
        _call(r, p, g, s1, s2, s3, lo, hi, scale)
    else:
        # the piece holding lo: starts[a] <= lo < starts[a + 1]
        a = 0
        b = npieces
        while b - a > 1:
            mid = (a + b) // 2
            if starts[mid] <= lo:
                a = mid
            else:
                b = mid
        while lo < hi:
            end = starts[a + 1]
            if end > hi:
                end = hi
            _call(r, p, g, s1, s2, s3, lo, end, scales[a])
            lo = end
            a += 1
    fn_ftz_end(csr)


cdef inline floating *_ptr(floating[::1] a) noexcept:
    return NULL if a is None or a.shape[0] == 0 else &a[0]


def step(int rule, bint decay, floating[::1] p, const floating[::1] g, floating[::1] s1,
         floating[::1] s2, floating[::1] s3, double lr, double wd, double c1, double c2,
         double c3, double eps, double clip, double scale, const Py_ssize_t[::1] starts,
         const double[::1] scales, int nthreads):
    """One optimizer step in place over the whole buffer (n >= 1; no overlap assumed).

    ``rule`` is one of the RULE_* codes; s1..s3 its slot buffers in the order the rule names
    them (SGD: velocity; Adam: m, v, v_hat; RMSprop: velocity, momentum, average_gradient;
    Adagrad: accumulator), None where unused.  ``decay``: apply p -= (p*wd)*lr first.
    ``clip``: clamp the (scaled) gradient to [-clip, clip] (+inf: none).  The gradient scale is
    ``scale`` everywhere when ``starts`` is None, else ``scales[k]`` on
    [starts[k], starts[k+1]) (starts[0] == 0, starts[-1] == n).  Scalars are rounded to the
    buffers' dtype before use.
    """
    cdef fn_optim_rule r
    cdef Py_ssize_t n = p.shape[0], t, npieces = 0
    cdef floating *pp = &p[0]
    cdef const floating *pg = &g[0]
    cdef floating *p1 = _ptr(s1)
    cdef floating *p2 = _ptr(s2)
    cdef floating *p3 = _ptr(s3)
    cdef const Py_ssize_t *pstarts = NULL
    cdef const double *pscales = NULL
    r.rule = rule
    r.decay = decay
    r.lr = lr
    r.wd = wd
    r.c1 = c1
    r.c2 = c2
    r.c3 = c3
    r.eps = eps
    r.clip = clip
    if starts is not None and starts.shape[0] > 1:
        npieces = starts.shape[0] - 1
        pstarts = &starts[0]
        pscales = &scales[0]
    if nthreads <= 1:
        with nogil:
            _step_range(&r, pp, pg, p1, p2, p3, 0, n, scale, pstarts, pscales, npieces)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _step_range(&r, pp, pg, p1, p2, p3, split_bound(n, t, nthreads, CHUNK_ALIGN),
                    split_bound(n, t + 1, nthreads, CHUNK_ALIGN), scale, pstarts, pscales,
                    npieces)


def chunk_sumsq(const floating[::1] x, const Py_ssize_t[::1] chunk_lo,
                const Py_ssize_t[::1] chunk_hi, double[::1] out, int nthreads):
    """out[c] = sum of x[i]**2 for i in [chunk_lo[c], chunk_hi[c]), in double.

    Each chunk is reduced alone in a fixed order, so ``out`` does not depend on ``nthreads``.
    """
    cdef Py_ssize_t c, nchunks = chunk_lo.shape[0]
    cdef const floating *px
    if nchunks == 0 or x.shape[0] == 0:
        return
    px = &x[0]
    if nthreads <= 1:
        with nogil:
            for c in range(nchunks):
                if floating is float:
                    out[c] = fn_sumsq_f32(px, chunk_lo[c], chunk_hi[c])
                else:
                    out[c] = fn_sumsq_f64(px, chunk_lo[c], chunk_hi[c])
        return
    for c in prange(nchunks, nogil=True, num_threads=nthreads, schedule='static'):
        if floating is float:
            out[c] = fn_sumsq_f32(px, chunk_lo[c], chunk_hi[c])
        else:
            out[c] = fn_sumsq_f64(px, chunk_lo[c], chunk_hi[c])
