# cython: language_level=3
"""Metric kernels: per-row accuracy scores, thresholded confusion histograms (Precision, Recall,
AUC), per-class F-score counts, argmax and the confusion matrix.

Kernel design
-------------
Everything a metric accumulates is a sum, and a float sum depends on its order; so each kernel
fixes the order independently of the thread count:

* Accuracies score each row (a (R, C) matrix, rows split among threads in contiguous static
  pieces) into ``values[r]``; then one serial pass, in row order, reduces the rows of each
  sample to the sample's mean and adds w_i * mean_i and w_i up (Keras's ``Mean`` of per-sample
  values).
* Histograms and F-score counts split the input into fixed chunks (CHUNK elements, or the rows
  that hold about CHUNK elements); each chunk fills its own partial counts serially, chunks run
  in parallel, and the partials are added in chunk order.
* The confusion matrix without weights counts integers (exact in any order) into one private
  matrix per thread, added at the end; with weights it runs serially in index order.

Kernels trust their inputs (fastnet.ops.metrics checks them): shapes agree, R, C >= 1,
``per_weight`` >= 1, buffers have the documented sizes, labels of the confusion matrix are in
range.  ``weights`` may be None everywhere (weight 1).
"""
from cython.parallel cimport prange
from cython cimport floating
from libc.math cimport ceil, ceilf, fabs
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memset

from fastnet._kernels._vecmath cimport split_bound

ctypedef fused label_t:
    int32_t
    int64_t

cdef enum:
    CHUNK = 16384   # elements per partial histogram / partial F-score counts

# bucket modes of ``threshold_histogram``
cdef enum:
    EVEN_EPS = 0    # Keras AUC's evenly spaced thresholds [-eps, 1/(T-1), ..., 1 + eps]
    SORTED = 1      # any ascending thresholds, compared with p > t


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


# ---- per-row scores and their weighted mean ----------------------------------------------------

cdef enum:
    SCORE_SPARSE = 0     # argmax(pred) == label
    SCORE_CATEGORICAL = 1  # argmax(pred) == argmax(target)
    SCORE_TOP_K = 2      # label among the top k (ties at the boundary count, as TF's in_top_k)
    SCORE_BINARY = 3     # mean_j [target_j == (pred_j > threshold)]
    SCORE_EQUAL = 4      # mean_j [target_j == pred_j]


cdef double _score_row(int kind, const floating *p, const floating *t, Py_ssize_t label,
                       Py_ssize_t cols, Py_ssize_t k, floating threshold) noexcept nogil:
    cdef Py_ssize_t j, hits = 0, above = 0
    cdef floating pt
    if kind == SCORE_SPARSE:
        return 1.0 if _argmax(p, cols) == label else 0.0
    if kind == SCORE_CATEGORICAL:
        return 1.0 if _argmax(p, cols) == _argmax(t, cols) else 0.0
    if kind == SCORE_TOP_K:
        if label < 0 or label >= cols:
            return 0.0
        pt = p[label]
        if pt != pt:
            return 0.0
        for j in range(cols):
            if p[j] > pt:
                above += 1
        return 1.0 if above < k else 0.0
    if kind == SCORE_BINARY:
        for j in range(cols):
            if t[j] == (<floating>1 if p[j] > threshold else <floating>0):
                hits += 1
        return <double>hits / <double>cols
    for j in range(cols):
        if t[j] == p[j]:
            hits += 1
    return <double>hits / <double>cols


cdef void _score_rows(int kind, const floating *p, const floating *t, const label_t *labels,
                      double *values, Py_ssize_t cols, Py_ssize_t k, floating threshold,
                      Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    cdef Py_ssize_t r, label = 0
    for r in range(r0, r1):
        if labels != NULL:
            label = <Py_ssize_t>labels[r]
        values[r] = _score_row(kind, p + r * cols, t + r * cols if t != NULL else NULL, label,
                               cols, k, threshold)


def row_scores(int kind, const floating[:, ::1] pred, const floating[:, ::1] target,
               const label_t[::1] labels, Py_ssize_t k, double threshold,
               const floating[::1] weights, Py_ssize_t per_weight, double[::1] values,
               int nthreads):
    """Score every row (``kind``: 0 sparse, 1 categorical, 2 top-k, 3 binary, 4 equal; target
    or labels may be None when the kind does not read them), then return (sum_i w_i m_i,
    sum_i w_i) over samples i of ``per_weight`` consecutive rows, m_i their mean score (w = 1
    without weights).  ``values`` is (R,) scratch."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], t, i, r
    cdef const floating *pp = &pred[0, 0]
    cdef const floating *pt = &target[0, 0] if target is not None else NULL
    cdef const label_t *pl = &labels[0] if labels is not None else NULL
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *pv = &values[0]
    cdef floating thr = <floating>threshold
    cdef double total = 0.0, count = 0.0, m, w
    if nthreads <= 1:
        with nogil:
            _score_rows(kind, pp, pt, pl, pv, cols, k, thr, 0, n)
    else:
        for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
            _score_rows(kind, pp, pt, pl, pv, cols, k, thr, split_bound(n, t, nthreads, 1),
                        split_bound(n, t + 1, nthreads, 1))
    with nogil:
        for i in range(n // per_weight):
            m = 0.0
            for r in range(i * per_weight, (i + 1) * per_weight):
                m += pv[r]
            if per_weight > 1:
                m /= <double>per_weight
            w = <double>pw[i] if pw != NULL else 1.0
            total += w * m
            count += w
    return total, count


def argmax_rows(const floating[:, ::1] pred, int64_t[::1] out, int nthreads):
    """out[r] = argmax of row r (first maximum; the first NaN wins, as numpy.argmax)."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1], r
    cdef const floating *pp = &pred[0, 0]
    if nthreads <= 1:
        with nogil:
            for r in range(n):
                out[r] = _argmax(pp + r * cols, cols)
    else:
        for r in prange(n, nogil=True, num_threads=nthreads, schedule='static'):
            out[r] = _argmax(pp + r * cols, cols)


# ---- thresholded confusion histograms ----------------------------------------------------------

cdef inline Py_ssize_t _bucket(int mode, floating p, const double *thr, Py_ssize_t nthr,
                               floating steps) noexcept nogil:
    """The number of thresholds strictly below p (0 for NaN)."""
    cdef Py_ssize_t lo, hi, mid
    cdef floating c
    if p != p:
        return 0
    if mode == EVEN_EPS:
        # Keras' optimized path: clip p to [0, 1], bucket ceil(p (T - 1)) - 1, relu'd; +1 for
        # the -eps threshold below every p.  Computed in p's precision, as Keras does.
        p = 0 if p < 0 else (1 if p > 1 else p)
        if floating is float:
            c = ceilf(p * steps)
        else:
            c = ceil(p * steps)
        return <Py_ssize_t>c if c >= 1 else 1
    lo = 0
    hi = nthr
    # first threshold >= p: thresholds [0, lo) are below p.  Compared in p's precision, as
    # Keras casts the thresholds to the predictions' dtype (0.1 < 0.1f would be true in double)
    while lo < hi:
        mid = (lo + hi) // 2
        if <floating>thr[mid] < p:
            lo = mid + 1
        else:
            hi = mid
    return lo


cdef void _histogram_chunk(int mode, const floating *p, const floating *labels,
                           const floating *weights, Py_ssize_t per_weight, const double *thr,
                           Py_ssize_t nthr, floating steps, double *pos, double *neg,
                           Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t i, b
    cdef double w = 1.0
    for i in range(lo, hi):
        b = _bucket(mode, p[i], thr, nthr, steps)
        if weights != NULL:
            w = <double>weights[i // per_weight]
        if labels[i] != 0:
            pos[b] += w
        else:
            neg[b] += w


def threshold_histogram(int mode, const floating[::1] pred, const floating[::1] labels,
                        const floating[::1] weights, Py_ssize_t per_weight,
                        const double[::1] thresholds, Py_ssize_t num_thresholds,
                        double[:, ::1] out, double[::1] partial, int nthreads):
    """Add, for every element, its weight to out[0, b] (label != 0) or out[1, b] (label == 0),
    b = the number of thresholds below the prediction (0..T).  ``mode`` 0: Keras AUC's evenly
    spaced thresholds with epsilon endpoints (``thresholds`` unused, may be empty); 1: the
    ascending ``thresholds``, rounded to the predictions' precision.  ``out`` is (2, T + 1) and is overwritten; ``partial`` holds
    2 (T + 1) float64 per CHUNK elements (``chunk_size()``)."""
    cdef Py_ssize_t n = pred.shape[0], nb = num_thresholds + 1
    cdef Py_ssize_t nchunks = (n + CHUNK - 1) // CHUNK, c, lo, hi, j
    cdef const floating *pp = &pred[0]
    cdef const floating *pl = &labels[0]
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef const double *pt = &thresholds[0] if thresholds.shape[0] > 0 else NULL
    cdef double *ppart = &partial[0]
    cdef double *po = &out[0, 0]
    cdef floating steps = <floating>(num_thresholds - 1)
    if nthreads <= 1 or nchunks == 1:
        with nogil:
            for c in range(nchunks):
                memset(ppart + c * 2 * nb, 0, 2 * nb * sizeof(double))
                lo = c * CHUNK
                hi = lo + CHUNK if lo + CHUNK < n else n
                _histogram_chunk(mode, pp, pl, pw, per_weight, pt, num_thresholds, steps,
                                 ppart + c * 2 * nb, ppart + c * 2 * nb + nb, lo, hi)
    else:
        for c in prange(nchunks, nogil=True, num_threads=nthreads, schedule='static'):
            memset(ppart + c * 2 * nb, 0, 2 * nb * sizeof(double))
            lo = c * CHUNK
            hi = lo + CHUNK if lo + CHUNK < n else n
            _histogram_chunk(mode, pp, pl, pw, per_weight, pt, num_thresholds, steps,
                             ppart + c * 2 * nb, ppart + c * 2 * nb + nb, lo, hi)
    with nogil:
        memset(po, 0, 2 * nb * sizeof(double))
        for c in range(nchunks):
            for j in range(2 * nb):
                po[j] += ppart[c * 2 * nb + j]


def chunk_size():
    """Elements per partial of ``threshold_histogram`` and ``fscore_counts``."""
    return CHUNK


# ---- F-score counts ----------------------------------------------------------------------------

cdef void _fscore_rows(const floating *p, const floating *t, const floating *weights,
                       Py_ssize_t per_weight, bint argmax_mode, floating threshold,
                       double *acc, Py_ssize_t cols, Py_ssize_t r0, Py_ssize_t r1) noexcept nogil:
    """acc = [tp | fp | fn | support], each (cols,), for rows [r0, r1)."""
    cdef Py_ssize_t r, j
    cdef const floating *pr
    cdef const floating *tr
    cdef floating mx
    cdef double w = 1.0, pb, tj
    for r in range(r0, r1):
        pr = p + r * cols
        tr = t + r * cols
        if weights != NULL:
            w = <double>weights[r // per_weight]
        if argmax_mode:
            mx = pr[0]
            for j in range(cols):     # Keras' ops.max: a NaN makes the row maximum NaN
                if pr[j] != pr[j]:
                    mx = pr[j]
                    break
                if pr[j] > mx:
                    mx = pr[j]
        for j in range(cols):
            if argmax_mode:
                pb = 1.0 if (pr[j] >= mx and fabs(<double>pr[j]) > 1e-9) else 0.0
            else:
                pb = 1.0 if pr[j] > threshold else 0.0
            tj = <double>tr[j]
            acc[j] += w * pb * tj
            acc[cols + j] += w * pb * (1.0 - tj)
            acc[2 * cols + j] += w * (1.0 - pb) * tj
            acc[3 * cols + j] += w * tj


def fscore_counts(const floating[:, ::1] pred, const floating[:, ::1] targets,
                  const floating[::1] weights, Py_ssize_t per_weight, bint argmax_mode,
                  double threshold, double[:, ::1] out, double[::1] partial, int nthreads):
    """Per-class [tp, fp, fn, support] (out (4, C), overwritten) of Keras's FBetaScore: the
    prediction is 1 where p > threshold, or (argmax_mode) where p equals the row maximum and
    |p| > 1e-9; tp += w p_bin t, fp += w p_bin (1 - t), fn += w (1 - p_bin) t, support += w t.
    Rows go in chunks of ``fscore_chunk_rows(C)`` rows; ``partial`` holds 4 C float64 per
    chunk."""
    cdef Py_ssize_t n = pred.shape[0], cols = pred.shape[1]
    cdef Py_ssize_t crow = fscore_chunk_rows(cols), nchunks = (n + crow - 1) // crow
    cdef Py_ssize_t c, lo, hi, j, width = 4 * cols
    cdef const floating *pp = &pred[0, 0]
    cdef const floating *pt = &targets[0, 0]
    cdef const floating *pw = &weights[0] if weights is not None else NULL
    cdef double *ppart = &partial[0]
    cdef double *po = &out[0, 0]
    cdef floating thr = <floating>threshold
    if nthreads <= 1 or nchunks == 1:
        with nogil:
            for c in range(nchunks):
                memset(ppart + c * width, 0, width * sizeof(double))
                lo = c * crow
                hi = lo + crow if lo + crow < n else n
                _fscore_rows(pp, pt, pw, per_weight, argmax_mode, thr, ppart + c * width, cols,
                             lo, hi)
    else:
        for c in prange(nchunks, nogil=True, num_threads=nthreads, schedule='static'):
            memset(ppart + c * width, 0, width * sizeof(double))
            lo = c * crow
            hi = lo + crow if lo + crow < n else n
            _fscore_rows(pp, pt, pw, per_weight, argmax_mode, thr, ppart + c * width, cols,
                         lo, hi)
    with nogil:
        memset(po, 0, width * sizeof(double))
        for c in range(nchunks):
            for j in range(width):
                po[j] += ppart[c * width + j]


cpdef Py_ssize_t fscore_chunk_rows(Py_ssize_t cols) noexcept nogil:
    """Rows per partial of ``fscore_counts`` for ``cols`` classes."""
    return CHUNK // cols if cols < CHUNK else 1


# ---- confusion matrix --------------------------------------------------------------------------

def confusion_counts(const int64_t[::1] labels, const int64_t[::1] preds, int64_t[:, ::1] out,
                     int64_t[:, ::1] private, int nthreads):
    """out[labels[i], preds[i]] += 1 for every i (out (C, C), overwritten).  With nthreads > 1
    each thread counts its contiguous piece into its row of ``private`` (nthreads, C * C) and
    the rows are added at the end (integer sums: exact in any order)."""
    cdef Py_ssize_t n = labels.shape[0], classes = out.shape[0], i, t, j, cc = classes * classes
    cdef int64_t *po = &out[0, 0]
    cdef int64_t *mine
    with nogil:
        memset(po, 0, cc * sizeof(int64_t))
    if nthreads <= 1:
        with nogil:
            for i in range(n):
                po[labels[i] * classes + preds[i]] += 1
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        mine = &private[t, 0]
        memset(mine, 0, cc * sizeof(int64_t))
        for i in range(split_bound(n, t, nthreads, 1), split_bound(n, t + 1, nthreads, 1)):
            mine[labels[i] * classes + preds[i]] += 1
    with nogil:
        for t in range(nthreads):
            for j in range(cc):
                po[j] += private[t, j]


def confusion_weighted(const int64_t[::1] labels, const int64_t[::1] preds,
                       const double[::1] weights, double[:, ::1] out):
    """out[labels[i], preds[i]] += weights[i], serially in index order (out overwritten)."""
    cdef Py_ssize_t n = labels.shape[0], classes = out.shape[0], i
    cdef double *po = &out[0, 0]
    with nogil:
        memset(po, 0, classes * classes * sizeof(double))
        for i in range(n):
            po[labels[i] * classes + preds[i]] += weights[i]
