/* The per-ISA table of convolution entry points (csrc/<isa>/conv.c), chosen by conv_dispatch.c
 * to follow the GEMM's ISA choice (FASTNET_ISA, fastnet._kernels.gemm.set_isa). */
#ifndef FASTNET_CONV_INTERNAL_H
#define FASTNET_CONV_INTERNAL_H

#include "fastnet_conv.h"

typedef struct {
    const char *name;
    ptrdiff_t (*workspace_s)(int op, const fn_conv_geom *g, int nthreads);
    ptrdiff_t (*workspace_d)(int op, const fn_conv_geom *g, int nthreads);
    void (*forward_s)(const fn_conv_geom *, const float *, const float *, const float *, float *,
                      int, float *, int);
    void (*forward_d)(const fn_conv_geom *, const double *, const double *, const double *,
                      double *, int, double *, int);
    void (*backward_input_s)(const fn_conv_geom *, const float *, const float *, const float *,
                             float *, float *, int);
    void (*backward_input_d)(const fn_conv_geom *, const double *, const double *,
                             const double *, double *, double *, int);
    void (*backward_weight_s)(const fn_conv_geom *, const float *, const float *, const float *,
                              float *, float *, float *, int);
    void (*backward_weight_d)(const fn_conv_geom *, const double *, const double *,
                              const double *, double *, double *, double *, int);
    void (*direct_forward_s)(const fn_conv_geom *, const float *, const float *, const float *,
                             float *, int, float *, int);
    void (*direct_forward_d)(const fn_conv_geom *, const double *, const double *,
                             const double *, double *, int, double *, int);
    void (*direct_weight_s)(const fn_conv_geom *, const float *, const float *, const float *,
                            float *, float *, float *, int);
    void (*direct_weight_d)(const fn_conv_geom *, const double *, const double *,
                            const double *, double *, double *, double *, int);
} fn_conv_table;

/* Instantiates conv_impl.h for float and double and defines the table `fn_conv_table_<ISA>`
 * (with ISA, VBYTES, MR, NV, WMR, WNV defined by the includer). */
#define FN_CONV_CAT_(a, b) a##b
#define FN_CONV_CAT(a, b) FN_CONV_CAT_(a, b)
#define FN_CONV_NAME_(x) #x
#define FN_CONV_NAME(x) FN_CONV_NAME_(x)
#define FN_CONV_FN(name, suf) FN_CONV_CAT(FN_CONV_CAT(FN_CONV_CAT(fn_conv_##name##_, ISA), _), suf)
#define FN_CONV_TABLE                                                                            \
    const fn_conv_table FN_CONV_CAT(fn_conv_table_, ISA) = {                                     \
        FN_CONV_NAME(ISA),                                                                       \
        FN_CONV_FN(workspace, s), FN_CONV_FN(workspace, d),                                      \
        FN_CONV_FN(forward, s), FN_CONV_FN(forward, d),                                          \
        FN_CONV_FN(backward_input, s), FN_CONV_FN(backward_input, d),                            \
        FN_CONV_FN(backward_weight, s), FN_CONV_FN(backward_weight, d),                          \
        FN_CONV_FN(direct_forward, s), FN_CONV_FN(direct_forward, d),                            \
        FN_CONV_FN(direct_weight, s), FN_CONV_FN(direct_weight, d),                              \
    };

extern const fn_conv_table fn_conv_table_generic;
extern const fn_conv_table fn_conv_table_avx2;
extern const fn_conv_table fn_conv_table_avx512;

#endif
