# cython: language_level=3
"""GEMM kernel module: the only extension that links the C GEMM in ``csrc/``.

``gemm_into`` is the Python-visible wrapper used by ``fastnet.ops.matmul``; other kernels
cimport ``sgemm``/``dgemm``/``gemm`` from ``gemm.pxd`` and call them without the GIL.
"""
from cython cimport floating

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


cdef void sgemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                const float *a, Py_ssize_t lda, const float *b, Py_ssize_t ldb, float beta,
                float *c, Py_ssize_t ldc, const float *bias, int act, int nthreads) noexcept nogil:
    fn_sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, act, nthreads)


cdef void dgemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                const double *a, Py_ssize_t lda, const double *b, Py_ssize_t ldb, double beta,
                double *c, Py_ssize_t ldc, const double *bias, int act, int nthreads) noexcept nogil:
    fn_dgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, act, nthreads)


def gemm_into(floating[:, :] a, floating[:, :] b, floating[:, ::1] c, bint transa, bint transb,
              double alpha, double beta, const floating[::1] bias, int act, int nthreads):
    """c = act(alpha op(a) op(b) + beta c + bias).  a, b need a unit inner stride."""
    cdef Py_ssize_t m = c.shape[0], n = c.shape[1]
    cdef Py_ssize_t k = a.shape[0] if transa else a.shape[1]
    cdef Py_ssize_t lda = a.strides[0] // sizeof(floating)
    cdef Py_ssize_t ldb = b.strides[0] // sizeof(floating)
    cdef Py_ssize_t ldc = c.strides[0] // sizeof(floating)
    cdef const floating *pbias = &bias[0] if bias is not None else NULL
    with nogil:
        gemm(transa, transb, m, n, k, <floating>alpha, &a[0, 0], lda, &b[0, 0], ldb,
             <floating>beta, &c[0, 0], ldc, pbias, act, nthreads)


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
