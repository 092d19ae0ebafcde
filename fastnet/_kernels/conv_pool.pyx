# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Weight gradient of a Conv2D whose output went straight into a max pooling.

When a max pooling follows a convolution (and the convolution's input gradient is not needed,
as for a network's first layer), the convolution's output gradient is zero except at each
window's first maximum, where it equals the pooling's output gradient.  Instead of scattering
that gradient into a full-size array (the pooling backward) and reading it back with the ReLU
mask (the convolution backward), this kernel reads the pooled gradient ``g`` (N, QH, QW, Cout)
and the forward's argmax (one byte per element; 255 = no gradient, the ReLU-masked case) and
accumulates, for every pooled position q and window slot j,

    dW[k, :] += patch_j(q)[k] * (g[q, :] where argmax[q, :] == j),   db += g where argmax < 255

where ``patch_j(q)`` is the im2col row of x at the conv output pixel of slot j.  The traffic
drops from about five full-size activation arrays to the pooled gradient and the argmax.

Work is split over pooled rows in ``nparts`` blocks (by default one per thread), each summed
into its own partial (K x Cout and Cout), added in block order: bitwise reproducible for a given
thread count, and for any thread count with a fixed nparts (``fastnet.config.deterministic``).
Trusts its arguments: ``fastnet.ops.conv.conv2d_backward_weight_pooled`` validated them.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

cdef extern from *:
    r"""
    #include <stddef.h>
    #include <string.h>
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) \
        && defined(__linux__) && !defined(FN_NO_TARGET_CLONES)
    #  define FN_CP_CLONES \
           __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #  define FN_CP_CLONES
    #endif

    typedef struct {
        ptrdiff_t n, h, w, cin;            /* conv input x */
        ptrdiff_t kh, kw, sh, sw, pt, pl;  /* conv kernel, strides, padding before */
        ptrdiff_t oh, ow;                  /* conv output = pooling input */
        ptrdiff_t ph, pw, psh, psw, ppt, ppl;  /* pooling window, strides, padding before */
        ptrdiff_t qh, qw, cout;            /* pooling output */
    } fn_cp_geom;

    #define FN_CP_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
    #pragma GCC diagnostic ignored "-Wpsabi"

    /* One block: channels [c0, c0 + nl) (nl <= NV * VL: NV 64-byte vectors) and im2col
     * columns [k0, k0 + KB) of the weight gradient, summed over pooled rows [r0, r1) in
     * KB * NV vector registers, then stored into dw (kh*kw*cin x cout).  tab: per im2col
     * column k, its offset in x from the patch origin and its (ki, kj) for the border test. */
    #define FN_CP_BLOCK(T, IT, S, KB, NV)                                                        \
    static inline __attribute__((always_inline)) void                                            \
    fn_cp_block##KB##_##NV##_##S(const fn_cp_geom *p, const T *restrict x, const T *restrict g,  \
                                 const unsigned char *restrict am, ptrdiff_t r0, ptrdiff_t r1,   \
                                 ptrdiff_t c0, ptrdiff_t nl, ptrdiff_t k0,                       \
                                 const ptrdiff_t *restrict tab, T *restrict dw)                  \
    {                                                                                            \
        typedef T V __attribute__((vector_size(64)));                                            \
        typedef IT I __attribute__((vector_size(64)));                                           \
        typedef unsigned char B __attribute__((vector_size(64 / sizeof(T))));                  \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t c = p->cout, nslots = p->ph * p->pw;                                     \
        V acc[KB][NV];                                                                           \
        ptrdiff_t off[KB];                                                                       \
        for (int t = 0; t < KB; ++t) {                                                           \
            off[t] = tab[3 * (k0 + t)];                                                          \
            for (int v = 0; v < NV; ++v) acc[t][v] = (V){0};                                     \
        }                                                                                        \
        for (ptrdiff_t r = r0; r < r1; ++r) {                                                    \
            const ptrdiff_t n = r / p->qh, qi = r - n * p->qh;                                   \
            for (ptrdiff_t qj = 0; qj < p->qw; ++qj) {                                           \
                const ptrdiff_t q = (r * p->qw + qj) * c + c0;                                   \
                V gv[NV];                                                                        \
                I av[NV];                                                                        \
                if (nl == NV * VL) {                                                             \
                    for (int v = 0; v < NV; ++v) {                                               \
                        gv[v] = FN_CP_LD(V, g + q + v * VL);                                     \
                        av[v] = __builtin_convertvector(FN_CP_LD(B, am + q + v * VL), I);       \
                    }                                                                            \
                } else {                                                                         \
                    T gt[NV * VL];                                                               \
                    unsigned char at[NV * VL];                                                   \
                    memset(gt, 0, sizeof gt);                                                    \
                    memset(at, 255, sizeof at);                                                  \
                    memcpy(gt, g + q, (size_t)nl * sizeof(T));                                   \
                    memcpy(at, am + q, (size_t)nl);                                              \
                    for (int v = 0; v < NV; ++v) {                                               \
                        gv[v] = FN_CP_LD(V, gt + v * VL);                                        \
                        av[v] = __builtin_convertvector(FN_CP_LD(B, at + v * VL), I);           \
                    }                                                                            \
                }                                                                                \
                for (ptrdiff_t j = 0, jh = 0, jw = 0; j < nslots;                                \
                     ++j, jw = jw + 1 == p->pw ? 0 : jw + 1, jh += jw == 0) {                    \
                    const ptrdiff_t oh = qi * p->psh - p->ppt + jh;                              \
                    const ptrdiff_t ow = qj * p->psw - p->ppl + jw;                              \
                    if (oh < 0 || oh >= p->oh || ow < 0 || ow >= p->ow) continue;              \
                    V gj[NV];                                                                    \
                    for (int v = 0; v < NV; ++v)                                                 \
                        gj[v] = (V)((I)gv[v] & (av[v] == (IT)j));                                \
                    const ptrdiff_t ih0 = oh * p->sh - p->pt, iw0 = ow * p->sw - p->pl;          \
                    const T *restrict xo = x + ((n * p->h + ih0) * p->w + iw0) * p->cin;         \
                    if (ih0 >= 0 && iw0 >= 0 && ih0 + p->kh <= p->h && iw0 + p->kw <= p->w) {   \
                        _Pragma("GCC unroll 16")                                                 \
                        for (int t = 0; t < KB; ++t) {                                           \
                            const T xv = xo[off[t]];                                             \
                            for (int v = 0; v < NV; ++v) acc[t][v] += xv * gj[v];                \
                        }                                                                        \
                    } else {   /* a border patch: taps in the zero padding add nothing */       \
                        _Pragma("GCC unroll 16")                                                 \
                        for (int t = 0; t < KB; ++t) {                                           \
                            const ptrdiff_t ih = ih0 + tab[3 * (k0 + t) + 1];                    \
                            const ptrdiff_t iw = iw0 + tab[3 * (k0 + t) + 2];                    \
                            const T xv = ih >= 0 && ih < p->h && iw >= 0 && iw < p->w            \
                                ? xo[off[t]] : (T)0;                                             \
                            for (int v = 0; v < NV; ++v) acc[t][v] += xv * gj[v];                \
                        }                                                                        \
                    }                                                                            \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (int t = 0; t < KB; ++t) {                                                           \
            T tmp[NV * VL];                                                                      \
            memcpy(tmp, acc[t], sizeof tmp);                                                     \
            memcpy(dw + (k0 + t) * c + c0, tmp, (size_t)nl * sizeof(T));                         \
        }                                                                                        \
    }

    #define FN_CP_BLOCKS(T, IT, S, NV)                                                           \
    FN_CP_BLOCK(T, IT, S, 1, NV) FN_CP_BLOCK(T, IT, S, 2, NV) FN_CP_BLOCK(T, IT, S, 3, NV)       \
    FN_CP_BLOCK(T, IT, S, 4, NV) FN_CP_BLOCK(T, IT, S, 5, NV) FN_CP_BLOCK(T, IT, S, 6, NV)       \
    FN_CP_BLOCK(T, IT, S, 7, NV) FN_CP_BLOCK(T, IT, S, 8, NV) FN_CP_BLOCK(T, IT, S, 9, NV)
    #define FN_CP_CASE(S, KB, NV)                                                                \
        case KB: fn_cp_block##KB##_##NV##_##S(p, x, g, am, r0, r1, c0, nl, k0, tab, dw); break;
    #define FN_CP_SWITCH(S, NV)                                                                  \
        switch (kb) {                                                                            \
            FN_CP_CASE(S, 1, NV) FN_CP_CASE(S, 2, NV) FN_CP_CASE(S, 3, NV)                       \
            FN_CP_CASE(S, 4, NV) FN_CP_CASE(S, 5, NV) FN_CP_CASE(S, 6, NV)                       \
            FN_CP_CASE(S, 7, NV) FN_CP_CASE(S, 8, NV) default: FN_CP_CASE(S, 9, NV)              \
        }

    #define FN_CP_DEFINE(T, IT, S)                                                               \
    FN_CP_BLOCKS(T, IT, S, 1) FN_CP_BLOCKS(T, IT, S, 2)                                          \
    /* Pooled rows [r0, r1) into dw (kh*kw*cin x cout) and db (cout, added to).  Channels in   \
     * pairs of vectors (one for an odd last one), im2col columns in near-equal chunks of at   \
     * most 9: at most 18 accumulator registers. */                                            \
    FN_CP_CLONES static void fn_cp_rows_##S(const fn_cp_geom *p, const T *restrict x,            \
                                            const T *restrict g, const unsigned char *restrict am,\
                                            ptrdiff_t r0, ptrdiff_t r1, const ptrdiff_t *tab,    \
                                            T *restrict dw, T *restrict db)                      \
    {                                                                                            \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t c = p->cout, k = p->kh * p->kw * p->cin;                                 \
        const ptrdiff_t nchunks = (k + 8) / 9;                                                   \
        for (ptrdiff_t c0 = 0; c0 < c; c0 += 2 * VL) {                                           \
            const ptrdiff_t nl = c - c0 < 2 * VL ? c - c0 : 2 * VL;                              \
            for (ptrdiff_t ch = 0; ch < nchunks; ++ch) {                                         \
                const ptrdiff_t k0 = k * ch / nchunks, kb = k * (ch + 1) / nchunks - k0;         \
                if (nl > VL) {                                                                   \
                    FN_CP_SWITCH(S, 2)                                                           \
                } else {                                                                         \
                    FN_CP_SWITCH(S, 1)                                                           \
                }                                                                                \
            }                                                                                    \
        }                                                                                        \
        for (ptrdiff_t r = r0; r < r1; ++r)                                                      \
            for (ptrdiff_t qj = 0; qj < p->qw; ++qj) {                                           \
                const T *restrict gq = g + (r * p->qw + qj) * c;                                 \
                const unsigned char *restrict aq = am + (r * p->qw + qj) * c;                    \
                for (ptrdiff_t i = 0; i < c; ++i) db[i] += aq[i] != 255 ? gq[i] : (T)0;        \
            }                                                                                    \
    }
    FN_CP_DEFINE(float, int, s)
    FN_CP_DEFINE(double, long long, d)
    """
    ctypedef struct fn_cp_geom:
        Py_ssize_t n, h, w, cin, kh, kw, sh, sw, pt, pl, oh, ow, ph, pw, psh, psw, ppt, ppl
        Py_ssize_t qh, qw, cout
    void fn_cp_rows_s(const fn_cp_geom *p, const float *x, const float *g,
                      const unsigned char *am, Py_ssize_t r0, Py_ssize_t r1,
                      const Py_ssize_t *tab, float *dw, float *db) nogil
    void fn_cp_rows_d(const fn_cp_geom *p, const double *x, const double *g,
                      const unsigned char *am, Py_ssize_t r0, Py_ssize_t r1,
                      const Py_ssize_t *tab, double *dw, double *db) nogil


cdef inline void _rows(const fn_cp_geom *p, const floating *x, const floating *g,
                       const unsigned char *am, Py_ssize_t r0, Py_ssize_t r1,
                       const Py_ssize_t *tab, floating *dw, floating *db) noexcept nogil:
    if floating is float:
        fn_cp_rows_s(p, x, g, am, r0, r1, tab, dw, db)
    else:
        fn_cp_rows_d(p, x, g, am, r0, r1, tab, dw, db)


_tap_tables = {}


def _tap_table(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t cin, Py_ssize_t w):
    """Per im2col column k = (ki * kw + kj) * cin + ci: its offset in x from the patch's
    top-left element, ki and kj (flattened, 3 per column).  Built once per geometry: a training
    step makes no Python allocation here."""
    key = (kh, kw, cin, w)
    tab = _tap_tables.get(key)
    if tab is None:
        import numpy as np
        k = np.arange(kh * kw * cin, dtype=np.intp)
        ki, kj, ci = k // (kw * cin), k // cin % kw, k % cin
        tab = np.stack([(ki * w + kj) * cin + ci, ki, kj], axis=1).ravel()
        if len(_tap_tables) > 64:   # many geometries (a shape sweep): start over
            _tap_tables.clear()
        _tap_tables[key] = tab
    return tab


def conv_pool_backward_weight(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] g,
                              const unsigned char[:, :, :, ::1] argmax, floating[:, ::1] dw,
                              floating[::1] db, tuple conv, tuple pool, Py_ssize_t oh,
                              Py_ssize_t ow, floating[:, ::1] partials, int nthreads,
                              int nparts=0):
    """dw (K, Cout) = the conv weight gradient, db (Cout,) or None the bias gradient, from the
    pooled gradient g (N, QH, QW, Cout) and the max pooling's argmax.  conv = (kh, kw, sh, sw,
    pt, pl); pool = (ph, pw, psh, psw, ppt, ppl); (oh, ow) the conv output size.  partials:
    (nparts, >= K * Cout + Cout) per-block scratch; nparts <= 0: one block per thread."""
    if nparts <= 0:
        nparts = nthreads
    cdef fn_cp_geom p
    p.n, p.h, p.w, p.cin = x.shape[0], x.shape[1], x.shape[2], x.shape[3]
    p.kh, p.kw, p.sh, p.sw, p.pt, p.pl = conv
    p.oh, p.ow = oh, ow
    p.ph, p.pw, p.psh, p.psw, p.ppt, p.ppl = pool
    p.qh, p.qw, p.cout = g.shape[1], g.shape[2], g.shape[3]
    cdef Py_ssize_t kc = dw.shape[0] * p.cout, c = p.cout, k = dw.shape[0]
    cdef Py_ssize_t rows = p.n * p.qh, t, r0, r1, i
    cdef floating *part = &partials[0, 0]
    cdef Py_ssize_t stride = partials.shape[1]
    cdef floating *base
    cdef Py_ssize_t[::1] tab = _tap_table(p.kh, p.kw, p.cin, p.w)
    with nogil:
        for t in prange(nparts, num_threads=nthreads, schedule='static', chunksize=1):
            base = part + t * stride
            memset(base, 0, (kc + c) * sizeof(floating))
            r0 = rows * t // nparts
            r1 = rows * (t + 1) // nparts
            _rows(&p, &x[0, 0, 0, 0], &g[0, 0, 0, 0], &argmax[0, 0, 0, 0], r0, r1, &tab[0],
                  base, base + kc)
        # block order: reproducible for a given nparts
        for i in prange(kc, num_threads=nthreads, schedule='static'):
            dw[i // c, i % c] = part[i]
            for t in range(1, nparts):
                dw[i // c, i % c] += part[t * stride + i]
        if db is not None:
            for i in range(c):
                db[i] = part[kc + i]
                for t in range(1, nparts):
                    db[i] += part[t * stride + kc + i]
