# cython: language_level=3
"""Loss and metric kernels: cross-entropies (sparse/dense, from logits/probabilities), squared
error, and argmax accuracy counts.

Kernel design
-------------
The cross-entropies work on a C-contiguous (N, C) matrix one row at a time: a ``cdef ... nogil``
function computes one row's loss (into ``row_loss[r]``, float64) and, when asked, writes the
row's gradient and probabilities.  The wrappers split the rows among ``nthreads`` threads in
contiguous static pieces and then add ``row_loss`` up serially in row order, so the loss and the
gradients are bitwise the same for every thread count.  The gradient is scaled by ``scale``
(1/N for a batch mean) inside the row pass, so no second pass over memory is needed.

The squared error is elementwise: fixed blocks of BLOCK elements, one float64 partial sum per
block, the partials added in block order (again independent of the thread count).  Every piece
runs with flush-to-zero and denormals-are-zero set, the caller's MXCSR restored after.

Formulas (t = label, T = target row, S = sum of a probability row, eps = clip epsilon):
  from logits:  loss = logsumexp(x) - x_t  (dense: sum_j T_j (logsumexp(x) - x_j))
                grad = softmax(x) * sum(T) - T            (sparse: T one-hot)
  from probs (Keras 3): o = p / S; q = clip(o, eps, 1 - eps); loss = -sum_j T_j log q_j
                grad_k = (g_k - sum_j g_j o_j) / S with g_j = -T_j / o_j where o_j is inside
                [eps, 1 - eps] and 0 where it was clipped
  wrt_logits (the probabilities came from a softmax whose backward is skipped):
                grad = p * sum(T) - T, loss as from probs.
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport exp, expf, log, logf
from libc.stdint cimport int32_t, int64_t

ctypedef fused label_t:
    int32_t
    int64_t

cdef extern from *:
    """
    #include <stddef.h>
    #if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__) \\
        && defined(__GLIBC__) && __GNUC__ >= 11
    #define FN_LOSS_CLONES \\
        __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define FN_LOSS_CLONES
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
    #define FN_DEFINE_SQERR(T, SFX)                                                             \\
    /* sum((p - t)^2) over [lo, hi) in double; grad = scale (p - t) when grad != NULL. */       \\
    FN_LOSS_CLONES static double                                                                \\
    fn_sqerr_##SFX(const T *p, const T *t, T *grad, ptrdiff_t lo, ptrdiff_t hi, T scale)        \\
    {                                                                                           \\
        double s = 0.0;                                                                         \\
        ptrdiff_t i;                                                                            \\
        if (grad) {                                                                             \\
            _Pragma("omp simd reduction(+:s)")                                                  \\
            for (i = lo; i < hi; i++) {                                                         \\
                T d = p[i] - t[i];                                                              \\
                grad[i] = scale * d;                                                            \\
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
    }
    FN_DEFINE_SQERR(float, f32)
    FN_DEFINE_SQERR(double, f64)
    """
    unsigned fn_ftz_begin() noexcept nogil
    void fn_ftz_end(unsigned csr) noexcept nogil
    double fn_sqerr_f32(const float *p, const float *t, float *grad, Py_ssize_t lo,
                        Py_ssize_t hi, float scale) noexcept nogil
    double fn_sqerr_f64(const double *p, const double *t, double *grad, Py_ssize_t lo,
                        Py_ssize_t hi, double scale) noexcept nogil


cdef enum:
    BLOCK = 4096   # elements per partial sum of the squared error


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


cdef inline Py_ssize_t _bound(Py_ssize_t n, Py_ssize_t t, Py_ssize_t nthreads) noexcept nogil:
    """Start of piece t of n rows split in nthreads (t = nthreads gives n)."""
    return n if t >= nthreads else n * t // nthreads


cdef inline double _sum_rows(const double *row_loss, Py_ssize_t n) noexcept nogil:
    cdef double s = 0.0
    cdef Py_ssize_t i
    for i in range(n):
        s += row_loss[i]
    return s



cdef inline floating _clip(floating x, floating lo, floating hi) noexcept nogil:
    return lo if x < lo else (hi if x > hi else x)


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
                              floating *probs, double scale, double *row_loss, Py_ssize_t cols,
                              Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j, t
    cdef const floating *xr
    cdef floating *e
    cdef floating s, mx, inv, pj, sc = <floating>scale
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        xr = x + r * cols
        t = <Py_ssize_t>labels[r]
        e = NULL
        if probs != NULL:
            e = probs + r * cols
        elif grad != NULL:
            e = grad + r * cols
        s = _exp_row(xr, e, cols, &mx)
        row_loss[r] = <double>(_log(s) - (xr[t] - mx))
        if e == NULL:
            continue
        inv = 1 / s
        for j in range(cols):
            pj = e[j] * inv
            if probs != NULL:
                probs[r * cols + j] = pj
            if grad != NULL:
                grad[r * cols + j] = (pj - <floating>(j == t)) * sc
    fn_ftz_end(csr)


cdef void _dense_logits_rows(const floating *x, const floating *targets, floating *grad,
                             floating *probs, double scale, double *row_loss, Py_ssize_t cols,
                             Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating *xr
    cdef const floating *tr
    cdef floating *e
    cdef floating s, mx, log_s, inv, pj, tsum, sc = <floating>scale
    cdef double loss
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        xr = x + r * cols
        tr = targets + r * cols
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
            # -log softmax_j = log s - (x_j - max)
            loss += <double>tr[j] * <double>(log_s - (xr[j] - mx))
            tsum += tr[j]
        row_loss[r] = loss
        if e == NULL:
            continue
        inv = 1 / s
        for j in range(cols):
            pj = e[j] * inv
            if probs != NULL:
                probs[r * cols + j] = pj
            if grad != NULL:
                grad[r * cols + j] = (pj * tsum - tr[j]) * sc
    fn_ftz_end(csr)


def sparse_from_logits(const floating[:, ::1] logits, const label_t[::1] labels,
                       floating[:, ::1] grad, floating[:, ::1] probs, double scale,
                       double[::1] row_loss, int nthreads):
    """Sum over rows of logsumexp(x) - x[label]; grad = (softmax - onehot) * scale and probs =
    softmax when given (may be None).  N, C >= 1, labels in [0, C), no overlaps."""
    cdef Py_ssize_t n = logits.shape[0], cols = logits.shape[1], t
    cdef const floating *px = &logits[0, 0]
    cdef const label_t *pl = &labels[0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef floating *pp = &probs[0, 0] if probs is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _sparse_logits_rows(px, pl, pg, pp, scale, prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _sparse_logits_rows(px, pl, pg, pp, scale, prl, cols, _bound(n, t, nthreads),
                                _bound(n, t + 1, nthreads))
    return _sum_rows(prl, n)


def dense_from_logits(const floating[:, ::1] logits, const floating[:, ::1] targets,
                      floating[:, ::1] grad, floating[:, ::1] probs, double scale,
                      double[::1] row_loss, int nthreads):
    """Sum over rows of sum_j T_j (logsumexp(x) - x_j); grad = (softmax sum(T) - T) * scale and
    probs = softmax when given (may be None).  N, C >= 1, no overlaps."""
    cdef Py_ssize_t n = logits.shape[0], cols = logits.shape[1], t
    cdef const floating *px = &logits[0, 0]
    cdef const floating *pt = &targets[0, 0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef floating *pp = &probs[0, 0] if probs is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _dense_logits_rows(px, pt, pg, pp, scale, prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _dense_logits_rows(px, pt, pg, pp, scale, prl, cols, _bound(n, t, nthreads),
                               _bound(n, t + 1, nthreads))
    return _sum_rows(prl, n)


# ---- from probabilities (Keras 3: normalize, clip, log) ----------------------------------------

cdef void _sparse_probs_rows(const floating *p, const label_t *labels, floating *grad,
                             double scale, double eps_lo, double eps_hi, bint wrt_logits,
                             double *row_loss, Py_ssize_t cols, Py_ssize_t r0,
                             Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j, t
    cdef const floating *pr
    cdef floating *gr
    cdef floating s, o, c, sc = <floating>scale
    cdef floating lo = <floating>eps_lo, hi = <floating>eps_hi
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        pr = p + r * cols
        t = <Py_ssize_t>labels[r]
        s = 0
        for j in range(cols):
            s += pr[j]
        o = pr[t] / s
        row_loss[r] = <double>(-_log(_clip(o, lo, hi)))
        if grad == NULL:
            continue
        gr = grad + r * cols
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
                            double scale, double eps_lo, double eps_hi, bint wrt_logits,
                            double *row_loss, Py_ssize_t cols, Py_ssize_t r0,
                            Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, j
    cdef const floating *pr
    cdef const floating *tr
    cdef floating *gr
    cdef floating s, o, c, t_in, tsum, sc = <floating>scale
    cdef floating lo = <floating>eps_lo, hi = <floating>eps_hi
    cdef double loss
    cdef unsigned csr = fn_ftz_begin()
    for r in range(r0, r1):
        pr = p + r * cols
        tr = targets + r * cols
        s = 0
        for j in range(cols):
            s += pr[j]
        loss = 0.0
        t_in = 0   # sum of T_j over the unclipped o_j
        tsum = 0
        for j in range(cols):
            o = pr[j] / s
            loss -= <double>tr[j] * <double>_log(_clip(o, lo, hi))
            tsum += tr[j]
            if lo <= o <= hi:
                t_in += tr[j]
        row_loss[r] = loss
        if grad == NULL:
            continue
        gr = grad + r * cols
        if wrt_logits:
            for j in range(cols):
                gr[j] = (pr[j] * tsum - tr[j]) * sc
        else:
            # g_j = -T_j / o_j where unclipped (else 0); grad_k = (g_k - sum_j g_j o_j) / S
            # and sum_j g_j o_j = -t_in.
            c = sc / s
            for j in range(cols):
                o = pr[j] / s
                if lo <= o <= hi:
                    gr[j] = (t_in - tr[j] / o) * c
                else:
                    gr[j] = t_in * c
    fn_ftz_end(csr)


def sparse_from_probs(const floating[:, ::1] pred, const label_t[::1] labels,
                      floating[:, ::1] grad, double scale, double eps_lo, double eps_hi,
                      bint wrt_logits, double[::1] row_loss, int nthreads):
    """Sum over rows of -log(clip(p_t / sum(p), eps_lo, eps_hi)); grad (may be None) is that
    loss's gradient wrt p times scale, or (p - onehot) * scale when wrt_logits."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], t
    cdef const floating *pp = &pred[0, 0]
    cdef const label_t *pl = &labels[0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _sparse_probs_rows(pp, pl, pg, scale, eps_lo, eps_hi, wrt_logits, prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _sparse_probs_rows(pp, pl, pg, scale, eps_lo, eps_hi, wrt_logits, prl, cols,
                               _bound(n, t, nthreads), _bound(n, t + 1, nthreads))
    return _sum_rows(prl, n)


def dense_from_probs(const floating[:, ::1] pred, const floating[:, ::1] targets,
                     floating[:, ::1] grad, double scale, double eps_lo, double eps_hi,
                     bint wrt_logits, double[::1] row_loss, int nthreads):
    """Sum over rows of -sum_j T_j log(clip(p_j / sum(p), eps_lo, eps_hi)); grad (may be None)
    is its gradient wrt p times scale, or (p sum(T) - T) * scale when wrt_logits."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], t
    cdef const floating *pp = &pred[0, 0]
    cdef const floating *pt = &targets[0, 0]
    cdef floating *pg = &grad[0, 0] if grad is not None else NULL
    cdef double *prl = &row_loss[0]
    if nthreads <= 1:
        with nogil:
            _dense_probs_rows(pp, pt, pg, scale, eps_lo, eps_hi, wrt_logits, prl, cols, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _dense_probs_rows(pp, pt, pg, scale, eps_lo, eps_hi, wrt_logits, prl, cols,
                              _bound(n, t, nthreads), _bound(n, t + 1, nthreads))
    return _sum_rows(prl, n)


# ---- squared error -----------------------------------------------------------------------------

cdef inline double _sqerr(const floating *p, const floating *t, floating *grad, Py_ssize_t lo,
                          Py_ssize_t hi, double scale) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    cdef double s
    if floating is float:
        s = fn_sqerr_f32(p, t, grad, lo, hi, <float>scale)
    else:
        s = fn_sqerr_f64(p, t, grad, lo, hi, scale)
    fn_ftz_end(csr)
    return s


def squared_error(const floating[::1] pred, const floating[::1] target, floating[::1] grad,
                  double scale, double[::1] partial, int nthreads):
    """sum((pred - target)**2) in float64; grad = scale (pred - target) when given (may be None).

    ``partial`` holds one float64 per BLOCK elements (ceil(n / BLOCK)); n >= 1.
    """
    cdef Py_ssize_t n = pred.shape[0], nblocks = (n + BLOCK - 1) // BLOCK, b, lo, hi
    cdef const floating *pp = &pred[0]
    cdef const floating *pt = &target[0]
    cdef floating *pg = &grad[0] if grad is not None else NULL
    cdef double *ppart = &partial[0]
    if nthreads <= 1:
        with nogil:
            for b in range(nblocks):
                lo = b * BLOCK
                hi = lo + BLOCK if lo + BLOCK < n else n
                ppart[b] = _sqerr(pp, pt, pg, lo, hi, scale)
    else:
        for b in prange(nblocks, nogil=True, num_threads=nthreads, schedule='static'):
            lo = b * BLOCK
            hi = lo + BLOCK if lo + BLOCK < n else n
            ppart[b] = _sqerr(pp, pt, pg, lo, hi, scale)
    return _sum_rows(ppart, nblocks)


def block_size():
    """Elements per partial sum of ``squared_error`` (size its ``partial`` buffer with this)."""
    return BLOCK


# ---- accuracy ----------------------------------------------------------------------------------

cdef inline Py_ssize_t _argmax(const floating *x, Py_ssize_t cols) noexcept nogil:
    """First index of the row maximum; the first NaN wins, as in numpy.argmax."""
    cdef floating best = x[0], xj
    cdef Py_ssize_t j, idx = 0
    if best != best:
        return 0
    for j in range(1, cols):
        xj = x[j]
        if xj > best:
            best = xj
            idx = j
        elif xj != xj:
            return j
    return idx


def sparse_correct(const floating[:, ::1] pred, const label_t[::1] labels, int nthreads):
    """Number of rows whose argmax equals the label.  N, C >= 1."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], r
    cdef const floating *pp = &pred[0, 0]
    cdef const label_t *pl = &labels[0]
    cdef Py_ssize_t count = 0
    if nthreads <= 1:
        with nogil:
            for r in range(n):
                if _argmax(pp + r * cols, cols) == <Py_ssize_t>pl[r]:
                    count += 1
    else:
        for r in prange(n, nogil=True, num_threads=nthreads, schedule='static'):
            if _argmax(pp + r * cols, cols) == <Py_ssize_t>pl[r]:
                count += 1
    return count


def categorical_correct(const floating[:, ::1] pred, const floating[:, ::1] targets,
                        int nthreads):
    """Number of rows where argmax(pred) == argmax(targets).  N, C >= 1."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], r
    cdef const floating *pp = &pred[0, 0]
    cdef const floating *pt = &targets[0, 0]
    cdef Py_ssize_t count = 0
    if nthreads <= 1:
        with nogil:
            for r in range(n):
                if _argmax(pp + r * cols, cols) == _argmax(pt + r * cols, cols):
                    count += 1
    else:
        for r in prange(n, nogil=True, num_threads=nthreads, schedule='static'):
            if _argmax(pp + r * cols, cols) == _argmax(pt + r * cols, cols):
                count += 1
    return count
