# cython: language_level=3
"""Loss kernels: cross-entropies over rows (sparse/dense, from logits/probabilities) and the
elementwise losses (squared and absolute error, Huber, binary cross-entropy, KL divergence),
each returning its weighted sum and writing its gradient in the same pass.

Kernel design
-------------
The cross-entropies work on a C-contiguous (R, C) matrix one row at a time: a ``cdef ... nogil``
function computes one row's loss (into ``row_loss[r]``, float64, already multiplied by the row's
weight) and, when asked, writes the row's gradient and probabilities.  The wrappers split the
rows among ``nthreads`` threads in contiguous static pieces and then add ``row_loss`` up
serially in row order, so the loss and the gradients are bitwise the same for every thread
count.  The gradient is scaled by ``scale`` (1/divisor, e.g. 1/N for Keras's
'sum_over_batch_size') times the row's weight inside the row pass: no second pass over memory.

The elementwise losses run over fixed blocks of BLOCK elements, one float64 partial sum per
block, the partials added in block order (again independent of the thread count).  A block is
cut at sample boundaries when there are per-sample weights (``per_weight`` consecutive elements
share one weight), so each piece of a block is one tight loop with one weight.  Every piece runs
with flush-to-zero and denormals-are-zero set, the caller's MXCSR restored after.

Weights: ``weights`` is None or a vector of the predictions' dtype; row r (cross-entropies) or
element i (elementwise) uses ``weights[r // per_weight]`` (``weights[i // per_weight]``).

Cross-entropy formulas (t = label, T = target row, S = sum of a probability row, eps = clip
epsilon; dense targets are smoothed on the fly, T' = a T + b, with a = 1 and b = 0 when there is
no label smoothing, which leaves T bitwise unchanged):
  from logits:  loss = logsumexp(x) - x_t  (dense: sum_j T'_j (logsumexp(x) - x_j))
                grad = softmax(x) * sum(T') - T'          (sparse: T' one-hot)
  from probs (Keras 3): o = p / S; q = clip(o, eps, 1 - eps); loss = -sum_j T'_j log q_j
                grad_k = (g_k - sum_j g_j o_j) / S with g_j = -T'_j / o_j where o_j is inside
                [eps, 1 - eps] and 0 where it was clipped
  wrt_logits (the probabilities came from a softmax whose backward is skipped):
                grad = p * sum(T') - T', loss as from probs.

Elementwise formulas (d = p - t, value v per element and dv/dp):
  MSE  v = d^2, 2d          MAE  v = |d|, sign(d) (0 at 0)
  HUBER (delta = p0)  v = d^2/2, d  where |d| <= delta;  delta |d| - delta^2/2, delta sign(d)
  BCE_PROBS  t' = p0 t + p1; q = clip(p, eps, 1 - eps); v = -(t' log q + (1 - t') log(1 - q)),
             (q - t') / (q (1 - q)) where p is inside the clip range, else 0
  BCE_LOGITS t' = p0 t + p1; v = max(x, 0) - x t' + log1p(exp(-|x|)), sigmoid(x) - t'
  KLD  tc = clip(t, eps, 1), pc = clip(p, eps, 1); v = tc log(tc / pc), -tc / pc where p is
       inside [eps, 1], else 0
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport exp, expf, log, logf, log1p, log1pf
from libc.stdint cimport int32_t, int64_t

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound

ctypedef fused label_t:
    int32_t
    int64_t

cdef extern from *:
    """
    /* The cheap elementwise losses as SIMD loops: the value summed in double, grad (when not
       NULL) = gscale * dv/dp.  `omp simd reduction` lets the compiler reorder the sum within
       one call; a call always covers the same elements, so results do not depend on threads. */
    #define FN_DEFINE_ELEMWISE(T, SFX, FABS)                                                    \\
    FN_VEC_CLONES static double                                                                 \\
    fn_sqerr_##SFX(const T *p, const T *t, T *grad, ptrdiff_t lo, ptrdiff_t hi, T gscale)       \\
    {                                                                                           \\
        double s = 0.0;                                                                         \\
        ptrdiff_t i;                                                                            \\
        if (grad) {                                                                             \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T d = p[i] - t[i];                                                              \\
                grad[i] = gscale * d;                                                           \\
                s += (double)d * (double)d;                                                     \\
            }                                                                                   \\
        } else {                                                                                \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                double d = (double)(p[i] - t[i]);                                               \\
                s += d * d;                                                                     \\
            }                                                                                   \\
        }                                                                                       \\
        return s;                                                                               \\
    }                                                                                           \\
    FN_VEC_CLONES static double                                                                 \\
    fn_abserr_##SFX(const T *p, const T *t, T *grad, ptrdiff_t lo, ptrdiff_t hi, T gscale)      \\
    {                                                                                           \\
        double s = 0.0;                                                                         \\
        ptrdiff_t i;                                                                            \\
        if (grad) {                                                                             \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T d = p[i] - t[i];                                                              \\
                s += (double)FABS(d);                                                           \\
                grad[i] = d > 0 ? gscale : (d < 0 ? -gscale : (T)0);                            \\
            }                                                                                   \\
        } else {                                                                                \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T d = p[i] - t[i];                                                              \\
                s += (double)FABS(d);                                                           \\
            }                                                                                   \\
        }                                                                                       \\
        return s;                                                                               \\
    }                                                                                           \\
    FN_VEC_CLONES static double                                                                 \\
    fn_huber_##SFX(const T *p, const T *t, T *grad, ptrdiff_t lo, ptrdiff_t hi, T gscale,       \\
                   T delta)                                                                     \\
    {                                                                                           \\
        double s = 0.0, dl = (double)delta;                                                     \\
        ptrdiff_t i;                                                                            \\
        if (grad) {                                                                             \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T d = p[i] - t[i];                                                              \\
                double dd = (double)d, ad = (double)FABS(d);                                    \\
                int inside = FABS(d) <= delta;                                                  \\
                s += inside ? 0.5 * dd * dd : dl * ad - 0.5 * dl * dl;                          \\
                grad[i] = gscale * (inside ? d : (d > 0 ? delta : -delta));                     \\
            }                                                                                   \\
        } else {                                                                                \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T d = p[i] - t[i];                                                              \\
                double dd = (double)d, ad = (double)FABS(d);                                    \\
                s += FABS(d) <= delta ? 0.5 * dd * dd : dl * ad - 0.5 * dl * dl;                \\
            }                                                                                   \\
        }                                                                                       \\
        return s;                                                                               \\
    }
    FN_DEFINE_ELEMWISE(float, f32, fabsf)
    FN_DEFINE_ELEMWISE(double, f64, fabs)
    """
    double fn_sqerr_f32(const float *p, const float *t, float *grad, Py_ssize_t lo,
                        Py_ssize_t hi, float gscale) noexcept nogil
    double fn_sqerr_f64(const double *p, const double *t, double *grad, Py_ssize_t lo,
                        Py_ssize_t hi, double gscale) noexcept nogil
    double fn_abserr_f32(const float *p, const float *t, float *grad, Py_ssize_t lo,
                         Py_ssize_t hi, float gscale) noexcept nogil
    double fn_abserr_f64(const double *p, const double *t, double *grad, Py_ssize_t lo,
                         Py_ssize_t hi, double gscale) noexcept nogil
    double fn_huber_f32(const float *p, const float *t, float *grad, Py_ssize_t lo,
                        Py_ssize_t hi, float gscale, float delta) noexcept nogil
    double fn_huber_f64(const double *p, const double *t, double *grad, Py_ssize_t lo,
                        Py_ssize_t hi, double gscale, double delta) noexcept nogil


cdef enum:
    BLOCK = 4096   # elements per partial sum of the elementwise losses

# Elementwise loss kinds (``elementwise_loss``'s ``kind``); fastnet.ops.losses mirrors them.
cdef enum:
    K_MSE = 0
    K_MAE = 1
    K_HUBER = 2
    K_BCE_PROBS = 3
    K_BCE_LOGITS = 4
    K_KLD = 5


cdef inline floating _exp(floating x) noexcept nogil:
    if floating is float:
        return expf(x)
    else:
        return exp(x)


cdef inline floating _log(floating x) noexcept nogil:
    if floating is float:
        return logf(x)
    else:
        return log(x)


cdef inline floating _log1p(floating x) noexcept nogil:
    if floating is float:
        return log1pf(x)
    else:
        return log1p(x)


cdef inline double _sum_rows(const double *row_loss, Py_ssize_t n) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += row_loss[i]
    return s


cdef inline floating _clip(floating x, floating lo, floating hi) noexcept nogil:
    return lo if x < lo else (hi if x > hi else x)


cdef inline floating _row_weight(const floating *weights, Py_ssize_t r,
                                 Py_ssize_t per_weight) noexcept nogil:
    return weights[r // per_weight] if weights != NULL else <floating>1


# ---- from logits -------------------------------------------------------------------------------

cdef floating _exp_row(const floating *x, floating *e, Py_ssize_t cols,
                       floating *mx_out) noexcept nogil:
    """sum_j exp(x_j - max x); the max goes to mx_out, exp(x - max) to e when e != NULL."""
    cdef floating mx = x[0], s = 0, ej
    cdef Py_ssize_t j
    for j in range(1, cols):
        if x[j] > mx:
            mx = x[j]
    if e != NULL:
        for j in range(cols):
            ej = _exp(x[j] - mx)
            e[j] = ej
            s += ej
    else:
        for j in range(cols):
            s += _exp(x[j] - mx)
    mx_out[0] = mx
    return s


cdef void _sparse_logits_rows(const floating *x, const label_t *labels, floating *grad,
                              floating *probs, double scale, const floating *weights,
                              Py_ssize_t per_weight, double *row_loss, Py_ssize_t cols,
                              Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j, t
    cdef const floating *xr
    cdef floating *e
    cdef floating s, mx, inv, pj, w, sc
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        xr = x + r * cols
        t = <Py_ssize_t>labels[r]
        w = _row_weight(weights, r, per_weight)
        e = NULL
        if probs != NULL:
            e = probs + r * cols
        elif grad != NULL:
            e = grad + r * cols
        s = _exp_row(xr, e, cols, &mx)
        row_loss[r] = <double>w * <double>(_log(s) - (xr[t] - mx))
        if e == NULL:
            continue
        inv = 1 / s
        sc = <floating>scale * w
        for j in range(cols):
            pj = e[j] * inv
            if probs != NULL:
                probs[r * cols + j] = pj
            if grad != NULL:
                grad[r * cols + j] = (pj - <floating>(j == t)) * sc
    fn_ftz_end(csr)


cdef void _dense_logits_rows(const floating *x, const floating *targets, floating *grad,
                             floating *probs, double scale, const floating *weights,
                             Py_ssize_t per_weight, double smooth_a, double smooth_b,
                             double *row_loss, Py_ssize_t cols, Py_ssize_t r0,
                             Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating *xr
    cdef const floating *tr
    cdef floating *e
    cdef floating s, mx, log_s, inv, pj, tj, tsum, w, sc
    cdef floating a = <floating>smooth_a, b = <floating>smooth_b
    cdef double loss
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        xr = x + r * cols
        tr = targets + r * cols
        w = _row_weight(weights, r, per_weight)
        e = NULL
        if probs != NULL:
            e = probs + r * cols
        elif grad != NULL:
            e = grad + r * cols
        s = _exp_row(xr, e, cols, &mx)
        log_s = _log(s)
        loss = 0.0
        tsum = 0
        for j in range(cols):
            tj = a * tr[j] + b
            # -log softmax_j = log s - (x_j - max)
            loss += <double>tj * <double>(log_s - (xr[j] - mx))
            tsum += tj
        row_loss[r] = <double>w * loss
        if e == NULL:
            continue
        inv = 1 / s
        sc = <floating>scale * w
        for j in range(cols):
            pj = e[j] * inv
            if probs != NULL:
                probs[r * cols + j] = pj
            if grad != NULL:
                grad[r * cols + j] = (pj * tsum - (a * tr[j] + b)) * sc
    fn_ftz_end(csr)


def sparse_from_logits(const floating[:, ::1] logits, const label_t[::1] labels,
                       floating[:, ::1] grad, floating[:, ::1] probs, double scale,
                       const floating[::1] weights, Py_ssize_t per_weight,
                       double[::1] row_loss, int nthreads):
    """Sum over rows of w_r (logsumexp(x) - x[label]); grad = (softmax - onehot) * scale * w_r
    and probs = softmax when given (grad, probs, weights may be None).  R, C >= 1, labels in
    [0, C), per_weight >= 1, no overlaps."""
    cdef Py_ssize_t n = logits.shape[0], cols = logits.shape[1], t
    cdef const floating *px = &logits[0, 0]
    cdef const label_t *pl = &labels[0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef floating *pp = &probs[0, 0] if probs is not None else NULL
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _sparse_logits_rows(px, pl, pg, pp, scale, pw, per_weight, prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _sparse_logits_rows(px, pl, pg, pp, scale, pw, per_weight, prl, cols,
                                split_bound(n, t, nthreads, 1),
                                split_bound(n, t + 1, nthreads, 1))
    return _sum_rows(prl, n)


def dense_from_logits(const floating[:, ::1] logits, const floating[:, ::1] targets,
                      floating[:, ::1] grad, floating[:, ::1] probs, double scale,
                      const floating[::1] weights, Py_ssize_t per_weight, double smooth_a,
                      double smooth_b, double[::1] row_loss, int nthreads):
    """Sum over rows of w_r sum_j T'_j (logsumexp(x) - x_j) with T' = a T + b; grad =
    (softmax sum(T') - T') * scale * w_r and probs = softmax when given (may be None)."""
    cdef Py_ssize_t n = logits.shape[0], cols = logits.shape[1], t
    cdef const floating *px = &logits[0, 0]
    cdef const floating *pt = &targets[0, 0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef floating *pp = &probs[0, 0] if probs is not None else NULL
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _dense_logits_rows(px, pt, pg, pp, scale, pw, per_weight, smooth_a, smooth_b, prl,
                               cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _dense_logits_rows(px, pt, pg, pp, scale, pw, per_weight, smooth_a, smooth_b, prl,
                               cols, split_bound(n, t, nthreads, 1),
                               split_bound(n, t + 1, nthreads, 1))
    return _sum_rows(prl, n)


# ---- from probabilities (Keras 3: normalize, clip, log) ----------------------------------------

cdef void _sparse_probs_rows(const floating *p, const label_t *labels, floating *grad,
                             double scale, const floating *weights, Py_ssize_t per_weight,
                             double eps_lo, double eps_hi, bint wrt_logits, double *row_loss,
                             Py_ssize_t cols, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j, t
    cdef const floating *pr
    cdef floating *gr
    cdef floating s, o, c, w, sc
    cdef floating lo = <floating>eps_lo, hi = <floating>eps_hi
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        pr = p + r * cols
        t = <Py_ssize_t>labels[r]
        w = _row_weight(weights, r, per_weight)
        s = 0
        for j in range(cols):
            s += pr[j]
        o = pr[t] / s
        row_loss[r] = <double>w * <double>(-_log(_clip(o, lo, hi)))
        if grad == NULL:
            continue
        gr = grad + r * cols
        sc = <floating>scale * w
        if wrt_logits:
            for j in range(cols):
                gr[j] = (pr[j] - <floating>(j == t)) * sc
        elif lo <= o <= hi:
            # d/dp_k of -log(p_t / S) = (o_t - [k == t]) / (o_t S)
            c = sc / s
            for j in range(cols):
                gr[j] = c
            gr[t] = (o - 1) / o * c
        else:
            for j in range(cols):
                gr[j] = 0
    fn_ftz_end(csr)


cdef void _dense_probs_rows(const floating *p, const floating *targets, floating *grad,
                            double scale, const floating *weights, Py_ssize_t per_weight,
                            double smooth_a, double smooth_b, double eps_lo, double eps_hi,
                            bint wrt_logits, double *row_loss, Py_ssize_t cols, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating *pr
    cdef const floating *tr
    cdef floating *gr
    cdef floating s, o, c, tj, t_in, tsum, w, sc
    cdef floating lo = <floating>eps_lo, hi = <floating>eps_hi
    cdef floating a = <floating>smooth_a, b = <floating>smooth_b
    cdef double loss
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        pr = p + r * cols
        tr = targets + r * cols
        w = _row_weight(weights, r, per_weight)
        s = 0
        for j in range(cols):
            s += pr[j]
        loss = 0.0
        t_in = 0   # sum of T'_j over the unclipped o_j
        tsum = 0
        for j in range(cols):
            o = pr[j] / s
            tj = a * tr[j] + b
            loss -= <double>tj * <double>_log(_clip(o, lo, hi))
            tsum += tj
            if lo <= o <= hi:
                t_in += tj
        row_loss[r] = <double>w * loss
        if grad == NULL:
            continue
        gr = grad + r * cols
        sc = <floating>scale * w
        if wrt_logits:
            for j in range(cols):
                gr[j] = (pr[j] * tsum - (a * tr[j] + b)) * sc
        else:
            # g_j = -T'_j / o_j where unclipped (else 0); grad_k = (g_k - sum_j g_j o_j) / S
            # and sum_j g_j o_j = -t_in.
            c = sc / s
            for j in range(cols):
                o = pr[j] / s
                if lo <= o <= hi:
                    gr[j] = (t_in - (a * tr[j] + b) / o) * c
                else:
                    gr[j] = t_in * c
    fn_ftz_end(csr)


def sparse_from_probs(const floating[:, ::1] pred, const label_t[::1] labels,
                      floating[:, ::1] grad, double scale, const floating[::1] weights,
                      Py_ssize_t per_weight, double eps_lo, double eps_hi, bint wrt_logits,
                      double[::1] row_loss, int nthreads):
    """Sum over rows of -w_r log(clip(p_t / sum(p), eps_lo, eps_hi)); grad (may be None) is
    that loss's gradient wrt p times scale, or (p - onehot) * scale * w_r when wrt_logits."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], t
    cdef const floating *pp = &pred[0, 0]
    cdef const label_t *pl = &labels[0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _sparse_probs_rows(pp, pl, pg, scale, pw, per_weight, eps_lo, eps_hi, wrt_logits,
                               prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _sparse_probs_rows(pp, pl, pg, scale, pw, per_weight, eps_lo, eps_hi, wrt_logits,
                               prl, cols, split_bound(n, t, nthreads, 1),
                               split_bound(n, t + 1, nthreads, 1))
    return _sum_rows(prl, n)


def dense_from_probs(const floating[:, ::1] pred, const floating[:, ::1] targets,
                     floating[:, ::1] grad, double scale, const floating[::1] weights,
                     Py_ssize_t per_weight, double smooth_a, double smooth_b, double eps_lo,
                     double eps_hi, bint wrt_logits, double[::1] row_loss, int nthreads):
    """Sum over rows of -w_r sum_j T'_j log(clip(p_j / sum(p), eps_lo, eps_hi)), T' = a T + b;
    grad (may be None) is its gradient wrt p times scale, or (p sum(T') - T') * scale * w_r
    when wrt_logits."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], t
    cdef const floating *pp = &pred[0, 0]
    cdef const floating *pt = &targets[0, 0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _dense_probs_rows(pp, pt, pg, scale, pw, per_weight, smooth_a, smooth_b, eps_lo,
                              eps_hi, wrt_logits, prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _dense_probs_rows(pp, pt, pg, scale, pw, per_weight, smooth_a, smooth_b, eps_lo,
                              eps_hi, wrt_logits, prl, cols, split_bound(n, t, nthreads, 1),
                              split_bound(n, t + 1, nthreads, 1))
    return _sum_rows(prl, n)


# ---- elementwise losses ------------------------------------------------------------------------

cdef double _bce_probs(const floating *p, const floating *t, floating *grad, Py_ssize_t lo,
                       Py_ssize_t hi, floating gscale, floating a, floating b, floating eps_lo,
                       floating eps_hi) noexcept nogil:
    cdef double s = 0.0
    cdef floating q, tj
    cdef Py_ssize_t i
    for i in range(lo, hi):
        q = _clip(p[i], eps_lo, eps_hi)
        tj = a * t[i] + b
        s -= <double>tj * <double>_log(q) + <double>(1 - tj) * <double>_log(1 - q)
        if grad != NULL:
            if eps_lo <= p[i] <= eps_hi:
                grad[i] = gscale * (q - tj) / (q * (1 - q))
            else:
                grad[i] = 0
    return s


cdef double _bce_logits(const floating *x, const floating *t, floating *grad, Py_ssize_t lo,
                        Py_ssize_t hi, floating gscale, floating a, floating b) noexcept nogil:
    cdef double s = 0.0
    cdef floating xi, z, tj, relu
    cdef Py_ssize_t i
    for i in range(lo, hi):
        xi = x[i]
        tj = a * t[i] + b
        z = _exp(-xi if xi >= 0 else xi)      # exp(-|x|) never overflows
        relu = xi if xi > 0 else 0
        s += <double>(relu - xi * tj) + <double>_log1p(z)
        if grad != NULL:
            # sigmoid(x) from exp(-|x|): 1 / (1 + z) for x >= 0, z / (1 + z) below
            grad[i] = gscale * ((1 / (1 + z) if xi >= 0 else z / (1 + z)) - tj)
    return s


cdef double _kld(const floating *p, const floating *t, floating *grad, Py_ssize_t lo,
                 Py_ssize_t hi, floating gscale, floating eps) noexcept nogil:
    cdef double s = 0.0
    cdef floating tc, pc
    cdef Py_ssize_t i
    for i in range(lo, hi):
        tc = _clip(t[i], eps, <floating>1)
        pc = _clip(p[i], eps, <floating>1)
        s += <double>tc * <double>_log(tc / pc)
        if grad != NULL:
            grad[i] = -gscale * tc / pc if eps <= p[i] <= 1 else 0
    return s


cdef double _piece(int kind, const floating *p, const floating *t, floating *grad,
                   Py_ssize_t lo, Py_ssize_t hi, floating gscale, floating p0,
                   floating p1, floating eps) noexcept nogil:
    """Sum of the kind's value over [lo, hi); grad = gscale * dv/dp there (grad may be NULL)."""
    if kind == K_MSE:
        if floating is float:
            return fn_sqerr_f32(p, t, grad, lo, hi, 2 * gscale)
        else:
            return fn_sqerr_f64(p, t, grad, lo, hi, 2 * gscale)
    if kind == K_MAE:
        if floating is float:
            return fn_abserr_f32(p, t, grad, lo, hi, gscale)
        else:
            return fn_abserr_f64(p, t, grad, lo, hi, gscale)
    if kind == K_HUBER:
        if floating is float:
            return fn_huber_f32(p, t, grad, lo, hi, gscale, p0)
        else:
            return fn_huber_f64(p, t, grad, lo, hi, gscale, p0)
    if kind == K_BCE_PROBS:
        return _bce_probs(p, t, grad, lo, hi, gscale, p0, p1, eps, 1 - eps)
    if kind == K_BCE_LOGITS:
        return _bce_logits(p, t, grad, lo, hi, gscale, p0, p1)
    return _kld(p, t, grad, lo, hi, gscale, eps)


cdef double _block(int kind, const floating *p, const floating *t, floating *grad,
                   const floating *weights, Py_ssize_t per_weight, Py_ssize_t lo,
                   Py_ssize_t hi, double scale, double p0, double p1, double eps) noexcept nogil:
    """Weighted sum of one block [lo, hi), cut at the weight boundaries."""
    cdef unsigned csr = fn_ftz_begin()
    cdef double s = 0.0
    cdef Py_ssize_t k, a, b
    cdef floating w
    if weights == NULL:
        s = _piece(kind, p, t, grad, lo, hi, <floating>scale, <floating>p0, <floating>p1,
                   <floating>eps)
    else:
        a = lo
        while a < hi:
            k = a // per_weight
            b = (k + 1) * per_weight
            if b > hi:
                b = hi
            w = weights[k]
            s += <double>w * _piece(kind, p, t, grad, a, b, <floating>scale * w,
                                    <floating>p0, <floating>p1, <floating>eps)
            a = b
    fn_ftz_end(csr)
    return s


def elementwise_loss(int kind, const floating[::1] pred, const floating[::1] target,
                     floating[::1] grad, const floating[::1] weights, Py_ssize_t per_weight,
                     double scale, double p0, double p1, double eps, double[::1] partial,
                     int nthreads):
    """Sum over elements of w_i v(p_i, t_i) (float64) for loss ``kind``; grad (may be None) =
    scale * w_i * dv/dp.  p0, p1: Huber's delta, or the label-smoothing map t' = p0 t + p1 of
    the binary cross-entropies; eps: the clip epsilon.  ``partial`` holds one float64 per BLOCK
    elements (``block_size()``); n >= 1, per_weight >= 1 (weights may be None)."""
    cdef Py_ssize_t n = pred.shape[0], nblocks = (n + BLOCK - 1) // BLOCK, blk, lo, hi
    cdef const floating *pp = &pred[0]
    cdef const floating *pt = &target[0]
    cdef floating *pg = &grad[0] if grad is not None else NULL
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *ppart = &partial[0]
    if nthreads <= 1 or nblocks == 1:
        with nogil:
            for blk in range(nblocks):
                lo = blk * BLOCK
                hi = lo + BLOCK if lo + BLOCK < n else n
                ppart[blk] = _block(kind, pp, pt, pg, pw, per_weight, lo, hi, scale, p0, p1,
                                    eps)
    else:
        for blk in prange(nblocks, nogil=True, num_threads=nthreads, schedule='static'):
            lo = blk * BLOCK
            hi = lo + BLOCK if lo + BLOCK < n else n
            ppart[blk] = _block(kind, pp, pt, pg, pw, per_weight, lo, hi, scale, p0, p1, eps)
    return _sum_rows(ppart, nblocks)


def block_size():
    """Elements per partial sum of ``elementwise_loss`` (size its ``partial`` buffer with this)."""
    return BLOCK
