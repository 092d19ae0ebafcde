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


# Convolution kernels (csrc/fastnet_conv.h; the C lives in this extension with the GEMM and
# follows its ISA choice).  ws: fn_conv_workspace(op, g, use_double, nthreads) elements.
cdef extern from "fastnet_conv.h":
    ctypedef struct fn_conv_geom:
        Py_ssize_t n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, pt, pl
        Py_ssize_t nparts   # backward reduction blocks (<= 0: one per thread)
    enum:
        FN_CONV_FORWARD
        FN_CONV_BACKWARD_INPUT
        FN_CONV_BACKWARD_WEIGHT
        FN_CONV_DIRECT_FORWARD
        FN_CONV_DIRECT_WEIGHT

cdef Py_ssize_t conv_workspace(int op, const fn_conv_geom *g, int use_double,
                               int nthreads) noexcept nogil
cdef void sconv_forward(const fn_conv_geom *g, const float *x, const float *w, const float *bias,
                        float *y, int relu, float *ws, int nthreads) noexcept nogil
cdef void dconv_forward(const fn_conv_geom *g, const double *x, const double *w,
                        const double *bias, double *y, int relu, double *ws,
                        int nthreads) noexcept nogil
cdef void sconv_backward_input(const fn_conv_geom *g, const float *dy, const float *w,
                               const float *relu_y, float *dx, float *ws,
                               int nthreads) noexcept nogil
cdef void dconv_backward_input(const fn_conv_geom *g, const double *dy, const double *w,
                               const double *relu_y, double *dx, double *ws,
                               int nthreads) noexcept nogil
cdef void sconv_backward_weight(const fn_conv_geom *g, const float *x, const float *dy,
                                const float *relu_y, float *dw, float *db, float *ws,
                                int nthreads) noexcept nogil
cdef void dconv_backward_weight(const fn_conv_geom *g, const double *x, const double *dy,
                                const double *relu_y, double *dw, double *db, double *ws,
                                int nthreads) noexcept nogil
cdef void sconv_direct_forward(const fn_conv_geom *g, const float *x, const float *w,
                               const float *bias, float *y, int relu, float *ws,
                               int nthreads) noexcept nogil
cdef void dconv_direct_forward(const fn_conv_geom *g, const double *x, const double *w,
                               const double *bias, double *y, int relu, double *ws,
                               int nthreads) noexcept nogil
cdef void sconv_direct_weight(const fn_conv_geom *g, const float *x, const float *dy,
                              const float *relu_y, float *dw, float *db, float *ws,
                              int nthreads) noexcept nogil
cdef void dconv_direct_weight(const fn_conv_geom *g, const double *x, const double *dy,
                              const double *relu_y, double *dw, double *db, double *ws,
                              int nthreads) noexcept nogil
