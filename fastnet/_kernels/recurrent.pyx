# cython: language_level=3
"""Recurrent kernels: the time loops of SimpleRNN, LSTM and GRU (both reset_after forms),
forward and backward, and the embedding gather / scatter-add.

Design
------
Layout (chosen by ``fastnet.ops.recurrent``): every per-step buffer is TIME-MAJOR in
processing order, ``buf[s, b, :]`` for step s and batch row b, so the rows of one step are one
contiguous (B, width) matrix and the big products over all steps are plain 2-D GEMMs:

  gates  (T, B, G*u)  x_s @ kernel + bias (one GEMM over all steps, done by the op), to which
                      each step adds h_{s-1} @ recurrent_kernel; then overwritten IN PLACE by
                      the activated gates (LSTM i, f, g, o; GRU z, r, hh; SimpleRNN h itself)
  inner  (T, B, 3u)   GRU reset_after=True: h_{s-1} @ recurrent_kernel + recurrent bias
  rhp    (T, B, u)    GRU reset_after=False: r * h_{s-1}, the left factor of the candidate's
                      recurrent product (kept for that product's weight gradient)
  hs, cs (T, B, u)    hidden (and LSTM cell) state after each step

The time loop is parallel over BATCH ROWS: row b of step s depends only on row b of step s-1,
so thread t owns rows [b0, b1) for the whole sequence and runs its steps with no barrier at all
(one fork/join per sequence, not per step).  Each step of a thread is its slice of the
recurrent GEMM, called with one thread, followed by the fused gate kernel on the same rows
while they are in L1.  The recurrent weights are pre-packed once per call into column PANELS
``pw`` wide (four register tiles of the GEMM): each per-step GEMM call then reads both A (the
h rows) and B (one panel, contiguous) in place, with no packing inside the time loop.

Backward through time runs the same way (rows in parallel, no barrier): per step the fused
gate-gradient kernel turns dL/dh (carried + the output gradient at that step) into the
pre-activation gradients dG[s], and the recurrent GEMM dG[s] @ recurrent_kernel^T (pre-packed
panels of the transpose) gives the carried dL/dh_{s-1}.  The weight gradients are then big
GEMMs over all steps, done by the op: dW = X^T dG, dU = H_prev^T dG, dx = dG W^T.

The gate kernels are C, written once for float and double through a macro and compiled per ISA
(AVX-512 / AVX2 / baseline, picked at load time); each row is processed as a few vectorized
passes (activation, combine, activation derivative) over u-long runs that stay in L1.
Activation derivatives are taken from the activation's OUTPUT (tanh: 1 - y^2, sigmoid:
y (1 - y), relu: y > 0, linear: 1).  Every element is computed the same way whatever the
thread split.  All functions trust their arguments: ``fastnet.ops.recurrent`` checked them.
"""
cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange
from libc.string cimport memcpy, memset

from fastnet._kernels._vecmath cimport fn_ftz_begin, fn_ftz_end, split_bound
from fastnet._kernels.gemm cimport gemm, ACT_NONE

cnp.import_array()

cdef extern from *:
    """
    enum { FN_RNN_LINEAR = 0, FN_RNN_TANH = 1, FN_RNN_SIGMOID = 2, FN_RNN_RELU = 3 };

    #define FN_RNN_DEFINE(T, S, EXP, TANH, FABS)                                                  \\
    /* y[0:n] = act(x[0:n]); y may be x.  The switch is outside the loops: each vectorizes. */    \\
    FN_VEC_NOTRAP FN_VEC_INLINE void fn_rnn_act_##S(int code, const T *x, T *y, ptrdiff_t n)    \\
    {                                                                                           \\
        ptrdiff_t j;                                                                            \\
        switch (code) {                                                                         \\
        case FN_RNN_TANH:                                                                       \\
            for (j = 0; j < n; j++) y[j] = TANH(x[j]);                                          \\
            break;                                                                              \\
        case FN_RNN_SIGMOID:                                                                    \\
            for (j = 0; j < n; j++) {                                                           \\
                T xj = x[j], e = EXP(-FABS(xj));      /* in (0, 1]: never overflows */          \\
                T s = (T)1 / ((T)1 + e);                                                        \\
                y[j] = xj >= (T)0 ? s : e * s;                                                  \\
            }                                                                                   \\
            break;                                                                              \\
        case FN_RNN_RELU:                                                                       \\
            for (j = 0; j < n; j++) { T xj = x[j]; y[j] = xj < (T)0 ? (T)0 : xj; }              \\
            break;                                                                              \\
        default:                                                                                \\
            if (y != x) memcpy(y, x, (size_t)n * sizeof(T));                                    \\
        }                                                                                       \\
    }                                                                                           \\
    /* d[0:n] *= act'(.) given the activation's output y[0:n]. */                               \\
    FN_VEC_NOTRAP FN_VEC_INLINE void fn_rnn_dact_##S(int code, const T *y, T *d, ptrdiff_t n)   \\
    {                                                                                           \\
        ptrdiff_t j;                                                                            \\
        switch (code) {                                                                         \\
        case FN_RNN_TANH:                                                                       \\
            for (j = 0; j < n; j++) d[j] *= (T)1 - y[j] * y[j];                                 \\
            break;                                                                              \\
        case FN_RNN_SIGMOID:                                                                    \\
            for (j = 0; j < n; j++) d[j] *= y[j] * ((T)1 - y[j]);                               \\
            break;                                                                              \\
        case FN_RNN_RELU:                                                                       \\
            for (j = 0; j < n; j++) d[j] = y[j] > (T)0 ? d[j] : (T)0;                           \\
            break;                                                                              \\
        default:                                                                                \\
            break;                                                                              \\
        }                                                                                       \\
    }                                                                                           \\
    /* d[0:n] = a[0:n] (+ b[0:n] when b is not NULL) */                                          \\
    FN_VEC_INLINE void fn_rnn_sum_##S(const T *a, const T *b, T *d, ptrdiff_t n)                \\
    {                                                                                           \\
        ptrdiff_t j;                                                                            \\
        if (b) for (j = 0; j < n; j++) d[j] = a[j] + b[j];                                      \\
        else memcpy(d, a, (size_t)n * sizeof(T));                                               \\
    }                                                                                           \\
    /* GRU's update: h = z h_prev + (1 - z) hh (h_prev NULL: zero). */                          \\
    FN_VEC_INLINE void fn_gru_mix_##S(ptrdiff_t u, const T *z, const T *hh, const T *hp, T *h)  \\
    {                                                                                           \\
        ptrdiff_t j;                                                                            \\
        if (hp) for (j = 0; j < u; j++) h[j] = z[j] * hp[j] + ((T)1 - z[j]) * hh[j];            \\
        else for (j = 0; j < u; j++) h[j] = ((T)1 - z[j]) * hh[j];                              \\
    }                                                                                           \\
    /* Its gradient for dL/dh = t: gz = dL/dz, gh = dL/d(the pre-activation of hh), dn = z t    \\
       (the direct part of dL/dh_prev). */                                                      \\
    FN_VEC_NOTRAP FN_VEC_INLINE void fn_gru_dmix_##S(int act, ptrdiff_t u, const T *z,          \\
                                                     const T *hh, const T *hp, const T *t,      \\
                                                     T *gz, T *gh, T *dn)                       \\
    {                                                                                           \\
        ptrdiff_t j;                                                                            \\
        if (hp) for (j = 0; j < u; j++) gz[j] = t[j] * (hp[j] - hh[j]);                         \\
        else for (j = 0; j < u; j++) gz[j] = -t[j] * hh[j];                                     \\
        for (j = 0; j < u; j++) { gh[j] = t[j] * ((T)1 - z[j]); dn[j] = t[j] * z[j]; }          \\
        fn_rnn_dact_##S(act, hh, gh, u);                                                        \\
    }                                                                                           \\
                                                                                                \\
    /* SimpleRNN: rows of z (stride u) become h = act(z), in place. */                          \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_rnn_fwd_##S(int act, ptrdiff_t u, ptrdiff_t rows, T *z)                                  \\
    {                                                                                           \\
        fn_rnn_act_##S(act, z, z, rows * u);                                                    \\
    }                                                                                           \\
    /* SimpleRNN backward: dz = (dh + dy) act'(h).  dy rows have stride ldy (NULL: none). */     \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_rnn_bwd_##S(int act, ptrdiff_t u, ptrdiff_t rows, const T *h, const T *dh,               \\
                   const T *dy, ptrdiff_t ldy, T *dz)                                           \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            T *d = dz + r * u;                                                                  \\
            fn_rnn_sum_##S(dh + r * u, dy ? dy + r * ldy : NULL, d, u);                         \\
            fn_rnn_dact_##S(act, h + r * u, d, u);                                              \\
        }                                                                                       \\
    }                                                                                           \\
                                                                                                \\
    /* The LSTM cell's gradient (one row): d = dc + t (t = dL/dh o act'(c)); dL/di = d g,       \\
       dL/df = d c_prev (0 at the first step), dL/dg = d i; dc becomes d f = dL/dc_prev.        \\
       A function with restrict parameters: the only way gcc vectorizes this 9-stream loop      \\
       without alias checks (restrict locals derived from one row pointer do not do). */        \\
    FN_VEC_INLINE void fn_lstm_dcell_##S(ptrdiff_t u, T *restrict dc, const T *restrict t,      \\
                                         const T *restrict zi, const T *restrict zf,            \\
                                         const T *restrict zg, const T *restrict cp,            \\
                                         T *restrict di, T *restrict df, T *restrict dg)        \\
    {                                                                                           \\
        ptrdiff_t j;                                                                            \\
        if (cp) {                                                                               \\
            for (j = 0; j < u; j++) {                                                           \\
                T d = dc[j] + t[j];                                                             \\
                di[j] = d * zg[j]; df[j] = d * cp[j]; dg[j] = d * zi[j]; dc[j] = d * zf[j];     \\
            }                                                                                   \\
        } else {                                                                                \\
            for (j = 0; j < u; j++) {                                                           \\
                T d = dc[j] + t[j];                                                             \\
                di[j] = d * zg[j]; df[j] = (T)0; dg[j] = d * zi[j]; dc[j] = d * zf[j];          \\
            }                                                                                   \\
        }                                                                                       \\
    }                                                                                           \\
    /* LSTM forward, one step: z rows (stride 4u) hold x W + b + h U; they become the gates    \\
       i, f, g, o; c = f c_prev + i g, h = o act(c).  cprev NULL: zero initial state. */         \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_lstm_fwd_##S(int act, int ract, ptrdiff_t u, ptrdiff_t rows, T *z, const T *cprev,       \\
                    T *c, T *h)                                                                 \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            T *zi = z + r * 4 * u, *zf = zi + u, *zg = zf + u, *zo = zg + u;                    \\
            T *cr = c + r * u, *hr = h + r * u;                                                 \\
            ptrdiff_t j;                                                                        \\
            fn_rnn_act_##S(ract, zi, zi, 2 * u);                                                \\
            fn_rnn_act_##S(act, zg, zg, u);                                                     \\
            fn_rnn_act_##S(ract, zo, zo, u);                                                    \\
            if (cprev) {                                                                        \\
                const T *cp = cprev + r * u;                                                    \\
                for (j = 0; j < u; j++) cr[j] = zf[j] * cp[j] + zi[j] * zg[j];                  \\
            } else {                                                                            \\
                for (j = 0; j < u; j++) cr[j] = zi[j] * zg[j];                                  \\
            }                                                                                   \\
            fn_rnn_act_##S(act, cr, hr, u);                                                     \\
            for (j = 0; j < u; j++) hr[j] *= zo[j];                                             \\
        }                                                                                       \\
    }                                                                                           \\
    /* LSTM backward, one step.  In: the gates z, c_prev (NULL: zero), c, the carried dh and  \\
       the output gradient dy (NULL: none); dc is the carried dL/dc, updated to dL/dc_prev.    \\
       Out: dz (stride 4u), the gradient w.r.t. the gates' pre-activations.  tmp: 2u/row. */   \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_lstm_bwd_##S(int act, int ract, ptrdiff_t u, ptrdiff_t rows, const T *z,                 \\
                    const T *cprev, const T *c, const T *dh, const T *dy, ptrdiff_t ldy,        \\
                    T *dc, T *dz, T *tmp)                                                       \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            const T *zi = z + r * 4 * u, *zf = zi + u, *zg = zf + u, *zo = zg + u;              \\
            T *di = dz + r * 4 * u, *df = di + u, *dg = df + u, *dout = dg + u;                 \\
            T *ac = tmp + r * 2 * u, *t = ac + u;                                               \\
            ptrdiff_t j;                                                                        \\
            fn_rnn_act_##S(act, c + r * u, ac, u);               /* act(c) */                   \\
            fn_rnn_sum_##S(dh + r * u, dy ? dy + r * ldy : NULL, t, u);                         \\
            for (j = 0; j < u; j++) { dout[j] = t[j] * ac[j]; t[j] *= zo[j]; }                  \\
            fn_rnn_dact_##S(act, ac, t, u);                      /* dh o act'(c) */             \\
            fn_lstm_dcell_##S(u, dc + r * u, t, zi, zf, zg, cprev ? cprev + r * u : NULL, di,   \\
                              df, dg);                                                          \\
            fn_rnn_dact_##S(ract, zi, di, 2 * u);                                               \\
            fn_rnn_dact_##S(act, zg, dg, u);                                                    \\
            fn_rnn_dact_##S(ract, zo, dout, u);                                                 \\
        }                                                                                       \\
    }                                                                                           \\
                                                                                                \\
    /* GRU reset_after=True forward, one step: z rows (stride 3u) hold x W + b_in; inner rows  \\
       (stride 3u) h U + b_rec.  z becomes [z, r, hh]; h = z h_prev + (1 - z) hh. */            \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_gru_fwd_##S(int act, int ract, ptrdiff_t u, ptrdiff_t rows, T *z, const T *inner,        \\
                   const T *hprev, T *h)                                                        \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            T *zz = z + r * 3 * u, *zr = zz + u, *zh = zr + u, *hr = h + r * u;                 \\
            const T *in = inner + r * 3 * u;                                                    \\
            ptrdiff_t j;                                                                        \\
            for (j = 0; j < 2 * u; j++) zz[j] += in[j];                                         \\
            fn_rnn_act_##S(ract, zz, zz, 2 * u);                                                \\
            for (j = 0; j < u; j++) zh[j] += zr[j] * in[2 * u + j];                             \\
            fn_rnn_act_##S(act, zh, zh, u);                                                     \\
            fn_gru_mix_##S(u, zz, zh, hprev ? hprev + r * u : NULL, hr);                        \\
        }                                                                                       \\
    }                                                                                           \\
    /* GRU reset_after=True backward, one step: dgx (stride 3u) = dL/d(x part), dgh (stride    \\
       3u) = dL/d(inner), dhn = the direct part z dh of dL/dh_prev.  tmp: u per row. */        \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_gru_bwd_##S(int act, int ract, ptrdiff_t u, ptrdiff_t rows, const T *z, const T *inner,  \\
                   const T *hprev, const T *dh, const T *dy, ptrdiff_t ldy, T *dgx, T *dgh,     \\
                   T *dhn, T *tmp)                                                              \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            const T *zz = z + r * 3 * u, *zr = zz + u, *zh = zr + u;                            \\
            const T *ih = inner + r * 3 * u + 2 * u;                                            \\
            T *gz = dgx + r * 3 * u, *gr = gz + u, *gh = gr + u;                                \\
            T *hz = dgh + r * 3 * u, *hh = hz + 2 * u, *t = tmp + r * u, *dn = dhn + r * u;     \\
            ptrdiff_t j;                                                                        \\
            fn_rnn_sum_##S(dh + r * u, dy ? dy + r * ldy : NULL, t, u);                         \\
            fn_gru_dmix_##S(act, u, zz, zh, hprev ? hprev + r * u : NULL, t, gz, gh, dn);       \\
            for (j = 0; j < u; j++) { gr[j] = gh[j] * ih[j]; hh[j] = gh[j] * zr[j]; }           \\
            fn_rnn_dact_##S(ract, zz, gz, 2 * u);                                               \\
            memcpy(hz, gz, (size_t)(2 * u) * sizeof(T));                                       \\
        }                                                                                       \\
    }                                                                                           \\
                                                                                                \\
    /* GRU reset_after=False forward, part 1 (after z[:, :2u] += h U[:, :2u]): activate z, r; \\
       rhp = r h_prev (rows of stride u; zero at the first step). */                            \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_gru1_fwd_a_##S(int ract, ptrdiff_t u, ptrdiff_t rows, T *z, const T *hprev, T *rhp)      \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            T *zz = z + r * 3 * u, *zr = zz + u, *o = rhp + r * u;                              \\
            fn_rnn_act_##S(ract, zz, zz, 2 * u);                                                \\
            if (hprev) {                                                                        \\
                const T *hp = hprev + r * u;                                                    \\
                for (ptrdiff_t j = 0; j < u; j++) o[j] = zr[j] * hp[j];                         \\
            } else {                                                                            \\
                memset(o, 0, (size_t)u * sizeof(T));                                            \\
            }                                                                                   \\
        }                                                                                       \\
    }                                                                                           \\
    /* part 2 (after z[:, 2u:] += rhp U[:, 2u:]): hh = act(.), h = z h_prev + (1 - z) hh. */    \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_gru1_fwd_b_##S(int act, ptrdiff_t u, ptrdiff_t rows, T *z, const T *hprev, T *h)         \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            T *zz = z + r * 3 * u, *zh = zz + 2 * u, *hr = h + r * u;                           \\
            fn_rnn_act_##S(act, zh, zh, u);                                                     \\
            fn_gru_mix_##S(u, zz, zh, hprev ? hprev + r * u : NULL, hr);                        \\
        }                                                                                       \\
    }                                                                                           \\
    /* GRU reset_after=False backward, part 1: dgx[:, 0:u] = dL/dz_pre (before sigmoid'),      \\
       dgx[:, 2u:3u] = dL/dhh_pre, dhn = z dh. */                                               \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_gru1_bwd_a_##S(int act, ptrdiff_t u, ptrdiff_t rows, const T *z, const T *hprev,         \\
                      const T *dh, const T *dy, ptrdiff_t ldy, T *dgx, T *dhn, T *tmp)          \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            const T *zz = z + r * 3 * u, *zh = zz + 2 * u;                                      \\
            T *gz = dgx + r * 3 * u, *gh = gz + 2 * u, *t = tmp + r * u, *dn = dhn + r * u;     \\
            fn_rnn_sum_##S(dh + r * u, dy ? dy + r * ldy : NULL, t, u);                         \\
            fn_gru_dmix_##S(act, u, zz, zh, hprev ? hprev + r * u : NULL, t, gz, gh, dn);       \\
        }                                                                                       \\
    }                                                                                           \\
    /* part 2, given drhp = dgx[:, 2u:] U[:, 2u:]^T (rows of stride u): dgx[:, u:2u] = dL/dr,  \\
       dhn += r drhp, then sigmoid' on z, r. */                                                 \\
    FN_VEC_CLONES FN_VEC_NOTRAP static void                                                     \\
    fn_gru1_bwd_b_##S(int ract, ptrdiff_t u, ptrdiff_t rows, const T *z, const T *hprev,        \\
                      const T *drhp, T *dgx, T *dhn)                                            \\
    {                                                                                           \\
        for (ptrdiff_t r = 0; r < rows; r++) {                                                  \\
            const T *zz = z + r * 3 * u, *zr = zz + u, *d = drhp + r * u;                       \\
            T *gz = dgx + r * 3 * u, *gr = gz + u, *dn = dhn + r * u;                           \\
            ptrdiff_t j;                                                                        \\
            if (hprev) {                                                                        \\
                const T *hp = hprev + r * u;                                                    \\
                for (j = 0; j < u; j++) { gr[j] = d[j] * hp[j]; dn[j] += d[j] * zr[j]; }        \\
            } else {                                                                            \\
                memset(gr, 0, (size_t)u * sizeof(T));                                           \\
            }                                                                                   \\
            fn_rnn_dact_##S(ract, zz, gz, 2 * u);                                               \\
        }                                                                                       \\
    }

    FN_RNN_DEFINE(float, s, fn_expf, fn_tanhf, fabsf)
    FN_RNN_DEFINE(double, d, exp, tanh, fabs)
    """
    enum:
        FN_RNN_LINEAR
        FN_RNN_TANH
        FN_RNN_SIGMOID
        FN_RNN_RELU
    void fn_rnn_fwd_s(int act, Py_ssize_t u, Py_ssize_t rows, float *z) noexcept nogil
    void fn_rnn_fwd_d(int act, Py_ssize_t u, Py_ssize_t rows, double *z) noexcept nogil
    void fn_rnn_bwd_s(int act, Py_ssize_t u, Py_ssize_t rows, const float *h, const float *dh,
                      const float *dy, Py_ssize_t ldy, float *dz) noexcept nogil
    void fn_rnn_bwd_d(int act, Py_ssize_t u, Py_ssize_t rows, const double *h, const double *dh,
                      const double *dy, Py_ssize_t ldy, double *dz) noexcept nogil
    void fn_lstm_fwd_s(int act, int ract, Py_ssize_t u, Py_ssize_t rows, float *z,
                       const float *cprev, float *c, float *h) noexcept nogil
    void fn_lstm_fwd_d(int act, int ract, Py_ssize_t u, Py_ssize_t rows, double *z,
                       const double *cprev, double *c, double *h) noexcept nogil
    void fn_lstm_bwd_s(int act, int ract, Py_ssize_t u, Py_ssize_t rows, const float *z,
                       const float *cprev, const float *c, const float *dh, const float *dy,
                       Py_ssize_t ldy, float *dc, float *dz, float *tmp) noexcept nogil
    void fn_lstm_bwd_d(int act, int ract, Py_ssize_t u, Py_ssize_t rows, const double *z,
                       const double *cprev, const double *c, const double *dh, const double *dy,
                       Py_ssize_t ldy, double *dc, double *dz, double *tmp) noexcept nogil
    void fn_gru_fwd_s(int act, int ract, Py_ssize_t u, Py_ssize_t rows, float *z,
                      const float *inner, const float *hprev, float *h) noexcept nogil
    void fn_gru_fwd_d(int act, int ract, Py_ssize_t u, Py_ssize_t rows, double *z,
                      const double *inner, const double *hprev, double *h) noexcept nogil
    void fn_gru_bwd_s(int act, int ract, Py_ssize_t u, Py_ssize_t rows, const float *z,
                      const float *inner, const float *hprev, const float *dh, const float *dy,
                      Py_ssize_t ldy, float *dgx, float *dgh, float *dhn,
                      float *tmp) noexcept nogil
    void fn_gru_bwd_d(int act, int ract, Py_ssize_t u, Py_ssize_t rows, const double *z,
                      const double *inner, const double *hprev, const double *dh,
                      const double *dy, Py_ssize_t ldy, double *dgx, double *dgh, double *dhn,
                      double *tmp) noexcept nogil
    void fn_gru1_fwd_a_s(int ract, Py_ssize_t u, Py_ssize_t rows, float *z, const float *hprev,
                         float *rhp) noexcept nogil
    void fn_gru1_fwd_a_d(int ract, Py_ssize_t u, Py_ssize_t rows, double *z,
                         const double *hprev, double *rhp) noexcept nogil
    void fn_gru1_fwd_b_s(int act, Py_ssize_t u, Py_ssize_t rows, float *z, const float *hprev,
                         float *h) noexcept nogil
    void fn_gru1_fwd_b_d(int act, Py_ssize_t u, Py_ssize_t rows, double *z,
                         const double *hprev, double *h) noexcept nogil
    void fn_gru1_bwd_a_s(int act, Py_ssize_t u, Py_ssize_t rows, const float *z,
                         const float *hprev, const float *dh, const float *dy, Py_ssize_t ldy,
                         float *dgx, float *dhn, float *tmp) noexcept nogil
    void fn_gru1_bwd_a_d(int act, Py_ssize_t u, Py_ssize_t rows, const double *z,
                         const double *hprev, const double *dh, const double *dy,
                         Py_ssize_t ldy, double *dgx, double *dhn, double *tmp) noexcept nogil
    void fn_gru1_bwd_b_s(int ract, Py_ssize_t u, Py_ssize_t rows, const float *z,
                         const float *hprev, const float *drhp, float *dgx,
                         float *dhn) noexcept nogil
    void fn_gru1_bwd_b_d(int ract, Py_ssize_t u, Py_ssize_t rows, const double *z,
                         const double *hprev, const double *drhp, double *dgx,
                         double *dhn) noexcept nogil


LINEAR = FN_RNN_LINEAR
TANH = FN_RNN_TANH
SIGMOID = FN_RNN_SIGMOID
RELU = FN_RNN_RELU

# Cell codes (the op's names: 'simple_rnn', 'lstm', 'gru' reset_after=True, 'gru_v1' False).
cdef enum:
    CELL_RNN = 0
    CELL_LSTM = 1
    CELL_GRU = 2
    CELL_GRU1 = 3
    ROW_ALIGN = 8      # thread row ranges start at multiples of the GEMM's register tile rows

SIMPLE_RNN = CELL_RNN
LSTM = CELL_LSTM
GRU = CELL_GRU
GRU_V1 = CELL_GRU1


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline void gemm_panels(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, Py_ssize_t pw,
                             const floating *a, Py_ssize_t lda, const floating *panels,
                             floating beta, floating *c, Py_ssize_t ldc) noexcept nogil:
    """c[m, n] = a[m, k] @ B + beta c on the calling thread, B given as column panels
    (panel j: columns [j pw, j pw + w) stored k x w contiguous at panels + j pw k)."""
    cdef Py_ssize_t j0 = 0, w
    while j0 < n:
        w = imin(pw, n - j0)
        gemm(False, False, m, w, k, <floating>1, a, lda, panels + j0 * k, w, beta, c + j0, ldc,
             NULL, ACT_NONE, 1)
        j0 += pw


cdef inline void bias_rows(Py_ssize_t m, Py_ssize_t n, const floating *bias, floating *c,
                           Py_ssize_t ldc) noexcept nogil:
    cdef Py_ssize_t r
    for r in range(m):
        memcpy(c + r * ldc, bias, n * sizeof(floating))


# ------------------------------------------------------------------------------- packing
cdef void _pack(const floating *src, Py_ssize_t ld, Py_ssize_t k, Py_ssize_t n, Py_ssize_t pw,
                bint trans, floating *dst) noexcept nogil:
    """B (k x n) into column panels of width pw.  B[p, j] = src[p * ld + j], or with trans
    src[j * ld + p] (B is the transpose of the stored matrix)."""
    cdef Py_ssize_t j0 = 0, w, p, j
    cdef floating *d
    while j0 < n:
        w = imin(pw, n - j0)
        d = dst + j0 * k
        if not trans:
            for p in range(k):
                memcpy(d + p * w, src + p * ld + j0, w * sizeof(floating))
        else:
            for j in range(w):
                for p in range(k):
                    d[p * w + j] = src[(j0 + j) * ld + p]
        j0 += pw


cdef inline void *_ptr(object a) noexcept:
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def pack_panels(cnp.ndarray src, Py_ssize_t col0, Py_ssize_t k, Py_ssize_t n, bint trans,
                Py_ssize_t pw, cnp.ndarray dst):
    """dst = columns [col0, col0 + n) of the C-contiguous 2-D ``src`` (k x n; with ``trans``
    the transpose of rows [col0, col0 + n)... see ``_pack``) as panels of width pw."""
    cdef Py_ssize_t ld = src.shape[1]
    cdef void *ps = cnp.PyArray_DATA(src)
    cdef void *pd = cnp.PyArray_DATA(dst)
    if cnp.PyArray_TYPE(src) == cnp.NPY_FLOAT32:
        with nogil:
            _pack(<const float *>ps + col0, ld, k, n, pw, trans, <float *>pd)
    else:
        with nogil:
            _pack(<const double *>ps + col0, ld, k, n, pw, trans, <double *>pd)


# ------------------------------------------------------------------------------- forward
cdef void _forward_rows(int cell, int act, int ract, Py_ssize_t T, Py_ssize_t B, Py_ssize_t u,
                        Py_ssize_t pw, floating *gates, floating *inner, floating *rhp,
                        floating *hs, floating *cs, const floating *up, const floating *uph,
                        const floating *rbias, Py_ssize_t b0, Py_ssize_t b1) noexcept nogil:
    """Steps 0..T-1 for batch rows [b0, b1) (see the module docstring for the buffers)."""
    cdef Py_ssize_t m = b1 - b0, s, G
    cdef floating *z
    cdef floating *h
    cdef floating *hp
    cdef floating *c
    cdef floating *cp
    cdef floating *inn
    cdef floating *rh
    cdef unsigned csr
    if m <= 0:
        return
    G = 4 if cell == CELL_LSTM else (1 if cell == CELL_RNN else 3)
    csr = fn_ftz_begin()
    for s in range(T):
        z = gates + (s * B + b0) * G * u
        h = hs + (s * B + b0) * u
        hp = h - B * u if s > 0 else NULL
        if cell == CELL_RNN:
            if hp != NULL:
                gemm_panels(m, u, u, pw, hp, u, up, <floating>1, z, u)
            if floating is float:
                fn_rnn_fwd_s(act, u, m, z)
            else:
                fn_rnn_fwd_d(act, u, m, z)
        elif cell == CELL_LSTM:
            c = cs + (s * B + b0) * u
            cp = c - B * u if s > 0 else NULL
            if hp != NULL:
                gemm_panels(m, 4 * u, u, pw, hp, u, up, <floating>1, z, 4 * u)
            if floating is float:
                fn_lstm_fwd_s(act, ract, u, m, z, cp, c, h)
            else:
                fn_lstm_fwd_d(act, ract, u, m, z, cp, c, h)
        elif cell == CELL_GRU:
            inn = inner + (s * B + b0) * 3 * u
            if rbias != NULL:
                bias_rows(m, 3 * u, rbias, inn, 3 * u)
            if hp != NULL:
                gemm_panels(m, 3 * u, u, pw, hp, u, up,
                            <floating>(1 if rbias != NULL else 0), inn, 3 * u)
            elif rbias == NULL:
                memset(inn, 0, m * 3 * u * sizeof(floating))
            if floating is float:
                fn_gru_fwd_s(act, ract, u, m, z, inn, hp, h)
            else:
                fn_gru_fwd_d(act, ract, u, m, z, inn, hp, h)
        else:
            rh = rhp + (s * B + b0) * u
            if hp != NULL:
                gemm_panels(m, 2 * u, u, pw, hp, u, up, <floating>1, z, 3 * u)
            if floating is float:
                fn_gru1_fwd_a_s(ract, u, m, z, hp, rh)
            else:
                fn_gru1_fwd_a_d(ract, u, m, z, hp, rh)
            if hp != NULL:
                gemm_panels(m, u, u, pw, rh, u, uph, <floating>1, z + 2 * u, 3 * u)
            if floating is float:
                fn_gru1_fwd_b_s(act, u, m, z, hp, h)
            else:
                fn_gru1_fwd_b_d(act, u, m, z, hp, h)
    fn_ftz_end(csr)


cdef void _forward(int cell, int act, int ract, Py_ssize_t T, Py_ssize_t B, Py_ssize_t u,
                   Py_ssize_t pw, floating *gates, floating *inner, floating *rhp, floating *hs,
                   floating *cs, const floating *up, const floating *uph, const floating *rbias,
                   int nthreads) noexcept nogil:
    cdef Py_ssize_t t
    if nthreads <= 1:
        _forward_rows(cell, act, ract, T, B, u, pw, gates, inner, rhp, hs, cs, up, uph, rbias,
                      0, B)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _forward_rows(cell, act, ract, T, B, u, pw, gates, inner, rhp, hs, cs, up, uph, rbias,
                      split_bound(B, t, nthreads, ROW_ALIGN),
                      split_bound(B, t + 1, nthreads, ROW_ALIGN))


def forward(int cell, int act, int ract, cnp.ndarray gates, inner, rhp, cnp.ndarray hs, cs,
            cnp.ndarray up, uph, rbias, Py_ssize_t pw, int nthreads):
    """Run the time loop over ``gates`` (T, B, G u) (the input projection already in it).

    hs (T, B, u) receives the hidden states (for SimpleRNN pass gates itself); cs (T, B, u)
    the LSTM cell states; inner (T, B, 3u) is GRU's recurrent product (reset_after=True,
    rbias its bias (3u,) or None); rhp (T, B, u) is GRU reset_after=False's r * h_prev.  up:
    the recurrent kernel's panels (for reset_after=False only its first 2u columns; uph then
    the last u columns).  Unused arguments are None.  Trusted: the op checked everything."""
    cdef Py_ssize_t T = hs.shape[0], B = hs.shape[1], u = hs.shape[2]
    cdef void *pg = cnp.PyArray_DATA(gates)
    cdef void *pin = _ptr(inner)
    cdef void *prh = _ptr(rhp)
    cdef void *phs = cnp.PyArray_DATA(hs)
    cdef void *pcs = _ptr(cs)
    cdef void *pup = cnp.PyArray_DATA(up)
    cdef void *puh = _ptr(uph)
    cdef void *pb = _ptr(rbias)
    if cnp.PyArray_TYPE(hs) == cnp.NPY_FLOAT32:
        with nogil:
            _forward[float](cell, act, ract, T, B, u, pw, <float *>pg, <float *>pin,
                            <float *>prh, <float *>phs, <float *>pcs, <const float *>pup,
                            <const float *>puh, <const float *>pb, nthreads)
    else:
        with nogil:
            _forward[double](cell, act, ract, T, B, u, pw, <double *>pg, <double *>pin,
                             <double *>prh, <double *>phs, <double *>pcs, <const double *>pup,
                             <const double *>puh, <const double *>pb, nthreads)


# ------------------------------------------------------------------------------ backward
cdef void _backward_rows(int cell, int act, int ract, Py_ssize_t T, Py_ssize_t B, Py_ssize_t u,
                         Py_ssize_t pw, const floating *gates, const floating *inner,
                         const floating *rhp, const floating *hs, const floating *cs,
                         const floating *dy, Py_ssize_t dy_sb, Py_ssize_t dy_ss,
                         const floating *dh_last, const floating *dc_last, floating *dgx,
                         floating *dgh, floating *dhbuf, floating *dc, floating *tmp,
                         const floating *utp, const floating *uhtp, Py_ssize_t b0,
                         Py_ssize_t b1) noexcept nogil:
    """Steps T-1..0 for batch rows [b0, b1).  dhbuf: two (B, u) carries used alternately."""
    cdef Py_ssize_t m = b1 - b0, s, G
    cdef floating *dh = dhbuf + b0 * u
    cdef floating *dn = dhbuf + (B + b0) * u
    cdef floating *swap
    cdef floating *dcr = dc + b0 * u
    cdef floating *tm = tmp + b0 * 2 * u
    cdef floating *gx
    cdef floating *gh
    cdef const floating *z
    cdef const floating *h
    cdef const floating *hp
    cdef const floating *dys
    cdef const floating *c
    cdef const floating *cp
    cdef unsigned csr
    if m <= 0:
        return
    G = 4 if cell == CELL_LSTM else (1 if cell == CELL_RNN else 3)
    csr = fn_ftz_begin()
    if dh_last != NULL:
        memcpy(dh, dh_last + b0 * u, m * u * sizeof(floating))
    else:
        memset(dh, 0, m * u * sizeof(floating))
    if cell == CELL_LSTM:
        if dc_last != NULL:
            memcpy(dcr, dc_last + b0 * u, m * u * sizeof(floating))
        else:
            memset(dcr, 0, m * u * sizeof(floating))
    s = T - 1
    while s >= 0:
        z = gates + (s * B + b0) * G * u
        gx = dgx + (s * B + b0) * G * u
        h = hs + (s * B + b0) * u
        hp = h - B * u if s > 0 else NULL
        dys = dy + b0 * dy_sb + s * dy_ss if dy != NULL else NULL
        if cell == CELL_RNN:
            if floating is float:
                fn_rnn_bwd_s(act, u, m, h, dh, dys, dy_sb, gx)
            else:
                fn_rnn_bwd_d(act, u, m, h, dh, dys, dy_sb, gx)
            if s > 0:
                gemm_panels(m, u, u, pw, gx, u, utp, <floating>0, dn, u)
        elif cell == CELL_LSTM:
            c = cs + (s * B + b0) * u
            cp = c - B * u if s > 0 else NULL
            if floating is float:
                fn_lstm_bwd_s(act, ract, u, m, z, cp, c, dh, dys, dy_sb, dcr, gx, tm)
            else:
                fn_lstm_bwd_d(act, ract, u, m, z, cp, c, dh, dys, dy_sb, dcr, gx, tm)
            if s > 0:
                gemm_panels(m, u, 4 * u, pw, gx, 4 * u, utp, <floating>0, dn, u)
        elif cell == CELL_GRU:
            gh = dgh + (s * B + b0) * 3 * u
            if floating is float:
                fn_gru_bwd_s(act, ract, u, m, z, inner + (s * B + b0) * 3 * u, hp, dh, dys,
                             dy_sb, gx, gh, dn, tm)
            else:
                fn_gru_bwd_d(act, ract, u, m, z, inner + (s * B + b0) * 3 * u, hp, dh, dys,
                             dy_sb, gx, gh, dn, tm)
            if s > 0:
                gemm_panels(m, u, 3 * u, pw, gh, 3 * u, utp, <floating>1, dn, u)
        else:
            if floating is float:
                fn_gru1_bwd_a_s(act, u, m, z, hp, dh, dys, dy_sb, gx, dn, tm)
            else:
                fn_gru1_bwd_a_d(act, u, m, z, hp, dh, dys, dy_sb, gx, dn, tm)
            if s > 0:
                # d(r h_prev) = dhh_pre U_h^T into tm (rows of stride u; part a is done with it)
                gemm_panels(m, u, u, pw, gx + 2 * u, 3 * u, uhtp, <floating>0, tm, u)
            if floating is float:
                fn_gru1_bwd_b_s(ract, u, m, z, hp, tm, gx, dn)
            else:
                fn_gru1_bwd_b_d(ract, u, m, z, hp, tm, gx, dn)
            if s > 0:
                gemm_panels(m, u, 2 * u, pw, gx, 3 * u, utp, <floating>1, dn, u)
        swap = dh
        dh = dn
        dn = swap
        s -= 1
    fn_ftz_end(csr)


cdef void _backward(int cell, int act, int ract, Py_ssize_t T, Py_ssize_t B, Py_ssize_t u,
                    Py_ssize_t pw, const floating *gates, const floating *inner,
                    const floating *rhp, const floating *hs, const floating *cs,
                    const floating *dy, Py_ssize_t dy_sb, Py_ssize_t dy_ss,
                    const floating *dh_last, const floating *dc_last, floating *dgx,
                    floating *dgh, floating *dhbuf, floating *dc, floating *tmp,
                    const floating *utp, const floating *uhtp, int nthreads) noexcept nogil:
    cdef Py_ssize_t t
    if nthreads <= 1:
        _backward_rows(cell, act, ract, T, B, u, pw, gates, inner, rhp, hs, cs, dy, dy_sb, dy_ss,
                       dh_last, dc_last, dgx, dgh, dhbuf, dc, tmp, utp, uhtp, 0, B)
        return
    for t in prange(nthreads, num_threads=nthreads, schedule='static'):
        _backward_rows(cell, act, ract, T, B, u, pw, gates, inner, rhp, hs, cs, dy, dy_sb, dy_ss,
                       dh_last, dc_last, dgx, dgh, dhbuf, dc, tmp, utp, uhtp,
                       split_bound(B, t, nthreads, ROW_ALIGN),
                       split_bound(B, t + 1, nthreads, ROW_ALIGN))


def backward(int cell, int act, int ract, cnp.ndarray gates, inner, rhp, cnp.ndarray hs, cs,
             dy, Py_ssize_t dy_sb, Py_ssize_t dy_ss, dh_last, dc_last, cnp.ndarray dgx, dgh,
             cnp.ndarray dhbuf, cnp.ndarray dc, cnp.ndarray tmp, cnp.ndarray utp, uhtp,
             Py_ssize_t pw, int nthreads):
    """Backward through time: dgx (T, B, G u) receives dL/d(input projection) of every step
    (GRU reset_after=True: dgh (T, B, 3u) dL/d(recurrent product + bias)).

    dy: the output gradient of every step, (B, T, u) in processing order, read at element
    strides dy_sb (batch) and dy_ss (step, may be negative), unit stride within a row; None
    when only the last step has one.  dh_last / dc_last (B, u): gradients w.r.t. the final
    h / c (None: zero).  Scratch: dhbuf (2, B, u), dc (B, u), tmp (B, 2u).  utp: panels of
    the recurrent kernel's transpose (reset_after=False: of its first 2u columns; uhtp of the
    last u).  Trusted: the op checked everything."""
    cdef Py_ssize_t T = hs.shape[0], B = hs.shape[1], u = hs.shape[2]
    cdef void *pg = cnp.PyArray_DATA(gates)
    cdef void *pin = _ptr(inner)
    cdef void *prh = _ptr(rhp)
    cdef void *phs = cnp.PyArray_DATA(hs)
    cdef void *pcs = _ptr(cs)
    cdef void *pdy = _ptr(dy)
    cdef void *pdh = _ptr(dh_last)
    cdef void *pdc = _ptr(dc_last)
    cdef void *pgx = cnp.PyArray_DATA(dgx)
    cdef void *pgh = _ptr(dgh)
    cdef void *pbuf = cnp.PyArray_DATA(dhbuf)
    cdef void *pc = cnp.PyArray_DATA(dc)
    cdef void *ptm = cnp.PyArray_DATA(tmp)
    cdef void *put = cnp.PyArray_DATA(utp)
    cdef void *puh = _ptr(uhtp)
    if cnp.PyArray_TYPE(hs) == cnp.NPY_FLOAT32:
        with nogil:
            _backward[float](cell, act, ract, T, B, u, pw, <const float *>pg,
                             <const float *>pin, <const float *>prh, <const float *>phs,
                             <const float *>pcs, <const float *>pdy, dy_sb, dy_ss,
                             <const float *>pdh, <const float *>pdc, <float *>pgx, <float *>pgh,
                             <float *>pbuf, <float *>pc, <float *>ptm, <const float *>put,
                             <const float *>puh, nthreads)
    else:
        with nogil:
            _backward[double](cell, act, ract, T, B, u, pw, <const double *>pg,
                              <const double *>pin, <const double *>prh, <const double *>phs,
                              <const double *>pcs, <const double *>pdy, dy_sb, dy_ss,
                              <const double *>pdh, <const double *>pdc, <double *>pgx,
                              <double *>pgh, <double *>pbuf, <double *>pc, <double *>ptm,
                              <const double *>put, <const double *>puh, nthreads)


# ------------------------------------------------------------------------------ embedding
# Indices arrive as the model's float dtype (a Sequential model casts every batch) or as
# integers when the op is called directly.
ctypedef fused index_t:
    float
    double
    int
    long long


cdef inline bint _bad_index(index_t v, Py_ssize_t limit) noexcept nogil:
    if index_t is float or index_t is double:
        # NaN fails the first test; the cast is defined once v is known to be in range
        return not (v >= 0 and v < limit) or v != <index_t>(<long long>v)
    else:
        return v < 0 or v >= limit


def embedding_first_bad(const index_t[::1] idx, Py_ssize_t limit):
    """Position of the first entry of ``idx`` that is not an integer in [0, limit), or -1."""
    cdef Py_ssize_t p, n = idx.shape[0], bad = -1
    with nogil:
        for p in range(n):
            if _bad_index(idx[p], limit):
                bad = p
                break
    return bad


def embedding_gather(const index_t[::1] idx, const floating[:, ::1] table,
                     floating[:, ::1] out, int nthreads):
    """out[p] = table[idx[p]] for every position p (indices already checked)."""
    cdef Py_ssize_t p, n = idx.shape[0], d = table.shape[1]
    if n == 0 or d == 0:
        return
    cdef const floating *t = &table[0, 0]
    cdef floating *o = &out[0, 0]
    for p in prange(n, nogil=True, num_threads=nthreads, schedule='static'):
        memcpy(o + p * d, t + (<Py_ssize_t>idx[p]) * d, d * sizeof(floating))


cdef void _scatter_cols(const index_t *idx, Py_ssize_t n, const floating *dy, floating *dt,
                        Py_ssize_t d, Py_ssize_t c0, Py_ssize_t c1) noexcept nogil:
    cdef Py_ssize_t p, j, row
    for p in range(n):
        row = <Py_ssize_t>idx[p]
        for j in range(c0, c1):
            dt[row * d + j] += dy[p * d + j]


def embedding_scatter_add(const index_t[::1] idx, const floating[:, ::1] dy,
                          floating[:, ::1] dtable, int nthreads):
    """dtable = 0, then dtable[idx[p]] += dy[p] for every position p in order.  Threads own
    disjoint column ranges (no races, and each entry sums in position order whatever the
    thread count)."""
    cdef Py_ssize_t n = idx.shape[0], d = dtable.shape[1], rows = dtable.shape[0], t
    if rows == 0 or d == 0:
        return
    cdef floating *dt = &dtable[0, 0]
    cdef const floating *g = &dy[0, 0] if n > 0 else NULL
    with nogil:
        memset(dt, 0, rows * d * sizeof(floating))
    if n == 0:
        return
    if nthreads <= 1:
        with nogil:
            _scatter_cols(&idx[0], n, g, dt, d, 0, d)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _scatter_cols(&idx[0], n, g, dt, d, split_bound(d, t, nthreads, 16),
                      split_bound(d, t + 1, nthreads, 16))
