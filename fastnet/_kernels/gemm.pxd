# Cross-module GEMM: other kernel modules cimport these, so the C GEMM and its dispatch table
# live in this one extension.
from cython cimport floating

cdef void sgemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, float alpha,
                const float *a, Py_ssize_t lda, const float *b, Py_ssize_t ldb, float beta,
                float *c, Py_ssize_t ldc, const float *bias, int act, int nthreads) noexcept nogil

cdef void dgemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, double alpha,
                const double *a, Py_ssize_t lda, const double *b, Py_ssize_t ldb, double beta,
                double *c, Py_ssize_t ldc, const double *bias, int act, int nthreads) noexcept nogil

cdef enum:
    ACT_NONE = 0
    ACT_RELU = 1

cdef inline void gemm(bint transa, bint transb, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      floating alpha, const floating *a, Py_ssize_t lda, const floating *b,
                      Py_ssize_t ldb, floating beta, floating *c, Py_ssize_t ldc,
                      const floating *bias, int act, int nthreads) noexcept nogil:
    """C[m,n] = act(alpha op(A) op(B) + beta C + bias), row-major; see csrc/fastnet_gemm.h."""
    if floating is float:
        sgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, act, nthreads)
    else:
        dgemm(transa, transb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc, bias, act, nthreads)
