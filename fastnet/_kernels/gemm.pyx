# cython: language_level=3
"""GEMM kernel module: the only extension that links the C GEMM in ``csrc/``.

``gemm_into`` is the Python-visible wrapper used by ``fastnet.ops.matmul``; other kernels
cimport ``sgemm``/``dgemm``/``gemm`` from ``gemm.pxd`` and call them without the GIL.
"""
cimport numpy as cnp
from cython cimport floating

cnp.import_array()

cdef extern from "fastnet_gemm.h":
    void fn_sgemm(int transa, int transb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, float alpha,
                  const float *A, Py_ssize_t lda, const float *B, Py_ssize_t ldb, float beta,
                  float *C, Py_ssize_t ldc, const float *bias, int act, int nthreads) nogil
    void fn_dgemm(int transa, int transb, Py_ssize_t M, Py_ssize_t N, Py_ssize_t K, double alpha,
                  const double *A, Py_ssize_t lda, const double *B, Py_ssize_t ldb, double beta,
                  double *C, Py_ssize_t ldc, const double *bias, int act, int nthreads) nogil
    const char *fn_gemm_isa()
    int fn_gemm_set_isa(const char *name)
    const char *fn_gemm_available_isas()
    int fn_gemm_set_broadcast(const char *name)
    const char *fn_gemm_broadcast()

cdef extern from "gemm_internal.h":
    int fn_gemm_blocking(const char *name, int use_double, int *sizes)
    double fn_gemm_fma_peak(int nthreads, double seconds) nogil

cdef extern from "fastnet_conv.h":
    Py_ssize_t fn_conv_workspace(int op, const fn_conv_geom *g, int use_double,
                                 int nthreads) nogil
    void fn_sconv_forward(const fn_conv_geom *g, const float *x, const float *w,
                          const float *bias, float *y, int relu, float *ws, int nthreads) nogil
    void fn_dconv_forward(const fn_conv_geom *g, const double *x, const double *w,
                          const double *bias, double *y, int relu, double *ws,
                          int nthreads) nogil
    void fn_sconv_backward_input(const fn_conv_geom *g, const float *dy, const float *w,
                                 const float *relu_y, float *dx, float *ws, int nthreads) nogil
    void fn_dconv_backward_input(const fn_conv_geom *g, const double *dy, const double *w,
                                 const double *relu_y, double *dx, double *ws,
                                 int nthreads) nogil
    void fn_sconv_backward_weight(const fn_conv_geom *g, const float *x, const float *dy,
                                  const float *relu_y, float *dw, float *db, float *ws,
                                  int nthreads) nogil
    void fn_dconv_backward_weight(const fn_conv_geom *g, const double *x, const double *dy,
                                  const double *relu_y, double *dw, double *db, double *ws,
                                  int nthreads) nogil
    void fn_sconv_direct_forward(const fn_conv_geom *g, const float *x, const float *w,
                                 const float *bias, float *y, int relu, float *ws,
                                 int nthreads) nogil
    void fn_dconv_direct_forward(const fn_conv_geom *g, const double *x, const double *w,
                                 const double *bias, double *y, int relu, double *ws,
                                 int nthreads) nogil
    void fn_sconv_direct_weight(const fn_conv_geom *g, const float *x, const float *dy,
                                const float *relu_y, float *dw, float *db, float *ws,
                                int nthreads) nogil
    void fn_dconv_direct_weight(const fn_conv_geom *g, const double *x, const double *dy,
                                const double *relu_y, double *dw, double *db, double *ws,
                                int nthreads) nogil


cdef void sgemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                const float *a, Py_ssize_t lda, const float *b, Py_ssize_t ldb, float beta,
                float *c, Py_ssize_t ldc, const float *bias, int act, int nthreads) noexcept nogil:
    fn_sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, act, nthreads)


cdef void dgemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                const double *a, Py_ssize_t lda, const double *b, Py_ssize_t ldb, double beta,
                double *c, Py_ssize_t ldc, const double *bias, int act, int nthreads) noexcept nogil:
    fn_dgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, act, nthreads)


cdef Py_ssize_t conv_workspace(int op, const fn_conv_geom *g, int use_double,
                               int nthreads) noexcept nogil:
    return fn_conv_workspace(op, g, use_double, nthreads)


cdef void sconv_forward(const fn_conv_geom *g, const float *x, const float *w, const float *bias,
                        float *y, int relu, float *ws, int nthreads) noexcept nogil:
    fn_sconv_forward(g, x, w, bias, y, relu, ws, nthreads)


cdef void dconv_forward(const fn_conv_geom *g, const double *x, const double *w,
                        const double *bias, double *y, int relu, double *ws,
                        int nthreads) noexcept nogil:
    fn_dconv_forward(g, x, w, bias, y, relu, ws, nthreads)


cdef void sconv_backward_input(const fn_conv_geom *g, const float *dy, const float *w,
                               const float *relu_y, float *dx, float *ws,
                               int nthreads) noexcept nogil:
    fn_sconv_backward_input(g, dy, w, relu_y, dx, ws, nthreads)


cdef void dconv_backward_input(const fn_conv_geom *g, const double *dy, const double *w,
                               const double *relu_y, double *dx, double *ws,
                               int nthreads) noexcept nogil:
    fn_dconv_backward_input(g, dy, w, relu_y, dx, ws, nthreads)


cdef void sconv_backward_weight(const fn_conv_geom *g, const float *x, const float *dy,
                                const float *relu_y, float *dw, float *db, float *ws,
                                int nthreads) noexcept nogil:
    fn_sconv_backward_weight(g, x, dy, relu_y, dw, db, ws, nthreads)


cdef void dconv_backward_weight(const fn_conv_geom *g, const double *x, const double *dy,
                                const double *relu_y, double *dw, double *db, double *ws,
                                int nthreads) noexcept nogil:
    fn_dconv_backward_weight(g, x, dy, relu_y, dw, db, ws, nthreads)


cdef void sconv_direct_forward(const fn_conv_geom *g, const float *x, const float *w,
                               const float *bias, float *y, int relu, float *ws,
                               int nthreads) noexcept nogil:
    fn_sconv_direct_forward(g, x, w, bias, y, relu, ws, nthreads)


cdef void dconv_direct_forward(const fn_conv_geom *g, const double *x, const double *w,
                               const double *bias, double *y, int relu, double *ws,
                               int nthreads) noexcept nogil:
    fn_dconv_direct_forward(g, x, w, bias, y, relu, ws, nthreads)


cdef void sconv_direct_weight(const fn_conv_geom *g, const float *x, const float *dy,
                              const float *relu_y, float *dw, float *db, float *ws,
                              int nthreads) noexcept nogil:
    fn_sconv_direct_weight(g, x, dy, relu_y, dw, db, ws, nthreads)


cdef void dconv_direct_weight(const fn_conv_geom *g, const double *x, const double *dy,
                              const double *relu_y, double *dw, double *db, double *ws,
                              int nthreads) noexcept nogil:
    fn_dconv_direct_weight(g, x, dy, relu_y, dw, db, ws, nthreads)


def gemm_into(cnp.ndarray a, cnp.ndarray b, cnp.ndarray c, bint transa, bint transb,
              double alpha, double beta, cnp.ndarray bias, int act, int nthreads):
    """c = act(alpha op(a) op(b) + beta c + bias) on 2-D float32/float64 arrays of one dtype.

    Trusted: the caller (``fastnet.ops.matmul``) has checked shapes, that a, b and c have a unit
    inner stride and non-negative row strides (the leading dimensions), that c is writeable and
    overlaps nothing, and that bias (or None) is contiguous with c.shape[1] entries.  Plain
    ndarray access, no memoryviews: this wrapper costs well under a microsecond.
    """
    if a.ndim != 2 or b.ndim != 2 or c.ndim != 2:
        raise ValueError("gemm_into: a, b and c must be 2-D")
    cdef int typ = cnp.PyArray_TYPE(c)
    if cnp.PyArray_TYPE(a) != typ or cnp.PyArray_TYPE(b) != typ or (
            bias is not None and cnp.PyArray_TYPE(bias) != typ):
        raise TypeError("gemm_into: a, b, c and bias must share one dtype")
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if transa else a.shape[1]
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(c)
    cdef Py_ssize_t lda = a.strides[0] // item, ldb = b.strides[0] // item
    cdef Py_ssize_t ldc = c.strides[0] // item
    cdef void *pa = cnp.PyArray_DATA(a)
    cdef void *pb = cnp.PyArray_DATA(b)
    cdef void *pc = cnp.PyArray_DATA(c)
    cdef void *pbias = NULL if bias is None else cnp.PyArray_DATA(bias)
    if typ == cnp.NPY_FLOAT32:
        with nogil:
            fn_sgemm(transa, transb, m, n, k, <float>alpha, <const float *>pa, lda,
                     <const float *>pb, ldb, <float>beta, <float *>pc, ldc,
                     <const float *>pbias, act, nthreads)
    elif typ == cnp.NPY_FLOAT64:
        with nogil:
            fn_dgemm(transa, transb, m, n, k, alpha, <const double *>pa, lda,
                     <const double *>pb, ldb, beta, <double *>pc, ldc,
                     <const double *>pbias, act, nthreads)
    else:
        raise TypeError("gemm_into: dtype must be float32 or float64")


cdef inline bint _plain_operand(object x, int typ) noexcept:
    """x is a 2-D ndarray of dtype typ read in place by the kernel: unit inner stride (or one
    column) and a non-negative row stride that is a whole number of elements."""
    if type(x) is not cnp.ndarray:
        return False
    cdef cnp.ndarray a = <cnp.ndarray>x
    if cnp.PyArray_NDIM(a) != 2 or cnp.PyArray_TYPE(a) != typ:
        return False
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(a)
    cdef Py_ssize_t s0 = cnp.PyArray_STRIDES(a)[0], s1 = cnp.PyArray_STRIDES(a)[1]
    return (s1 == item or cnp.PyArray_DIMS(a)[1] <= 1) and s0 >= 0 and s0 % item == 0


def matmul_fast(a, b, bias, activation, transpose_a, transpose_b, out, int nthreads):
    """``fastnet.ops.matmul`` for the common case, checked in C: returns the result, or None
    when any argument is not plainly valid (the caller then runs the full Python checks, which
    raise the precise error or copy awkward strides).  Keeps a dense layer's small products
    (64 x 10 x 64 takes ~1 us) from paying microseconds of Python validation."""
    if type(a) is not cnp.ndarray:
        return None
    cdef int typ = cnp.PyArray_TYPE(<cnp.ndarray>a)
    if typ != cnp.NPY_FLOAT32 and typ != cnp.NPY_FLOAT64:
        return None
    if not _plain_operand(a, typ) or not _plain_operand(b, typ):
        return None
    if (transpose_a is not True and transpose_a is not False) or \
            (transpose_b is not True and transpose_b is not False):
        return None
    cdef int act
    if activation is None:
        act = 0
    elif type(activation) is str and activation == "relu":
        act = 1
    elif type(activation) is str and activation == "linear":
        act = 0
    else:
        return None
    cdef bint ta = transpose_a is True, tb = transpose_b is True
    cdef cnp.ndarray A = <cnp.ndarray>a, B = <cnp.ndarray>b, C, bv = None
    cdef Py_ssize_t m = A.shape[1] if ta else A.shape[0], k = A.shape[0] if ta else A.shape[1]
    cdef Py_ssize_t kb = B.shape[1] if tb else B.shape[0], n = B.shape[0] if tb else B.shape[1]
    if k != kb or m == 0 or n == 0:
        return None
    cdef Py_ssize_t item = cnp.PyArray_ITEMSIZE(A)
    if bias is not None:
        if type(bias) is not cnp.ndarray:
            return None
        bv = <cnp.ndarray>bias
        if cnp.PyArray_NDIM(bv) != 1 or cnp.PyArray_TYPE(bv) != typ or bv.shape[0] != n or \
                (n > 1 and cnp.PyArray_STRIDES(bv)[0] != item):
            return None
    if out is None:
        C = cnp.PyArray_EMPTY(2, [m, n], typ, 0)
    else:
        if type(out) is not cnp.ndarray:
            return None
        C = <cnp.ndarray>out
        if not _plain_operand(C, typ) or C.shape[0] != m or C.shape[1] != n or \
                not cnp.PyArray_ISWRITEABLE(C) or (m > 1 and C.strides[0] < n * item):
            return None
        if first_overlap(C, A, B, bv) >= 0:
            return None
    gemm_into(A, B, C, ta, tb, 1.0, 0.0, bv, act, nthreads)
    return C


def isa():
    """The GEMM path in use: 'avx512', 'avx2' or 'generic'."""
    return fn_gemm_isa().decode()


def set_isa(str name):
    """Force a GEMM path; raises ValueError if this build or CPU cannot run it."""
    if fn_gemm_set_isa(name.encode()) != 0:
        raise ValueError(f"isa must be one of {available_isas()}, got {name!r}")


def available_isas():
    """The paths this build and CPU can run, best first."""
    return fn_gemm_available_isas().decode().split(",")


def broadcast():
    """How the AVX-512 path's FMAs read A: 'memory' (embedded broadcasts, the default on AMD)
    or 'register' (one broadcast per value, elsewhere); None when this build has no AVX-512
    path.  The results are the same bit for bit; only the speed differs."""
    mode = fn_gemm_broadcast().decode()
    return mode or None


def set_broadcast(str name):
    """Force the AVX-512 broadcast mode: 'memory', 'register' or 'auto' (the CPU's default;
    the environment variable FASTNET_GEMM_BROADCAST sets the mode at start-up)."""
    if fn_gemm_set_broadcast(name.encode()) != 0:
        if broadcast() is None:
            raise ValueError("this build has no AVX-512 GEMM path")
        raise ValueError(f"name must be 'memory', 'register' or 'auto', got {name!r}")


def blocking(str name, dtype):
    """Block sizes of path ``name`` for ``dtype`` (float32/float64): a dict with the register
    tile ``mr`` x ``nr`` and the cache blocks ``kc``, ``mc``, ``nc`` (for tests, benchmarks)."""
    cdef int sizes[5]
    import numpy as np
    if fn_gemm_blocking(name.encode(), np.dtype(dtype) == np.float64, sizes) != 0:
        raise ValueError(f"isa must be one of {available_isas()}, got {name!r}")
    return dict(mr=sizes[0], nr=sizes[1], kc=sizes[2], mc=sizes[3], nc=sizes[4])


def fma_peak(int nthreads, double seconds):
    """float32 FMA throughput of the current path in GFLOP/s: ``nthreads`` threads each run
    independent chains of vector FMAs for ``seconds`` (the GIL released); their rates summed."""
    if nthreads < 1:
        raise ValueError(f"nthreads must be >= 1, got {nthreads}")
    if not 0 < seconds <= 10:
        raise ValueError(f"seconds must be in (0, 10], got {seconds}")
    cdef double r
    with nogil:
        r = fn_gemm_fma_peak(nthreads, seconds)
    return r


cdef inline void _span(cnp.ndarray x, Py_ssize_t *lo, Py_ssize_t *hi) noexcept:
    cdef Py_ssize_t start = <Py_ssize_t>cnp.PyArray_DATA(x), end = start, ext
    cdef int d
    for d in range(x.ndim):
        ext = (x.shape[d] - 1) * x.strides[d]
        if ext < 0:
            start += ext
        else:
            end += ext
    lo[0] = start
    hi[0] = end + cnp.PyArray_ITEMSIZE(x)


def first_overlap(cnp.ndarray out, a, b, bias):
    """0, 1 or 2 if the memory span of ``out`` meets that of ``a``, ``b`` or ``bias`` (None is
    skipped), else -1: the bounds test of numpy.may_share_memory, for ops to validate ``out``
    in well under a microsecond."""
    cdef Py_ssize_t lo, hi, xlo, xhi
    cdef int i
    if cnp.PyArray_SIZE(out) == 0:
        return -1
    _span(out, &lo, &hi)
    for i, x in enumerate((a, b, bias)):
        if x is None or cnp.PyArray_SIZE(<cnp.ndarray>x) == 0:
            continue
        _span(<cnp.ndarray>x, &xlo, &xhi)
        if xlo < hi and lo < xhi:
            return i
    return -1
