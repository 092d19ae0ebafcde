/* Convolution entry points (fastnet_conv.h): forward to the table of the ISA the GEMM uses, so
 * FASTNET_ISA and fastnet._kernels.gemm.set_isa switch both. */
#include <string.h>
#include "conv/conv_internal.h"
#include "fastnet_gemm.h"
#include "fn_isa_config.h"

static const fn_conv_table *const all_tables[] = {
#ifdef FN_HAVE_AVX512
    &fn_conv_table_avx512,
#endif
#ifdef FN_HAVE_AVX2
    &fn_conv_table_avx2,
#endif
    &fn_conv_table_generic,
};
#define N_TABLES (sizeof all_tables / sizeof all_tables[0])

static const fn_conv_table *current(void)
{
    const char *isa = fn_gemm_isa();
    for (size_t i = 0; i < N_TABLES; ++i)
        if (strcmp(all_tables[i]->name, isa) == 0) return all_tables[i];
    return &fn_conv_table_generic;
}

/* The largest need over every table: the ISA may be switched between sizing and calling. */
ptrdiff_t fn_conv_workspace(int op, const fn_conv_geom *g, int use_double, int nthreads)
{
    ptrdiff_t most = 0;
    for (size_t i = 0; i < N_TABLES; ++i) {
        const ptrdiff_t n = use_double ? all_tables[i]->workspace_d(op, g, nthreads)
                                       : all_tables[i]->workspace_s(op, g, nthreads);
        if (n > most) most = n;
    }
    return most;
}

void fn_sconv_forward(const fn_conv_geom *g, const float *x, const float *w, const float *bias,
                      float *y, int relu, float *ws, int nthreads)
{
    current()->forward_s(g, x, w, bias, y, relu, ws, nthreads);
}

void fn_dconv_forward(const fn_conv_geom *g, const double *x, const double *w,
                      const double *bias, double *y, int relu, double *ws, int nthreads)
{
    current()->forward_d(g, x, w, bias, y, relu, ws, nthreads);
}

void fn_sconv_backward_input(const fn_conv_geom *g, const float *dy, const float *w,
                             const float *relu_y, float *dx, float *ws, int nthreads)
{
    current()->backward_input_s(g, dy, w, relu_y, dx, ws, nthreads);
}

void fn_dconv_backward_input(const fn_conv_geom *g, const double *dy, const double *w,
                             const double *relu_y, double *dx, double *ws, int nthreads)
{
    current()->backward_input_d(g, dy, w, relu_y, dx, ws, nthreads);
}

void fn_sconv_backward_weight(const fn_conv_geom *g, const float *x, const float *dy,
                              const float *relu_y, float *dw, float *db, float *ws, int nthreads)
{
    current()->backward_weight_s(g, x, dy, relu_y, dw, db, ws, nthreads);
}

void fn_dconv_backward_weight(const fn_conv_geom *g, const double *x, const double *dy,
                              const double *relu_y, double *dw, double *db, double *ws,
                              int nthreads)
{
    current()->backward_weight_d(g, x, dy, relu_y, dw, db, ws, nthreads);
}

void fn_sconv_direct_forward(const fn_conv_geom *g, const float *x, const float *w,
                             const float *bias, float *y, int relu, float *ws, int nthreads)
{
    current()->direct_forward_s(g, x, w, bias, y, relu, ws, nthreads);
}

void fn_dconv_direct_forward(const fn_conv_geom *g, const double *x, const double *w,
                             const double *bias, double *y, int relu, double *ws, int nthreads)
{
    current()->direct_forward_d(g, x, w, bias, y, relu, ws, nthreads);
}

void fn_sconv_direct_weight(const fn_conv_geom *g, const float *x, const float *dy,
                            const float *relu_y, float *dw, float *db, float *ws, int nthreads)
{
    current()->direct_weight_s(g, x, dy, relu_y, dw, db, ws, nthreads);
}

void fn_dconv_direct_weight(const fn_conv_geom *g, const double *x, const double *dy,
                            const double *relu_y, double *dw, double *db, double *ws,
                            int nthreads)
{
    current()->direct_weight_d(g, x, dy, relu_y, dw, db, ws, nthreads);
}
