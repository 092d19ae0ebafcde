# cython: language_level=3
"""Batch-normalization kernels over (rows, C) matrices: NHWC activations with N*H*W rows, or
(N, C) features; statistics per channel (column).

Kernel design
-------------
The rows are cut in fixed chunks of ``chunk_rows`` (chosen by the op from C alone), each a
contiguous block of memory.  Reductions (the batch statistics, the gradient sums) accumulate a
chunk's rows into that chunk's own row of ``partials`` in double, the inner loop running over
the contiguous channels (vectorized); then one thread adds the chunks' partials in chunk order.
The partition and the order of every addition depend on the shape only, so results are bitwise
identical for any thread count.  Elementwise passes use the same chunks.  Chunks are dealt to
threads with a static schedule.

Training forward (two passes over x): shifted sums S = sum(x - k), Q = sum((x - k)**2) with
k = the first row (no catastrophic cancellation in double), then mean = k + S/M and the biased
variance var = Q/M - (S/M)**2 (what Keras normalizes with and puts in the moving variance);
moving stats updated in place, then y = (x - mean) * gamma / sqrt(var + eps) + beta.

Backward (two passes): sum(dy) and sum(dy * (x - mean)) per channel, then
dx = a dy + b (x - mean) + c with per-channel a = gamma inv_std and, in training mode,
b = -a inv_std**2 sum(dy (x - mean)) / M, c = -a sum(dy) / M (in inference mode b = c = 0).
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.math cimport sqrt

cimport numpy as cnp

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end

cnp.import_array()

cdef extern from *:
    """
    /* Column sums of a (rows, width) row-major block, width a multiple of 8: each group of 8
       columns is walked down the rows with GCC vector accumulators of 8 doubles (one zmm, two
       ymm or four xmm per clone), four row phases in separate accumulators for instruction
       parallelism, combined in a fixed order.  A chunk of NHWC rows is such a block when C is a
       multiple of 8; otherwise G rows are viewed as one (G = 8 / gcd(C, 8)) and the caller
       folds the G copies of each channel. */
    typedef float fn_bn_f8 __attribute__((vector_size(32)));
    typedef double fn_bn_d8 __attribute__((vector_size(64)));
    #define FN_BN_LOAD_f32(dst, p)                                                           \\
        do { fn_bn_f8 v_; memcpy(&v_, (p), sizeof v_);                                       \\
             (dst) = __builtin_convertvector(v_, fn_bn_d8); } while (0)
    #define FN_BN_LOAD_f64(dst, p) memcpy(&(dst), (p), sizeof(dst))

    #define FN_DEFINE_BN(T, SFX)                                                             \\
    /* ps[j] = sum_r (x[r, j] - shift[j]), pq[j] = sum_r (x[r, j] - shift[j])**2 */           \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_bn_stats_##SFX(const T *x, ptrdiff_t width, ptrdiff_t rows, const double *shift,      \\
                      double *ps, double *pq)                                                \\
    {                                                                                        \\
        for (ptrdiff_t b = 0; b < width; b += 8) {                                           \\
            fn_bn_d8 s[4] = {{0}}, q[4] = {{0}}, k, v;                                       \\
            memcpy(&k, shift + b, sizeof k);                                                 \\
            ptrdiff_t r = 0;                                                                 \\
            for (; r + 4 <= rows; r += 4)                                                    \\
                for (int u = 0; u < 4; u++) {                                                \\
                    FN_BN_LOAD_##SFX(v, x + (r + u) * width + b);                            \\
                    v -= k;                                                                  \\
                    s[u] += v;                                                               \\
                    q[u] += v * v;                                                           \\
                }                                                                            \\
            for (int u = 0; r < rows; r++, u++) {                                            \\
                FN_BN_LOAD_##SFX(v, x + r * width + b);                                      \\
                v -= k;                                                                      \\
                s[u] += v;                                                                   \\
                q[u] += v * v;                                                               \\
            }                                                                                \\
            s[0] = (s[0] + s[1]) + (s[2] + s[3]);                                            \\
            q[0] = (q[0] + q[1]) + (q[2] + q[3]);                                            \\
            memcpy(ps + b, &s[0], sizeof s[0]);                                              \\
            memcpy(pq + b, &q[0], sizeof q[0]);                                              \\
        }                                                                                    \\
    }                                                                                        \\
    /* ps[j] = sum_r dy[r, j], pq[j] = sum_r dy[r, j] * (x[r, j] - mean[j]) */                \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_bn_grad_stats_##SFX(const T *dy, const T *x, ptrdiff_t width, ptrdiff_t rows,         \\
                           const double *mean, double *ps, double *pq)                       \\
    {                                                                                        \\
        for (ptrdiff_t b = 0; b < width; b += 8) {                                           \\
            fn_bn_d8 s[4] = {{0}}, q[4] = {{0}}, m, g, v;                                    \\
            memcpy(&m, mean + b, sizeof m);                                                  \\
            ptrdiff_t r = 0;                                                                 \\
            for (; r + 4 <= rows; r += 4)                                                    \\
                for (int u = 0; u < 4; u++) {                                                \\
                    FN_BN_LOAD_##SFX(g, dy + (r + u) * width + b);                           \\
                    FN_BN_LOAD_##SFX(v, x + (r + u) * width + b);                            \\
                    s[u] += g;                                                               \\
                    q[u] += g * (v - m);                                                     \\
                }                                                                            \\
            for (int u = 0; r < rows; r++, u++) {                                            \\
                FN_BN_LOAD_##SFX(g, dy + r * width + b);                                     \\
                FN_BN_LOAD_##SFX(v, x + r * width + b);                                      \\
                s[u] += g;                                                                   \\
                q[u] += g * (v - m);                                                         \\
            }                                                                                \\
            s[0] = (s[0] + s[1]) + (s[2] + s[3]);                                            \\
            q[0] = (q[0] + q[1]) + (q[2] + q[3]);                                            \\
            memcpy(ps + b, &s[0], sizeof s[0]);                                              \\
            memcpy(pq + b, &q[0], sizeof q[0]);                                              \\
        }                                                                                    \\
    }                                                                                        \\
    /* y = (x - m) * a + c (m, a, c tiles of `width` per-column values) over n elements     \\
       starting at a tile boundary; y may be x */                                            \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_bn_affine_##SFX(const T *x, T *y, ptrdiff_t n, ptrdiff_t width, const T *restrict m,  \\
                       const T *restrict a, const T *restrict c)                             \\
    {                                                                                        \\
        for (ptrdiff_t o = 0; o < n; o += width) {                                           \\
            const ptrdiff_t len = n - o < width ? n - o : width;                             \\
            const T *xo = x + o;                                                             \\
            T *yo = y + o;                                                                   \\
            for (ptrdiff_t j = 0; j < len; j++) yo[j] = (xo[j] - m[j]) * a[j] + c[j];        \\
        }                                                                                    \\
    }                                                                                        \\
    /* dx = dy * a + (x - m) * b + c (tiles as above); dx may be dy */                       \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                  \\
    fn_bn_grad_input_##SFX(const T *dy, const T *x, T *dx, ptrdiff_t n, ptrdiff_t width,     \\
                           const T *restrict m, const T *restrict a, const T *restrict b,    \\
                           const T *restrict c)                                              \\
    {                                                                                        \\
        for (ptrdiff_t o = 0; o < n; o += width) {                                           \\
            const ptrdiff_t len = n - o < width ? n - o : width;                             \\
            const T *dyo = dy + o, *xo = x + o;                                              \\
            T *dxo = dx + o;                                                                 \\
            for (ptrdiff_t j = 0; j < len; j++)                                              \\
                dxo[j] = dyo[j] * a[j] + (xo[j] - m[j]) * b[j] + c[j];                       \\
        }                                                                                    \\
    }

    FN_DEFINE_BN(float, f32)
    FN_DEFINE_BN(double, f64)
    """
    void fn_bn_stats_f32(const float *x, Py_ssize_t width, Py_ssize_t rows, const double *shift,
                         double *ps, double *pq) noexcept nogil
    void fn_bn_stats_f64(const double *x, Py_ssize_t width, Py_ssize_t rows,
                         const double *shift, double *ps, double *pq) noexcept nogil
    void fn_bn_grad_stats_f32(const float *dy, const float *x, Py_ssize_t width,
                              Py_ssize_t rows, const double *mean, double *ps,
                              double *pq) noexcept nogil
    void fn_bn_grad_stats_f64(const double *dy, const double *x, Py_ssize_t width,
                              Py_ssize_t rows, const double *mean, double *ps,
                              double *pq) noexcept nogil
    void fn_bn_affine_f32(const float *x, float *y, Py_ssize_t n, Py_ssize_t width,
                          const float *m, const float *a, const float *c) noexcept nogil
    void fn_bn_affine_f64(const double *x, double *y, Py_ssize_t n, Py_ssize_t width,
                          const double *m, const double *a, const double *c) noexcept nogil
    void fn_bn_grad_input_f32(const float *dy, const float *x, float *dx, Py_ssize_t n,
                              Py_ssize_t width, const float *m, const float *a, const float *b,
                              const float *c) noexcept nogil
    void fn_bn_grad_input_f64(const double *dy, const double *x, double *dx, Py_ssize_t n,
                              Py_ssize_t width, const double *m, const double *a,
                              const double *b, const double *c) noexcept nogil


cdef enum:
    CHUNK_ELEMS = 4096    # elements per row chunk (fixed: the summation order depends on C only)
    TILE_MIN = 256        # elementwise passes walk tiles of at least this many elements


cdef struct Geom:
    Py_ssize_t rows, C
    Py_ssize_t g, width          # reductions: g rows viewed as one row of width g*C (% 8 == 0)
    Py_ssize_t tile              # elementwise tile: tile_rows * C elements
    Py_ssize_t chunk_rows        # a multiple of g and of tile_rows
    Py_ssize_t nchunks


cdef Py_ssize_t _gcd(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    while b:
        a, b = b, a % b
    return a


cdef Geom _geom(Py_ssize_t rows, Py_ssize_t C) noexcept nogil:
    cdef Geom q
    cdef Py_ssize_t tile_rows
    q.rows, q.C = rows, C
    q.g = 8 // _gcd(C, 8)
    q.width = q.g * C
    tile_rows = q.g * ((TILE_MIN + q.width - 1) // q.width)
    q.tile = tile_rows * C
    q.chunk_rows = tile_rows * max(1, CHUNK_ELEMS // q.tile)
    q.nchunks = (rows + q.chunk_rows - 1) // q.chunk_rows
    return q


def partials_size(Py_ssize_t rows, Py_ssize_t C):
    """Doubles of scratch ``partials`` the training forward and the backward need."""
    cdef Geom q = _geom(rows, C)
    return q.width + 2 * C + 2 * q.nchunks * q.width


def work_size(Py_ssize_t rows, Py_ssize_t C):
    """Elements (of the data's dtype) of scratch ``work`` every kernel here needs."""
    cdef Geom q = _geom(rows, C)
    return 4 * q.tile


cdef inline Py_ssize_t _imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef void _chunk_sums(const floating *a, const floating *b, const Geom *q, Py_ssize_t k,
                      const double *center, double *ps, double *pq) noexcept nogil:
    """Partial sums of chunk k into ps / pq (q.width each).  b NULL: ps = sum(a - center),
    pq = sum((a - center)**2); else ps = sum(a), pq = sum(a * (b - center))."""
    cdef Py_ssize_t r0 = k * q.chunk_rows, r1 = _imin(r0 + q.chunk_rows, q.rows)
    cdef Py_ssize_t full = (r1 - r0) // q.g, o, tail, j
    cdef double d, v
    cdef unsigned csr = fn_ftz_begin()
    o = r0 * q.C
    if b == NULL:
        if floating is float:
            fn_bn_stats_f32(a + o, q.width, full, center, ps, pq)
        else:
            fn_bn_stats_f64(a + o, q.width, full, center, ps, pq)
    else:
        if floating is float:
            fn_bn_grad_stats_f32(a + o, b + o, q.width, full, center, ps, pq)
        else:
            fn_bn_grad_stats_f64(a + o, b + o, q.width, full, center, ps, pq)
    o += full * q.width                          # a last chunk may end in a partial g-row
    tail = (r1 - r0) * q.C - full * q.width
    for j in range(tail):
        if b == NULL:
            d = <double>a[o + j] - center[j]
            ps[j] += d
            pq[j] += d * d
        else:
            v = <double>a[o + j]
            ps[j] += v
            pq[j] += v * (<double>b[o + j] - center[j])
    fn_ftz_end(csr)


cdef void _reduce(const floating *a, const floating *b, const Geom *q, const double *center,
                  double *part, double *total_s, double *total_q, int nthreads) noexcept nogil:
    """total_s / total_q (C each) = the chunk partials folded in a fixed order: chunks in
    order, then the g copies of each channel in order."""
    cdef Py_ssize_t k, j, c
    cdef Py_ssize_t W = q.width
    if nthreads <= 1 or q.nchunks == 1:
        for k in range(q.nchunks):
            _chunk_sums(a, b, q, k, center, part + 2 * k * W, part + (2 * k + 1) * W)
    else:
        for k in prange(q.nchunks, num_threads=nthreads, schedule='static'):
            _chunk_sums(a, b, q, k, center, part + 2 * k * W, part + (2 * k + 1) * W)
    for k in range(1, q.nchunks):
        for j in range(W):
            part[j] += part[2 * k * W + j]
            part[W + j] += part[(2 * k + 1) * W + j]
    for c in range(q.C):
        total_s[c] = 0.0
        total_q[c] = 0.0
    for j in range(W):
        total_s[j % q.C] += part[j]
        total_q[j % q.C] += part[W + j]


cdef void _replicate(floating *t, const Geom *q) noexcept nogil:
    """Fill a tile from its first C entries."""
    cdef Py_ssize_t j
    for j in range(q.C, q.tile):
        t[j] = t[j - q.C]


cdef void _affine_pass(const floating *x, floating *y, const Geom *q, const floating *m,
                       const floating *a, const floating *c, int nthreads) noexcept nogil:
    cdef Py_ssize_t k, n = q.rows * q.C, step = q.chunk_rows * q.C
    cdef unsigned csr
    if nthreads <= 1 or q.nchunks == 1:
        csr = fn_ftz_begin()
        if floating is float:
            fn_bn_affine_f32(x, y, n, q.tile, m, a, c)
        else:
            fn_bn_affine_f64(x, y, n, q.tile, m, a, c)
        fn_ftz_end(csr)
        return
    for k in prange(q.nchunks, num_threads=nthreads, schedule='static'):
        csr = fn_ftz_begin()
        if floating is float:
            fn_bn_affine_f32(x + k * step, y + k * step, _imin(step, n - k * step), q.tile, m,
                             a, c)
        else:
            fn_bn_affine_f64(x + k * step, y + k * step, _imin(step, n - k * step), q.tile, m,
                             a, c)
        fn_ftz_end(csr)


def batch_norm_train(const floating[:, ::1] x, const floating[::1] gamma,
                     const floating[::1] beta, floating[::1] moving_mean,
                     floating[::1] moving_var, double momentum, double eps,
                     floating[:, ::1] y, floating[::1] mean_out, floating[::1] inv_std_out,
                     double[::1] partials, floating[::1] work, int nthreads):
    """Training-mode batch norm of x (rows >= 1, C >= 1): batch mean / biased variance per
    column into mean_out / inv_std_out (1 / sqrt(var + eps)), moving stats updated in place
    (moving = moving * momentum + batch * (1 - momentum)), y = normalized * gamma + beta
    (gamma / beta None: 1 / 0).  Scratch: ``partials_size`` doubles, ``work_size`` elements.
    y may be x."""
    cdef Geom q = _geom(x.shape[0], x.shape[1])
    cdef Py_ssize_t C = q.C, c, j
    cdef const floating *px = &x[0, 0]
    cdef double *shift = &partials[0]
    cdef double *total_s = shift + q.width
    cdef double *total_q = total_s + C
    cdef floating *m = &work[0]
    cdef floating *a = m + q.tile
    cdef floating *cc = a + q.tile
    cdef const floating *pg = NULL
    cdef const floating *pb = NULL
    cdef double ms, var, inv, M = <double>q.rows
    if gamma is not None:
        pg = &gamma[0]
    if beta is not None:
        pb = &beta[0]
    with nogil:
        for j in range(q.width):
            shift[j] = px[j % C]                  # the first row: a shift against cancellation
        _reduce(px, <const floating *>NULL, &q, shift, total_q + C, total_s, total_q, nthreads)
        for c in range(C):
            ms = total_s[c] / M
            var = total_q[c] / M - ms * ms
            if var < 0.0:
                var = 0.0
            inv = 1.0 / sqrt(var + eps)
            mean_out[c] = <floating>(shift[c] + ms)
            inv_std_out[c] = <floating>inv
            moving_mean[c] = <floating>(moving_mean[c] * momentum
                                        + (shift[c] + ms) * (1.0 - momentum))
            moving_var[c] = <floating>(moving_var[c] * momentum + var * (1.0 - momentum))
            m[c] = mean_out[c]
            a[c] = <floating>(inv * (pg[c] if pg != NULL else 1.0))
            cc[c] = pb[c] if pb != NULL else 0
        _replicate(m, &q)
        _replicate(a, &q)
        _replicate(cc, &q)
        _affine_pass(px, &y[0, 0], &q, m, a, cc, nthreads)


def batch_norm_infer(const floating[:, ::1] x, const floating[::1] gamma,
                     const floating[::1] beta, const floating[::1] moving_mean,
                     const floating[::1] moving_var, double eps, floating[:, ::1] y,
                     floating[::1] mean_out, floating[::1] inv_std_out, floating[::1] work,
                     int nthreads):
    """Inference-mode batch norm with the moving statistics: y = (x - mm) * gamma /
    sqrt(mv + eps) + beta; mean_out = mm and inv_std_out = 1 / sqrt(mv + eps) (for a backward
    in inference mode).  Scratch: ``work_size`` elements.  y may be x."""
    cdef Geom q = _geom(x.shape[0], x.shape[1])
    cdef Py_ssize_t c
    cdef floating *m = &work[0]
    cdef floating *a = m + q.tile
    cdef floating *cc = a + q.tile
    cdef const floating *pg = NULL
    cdef const floating *pb = NULL
    cdef double inv
    if gamma is not None:
        pg = &gamma[0]
    if beta is not None:
        pb = &beta[0]
    with nogil:
        for c in range(q.C):
            inv = 1.0 / sqrt(<double>moving_var[c] + eps)
            mean_out[c] = moving_mean[c]
            inv_std_out[c] = <floating>inv
            m[c] = moving_mean[c]
            a[c] = <floating>(inv * (pg[c] if pg != NULL else 1.0))
            cc[c] = pb[c] if pb != NULL else 0
        _replicate(m, &q)
        _replicate(a, &q)
        _replicate(cc, &q)
        _affine_pass(&x[0, 0], &y[0, 0], &q, m, a, cc, nthreads)


def batch_norm_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                        const floating[::1] gamma, const floating[::1] mean,
                        const floating[::1] inv_std, floating[:, ::1] dx,
                        floating[::1] dgamma, floating[::1] dbeta, bint training,
                        double[::1] partials, floating[::1] work, int nthreads):
    """Gradients of batch norm: dgamma = sum(dy * xhat), dbeta = sum(dy) (each written when
    not None), dx (when not None; may be dy) with the batch-statistics terms in training mode.
    mean / inv_std are the forward's (batch stats in training, moving stats otherwise).
    Scratch: ``partials_size`` doubles, ``work_size`` elements."""
    cdef Geom q = _geom(dy.shape[0], dy.shape[1])
    cdef Py_ssize_t C = q.C, c, j, k, n, step
    cdef const floating *pdy = &dy[0, 0]
    cdef const floating *px = &x[0, 0]
    cdef floating *pdx = NULL
    cdef double *center = &partials[0]
    cdef double *total_s = center + q.width
    cdef double *total_q = total_s + C
    cdef floating *m = &work[0]
    cdef floating *a = m + q.tile
    cdef floating *b = a + q.tile
    cdef floating *cc = b + q.tile
    cdef const floating *pg = NULL
    cdef double ac, iv, M = <double>q.rows
    cdef unsigned csr
    if gamma is not None:
        pg = &gamma[0]
    if dx is not None:
        pdx = &dx[0, 0]
    with nogil:
        for j in range(q.width):
            center[j] = mean[j % C]
        _reduce(pdy, px, &q, center, total_q + C, total_s, total_q, nthreads)
        for c in range(C):
            iv = inv_std[c]
            if dbeta is not None:
                dbeta[c] = <floating>total_s[c]
            if dgamma is not None:
                dgamma[c] = <floating>(total_q[c] * iv)
            ac = iv * (pg[c] if pg != NULL else 1.0)
            m[c] = mean[c]
            a[c] = <floating>ac
            if training:
                b[c] = <floating>(-ac * iv * iv * total_q[c] / M)
                cc[c] = <floating>(-ac * total_s[c] / M)
            else:
                b[c] = 0
                cc[c] = 0
        if pdx != NULL:
            _replicate(m, &q)
            _replicate(a, &q)
            _replicate(b, &q)
            _replicate(cc, &q)
            n = q.rows * C
            step = q.chunk_rows * C
            if nthreads <= 1 or q.nchunks == 1:
                csr = fn_ftz_begin()
                if floating is float:
                    fn_bn_grad_input_f32(pdy, px, pdx, n, q.tile, m, a, b, cc)
                else:
                    fn_bn_grad_input_f64(pdy, px, pdx, n, q.tile, m, a, b, cc)
                fn_ftz_end(csr)
            else:
                for k in prange(q.nchunks, num_threads=nthreads, schedule='static'):
                    csr = fn_ftz_begin()
                    if floating is float:
                        fn_bn_grad_input_f32(pdy + k * step, px + k * step, pdx + k * step,
                                             _imin(step, n - k * step), q.tile, m, a, b, cc)
                    else:
                        fn_bn_grad_input_f64(pdy + k * step, px + k * step, pdx + k * step,
                                             _imin(step, n - k * step), q.tile, m, a, b, cc)
                    fn_ftz_end(csr)


def first_overlap(tuple outputs, tuple inputs):
    """Argument checking helper for the ops (their many small vectors made NumPy's pairwise
    ``may_share_memory`` calls cost more than the kernel on small inputs): the first pair
    (i, j) where output i shares bytes with output j > i (j < len(outputs)) or with input
    j - len(outputs); None when all are disjoint.  Entries may be None (skipped); every array
    must be a contiguous ndarray (the op checked)."""
    cdef Py_ssize_t n_out = len(outputs), n = n_out + len(inputs), i, j
    cdef char *lo[16]
    cdef char *hi[16]
    cdef object a
    if n > 16:
        raise ValueError("first_overlap: at most 16 arrays")
    for i in range(n):
        a = outputs[i] if i < n_out else inputs[i - n_out]
        if a is None:
            lo[i] = hi[i] = NULL
        else:
            lo[i] = <char *>cnp.PyArray_DATA(<cnp.ndarray>a)
            hi[i] = lo[i] + cnp.PyArray_NBYTES(<cnp.ndarray>a)
    for i in range(n_out):
        if lo[i] == NULL:
            continue
        for j in range(i + 1, n):
            if lo[j] != NULL and lo[i] < hi[j] and lo[j] < hi[i]:
                return i, j
    return None
