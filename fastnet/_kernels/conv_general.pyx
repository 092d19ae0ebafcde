# cython: language_level=3
"""Kernels of the convolutions beyond the plain Conv2D: depthwise, grouped and dilated
convolutions, transposed-convolution helpers and 2-D upsampling; NHWC activations.

Design
------
Depthwise (``fn_cg_dw_*``, C below): each output channel sees one input channel, so there is no
reduction over channels and no GEMM; with NHWC the channels are the contiguous axis and every
inner loop runs over them in vectors of 64 bytes (GCC vector types: one zmm, two ymm or four xmm
by target clone), four vectors of channels at a time held in registers across all the taps of a
window; where 4 neighbouring pixels' windows lie inside the input, they are computed together
so each kernel vector is loaded once for 4 FMAs (the backward weight likewise groups up to 4
taps per dy load).  The kernel (kh, kw, Cin, dm) flattened per tap is a vector over the output
channels c * dm + m; with depth_multiplier dm > 1 the input row is first expanded (each channel
repeated dm times) into a per-thread buffer, so the same loops serve both.  Forward: threads over output
rows (n, oh).  Backward input: a gather per input row (n, ih), every tap that reads it visited
in turn (no races, so no atomics and any thread count); with dm > 1 the dm products of a channel
are summed at the end.  Backward weight: threads over fixed blocks of output rows, each
accumulating its (kh*kw*Cout) partial sums in registers over a row of pixels per tap; the
partials are added in block order.  Every reduction here (weight and bias gradients, the
'blocks' schedules) takes ``nparts`` blocks: by default one per thread (bitwise reproducible for
a given thread count), a number fixed by the shape in ``fastnet.config.deterministic`` mode
(the same for any thread count), the threads taking blocks in turn.

Grouped / dilated (``general_*``): im2col panels + the project GEMM (``gemm.pxd``) per group:
group g's panel column (i, j, c) holds input channel g*Cg + c at tap (i, j), dilations and
strides folded into the gather, and the kernel's columns g*Og ... (g+1)*Og, leading dimension
Cout, are the GEMM's B matrix as-is.  Schedules as in ``conv.pyx``: 'blocks' (rows [0, M) in one
contiguous block per thread, each walked in tiles, 1-thread GEMMs) or 'shared' (few rows: the
team im2cols a tile, then one GEMM with every thread).  Backward input (strided; the op runs a
stride-1 one as a forward convolution by the flipped kernel): dcol = dY_g @ W_g^T per tile,
then col2im as a gather by input row (whole images per thread in 'blocks', rows in
parallel in 'shared').  Backward weight: dW_g += col_g^T @ dY_g with per-block partial sums.
Explicit paddings (pad before; the output size implies the rest, which may be negative, i.e. a
crop) cover 'valid', 'same', causal and the transposed convolutions' geometries.

Space-to-batch / batch-to-space: the phase copies that let a dilated convolution run as the
undilated one of each phase of its input (``fastnet.ops.conv_general.phase_plan``).

Upsampling: nearest copies / sums windows per row; bilinear uses TensorFlow's half-pixel
centres (``tf.image.resize``, PyTorch's ``align_corners=False``) and is separable: the backward
first contracts each dy row along the width (rows in parallel), then gathers the rows of dx from
the contracted rows that touch them (rows in parallel, no races).

All functions trust their arguments: ``fastnet.ops.conv_general`` validated them.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memset

from fastnet._kernels.gemm cimport gemm, ACT_NONE
from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound

cdef extern from *:
    r"""
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    /* FASTNET_CFLAGS=-DFN_NO_TARGET_CLONES builds the baseline code only (to test it). */
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) \
        && defined(__linux__) && !defined(FN_NO_TARGET_CLONES)
    #  define FN_CG_CLONES \
           __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #  define FN_CG_CLONES
    #endif
    #if defined(__GNUC__) && !defined(__clang__)
    #  define FN_CG_NOTRAP __attribute__((optimize("no-trapping-math")))
    #else
    #  define FN_CG_NOTRAP
    #endif
    #pragma GCC diagnostic ignored "-Wpsabi"

    typedef struct {
        ptrdiff_t n, h, w, cin;           /* input */
        ptrdiff_t oh, ow, cout;           /* output */
        ptrdiff_t kh, kw, sh, sw, dh, dw; /* window, strides, dilations */
        ptrdiff_t pt, pl;                 /* padding before (top, left); may exceed the input */
        ptrdiff_t groups;                 /* grouped convolution: Cin and Cout in this many */
    } fn_cg_geom;

    /* Taps t in [lo, hi) of k with 0 <= base + t*d < size (d >= 1). */
    static inline void fn_cg_taps(ptrdiff_t base, ptrdiff_t d, ptrdiff_t k, ptrdiff_t size,
                                  ptrdiff_t *lo, ptrdiff_t *hi)
    {
        ptrdiff_t a = base < 0 ? (-base + d - 1) / d : 0;
        ptrdiff_t b = size - base <= 0 ? 0 : (size - base + d - 1) / d;
        if (b > k) b = k;
        if (a > b) a = b;
        *lo = a;
        *hi = b;
    }

    #define FN_CG_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
    #define FN_CG_ST(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
    #define FN_CG_SLD(p) (*(p))
    #define FN_CG_SST(p, v) (*(p) = (v))

    /* The depthwise loops are written once per channel chunk: NV vectors of W lanes of type VT
     * (VT = V, W = VL: the vector body; VT = T, W = 1: the scalar tail), loaded with LD; the
     * kernels typedef their element type T as elem_t.  The _TILE forms take 4 neighbouring
     * output (or input) pixels, or up to 4 neighbouring taps, at once, so that each kernel (or
     * dy) vector is loaded once for 4 multiply-adds: 5 loads per 4 FMAs instead of 8. */

    /* Forward, one output pixel: bias + sum over the window's taps of x * k, then ReLU. */
    #define FN_DW_FWD_CHUNK(VT, W, NV, LD, ST, RELU)                                                 \
        for (; c + (NV) * (W) <= C; c += (NV) * (W)) {                                               \
            VT a[NV];                                                                                \
            for (int q = 0; q < (NV); ++q) a[q] = bias ? LD(bias + c + q * (W)) : (VT){0};           \
            for (ptrdiff_t i = ilo; i < ihi; ++i) {                                                  \
                const elem_t *xr = FN_DW_ROW(i) + c, *kr = k + i * g->kw * C + c;                    \
                for (ptrdiff_t j = jlo; j < jhi; ++j) {                                              \
                    const elem_t *xp = xr + (iw0 + j * g->dw) * C, *kp = kr + j * C;                 \
                    for (int q = 0; q < (NV); ++q)                                                   \
                        a[q] += LD(xp + q * (W)) * LD(kp + q * (W));                                 \
                }                                                                                    \
            }                                                                                        \
            for (int q = 0; q < (NV); ++q) ST(yp + c + q * (W), relu ? RELU(a[q]) : a[q]);           \
        }                                                                                            \

    /* Forward, output pixels iw0 / sw ... + 3 (stride xs apart in x), all windows inside. */
    #define FN_DW_FWD_TILE(NV, RELU)                                                                 \
        for (; c + (NV) * VL <= C; c += (NV) * VL) {                                                 \
            V a[4][NV];                                                                              \
            for (int p = 0; p < 4; ++p)                                                              \
                for (int q = 0; q < (NV); ++q)                                                       \
                    a[p][q] = bias ? FN_CG_LD(V, bias + c + q * VL) : (V){0};                        \
            for (ptrdiff_t i = ilo; i < ihi; ++i) {                                                  \
                const elem_t *xr = FN_DW_ROW(i) + iw0 * C + c, *kr = k + i * g->kw * C + c;          \
                for (ptrdiff_t j = 0; j < g->kw; ++j) {                                              \
                    V kv[NV];                                                                        \
                    for (int q = 0; q < (NV); ++q) kv[q] = FN_CG_LD(V, kr + j * C + q * VL);         \
                    const elem_t *xp = xr + j * g->dw * C;                                           \
                    for (int p = 0; p < 4; ++p)                                                      \
                        for (int q = 0; q < (NV); ++q)                                               \
                            a[p][q] += FN_CG_LD(V, xp + p * xs + q * VL) * kv[q];                    \
                }                                                                                    \
            }                                                                                        \
            for (int p = 0; p < 4; ++p)                                                              \
                for (int q = 0; q < (NV); ++q)                                                       \
                    FN_CG_ST(yp + p * C + c + q * VL, relu ? RELU(a[p][q]) : a[p][q]);               \
        }                                                                                            \

    /* Backward input, one input pixel iw: sum over the taps (i, j) whose window covers it of
     * dy[oh, ow] * k[i, j]. */
    #define FN_DW_BWD_CHUNK(VT, W, NV, LD, ST)                                                       \
        for (; c + (NV) * (W) <= C; c += (NV) * (W)) {                                               \
            VT a[NV];                                                                                \
            for (int q = 0; q < (NV); ++q) a[q] = (VT){0};                                           \
            for (ptrdiff_t t = 0; t < nt; ++t) {                                                     \
                const elem_t *dyr = dy + (n * g->oh + toh[t]) * g->ow * C + c;                       \
                const elem_t *kr = k + ti[t] * g->kw * C + c;                                        \
                for (ptrdiff_t j = 0; j < g->kw; ++j) {                                              \
                    const ptrdiff_t u = iw + g->pl - j * g->dw;                                      \
                    if (u < 0) break;                                                                \
                    if (g->sw != 1 && u % g->sw) continue;                                           \
                    const ptrdiff_t ow = g->sw == 1 ? u : u / g->sw;                                 \
                    if (ow >= g->ow) continue;                                                       \
                    const elem_t *dp = dyr + ow * C, *kp = kr + j * C;                               \
                    for (int q = 0; q < (NV); ++q)                                                   \
                        a[q] += LD(dp + q * (W)) * LD(kp + q * (W));                                 \
                }                                                                                    \
            }                                                                                        \
            for (int q = 0; q < (NV); ++q) ST(dst + c + q * (W), a[q]);                              \
        }                                                                                            \

    /* Backward input, stride 1: input pixels iw_t ... iw_t + 3, every tap's ow in range. */
    #define FN_DW_BWD_TILE(NV)                                                                       \
        for (; c + (NV) * VL <= C; c += (NV) * VL) {                                                 \
            V a[4][NV];                                                                              \
            for (int p = 0; p < 4; ++p)                                                              \
                for (int q = 0; q < (NV); ++q) a[p][q] = (V){0};                                     \
            for (ptrdiff_t t = 0; t < nt; ++t) {                                                     \
                const elem_t *dyr = dy + ((n * g->oh + toh[t]) * g->ow + iw_t + g->pl) * C + c;      \
                const elem_t *kr = k + ti[t] * g->kw * C + c;                                        \
                for (ptrdiff_t j = 0; j < g->kw; ++j) {                                              \
                    V kv[NV];                                                                        \
                    for (int q = 0; q < (NV); ++q) kv[q] = FN_CG_LD(V, kr + j * C + q * VL);         \
                    const elem_t *dp = dyr - j * g->dw * C;                                          \
                    for (int p = 0; p < 4; ++p)                                                      \
                        for (int q = 0; q < (NV); ++q)                                               \
                            a[p][q] += FN_CG_LD(V, dp + p * C + q * VL) * kv[q];                     \
                }                                                                                    \
            }                                                                                        \
            for (int p = 0; p < 4; ++p)                                                              \
                for (int q = 0; q < (NV); ++q) FN_CG_ST(dst + p * ds + c + q * VL, a[p][q]);         \
        }                                                                                            \

    /* Backward weight, one tap and output pixels [olo, ohi) of a row: acc (at ap) += sum of
     * x[ow * sw + off] * dy[ow]. */
    #define FN_DW_WGT_CHUNK(VT, W, NV, LD, ST)                                                       \
        for (; c + (NV) * (W) <= C; c += (NV) * (W)) {                                               \
            VT a[NV];                                                                                \
            for (int q = 0; q < (NV); ++q) a[q] = LD(ap + c + q * (W));                              \
            for (ptrdiff_t ow = olo; ow < ohi; ++ow) {                                               \
                const elem_t *xp = xr + (ow * g->sw + off) * C + c, *dp = dyr + ow * C + c;          \
                for (int q = 0; q < (NV); ++q)                                                       \
                    a[q] += LD(xp + q * (W)) * LD(dp + q * (W));                                     \
            }                                                                                        \
            for (int q = 0; q < (NV); ++q) ST(ap + c + q * (W), a[q]);                               \
        }                                                                                            \

    /* Backward weight, JT neighbouring taps (x stride xd apart) over pixels all of them see. */
    #define FN_DW_WGT_TILE(JT, NV)                                                                   \
        for (; c + (NV) * VL <= C; c += (NV) * VL) {                                                 \
            V a[JT][NV];                                                                             \
            for (int t = 0; t < (JT); ++t)                                                           \
                for (int q = 0; q < (NV); ++q) a[t][q] = FN_CG_LD(V, ap + t * C + c + q * VL);       \
            for (ptrdiff_t ow = olo; ow < ohi; ++ow) {                                               \
                const elem_t *xp = xr + (ow * g->sw + off) * C + c, *dp = dyr + ow * C + c;          \
                V dv[NV];                                                                            \
                for (int q = 0; q < (NV); ++q) dv[q] = FN_CG_LD(V, dp + q * VL);                     \
                for (int t = 0; t < (JT); ++t)                                                       \
                    for (int q = 0; q < (NV); ++q)                                                   \
                        a[t][q] += FN_CG_LD(V, xp + t * xd + q * VL) * dv[q];                        \
            }                                                                                        \
            for (int t = 0; t < (JT); ++t)                                                           \
                for (int q = 0; q < (NV); ++q) FN_CG_ST(ap + t * C + c + q * VL, a[t][q]);           \
        }                                                                                            \

    #define FN_CG_DEFINE(T, IT, S)                                                               \
    typedef T fn_cg_v##S __attribute__((vector_size(64)));                                      \
    typedef IT fn_cg_i##S __attribute__((vector_size(64)));                                     \
                                                                                                 \
    FN_CG_NOTRAP static inline fn_cg_v##S fn_cg_vrelu_##S(fn_cg_v##S a)                          \
    {                                                                                            \
        const fn_cg_i##S m = a > (fn_cg_v##S){0};                                               \
        return (fn_cg_v##S)((fn_cg_i##S)a & m);                                                  \
    }                                                                                            \
    static inline T fn_cg_srelu_##S(T a) { return a > (T)0 ? a : (T)0; }                         \
                                                                                                 \
    /* dst[(p*cin + c)*dm + m] = src[p*cin + c]: an input row, each channel repeated dm times. */\
    static void fn_cg_expand_##S(const T *restrict src, T *restrict dst, ptrdiff_t w,            \
                                 ptrdiff_t cin, ptrdiff_t dm)                                    \
    {                                                                                            \
        for (ptrdiff_t p = 0; p < w * cin; ++p)                                                  \
            for (ptrdiff_t m = 0; m < dm; ++m) dst[p * dm + m] = src[p];                         \
    }                                                                                            \
                                                                                                 \
    /* Depthwise forward, output rows [r0, r1) (r = n*OH + oh).  k (kh, kw, Cin, dm) is a        \
     * vector over the output channels per tap; xe: kh*W*Cout scratch when dm > 1. */            \
    FN_CG_CLONES FN_CG_NOTRAP static void fn_cg_dw_forward_##S(                                  \
        const T *restrict x, const T *restrict k, const T *restrict bias, T *restrict y,         \
        const fn_cg_geom *g, ptrdiff_t r0, ptrdiff_t r1, int relu, T *restrict xe)               \
    {                                                                                            \
        typedef fn_cg_v##S V;                                                                    \
        typedef T elem_t;                                                                        \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t C = g->cout, dm = g->cout / g->cin, rowlen = g->w * C, xs = g->sw * C;   \
        /* the output pixels whose windows lie inside the input: [in_lo, in_hi) */               \
        const ptrdiff_t in_lo = (g->pl + g->sw - 1) / g->sw;                                     \
        const ptrdiff_t last = g->w - 1 - (g->kw - 1) * g->dw + g->pl;                           \
        const ptrdiff_t in_hi = last < 0 ? 0 : (last / g->sw + 1 < g->ow ? last / g->sw + 1 : g->ow);\
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / g->oh, oh = r - n * g->oh, ih0 = oh * g->sh - g->pt;         \
            ptrdiff_t ilo, ihi;                                                                  \
            fn_cg_taps(ih0, g->dh, g->kh, g->h, &ilo, &ihi);                                     \
            if (dm > 1)                                                                          \
                for (ptrdiff_t i = ilo; i < ihi; ++i)                                            \
                    fn_cg_expand_##S(x + (n * g->h + ih0 + i * g->dh) * g->w * g->cin,           \
                                     xe + (i - ilo) * rowlen, g->w, g->cin, dm);                 \
            for (ptrdiff_t ow_t = 0; ow_t < g->ow;) {                                            \
                const ptrdiff_t np = ow_t >= in_lo && ow_t + 4 <= in_hi ? 4 : 1;                 \
                ptrdiff_t c = 0;                                                                 \
                if (np == 4) {                                                                   \
                    const ptrdiff_t iw0 = ow_t * g->sw - g->pl;                                  \
                    T *restrict yp = y + (r * g->ow + ow_t) * C;                                 \
                    FN_DW_FWD_TILE(2, fn_cg_vrelu_##S)                                           \
                    FN_DW_FWD_TILE(1, fn_cg_vrelu_##S)                                           \
                }                                                                                \
                const ptrdiff_t c_done = c;                                                      \
                for (ptrdiff_t ow = ow_t; ow < ow_t + np; ++ow) {                                \
                    const ptrdiff_t iw0 = ow * g->sw - g->pl;                                    \
                    ptrdiff_t jlo, jhi;                                                          \
                    fn_cg_taps(iw0, g->dw, g->kw, g->w, &jlo, &jhi);                             \
                    T *restrict yp = y + (r * g->ow + ow) * C;                                   \
                    c = c_done;                                                                  \
                    FN_DW_FWD_CHUNK(V, VL, 4, FN_CG_LDV_##S, FN_CG_ST, fn_cg_vrelu_##S)          \
                    FN_DW_FWD_CHUNK(V, VL, 1, FN_CG_LDV_##S, FN_CG_ST, fn_cg_vrelu_##S)          \
                    FN_DW_FWD_CHUNK(T, 1, 1, FN_CG_SLD, FN_CG_SST, fn_cg_srelu_##S)              \
                }                                                                                \
                ow_t += np;                                                                      \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Depthwise backward input, input rows [r0, r1) (r = n*H + ih); acc: 4*Cout scratch, ti and \
     * toh: kh each. */                                                                          \
    FN_CG_CLONES static void fn_cg_dw_backward_input_##S(                                        \
        const T *restrict dy, const T *restrict k, T *restrict dx, const fn_cg_geom *g,          \
        ptrdiff_t r0, ptrdiff_t r1, T *restrict acc, ptrdiff_t *restrict ti,                     \
        ptrdiff_t *restrict toh)                                                                 \
    {                                                                                            \
        typedef fn_cg_v##S V;                                                                    \
        typedef T elem_t;                                                                        \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t C = g->cout, dm = g->cout / g->cin;                                      \
        /* stride 1: the input pixels every tap of a row reads from a valid ow: [in_lo, in_hi) */\
        const ptrdiff_t in_lo = (g->kw - 1) * g->dw - g->pl > 0 ? (g->kw - 1) * g->dw - g->pl : 0;\
        const ptrdiff_t in_hi = g->sw == 1 ? g->ow - g->pl : 0;                                  \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / g->h, ih = r - n * g->h;                                     \
            ptrdiff_t nt = 0;              /* the kernel rows i reading this row, and their oh */\
            for (ptrdiff_t i = 0; i < g->kh; ++i) {                                              \
                const ptrdiff_t t = ih + g->pt - i * g->dh;                                      \
                if (t < 0) break;                                                                \
                if (t % g->sh || t / g->sh >= g->oh) continue;                                   \
                ti[nt] = i;                                                                      \
                toh[nt++] = t / g->sh;                                                           \
            }                                                                                    \
            for (ptrdiff_t iw_t = 0; iw_t < g->w;) {                                             \
                const ptrdiff_t np = iw_t >= in_lo && iw_t + 4 <= in_hi ? 4 : 1;                 \
                ptrdiff_t c = 0;                                                                 \
                if (np == 4) {                                                                   \
                    /* dm > 1: the products per output channel, summed per input channel below */\
                    T *dst = dm == 1 ? dx + (r * g->w + iw_t) * g->cin : acc;                    \
                    const ptrdiff_t ds = dm == 1 ? g->cin : C;                                   \
                    FN_DW_BWD_TILE(2)                                                            \
                    FN_DW_BWD_TILE(1)                                                            \
                }                                                                                \
                const ptrdiff_t c_done = c;                                                      \
                for (ptrdiff_t iw = iw_t; iw < iw_t + np; ++iw) {                                \
                    T *dst = dm == 1 ? dx + (r * g->w + iw) * g->cin : acc + (iw - iw_t) * C;    \
                    c = c_done;                                                                  \
                    FN_DW_BWD_CHUNK(V, VL, 4, FN_CG_LDV_##S, FN_CG_ST)                           \
                    FN_DW_BWD_CHUNK(V, VL, 1, FN_CG_LDV_##S, FN_CG_ST)                           \
                    FN_DW_BWD_CHUNK(T, 1, 1, FN_CG_SLD, FN_CG_SST)                               \
                    if (dm > 1) {                                                                \
                        T *dxp = dx + (r * g->w + iw) * g->cin;                                  \
                        for (ptrdiff_t ci = 0; ci < g->cin; ++ci) {                              \
                            T s = 0;                                                             \
                            for (ptrdiff_t m = 0; m < dm; ++m) s += dst[ci * dm + m];            \
                            dxp[ci] = s;                                                         \
                        }                                                                        \
                    }                                                                            \
                }                                                                                \
                iw_t += np;                                                                      \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Depthwise backward weight over output rows [r0, r1): dk (kh*kw*Cout) and db (Cout, may    \
     * be NULL) are overwritten with this block's sums; xe: W*Cout scratch when dm > 1. */       \
    FN_CG_CLONES static void fn_cg_dw_backward_weight_##S(                                       \
        const T *restrict x, const T *restrict dy, T *restrict dk, T *restrict db,               \
        const fn_cg_geom *g, ptrdiff_t r0, ptrdiff_t r1, T *restrict xe)                         \
    {                                                                                            \
        typedef fn_cg_v##S V;                                                                    \
        typedef T elem_t;                                                                        \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t C = g->cout, dm = g->cout / g->cin, xd = g->dw * C;                      \
        memset(dk, 0, g->kh * g->kw * C * sizeof(T));                                            \
        if (db) memset(db, 0, C * sizeof(T));                                                    \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / g->oh, oh = r - n * g->oh, ih0 = oh * g->sh - g->pt;         \
            const T *restrict dyr = dy + r * g->ow * C;                                          \
            ptrdiff_t ilo, ihi;                                                                  \
            if (db)                                                                              \
                for (ptrdiff_t ow = 0; ow < g->ow; ++ow)                                         \
                    for (ptrdiff_t c = 0; c < C; ++c) db[c] += dyr[ow * C + c];                  \
            fn_cg_taps(ih0, g->dh, g->kh, g->h, &ilo, &ihi);                                     \
            for (ptrdiff_t i = ilo; i < ihi; ++i) {                                              \
                const T *restrict xr = x + (n * g->h + ih0 + i * g->dh) * g->w * g->cin;         \
                if (dm > 1) {                                                                    \
                    fn_cg_expand_##S(xr, xe, g->w, g->cin, dm);                                  \
                    xr = xe;                                                                     \
                }                                                                                \
                for (ptrdiff_t j0 = 0; j0 < g->kw;) {                                            \
                    const ptrdiff_t jt = g->kw - j0 >= 4 ? 4 : g->kw - j0;                       \
                    ptrdiff_t olo, ohi, c, lo, hi, both_lo = 0, both_hi = g->ow;                 \
                    for (ptrdiff_t j = j0; j < j0 + jt; ++j) {   /* pixels every tap sees */     \
                        fn_cg_taps(j * g->dw - g->pl, g->sw, g->ow, g->w, &lo, &hi);             \
                        both_lo = lo > both_lo ? lo : both_lo;                                   \
                        both_hi = hi < both_hi ? hi : both_hi;                                   \
                    }                                                                            \
                    if (both_hi < both_lo) both_hi = both_lo;                                    \
                    c = 0;                                                                       \
                    if (both_hi > both_lo) {                                                     \
                        const ptrdiff_t off = j0 * g->dw - g->pl;                                \
                        T *restrict ap = dk + (i * g->kw + j0) * C;                              \
                        olo = both_lo;                                                           \
                        ohi = both_hi;                                                           \
                        switch (jt) {                                                            \
                        case 4: FN_DW_WGT_TILE(4, 2) FN_DW_WGT_TILE(4, 1) break;                 \
                        case 3: FN_DW_WGT_TILE(3, 2) FN_DW_WGT_TILE(3, 1) break;                 \
                        case 2: FN_DW_WGT_TILE(2, 2) FN_DW_WGT_TILE(2, 1) break;                 \
                        default: FN_DW_WGT_TILE(1, 4) FN_DW_WGT_TILE(1, 1) break;                \
                        }                                                                        \
                    }                                                                            \
                    const ptrdiff_t c_done = c;                                                  \
                    for (ptrdiff_t j = j0; j < j0 + jt; ++j) {   /* the edges, the channel tail */\
                        const ptrdiff_t off = j * g->dw - g->pl;                                 \
                        T *restrict ap = dk + (i * g->kw + j) * C;                               \
                        fn_cg_taps(off, g->sw, g->ow, g->w, &lo, &hi);                           \
                        olo = lo;                                                                \
                        ohi = hi < both_lo ? hi : both_lo;                                       \
                        c = 0;                                                                   \
                        if (olo < ohi) {                                                         \
                            FN_DW_WGT_CHUNK(V, VL, 4, FN_CG_LDV_##S, FN_CG_ST)                   \
                            FN_DW_WGT_CHUNK(V, VL, 1, FN_CG_LDV_##S, FN_CG_ST)                   \
                            FN_DW_WGT_CHUNK(T, 1, 1, FN_CG_SLD, FN_CG_SST)                       \
                        }                                                                        \
                        olo = lo > both_hi ? lo : both_hi;                                       \
                        ohi = hi;                                                                \
                        c = 0;                                                                   \
                        if (olo < ohi) {                                                         \
                            FN_DW_WGT_CHUNK(V, VL, 4, FN_CG_LDV_##S, FN_CG_ST)                   \
                            FN_DW_WGT_CHUNK(V, VL, 1, FN_CG_LDV_##S, FN_CG_ST)                   \
                            FN_DW_WGT_CHUNK(T, 1, 1, FN_CG_SLD, FN_CG_SST)                       \
                        }                                                                        \
                        olo = both_lo;                                                           \
                        ohi = both_hi;                                                           \
                        c = c_done;                                                              \
                        if (olo < ohi) {                                                         \
                            FN_DW_WGT_CHUNK(T, 1, 1, FN_CG_SLD, FN_CG_SST)                       \
                        }                                                                        \
                    }                                                                            \
                    j0 += jt;                                                                    \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* im2col of group c0 .. c0+cg for output pixels [m0, m1): col[m - m0, (i*kw + j)*cg + c] \
     * = x[n, ih, iw, c0 + c], zero outside the input. */                                       \
    FN_CG_CLONES static void fn_cg_im2col_##S(const T *restrict x, T *restrict col,              \
                                              ptrdiff_t m0, ptrdiff_t m1, const fn_cg_geom *g,   \
                                              ptrdiff_t c0, ptrdiff_t cg)                        \
    {                                                                                            \
        const ptrdiff_t K = g->kh * g->kw * cg;                                                  \
        for (ptrdiff_t m = m0; m < m1; ++m) {                                                    \
            const ptrdiff_t n = m / (g->oh * g->ow), p = m - n * g->oh * g->ow;                  \
            const ptrdiff_t oh = p / g->ow, ow = p - oh * g->ow;                                 \
            const ptrdiff_t ih0 = oh * g->sh - g->pt, iw0 = ow * g->sw - g->pl;                  \
            ptrdiff_t ilo, ihi, jlo, jhi;                                                        \
            T *restrict d = col + (m - m0) * K;                                                  \
            fn_cg_taps(ih0, g->dh, g->kh, g->h, &ilo, &ihi);                                     \
            fn_cg_taps(iw0, g->dw, g->kw, g->w, &jlo, &jhi);                                     \
            memset(d, 0, ilo * g->kw * cg * sizeof(T));                                          \
            for (ptrdiff_t i = ilo; i < ihi; ++i) {                                              \
                const T *restrict xr = x + ((n * g->h + ih0 + i * g->dh) * g->w) * g->cin + c0;  \
                T *restrict di = d + i * g->kw * cg;                                             \
                memset(di, 0, jlo * cg * sizeof(T));                                             \
                if (g->dw == 1 && cg == g->cin) {                                                \
                    memcpy(di + jlo * cg, xr + (iw0 + jlo) * cg, (jhi - jlo) * cg * sizeof(T));  \
                } else {                                                                         \
                    for (ptrdiff_t j = jlo; j < jhi; ++j) {                                      \
                        const T *restrict s = xr + (iw0 + j * g->dw) * g->cin;                   \
                        for (ptrdiff_t c = 0; c < cg; ++c) di[j * cg + c] = s[c];                \
                    }                                                                            \
                }                                                                                \
                memset(di + jhi * cg, 0, (g->kw - jhi) * cg * sizeof(T));                        \
            }                                                                                    \
            memset(d + ihi * g->kw * cg, 0, (g->kh - ihi) * g->kw * cg * sizeof(T));             \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* col2im as a gather: dx row r = (n, ih), channels c0 .. c0+cg, += the entries of dcol   \
     * rows [m0, m1) (output pixels, K = kh*kw*cg columns) that read it. */                     \
    FN_CG_CLONES static void fn_cg_col2im_row_##S(const T *restrict dcol, ptrdiff_t m0,          \
                                                  ptrdiff_t m1, T *restrict dx, ptrdiff_t r,     \
                                                  const fn_cg_geom *g, ptrdiff_t c0,             \
                                                  ptrdiff_t cg)                                  \
    {                                                                                            \
        const ptrdiff_t K = g->kh * g->kw * cg, n = r / g->h, ih = r - n * g->h;                 \
        for (ptrdiff_t i = 0; i < g->kh; ++i) {                                                  \
            const ptrdiff_t t = ih + g->pt - i * g->dh;                                          \
            if (t < 0) break;                                                                    \
            if (t % g->sh || t / g->sh >= g->oh) continue;                                       \
            const ptrdiff_t p0 = (n * g->oh + t / g->sh) * g->ow;                                \
            const ptrdiff_t owlo = m0 - p0 > 0 ? m0 - p0 : 0;                                    \
            const ptrdiff_t owhi = m1 - p0 < g->ow ? m1 - p0 : g->ow;                            \
            for (ptrdiff_t ow = owlo; ow < owhi; ++ow) {                                         \
                const ptrdiff_t iw0 = ow * g->sw - g->pl;                                        \
                ptrdiff_t jlo, jhi;                                                              \
                fn_cg_taps(iw0, g->dw, g->kw, g->w, &jlo, &jhi);                                 \
                const T *restrict s = dcol + (p0 + ow - m0) * K + i * g->kw * cg;                \
                for (ptrdiff_t j = jlo; j < jhi; ++j) {                                          \
                    T *restrict d = dx + (r * g->w + iw0 + j * g->dw) * g->cin + c0;             \
                    for (ptrdiff_t c = 0; c < cg; ++c) d[c] += s[j * cg + c];                    \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* out[0:cols] += a[0:rows, 0:cols].sum(axis=0), rows in order. */                          \
    FN_CG_CLONES static void fn_cg_colsum_##S(const T *restrict a, ptrdiff_t rows,               \
                                              ptrdiff_t cols, ptrdiff_t lda, T *restrict out)    \
    {                                                                                            \
        for (ptrdiff_t i = 0; i < rows; ++i)                                                     \
            for (ptrdiff_t j = 0; j < cols; ++j) out[j] += a[i * lda + j];                       \
    }                                                                                            \
                                                                                                 \
    /* y[r, :] = act(y[r, :] + bias) for rows [r0, r1) of width C (act: 0 none, 1 relu). */     \
    FN_CG_CLONES FN_CG_NOTRAP static void fn_cg_bias_act_##S(T *restrict y,                      \
                                                             const T *restrict bias,             \
                                                             ptrdiff_t C, ptrdiff_t r0,          \
                                                             ptrdiff_t r1, int relu)             \
    {                                                                                            \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            T *restrict yr = y + r * C;                                                          \
            if (bias)                                                                            \
                for (ptrdiff_t c = 0; c < C; ++c) yr[c] += bias[c];                              \
            if (relu)                                                                            \
                for (ptrdiff_t c = 0; c < C; ++c) yr[c] = yr[c] > (T)0 ? yr[c] : (T)0;           \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Nearest upsampling by (sh, sw), output rows [r0, r1) of (N*OH): y = x[oh/sh, ow/sw]. */  \
    FN_CG_CLONES static void fn_cg_up_nearest_##S(const T *restrict x, T *restrict y,            \
                                                  ptrdiff_t h, ptrdiff_t w, ptrdiff_t C,         \
                                                  ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t r0,      \
                                                  ptrdiff_t r1)                                  \
    {                                                                                            \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / (h * sh), oh = r - n * h * sh;                               \
            const T *restrict xr = x + (n * h + oh / sh) * w * C;                                \
            T *restrict yr = y + r * w * sw * C;                                                 \
            for (ptrdiff_t iw = 0; iw < w; ++iw)                                                 \
                for (ptrdiff_t b = 0; b < sw; ++b)                                               \
                    for (ptrdiff_t c = 0; c < C; ++c)                                            \
                        yr[(iw * sw + b) * C + c] = xr[iw * C + c];                              \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Its backward, input rows [r0, r1) of (N*H): dx = the sum of dy over each sh x sw block. */\
    FN_CG_CLONES static void fn_cg_up_nearest_bwd_##S(const T *restrict dy, T *restrict dx,      \
                                                      ptrdiff_t h, ptrdiff_t w, ptrdiff_t C,     \
                                                      ptrdiff_t sh, ptrdiff_t sw, ptrdiff_t r0,  \
                                                      ptrdiff_t r1)                              \
    {                                                                                            \
        const ptrdiff_t OW = w * sw;                                                             \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            T *restrict dxr = dx + r * w * C;                                                    \
            memset(dxr, 0, w * C * sizeof(T));                                                   \
            for (ptrdiff_t a = 0; a < sh; ++a) {                                                 \
                const T *restrict dyr = dy + (r * sh + a) * OW * C;                              \
                for (ptrdiff_t iw = 0; iw < w; ++iw)                                             \
                    for (ptrdiff_t b = 0; b < sw; ++b)                                           \
                        for (ptrdiff_t c = 0; c < C; ++c)                                        \
                            dxr[iw * C + c] += dyr[(iw * sw + b) * C + c];                       \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Bilinear upsampling, output rows [r0, r1) of (N*OH): from rows y0/y1 (weight ly) and   \
     * columns x0/x1 (weight lx) of the tables. */                                              \
    FN_CG_CLONES static void fn_cg_up_bilinear_##S(                                              \
        const T *restrict x, T *restrict y, ptrdiff_t h, ptrdiff_t w, ptrdiff_t C,              \
        ptrdiff_t OH, ptrdiff_t OW, const ptrdiff_t *y0, const ptrdiff_t *y1, const T *ly,     \
        const ptrdiff_t *x0, const ptrdiff_t *x1, const T *lx, ptrdiff_t r0, ptrdiff_t r1)     \
    {                                                                                            \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / OH, oh = r - n * OH;                                         \
            const T *restrict top = x + (n * h + y0[oh]) * w * C;                                \
            const T *restrict bot = x + (n * h + y1[oh]) * w * C;                                \
            const T wy = ly[oh];                                                                 \
            T *restrict yr = y + r * OW * C;                                                     \
            for (ptrdiff_t ow = 0; ow < OW; ++ow) {                                              \
                const T *restrict a = top + x0[ow] * C, *restrict b = top + x1[ow] * C;          \
                const T *restrict c_ = bot + x0[ow] * C, *restrict d = bot + x1[ow] * C;         \
                const T wx = lx[ow];                                                             \
                for (ptrdiff_t c = 0; c < C; ++c) {                                              \
                    const T t = a[c] + (b[c] - a[c]) * wx, u = c_[c] + (d[c] - c_[c]) * wx;      \
                    yr[ow * C + c] = t + (u - t) * wy;                                           \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Bilinear backward, step 1, rows [r0, r1) of (N*OH): t[r] (W x C) = dy[r] contracted    \
     * along the width with the column weights. */                                            \
    FN_CG_CLONES static void fn_cg_up_bilinear_bwd_cols_##S(                                     \
        const T *restrict dy, T *restrict t, ptrdiff_t w, ptrdiff_t C, ptrdiff_t OW,           \
        const ptrdiff_t *x0, const ptrdiff_t *x1, const T *lx, ptrdiff_t r0, ptrdiff_t r1)     \
    {                                                                                            \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const T *restrict dyr = dy + r * OW * C;                                             \
            T *restrict tr = t + r * w * C;                                                      \
            memset(tr, 0, w * C * sizeof(T));                                                    \
            for (ptrdiff_t ow = 0; ow < OW; ++ow) {                                              \
                T *restrict a = tr + x0[ow] * C;                                                 \
                const T wx = lx[ow];                                                             \
                for (ptrdiff_t c = 0; c < C; ++c) a[c] += dyr[ow * C + c] * ((T)1 - wx);         \
                T *restrict b = tr + x1[ow] * C;                                                 \
                for (ptrdiff_t c = 0; c < C; ++c) b[c] += dyr[ow * C + c] * wx;                  \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* Step 2, input rows [r0, r1) of (N*H): dx[n, ih] = sum over the output rows oh in        \
     * [lo[ih], hi[ih]) of their weight for ih times t[n, oh]. */                               \
    FN_CG_CLONES static void fn_cg_up_bilinear_bwd_rows_##S(                                     \
        const T *restrict t, T *restrict dx, ptrdiff_t h, ptrdiff_t w, ptrdiff_t C,            \
        ptrdiff_t OH, const ptrdiff_t *y0, const ptrdiff_t *y1, const T *ly,                   \
        const ptrdiff_t *lo, const ptrdiff_t *hi, ptrdiff_t r0, ptrdiff_t r1)                  \
    {                                                                                            \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / h, ih = r - n * h;                                           \
            T *restrict dxr = dx + r * w * C;                                                    \
            memset(dxr, 0, w * C * sizeof(T));                                                   \
            for (ptrdiff_t oh = lo[ih]; oh < hi[ih]; ++oh) {                                     \
                const T wt = (y0[oh] == ih ? (T)1 - ly[oh] : (T)0)                               \
                             + (y1[oh] == ih ? ly[oh] : (T)0);                                   \
                const T *restrict tr = t + (n * OH + oh) * w * C;                                \
                for (ptrdiff_t q = 0; q < w * C; ++q) dxr[q] += wt * tr[q];                      \
            }                                                                                    \
        }                                                                                        \
    }

    #define FN_CG_LDV_s(p) FN_CG_LD(fn_cg_vs, p)
    #define FN_CG_LDV_d(p) FN_CG_LD(fn_cg_vd, p)
    #define FN_DW_ROW(i) (dm == 1 ? x + (n * g->h + ih0 + (i) * g->dh) * rowlen \
                                  : xe + ((i) - ilo) * rowlen)
    FN_CG_DEFINE(float, int32_t, s)
    FN_CG_DEFINE(double, int64_t, d)

    /* dst[0:n] = src[0:n] (bytes) for the pixel-sized copies below: 64-byte moves inline
     * (the per-pixel memcpy calls cost more than the copying at C = 64). */
    static inline void fn_cg_copy(char *restrict dst, const char *restrict src, size_t n)
    {
        for (; n >= 64; n -= 64, dst += 64, src += 64) memcpy(dst, src, 64);
        if (n) memcpy(dst, src, n);
    }

    /* Space-to-batch of NHWC x (N, H, W, C), es bytes per element, rows [r0, r1) of xs
     * (N*dh*dw*Q, R, C): xs[(n*dh + a)*dw + b, q, r] = x[n, a + q*dh - pt, b + r*dw - pl], zero
     * outside x.  A stride-1 convolution dilated by (dh, dw) is the undilated one of each
     * phase (a, b) of its padded input. */
    FN_CG_CLONES static void fn_cg_space_to_batch(const char *restrict x, char *restrict xs, ptrdiff_t h,
                                     ptrdiff_t w, ptrdiff_t C, ptrdiff_t Q, ptrdiff_t R,
                                     ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl,
                                     size_t es, ptrdiff_t r0, ptrdiff_t r1)
    {
        const size_t px = (size_t)C * es;
        for (ptrdiff_t row = r0; row < r1; ++row) {
            const ptrdiff_t bi = row / Q, q = row - bi * Q, n = bi / (dh * dw);
            const ptrdiff_t a = bi / dw % dh, b = bi % dw, ih = a + q * dh - pt;
            char *restrict d = xs + (size_t)row * R * px;
            if (ih < 0 || ih >= h) {
                memset(d, 0, R * px);
                continue;
            }
            const char *restrict src = x + (size_t)(n * h + ih) * w * px;
            for (ptrdiff_t r = 0; r < R; ++r) {
                const ptrdiff_t iw = b + r * dw - pl;
                if (iw < 0 || iw >= w)
                    memset(d + r * px, 0, px);
                else
                    fn_cg_copy(d + r * px, src + iw * px, px);
            }
        }
    }

    /* Its inverse gather, rows [r0, r1) of y (N*H, W, C): y[n, i, j] = xs[(n*dh + a)*dw + b,
     * q, r] with i + pt = a + q*dh, j + pl = b + r*dw. */
    FN_CG_CLONES static void fn_cg_batch_to_space(const char *restrict xs, char *restrict y, ptrdiff_t h,
                                     ptrdiff_t w, ptrdiff_t C, ptrdiff_t Q, ptrdiff_t R,
                                     ptrdiff_t dh, ptrdiff_t dw, ptrdiff_t pt, ptrdiff_t pl,
                                     size_t es, ptrdiff_t r0, ptrdiff_t r1)
    {
        const size_t px = (size_t)C * es;
        for (ptrdiff_t row = r0; row < r1; ++row) {
            const ptrdiff_t n = row / h, i = row - n * h;
            const ptrdiff_t a = (i + pt) % dh, q = (i + pt) / dh;
            const char *restrict src = xs + (size_t)(((n * dh + a) * dw) * Q + q) * R * px;
            char *restrict d = y + (size_t)row * w * px;
            for (ptrdiff_t j = 0; j < w; ++j) {
                const ptrdiff_t b = (j + pl) % dw, r = (j + pl) / dw;
                fn_cg_copy(d + j * px, src + ((size_t)b * Q * R + r) * px, px);
            }
        }
    }
    """
    ctypedef struct fn_cg_geom:
        Py_ssize_t n, h, w, cin, oh, ow, cout, kh, kw, sh, sw, dh, dw, pt, pl, groups

    void fn_cg_dw_forward_s(const float *x, const float *k, const float *bias, float *y,
                            const fn_cg_geom *g, Py_ssize_t r0, Py_ssize_t r1, int relu,
                            float *xe) nogil
    void fn_cg_dw_forward_d(const double *x, const double *k, const double *bias, double *y,
                            const fn_cg_geom *g, Py_ssize_t r0, Py_ssize_t r1, int relu,
                            double *xe) nogil
    void fn_cg_dw_backward_input_s(const float *dy, const float *k, float *dx,
                                   const fn_cg_geom *g, Py_ssize_t r0, Py_ssize_t r1,
                                   float *acc, Py_ssize_t *ti, Py_ssize_t *toh) nogil
    void fn_cg_dw_backward_input_d(const double *dy, const double *k, double *dx,
                                   const fn_cg_geom *g, Py_ssize_t r0, Py_ssize_t r1,
                                   double *acc, Py_ssize_t *ti, Py_ssize_t *toh) nogil
    void fn_cg_dw_backward_weight_s(const float *x, const float *dy, float *dk, float *db,
                                    const fn_cg_geom *g, Py_ssize_t r0, Py_ssize_t r1,
                                    float *xe) nogil
    void fn_cg_dw_backward_weight_d(const double *x, const double *dy, double *dk, double *db,
                                    const fn_cg_geom *g, Py_ssize_t r0, Py_ssize_t r1,
                                    double *xe) nogil
    void fn_cg_im2col_s(const float *x, float *col, Py_ssize_t m0, Py_ssize_t m1,
                        const fn_cg_geom *g, Py_ssize_t c0, Py_ssize_t cg) nogil
    void fn_cg_im2col_d(const double *x, double *col, Py_ssize_t m0, Py_ssize_t m1,
                        const fn_cg_geom *g, Py_ssize_t c0, Py_ssize_t cg) nogil
    void fn_cg_col2im_row_s(const float *dcol, Py_ssize_t m0, Py_ssize_t m1, float *dx,
                            Py_ssize_t r, const fn_cg_geom *g, Py_ssize_t c0, Py_ssize_t cg) nogil
    void fn_cg_col2im_row_d(const double *dcol, Py_ssize_t m0, Py_ssize_t m1, double *dx,
                            Py_ssize_t r, const fn_cg_geom *g, Py_ssize_t c0,
                            Py_ssize_t cg) nogil
    void fn_cg_colsum_s(const float *a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lda,
                        float *out) nogil
    void fn_cg_colsum_d(const double *a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lda,
                        double *out) nogil
    void fn_cg_bias_act_s(float *y, const float *bias, Py_ssize_t C, Py_ssize_t r0,
                          Py_ssize_t r1, int relu) nogil
    void fn_cg_bias_act_d(double *y, const double *bias, Py_ssize_t C, Py_ssize_t r0,
                          Py_ssize_t r1, int relu) nogil
    void fn_cg_up_nearest_s(const float *x, float *y, Py_ssize_t h, Py_ssize_t w, Py_ssize_t C,
                            Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t r0, Py_ssize_t r1) nogil
    void fn_cg_up_nearest_d(const double *x, double *y, Py_ssize_t h, Py_ssize_t w,
                            Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t r0,
                            Py_ssize_t r1) nogil
    void fn_cg_up_nearest_bwd_s(const float *dy, float *dx, Py_ssize_t h, Py_ssize_t w,
                                Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t r0,
                                Py_ssize_t r1) nogil
    void fn_cg_up_nearest_bwd_d(const double *dy, double *dx, Py_ssize_t h, Py_ssize_t w,
                                Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t r0,
                                Py_ssize_t r1) nogil
    void fn_cg_up_bilinear_s(const float *x, float *y, Py_ssize_t h, Py_ssize_t w, Py_ssize_t C,
                             Py_ssize_t OH, Py_ssize_t OW, const Py_ssize_t *y0,
                             const Py_ssize_t *y1, const float *ly, const Py_ssize_t *x0,
                             const Py_ssize_t *x1, const float *lx, Py_ssize_t r0,
                             Py_ssize_t r1) nogil
    void fn_cg_up_bilinear_d(const double *x, double *y, Py_ssize_t h, Py_ssize_t w,
                             Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, const Py_ssize_t *y0,
                             const Py_ssize_t *y1, const double *ly, const Py_ssize_t *x0,
                             const Py_ssize_t *x1, const double *lx, Py_ssize_t r0,
                             Py_ssize_t r1) nogil
    void fn_cg_up_bilinear_bwd_cols_s(const float *dy, float *t, Py_ssize_t w, Py_ssize_t C,
                                      Py_ssize_t OW, const Py_ssize_t *x0, const Py_ssize_t *x1,
                                      const float *lx, Py_ssize_t r0, Py_ssize_t r1) nogil
    void fn_cg_up_bilinear_bwd_cols_d(const double *dy, double *t, Py_ssize_t w, Py_ssize_t C,
                                      Py_ssize_t OW, const Py_ssize_t *x0, const Py_ssize_t *x1,
                                      const double *lx, Py_ssize_t r0, Py_ssize_t r1) nogil
    void fn_cg_up_bilinear_bwd_rows_s(const float *t, float *dx, Py_ssize_t h, Py_ssize_t w,
                                      Py_ssize_t C, Py_ssize_t OH, const Py_ssize_t *y0,
                                      const Py_ssize_t *y1, const float *ly,
                                      const Py_ssize_t *lo, const Py_ssize_t *hi, Py_ssize_t r0,
                                      Py_ssize_t r1) nogil
    void fn_cg_up_bilinear_bwd_rows_d(const double *t, double *dx, Py_ssize_t h, Py_ssize_t w,
                                      Py_ssize_t C, Py_ssize_t OH, const Py_ssize_t *y0,
                                      const Py_ssize_t *y1, const double *ly,
                                      const Py_ssize_t *lo, const Py_ssize_t *hi,
                                      Py_ssize_t r0, Py_ssize_t r1) nogil

    void fn_cg_space_to_batch(const char *x, char *xs, Py_ssize_t h, Py_ssize_t w, Py_ssize_t C,
                              Py_ssize_t Q, Py_ssize_t R, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t pt, Py_ssize_t pl, size_t es, Py_ssize_t r0,
                              Py_ssize_t r1) nogil
    void fn_cg_batch_to_space(const char *xs, char *y, Py_ssize_t h, Py_ssize_t w, Py_ssize_t C,
                              Py_ssize_t Q, Py_ssize_t R, Py_ssize_t dh, Py_ssize_t dw,
                              Py_ssize_t pt, Py_ssize_t pl, size_t es, Py_ssize_t r0,
                              Py_ssize_t r1) nogil

ctypedef fn_cg_geom Geometry


cdef Geometry _geometry(const Py_ssize_t *xshape, const Py_ssize_t *yshape, Py_ssize_t kh,
                        Py_ssize_t kw, tuple params):
    """params: (sh, sw, dh, dw, pt, pl, groups)."""
    cdef Geometry g
    g.n, g.h, g.w, g.cin = xshape[0], xshape[1], xshape[2], xshape[3]
    g.oh, g.ow, g.cout = yshape[1], yshape[2], yshape[3]
    g.kh, g.kw = kh, kw
    g.sh, g.sw, g.dh, g.dw, g.pt, g.pl, g.groups = params
    return g


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline void colsum(const floating *a, Py_ssize_t rows, Py_ssize_t cols, Py_ssize_t lda,
                        floating *out) noexcept nogil:
    if floating is float:
        fn_cg_colsum_s(a, rows, cols, lda, out)
    else:
        fn_cg_colsum_d(a, rows, cols, lda, out)


cdef inline void add_into(floating *dst, const floating *src, Py_ssize_t n) noexcept nogil:
    """dst[0:n] += src[0:n] (one row of colsum)."""
    colsum(src, 1, n, n, dst)


cdef inline void im2col(const floating *x, floating *col, Py_ssize_t m0, Py_ssize_t m1,
                        const Geometry *g, Py_ssize_t c0, Py_ssize_t cg) noexcept nogil:
    if floating is float:
        fn_cg_im2col_s(x, col, m0, m1, g, c0, cg)
    else:
        fn_cg_im2col_d(x, col, m0, m1, g, c0, cg)


cdef inline void col2im_row(const floating *dcol, Py_ssize_t m0, Py_ssize_t m1, floating *dx,
                            Py_ssize_t r, const Geometry *g, Py_ssize_t c0,
                            Py_ssize_t cg) noexcept nogil:
    if floating is float:
        fn_cg_col2im_row_s(dcol, m0, m1, dx, r, g, c0, cg)
    else:
        fn_cg_col2im_row_d(dcol, m0, m1, dx, r, g, c0, cg)


cdef inline void affected_rows(Py_ssize_t m0, Py_ssize_t m1, const Geometry *g,
                               Py_ssize_t *r_lo, Py_ssize_t *r_hi) noexcept nogil:
    """The input rows (global n*H + ih) that output pixels [m0, m1) read, as a range."""
    cdef Py_ssize_t g0 = m0 // g.ow, g1 = (m1 - 1) // g.ow
    cdef Py_ssize_t n0 = g0 // g.oh, n1 = g1 // g.oh
    cdef Py_ssize_t oh0 = g0 - n0 * g.oh, oh1 = g1 - n1 * g.oh
    r_lo[0] = n0 * g.h + imin(g.h, imax(0, oh0 * g.sh - g.pt))
    r_hi[0] = n1 * g.h + imax(0, imin(g.h, oh1 * g.sh - g.pt + (g.kh - 1) * g.dh + 1))


# --------------------------------------------------------------------------------- depthwise
cdef void _dw_forward_rows(const floating *x, const floating *k, const floating *bias,
                           floating *y, const Geometry *g, Py_ssize_t r0, Py_ssize_t r1,
                           int relu, floating *xe) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_cg_dw_forward_s(x, k, bias, y, g, r0, r1, relu, xe)
    else:
        fn_cg_dw_forward_d(x, k, bias, y, g, r0, r1, relu, xe)
    fn_ftz_end(csr)


def depthwise_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] kernel,
                      const floating[::1] bias, floating[:, :, :, ::1] y, tuple params,
                      bint relu, floating[::1] work, int nthreads):
    """y = act(depthwise(x, kernel) + bias); kernel (kh, kw, Cin, dm), y (N, OH, OW, Cin*dm).
    params (sh, sw, dh, dw, pt, pl, 1); ``work``: nthreads * kh*W*Cout elements when dm > 1
    (the expanded input rows), else unused (may be None)."""
    cdef Geometry g = _geometry(x.shape, y.shape, kernel.shape[0], kernel.shape[1], params)
    cdef Py_ssize_t R = g.n * g.oh, t, per = g.kh * g.w * g.cout
    cdef const floating *pb = &bias[0] if bias is not None else NULL
    cdef floating *pw = &work[0] if work is not None else NULL
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *pk = &kernel[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _dw_forward_rows(px, pk, pb, py, &g, split_bound(R, t, nthreads, 1),
                         split_bound(R, t + 1, nthreads, 1), relu,
                         pw + t * per if pw != NULL else NULL)


cdef void _dw_backward_input_rows(const floating *dy, const floating *k, floating *dx,
                                  const Geometry *g, Py_ssize_t r0, Py_ssize_t r1,
                                  floating *acc, Py_ssize_t *taps) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_cg_dw_backward_input_s(dy, k, dx, g, r0, r1, acc, taps, taps + g.kh)
    else:
        fn_cg_dw_backward_input_d(dy, k, dx, g, r0, r1, acc, taps, taps + g.kh)
    fn_ftz_end(csr)


def depthwise_backward_input(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] kernel,
                             floating[:, :, :, ::1] dx, tuple params, floating[::1] work,
                             Py_ssize_t[::1] taps, int nthreads):
    """dx of the depthwise convolution; ``work``: nthreads * 4*Cout elements, ``taps``:
    nthreads * 2*kh integers (per-thread scratch)."""
    cdef Geometry g = _geometry(dx.shape, dy.shape, kernel.shape[0], kernel.shape[1], params)
    cdef Py_ssize_t R = g.n * g.h, t
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef const floating *pk = &kernel[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    cdef floating *pw = &work[0]
    cdef Py_ssize_t *pt = &taps[0]
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _dw_backward_input_rows(pdy, pk, pdx, &g, split_bound(R, t, nthreads, 1),
                                split_bound(R, t + 1, nthreads, 1), pw + t * 4 * g.cout,
                                pt + t * 2 * g.kh)


cdef void _dw_backward_weight_rows(const floating *x, const floating *dy, floating *dk,
                                   floating *db, const Geometry *g, Py_ssize_t r0,
                                   Py_ssize_t r1, floating *xe) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_cg_dw_backward_weight_s(x, dy, dk, db, g, r0, r1, xe)
    else:
        fn_cg_dw_backward_weight_d(x, dy, dk, db, g, r0, r1, xe)
    fn_ftz_end(csr)


def depthwise_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                              floating[:, :, :, ::1] dkernel, floating[::1] dbias, tuple params,
                              floating[::1] work, int nthreads, int nparts=0):
    """dkernel (kh, kw, Cin, dm) and dbias (Cout,) or None of the depthwise convolution.
    ``work``: nparts * (W*Cout + kh*kw*Cout + Cout) elements (expanded row, partial sums);
    the nparts blocks of output rows (<= 0: nthreads) are added in order."""
    if nparts <= 0:
        nparts = nthreads
    cdef Geometry g = _geometry(x.shape, dy.shape, dkernel.shape[0], dkernel.shape[1], params)
    cdef Py_ssize_t R = g.n * g.oh, t, q, KC = g.kh * g.kw * g.cout
    cdef Py_ssize_t per = g.w * g.cout + KC + g.cout
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdk = &dkernel[0, 0, 0, 0]
    cdef floating *pdb = &dbias[0] if dbias is not None else NULL
    cdef floating *pw = &work[0]
    for t in prange(nparts, nogil=True, num_threads=nthreads, schedule='static'):
        _dw_backward_weight_rows(
            px, pdy, pdk if t == 0 else pw + t * per + g.w * g.cout,
            NULL if pdb == NULL else (pdb if t == 0 else pw + t * per + g.w * g.cout + KC),
            &g, split_bound(R, t, nparts, 1), split_bound(R, t + 1, nparts, 1), pw + t * per)
    with nogil:
        for q in range(1, nparts):
            add_into(pdk, pw + q * per + g.w * g.cout, KC)
            if pdb != NULL:
                add_into(pdb, pw + q * per + g.w * g.cout + KC, g.cout)


cdef void _bias_sums(const floating *dy, Py_ssize_t M, Py_ssize_t C, floating *db,
                     floating *partials, int nthreads, int nparts) noexcept nogil:
    """db = dy (M x C) summed over rows: nparts fixed row blocks, added in block order;
    ``partials`` (nparts-1)*C."""
    cdef Py_ssize_t b, q
    for b in prange(nparts, num_threads=nthreads, schedule='static'):
        memset(db if b == 0 else partials + (b - 1) * C, 0, C * sizeof(floating))
        colsum(dy + (M * b // nparts) * C, M * (b + 1) // nparts - M * b // nparts, C, C,
               db if b == 0 else partials + (b - 1) * C)
    for q in range(1, nparts):
        add_into(db, partials + (q - 1) * C, C)


# ------------------------------------------------------------------------ grouped / dilated
cdef void _forward_block(const floating *x, const floating *w, const floating *bias,
                         floating *y, const Geometry *g, int act, floating *panel,
                         Py_ssize_t tile_rows, Py_ssize_t lo, Py_ssize_t hi) noexcept nogil:
    cdef Py_ssize_t cg = g.cin // g.groups, og = g.cout // g.groups
    cdef Py_ssize_t K = g.kh * g.kw * cg, m0 = lo, m1, gi
    while m0 < hi:
        m1 = imin(m0 + tile_rows, hi)
        for gi in range(g.groups):
            im2col(x, panel, m0, m1, g, gi * cg, cg)
            gemm(False, False, m1 - m0, og, K, <floating>1, panel, K, w + gi * og, g.cout,
                 <floating>0, y + m0 * g.cout + gi * og, g.cout,
                 bias + gi * og if bias != NULL else NULL, act, 1)
        m0 = m1


def general_forward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] kernel,
                    const floating[::1] bias, floating[:, :, :, ::1] y, tuple params, int act,
                    bint shared, floating[::1] panel, Py_ssize_t tile_rows, int nthreads,
                    int nparts=0):
    """y = act(conv(x, kernel) + bias) with groups and dilations; kernel (kh, kw, Cin/groups,
    Cout).  'blocks' (shared False): nparts blocks of rows (<= 0: nthreads), ``panel``
    nparts*tile_rows*K elements (K = kh*kw*Cg); 'shared': tile_rows*K, the team im2cols each
    tile and one GEMM uses every thread."""
    if nparts <= 0:
        nparts = nthreads
    cdef Geometry g = _geometry(x.shape, y.shape, kernel.shape[0], kernel.shape[1], params)
    cdef Py_ssize_t M = g.n * g.oh * g.ow, cg = g.cin // g.groups, og = g.cout // g.groups
    cdef Py_ssize_t K = g.kh * g.kw * cg, b, m0, m1, gi, m
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *pk = &kernel[0, 0, 0, 0]
    cdef const floating *pb = &bias[0] if bias is not None else NULL
    cdef floating *py = &y[0, 0, 0, 0]
    cdef floating *pp = &panel[0]
    with nogil:
        if not shared:
            for b in prange(nparts, num_threads=nthreads, schedule='static'):
                _forward_block(px, pk, pb, py, &g, act, pp + b * tile_rows * K, tile_rows,
                               M * b // nparts, M * (b + 1) // nparts)
        else:
            m0 = 0
            while m0 < M:
                m1 = imin(m0 + tile_rows, M)
                for gi in range(g.groups):
                    for m in prange(m0, m1, num_threads=nthreads, schedule='static'):
                        im2col(px, pp + (m - m0) * K, m, m + 1, &g, gi * cg, cg)
                    gemm(False, False, m1 - m0, og, K, <floating>1, pp, K, pk + gi * og, g.cout,
                         <floating>0, py + m0 * g.cout + gi * og, g.cout,
                         pb + gi * og if pb != NULL else NULL, act, nthreads)
                m0 = m1


cdef void _backward_input_images(const floating *dy, const floating *w, floating *dx,
                                 const Geometry *g, floating *panel, Py_ssize_t tile_rows,
                                 Py_ssize_t n_lo, Py_ssize_t n_hi) noexcept nogil:
    """Images [n_lo, n_hi) on the calling thread: dcol tiles by 1-thread GEMMs, gathered into
    these images' rows."""
    cdef Py_ssize_t cg = g.cin // g.groups, og = g.cout // g.groups
    cdef Py_ssize_t K = g.kh * g.kw * cg, P = g.oh * g.ow, m0 = n_lo * P, m1, gi, r, r_lo, r_hi
    if n_lo >= n_hi:
        return
    memset(dx + n_lo * g.h * g.w * g.cin, 0, (n_hi - n_lo) * g.h * g.w * g.cin * sizeof(floating))
    while m0 < n_hi * P:
        m1 = imin(m0 + tile_rows, n_hi * P)
        affected_rows(m0, m1, g, &r_lo, &r_hi)
        for gi in range(g.groups):
            gemm(False, True, m1 - m0, K, og, <floating>1, dy + m0 * g.cout + gi * og, g.cout,
                 w + gi * og, g.cout, <floating>0, panel, K, <const floating *>NULL, ACT_NONE,
                 1)
            for r in range(r_lo, r_hi):
                col2im_row(panel, m0, m1, dx, r, g, gi * cg, cg)
        m0 = m1


def general_backward_input(const floating[:, :, :, ::1] dy, const floating[:, :, :, ::1] kernel,
                           floating[:, :, :, ::1] dx, tuple params, bint shared,
                           floating[::1] panel, Py_ssize_t tile_rows, int nthreads,
                           int nparts=0):
    """dx = col2im(dy_g @ W_g^T) per group.  'blocks': whole images per block, nparts blocks
    (<= 0: nthreads), ``panel`` nparts*tile_rows*K; 'shared': ``panel`` tile_rows*K, one team
    GEMM per tile, then the input rows gathered in parallel."""
    if nparts <= 0:
        nparts = nthreads
    cdef Geometry g = _geometry(dx.shape, dy.shape, kernel.shape[0], kernel.shape[1], params)
    cdef Py_ssize_t M = g.n * g.oh * g.ow, cg = g.cin // g.groups, og = g.cout // g.groups
    cdef Py_ssize_t K = g.kh * g.kw * cg, b, n, m0, m1, gi, r, r_lo, r_hi
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef const floating *pk = &kernel[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    cdef floating *pp = &panel[0]
    with nogil:
        if not shared:
            for b in prange(nparts, num_threads=nthreads, schedule='static'):
                _backward_input_images(pdy, pk, pdx, &g, pp + b * tile_rows * K, tile_rows,
                                       g.n * b // nparts, g.n * (b + 1) // nparts)
        else:
            for n in prange(g.n, num_threads=nthreads, schedule='static'):
                memset(pdx + n * g.h * g.w * g.cin, 0, g.h * g.w * g.cin * sizeof(floating))
            m0 = 0
            while m0 < M:
                m1 = imin(m0 + tile_rows, M)
                affected_rows(m0, m1, &g, &r_lo, &r_hi)
                for gi in range(g.groups):
                    gemm(False, True, m1 - m0, K, og, <floating>1, pdy + m0 * g.cout + gi * og,
                         g.cout, pk + gi * og, g.cout, <floating>0, pp, K,
                         <const floating *>NULL, ACT_NONE, nthreads)
                    for r in prange(r_lo, r_hi, num_threads=nthreads, schedule='static'):
                        col2im_row(pp, m0, m1, pdx, r, &g, gi * cg, cg)
                m0 = m1


cdef void _backward_weight_block(const floating *x, const floating *dy, floating *acc,
                                 floating *bacc, const Geometry *g, floating *panel,
                                 Py_ssize_t tile_rows, Py_ssize_t lo,
                                 Py_ssize_t hi) noexcept nogil:
    """Pixels [lo, hi): acc (K, Cout) = sum of col_g^T @ dy_g, bacc (Cout) = dy's column sums."""
    cdef Py_ssize_t cg = g.cin // g.groups, og = g.cout // g.groups
    cdef Py_ssize_t K = g.kh * g.kw * cg, m0 = lo, m1, gi
    memset(acc, 0, K * g.cout * sizeof(floating))
    if bacc != NULL:
        memset(bacc, 0, g.cout * sizeof(floating))
    while m0 < hi:
        m1 = imin(m0 + tile_rows, hi)
        for gi in range(g.groups):
            im2col(x, panel, m0, m1, g, gi * cg, cg)
            gemm(True, False, K, og, m1 - m0, <floating>1, panel, K, dy + m0 * g.cout + gi * og,
                 g.cout, <floating>1, acc + gi * og, g.cout, <const floating *>NULL, ACT_NONE, 1)
        if bacc != NULL:
            colsum(dy + m0 * g.cout, m1 - m0, g.cout, g.cout, bacc)
        m0 = m1


def general_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                            floating[:, :, :, ::1] dkernel, floating[::1] dbias, tuple params,
                            bint shared, floating[::1] panel, Py_ssize_t tile_rows,
                            floating[::1] partials, int nthreads, int nparts=0):
    """dkernel (kh, kw, Cin/groups, Cout) = sum of col_g^T @ dy_g, dbias = dy summed (if not
    None).  nparts blocks of rows (<= 0: nthreads).  'blocks': ``panel`` nparts*tile_rows*K,
    ``partials`` (nparts-1)*(K*Cout+Cout), added in block order; 'shared': ``panel``
    tile_rows*K, team GEMMs, ``partials`` for the bias only ((nparts-1)*Cout)."""
    if nparts <= 0:
        nparts = nthreads
    cdef Geometry g = _geometry(x.shape, dy.shape, dkernel.shape[0], dkernel.shape[1], params)
    cdef Py_ssize_t M = g.n * g.oh * g.ow, cg = g.cin // g.groups, og = g.cout // g.groups
    cdef Py_ssize_t K = g.kh * g.kw * cg, KC = K * g.cout, b, q, m0, m1, gi, m
    cdef Py_ssize_t per = KC + g.cout
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdk = &dkernel[0, 0, 0, 0]
    cdef floating *pdb = &dbias[0] if dbias is not None else NULL
    cdef floating *pp = &panel[0]
    cdef floating *ppart = &partials[0] if partials is not None else NULL
    with nogil:
        if not shared:
            for b in prange(nparts, num_threads=nthreads, schedule='static'):
                _backward_weight_block(
                    px, pdy, pdk if b == 0 else ppart + (b - 1) * per,
                    NULL if pdb == NULL else (pdb if b == 0 else ppart + (b - 1) * per + KC),
                    &g, pp + b * tile_rows * K, tile_rows, M * b // nparts,
                    M * (b + 1) // nparts)
            for q in range(1, nparts):
                add_into(pdk, ppart + (q - 1) * per, KC)
                if pdb != NULL:
                    add_into(pdb, ppart + (q - 1) * per + KC, g.cout)
        else:
            memset(pdk, 0, KC * sizeof(floating))
            m0 = 0
            while m0 < M:
                m1 = imin(m0 + tile_rows, M)
                for gi in range(g.groups):
                    for m in prange(m0, m1, num_threads=nthreads, schedule='static'):
                        im2col(px, pp + (m - m0) * K, m, m + 1, &g, gi * cg, cg)
                    gemm(True, False, K, og, m1 - m0, <floating>1, pp, K,
                         pdy + m0 * g.cout + gi * og, g.cout, <floating>1, pdk + gi * og, g.cout,
                         <const floating *>NULL, ACT_NONE, nthreads)
                m0 = m1
            if pdb != NULL:
                _bias_sums(pdy, M, g.cout, pdb, ppart, nthreads, nparts)


# ---------------------------------------------------------------------- bias, bias gradient
cdef void _bias_act_rows(floating *y, const floating *bias, Py_ssize_t C, Py_ssize_t r0,
                         Py_ssize_t r1, int relu) noexcept nogil:
    cdef unsigned csr = fn_ftz_begin()
    if floating is float:
        fn_cg_bias_act_s(y, bias, C, r0, r1, relu)
    else:
        fn_cg_bias_act_d(y, bias, C, r0, r1, relu)
    fn_ftz_end(csr)


def bias_act(floating[:, ::1] y, const floating[::1] bias, bint relu, int nthreads):
    """y (rows, C) = act(y + bias) in place; bias (C,) or None; act ReLU or none."""
    cdef Py_ssize_t R = y.shape[0], C = y.shape[1], t
    cdef floating *py = &y[0, 0]
    cdef const floating *pb = &bias[0] if bias is not None else NULL
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _bias_act_rows(py, pb, C, split_bound(R, t, nthreads, 1),
                       split_bound(R, t + 1, nthreads, 1), relu)


def bias_grad(const floating[:, ::1] dy, floating[::1] db, floating[::1] partials, int nthreads,
              int nparts=0):
    """db (C,) = dy (rows, C) summed over rows in nparts blocks (<= 0: nthreads); ``partials``
    (nparts-1)*C (None for 1)."""
    cdef floating *pp = &partials[0] if partials is not None else NULL
    if nparts <= 0:
        nparts = nthreads
    with nogil:
        _bias_sums(&dy[0, 0], dy.shape[0], dy.shape[1], &db[0], pp, nthreads, nparts)


# -------------------------------------------------------------------------------- upsampling
cdef void _up_nearest_rows(const floating *x, floating *y, Py_ssize_t h, Py_ssize_t w,
                           Py_ssize_t C, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t r0,
                           Py_ssize_t r1, bint backward) noexcept nogil:
    if floating is float:
        if backward:
            fn_cg_up_nearest_bwd_s(x, y, h, w, C, sh, sw, r0, r1)
        else:
            fn_cg_up_nearest_s(x, y, h, w, C, sh, sw, r0, r1)
    else:
        if backward:
            fn_cg_up_nearest_bwd_d(x, y, h, w, C, sh, sw, r0, r1)
        else:
            fn_cg_up_nearest_d(x, y, h, w, C, sh, sw, r0, r1)


def upsample_nearest(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, Py_ssize_t sh,
                     Py_ssize_t sw, int nthreads):
    """y (N, H*sh, W*sw, C): each pixel of x repeated in an sh x sw block."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t R = N * H * sh, t
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _up_nearest_rows(px, py, H, W, C, sh, sw, split_bound(R, t, nthreads, 1),
                         split_bound(R, t + 1, nthreads, 1), False)


def upsample_nearest_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                              Py_ssize_t sh, Py_ssize_t sw, int nthreads):
    """dx (N, H, W, C) = dy summed over each sh x sw block."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t R = N * H, t
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _up_nearest_rows(pdy, pdx, H, W, C, sh, sw, split_bound(R, t, nthreads, 1),
                         split_bound(R, t + 1, nthreads, 1), True)


cdef void _bilinear_table(Py_ssize_t size, Py_ssize_t scale, Py_ssize_t *i0, Py_ssize_t *i1,
                          floating *lerp) noexcept nogil:
    """TensorFlow's half-pixel centres: source (o + 0.5) / scale - 0.5, its floor clamped to
    0 and the next row/column clamped to size - 1."""
    cdef Py_ssize_t o, lo
    cdef double src
    for o in range(size * scale):
        src = (o + 0.5) / scale - 0.5
        lo = <Py_ssize_t>src if src >= 0 else -1     # floor (src > -1)
        lerp[o] = <floating>(src - lo)
        i0[o] = imax(lo, 0)
        i1[o] = imin(lo + 1, size - 1)


def upsample_bilinear(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, Py_ssize_t sh,
                      Py_ssize_t sw, floating[::1] weights, Py_ssize_t[::1] index,
                      int nthreads):
    """y (N, H*sh, W*sw, C) bilinear; ``weights`` OH + OW and ``index`` 2*(OH + OW) scratch."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = H * sh, OW = W * sw, R = N * OH, t
    cdef Py_ssize_t *y0 = &index[0]
    cdef Py_ssize_t *y1 = y0 + OH
    cdef Py_ssize_t *x0 = y1 + OH
    cdef Py_ssize_t *x1 = x0 + OW
    cdef floating *ly = &weights[0]
    cdef floating *lx = ly + OH
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    with nogil:
        _bilinear_table(H, sh, y0, y1, ly)
        _bilinear_table(W, sw, x0, x1, lx)
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        if floating is float:
            fn_cg_up_bilinear_s(px, py, H, W, C, OH, OW, y0, y1, ly, x0, x1, lx,
                                split_bound(R, t, nthreads, 1), split_bound(R, t + 1, nthreads, 1))
        else:
            fn_cg_up_bilinear_d(px, py, H, W, C, OH, OW, y0, y1, ly, x0, x1, lx,
                                split_bound(R, t, nthreads, 1), split_bound(R, t + 1, nthreads, 1))


def upsample_bilinear_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                               Py_ssize_t sh, Py_ssize_t sw, floating[::1] contracted,
                               floating[::1] weights, Py_ssize_t[::1] index, int nthreads):
    """dx of the bilinear upsampling; ``contracted`` N*OH*W*C scratch (dy contracted along the
    width), ``weights`` OH + OW and ``index`` 2*(OH + OW) + 2*H scratch."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t OH = H * sh, OW = W * sw, t, o
    cdef Py_ssize_t *y0 = &index[0]
    cdef Py_ssize_t *y1 = y0 + OH
    cdef Py_ssize_t *x0 = y1 + OH
    cdef Py_ssize_t *x1 = x0 + OW
    cdef Py_ssize_t *lo = x1 + OW
    cdef Py_ssize_t *hi = lo + H
    cdef floating *ly = &weights[0]
    cdef floating *lx = ly + OH
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    cdef floating *pt = &contracted[0]
    with nogil:
        _bilinear_table(H, sh, y0, y1, ly)
        _bilinear_table(W, sw, x0, x1, lx)
        for o in range(H):     # the output rows that read input row ih: [lo, hi)
            lo[o] = OH
            hi[o] = 0
        for o in range(OH):
            lo[y0[o]] = imin(lo[y0[o]], o)
            hi[y1[o]] = imax(hi[y1[o]], o + 1)
            lo[y1[o]] = imin(lo[y1[o]], o)
            hi[y0[o]] = imax(hi[y0[o]], o + 1)
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        if floating is float:
            fn_cg_up_bilinear_bwd_cols_s(pdy, pt, W, C, OW, x0, x1, lx,
                                         split_bound(N * OH, t, nthreads, 1),
                                         split_bound(N * OH, t + 1, nthreads, 1))
        else:
            fn_cg_up_bilinear_bwd_cols_d(pdy, pt, W, C, OW, x0, x1, lx,
                                         split_bound(N * OH, t, nthreads, 1),
                                         split_bound(N * OH, t + 1, nthreads, 1))
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        if floating is float:
            fn_cg_up_bilinear_bwd_rows_s(pt, pdx, H, W, C, OH, y0, y1, ly, lo, hi,
                                         split_bound(N * H, t, nthreads, 1),
                                         split_bound(N * H, t + 1, nthreads, 1))
        else:
            fn_cg_up_bilinear_bwd_rows_d(pt, pdx, H, W, C, OH, y0, y1, ly, lo, hi,
                                         split_bound(N * H, t, nthreads, 1),
                                         split_bound(N * H, t + 1, nthreads, 1))


# ---------------------------------------------------------------------- space <-> batch
def space_to_batch(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] xs, Py_ssize_t dh,
                   Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl, int nthreads):
    """xs (N*dh*dw, Q, R, C)[(n*dh + a)*dw + b, q, r] = x[n, a + q*dh - pt, b + r*dw - pl]
    (zero outside x)."""
    cdef Py_ssize_t Q = xs.shape[1], R = xs.shape[2], rows = xs.shape[0] * Q, t
    cdef const char *px = <const char *>&x[0, 0, 0, 0]
    cdef char *pxs = <char *>&xs[0, 0, 0, 0]
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        fn_cg_space_to_batch(px, pxs, x.shape[1], x.shape[2], x.shape[3], Q, R, dh, dw, pt, pl,
                             sizeof(floating), split_bound(rows, t, nthreads, 1),
                             split_bound(rows, t + 1, nthreads, 1))


def batch_to_space(const floating[:, :, :, ::1] xs, floating[:, :, :, ::1] y, Py_ssize_t dh,
                   Py_ssize_t dw, Py_ssize_t pt, Py_ssize_t pl, int nthreads):
    """y (N, H, W, C)[n, i, j] = xs[(n*dh + a)*dw + b, q, r], i + pt = a + q*dh,
    j + pl = b + r*dw (the inverse of ``space_to_batch`` on the positions of y)."""
    cdef Py_ssize_t rows = y.shape[0] * y.shape[1], t
    cdef const char *pxs = <const char *>&xs[0, 0, 0, 0]
    cdef char *py = <char *>&y[0, 0, 0, 0]
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        fn_cg_batch_to_space(pxs, py, y.shape[1], y.shape[2], y.shape[3], xs.shape[1],
                             xs.shape[2], dh, dw, pt, pl, sizeof(floating),
                             split_bound(rows, t, nthreads, 1),
                             split_bound(rows, t + 1, nthreads, 1))
