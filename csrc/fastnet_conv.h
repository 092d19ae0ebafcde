/* fastnet convolution kernels: NHWC activations, Keras (kh, kw, Cin, Cout) kernels.
 *
 * Implicit GEMM straight from the tensors: no im2col matrix, no packed A panels.  Each entry
 * point packs the (small) kernel once per call into its workspace, then runs register-tiled
 * microkernels that read the input windows in place through per-tile pointer tables (an
 * "indirection buffer": padding points at a zero row or is skipped).  See csrc/conv/conv_impl.h.
 *
 *   forward          y  = act(conv(x, w) + bias)                        (any stride, padding)
 *   backward_input   dx = conv^T(dy * [relu_y > 0], w)                   (any stride, padding)
 *   backward_weight  dw = sum over pixels of patch^T (dy * [relu_y > 0]); db = column sums
 *   direct_forward / direct_weight: the same for small kw*Cin, register tiles over pixels
 *
 * relu_y (may be NULL) is the forward output of a fused ReLU: the gradient is masked where it
 * is not positive, on the fly.  ws is a workspace of fn_conv_workspace(op, g, dbl, nthreads)
 * elements of the precision (64-byte aligned), reused across calls by the caller.  nthreads is
 * the OpenMP team size.  Results of forward do not depend on the team size.  The backward
 * kernels cut their sums over pixels into g->nparts blocks, added in block order, the team's
 * threads taking blocks in turn: g->nparts <= 0 means one block per thread (the fast default:
 * bitwise reproducible for a given team size only); a fixed g->nparts > 0 makes the results
 * independent of the team size (fastnet.config.deterministic).  Size the workspace with
 * nthreads = max(team size, nparts).  All sizes are trusted: the Python ops validate before
 * calling.
 */
#ifndef FASTNET_CONV_H
#define FASTNET_CONV_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    ptrdiff_t n, h, w, cin;      /* input */
    ptrdiff_t oh, ow, cout;      /* output */
    ptrdiff_t kh, kw, sh, sw;    /* kernel size and strides */
    ptrdiff_t pt, pl;            /* padding before (top, left) */
    ptrdiff_t nparts;            /* backward reduction blocks; <= 0: one per thread */
} fn_conv_geom;

#define FN_CONV_FORWARD 0
#define FN_CONV_BACKWARD_INPUT 1
#define FN_CONV_BACKWARD_WEIGHT 2
#define FN_CONV_DIRECT_FORWARD 3
#define FN_CONV_DIRECT_WEIGHT 4

ptrdiff_t fn_conv_workspace(int op, const fn_conv_geom *g, int use_double, int nthreads);

void fn_sconv_forward(const fn_conv_geom *g, const float *x, const float *w, const float *bias,
                      float *y, int relu, float *ws, int nthreads);
void fn_dconv_forward(const fn_conv_geom *g, const double *x, const double *w,
                      const double *bias, double *y, int relu, double *ws, int nthreads);
void fn_sconv_backward_input(const fn_conv_geom *g, const float *dy, const float *w,
                             const float *relu_y, float *dx, float *ws, int nthreads);
void fn_dconv_backward_input(const fn_conv_geom *g, const double *dy, const double *w,
                             const double *relu_y, double *dx, double *ws, int nthreads);
/* Direct kernels for small kw*Cin (csrc/conv/direct_impl.h): same contracts as forward and
 * backward_weight (relu_y: Cout <= 4096). */
void fn_sconv_direct_forward(const fn_conv_geom *g, const float *x, const float *w,
                             const float *bias, float *y, int relu, float *ws, int nthreads);
void fn_dconv_direct_forward(const fn_conv_geom *g, const double *x, const double *w,
                             const double *bias, double *y, int relu, double *ws, int nthreads);
void fn_sconv_direct_weight(const fn_conv_geom *g, const float *x, const float *dy,
                            const float *relu_y, float *dw, float *db, float *ws, int nthreads);
void fn_dconv_direct_weight(const fn_conv_geom *g, const double *x, const double *dy,
                            const double *relu_y, double *dw, double *db, double *ws,
                            int nthreads);
void fn_sconv_backward_weight(const fn_conv_geom *g, const float *x, const float *dy,
                              const float *relu_y, float *dw, float *db, float *ws,
                              int nthreads);
void fn_dconv_backward_weight(const fn_conv_geom *g, const double *x, const double *dy,
                              const double *relu_y, double *dw, double *db, double *ws,
                              int nthreads);

#ifdef __cplusplus
}
#endif
#endif
