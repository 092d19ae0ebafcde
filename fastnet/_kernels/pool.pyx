# cython: language_level=3
"""2-D max and average pooling kernels on NHWC tensors.

Design
------
Channels are the contiguous axis, so every inner loop runs over C and vectorizes; a window is
walked element by element (row-major), each step a C-long vector op.  Windows are clipped to the
input: padded positions are never read ('same' max pooling ignores them, 'same' average pooling
divides by the number of real elements, as TensorFlow does).

Forward: prange over output rows (n, oh).

Backward: dx is accumulated, because windows may overlap.  When the vertical stride is at least
the window height (``sh >= ph``, the usual 2x2/2), windows of different output rows touch
disjoint input rows: output row oh *owns* the input rows from its window's top to the next
window's top (the first row owns from 0, the last to H), zeroes them and scatters into them, all
in the same pass and without races.  When the windows do not overlap at all (``sw >= pw`` too),
the gradient is stored rather than added and only the elements no window covers are zeroed, so dx
is written once.  Otherwise (``sh < ph``) the work is split by whole images, or, with fewer
images than threads, by blocks of output rows in two colours (even blocks, then odd ones).  The
order of the additions then depends on that choice and on the number of blocks, both taken from
``nparts`` (by default the thread count; a number fixed by the shape in
``fastnet.config.deterministic`` mode, for results independent of the thread count).

Max backward sends each gradient to the first maximum of its window in row-major order, like
TensorFlow: a per-thread ``pending`` vector starts as dy and is handed over (then zeroed) at the
first window element equal to the forward output y, branch-free so it vectorizes.  Or, cheaper,
from the forward's ``argmax``: one byte per output (the offset i * pw + j of the first maximum),
so the backward reads 1 byte instead of x's window and y's value: for the 2x2 pool on the MNIST
CNN's 26x26x32 maps that halves its memory traffic.  The forward keeps the running maximum and
index in vector registers (GCC vector types of 64 bytes: one zmm, two ymm or four xmm by clone).

All functions trust their arguments: ``fastnet.ops.pool`` validated them.
"""
from cython cimport floating
from cython.parallel cimport prange, threadid
from libc.string cimport memset

# The per-row loops are C compiled for AVX-512, AVX2 and baseline x86-64 and picked by the loader
# for the CPU (GCC target_clones), since the build itself uses no -m flags.  Every inner loop
# runs over the C contiguous channels and is branch-free, so it vectorizes.
cdef extern from *:
    r"""
    #include <stddef.h>
    #include <stdint.h>
    #include <string.h>
    /* FASTNET_CFLAGS=-DFN_NO_TARGET_CLONES builds the baseline code only (to test it). */
    #if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) \
        && defined(__linux__) && !defined(FN_NO_TARGET_CLONES)
    #  define FN_CLONES \
           __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #  define FN_CLONES
    #endif

    typedef struct {
        ptrdiff_t n, h, w, c;         /* input */
        ptrdiff_t oh, ow;             /* output */
        ptrdiff_t ph, pw, sh, sw;     /* window and strides */
        ptrdiff_t pt, pl;             /* padding before (top, left) */
    } fn_pool_geom;

    /* The window of output row r, pixel ow, clipped to the input: rows [ilo, ihi) and columns
     * [jlo, jhi) relative to (ih0, iw0). */
    #define FN_POOL_WINDOW_ROWS(p, oh)                                                           \
        const ptrdiff_t ih0 = (oh) * (p)->sh - (p)->pt;                                          \
        const ptrdiff_t ilo = ih0 < 0 ? -ih0 : 0;                                                \
        const ptrdiff_t ihi = (p)->ph < (p)->h - ih0 ? (p)->ph : (p)->h - ih0;
    #define FN_POOL_WINDOW_COLS(p, ow)                                                           \
        const ptrdiff_t iw0 = (ow) * (p)->sw - (p)->pl;                                          \
        const ptrdiff_t jlo = iw0 < 0 ? -iw0 : 0;                                                \
        const ptrdiff_t jhi = (p)->pw < (p)->w - iw0 ? (p)->pw : (p)->w - iw0;

    #define FN_POOL_LD(V, p) ({ V v_; memcpy(&v_, (p), sizeof v_); v_; })
    #define FN_POOL_ST(p, v) do { __typeof__(v) v_ = (v); memcpy((p), &v_, sizeof v_); } while (0)
    #pragma GCC diagnostic ignored "-Wpsabi"

    /* Vectors of 64 bytes (one zmm, two ymm or four xmm, by clone): V of T, I its same-width
     * integers (compare masks, the running argmax), B one byte per lane. */
    #define FN_POOL_DEFINE(T, IT, S)                                                             \
    typedef T fn_pool_v##S __attribute__((vector_size(64)));                                    \
    typedef IT fn_pool_i##S __attribute__((vector_size(64)));                                   \
    typedef unsigned char fn_pool_b##S __attribute__((vector_size(64 / sizeof(T))));           \
                                                                                                 \
    /* y row r = max (or mean) of each window of x.  am (max only, may be NULL): the window    \
     * offset i * pw + j of each channel's first maximum, row-major, as one byte; with        \
     * relu_input, 255 (no element) where the maximum is not positive.  Whole vectors of      \
     * channels first (the running maximum and index in registers), then the remaining       \
     * channels one by one. */                                                               \
    FN_CLONES static void fn_pool_row_##S(const T *restrict x, T *restrict y,                    \
                                          unsigned char *restrict am, const fn_pool_geom *p,     \
                                          ptrdiff_t r, int average, int relu_input)              \
    {                                                                                            \
        typedef fn_pool_v##S V;                                                                  \
        typedef fn_pool_i##S I;                                                                  \
        typedef fn_pool_b##S B;                                                                  \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t n = r / p->oh, oh = r - n * p->oh, c = p->c, cv = c - c % VL;            \
        FN_POOL_WINDOW_ROWS(p, oh)                                                               \
        const T *xn = x + (n * p->h + ih0) * p->w * c;                                           \
        for (ptrdiff_t ow = 0; ow < p->ow; ++ow) {                                               \
            FN_POOL_WINDOW_COLS(p, ow)                                                           \
            T *restrict yp = y + (r * p->ow + ow) * c;                                           \
            unsigned char *restrict ap = am ? am + (r * p->ow + ow) * c : NULL;                  \
            const T *first = xn + (ilo * p->w + iw0 + jlo) * c;                                 \
            const T scale = (T)1 / (T)((ihi - ilo) * (jhi - jlo));                               \
            const IT e0 = (IT)(ilo * p->pw + jlo);                                               \
            for (ptrdiff_t k = 0; k < cv; k += VL) {                                             \
                V best = FN_POOL_LD(V, first + k);                                               \
                I idx = (I){0} + e0;                                                             \
                for (ptrdiff_t i = ilo; i < ihi; ++i)                                            \
                    for (ptrdiff_t j = jlo; j < jhi; ++j) {                                      \
                        if (i == ilo && j == jlo) continue;                                      \
                        const V v = FN_POOL_LD(V, xn + (i * p->w + iw0 + j) * c + k);            \
                        if (average) {                                                           \
                            best += v;                                                           \
                        } else {                                                                 \
                            const I gt = v > best;                                               \
                            best = (V)(((I)v & gt) | ((I)best & ~gt));                           \
                            if (ap) idx = (((I){0} + (IT)(i * p->pw + j)) & gt) | (idx & ~gt);  \
                        }                                                                        \
                    }                                                                            \
                FN_POOL_ST(yp + k, average ? best * scale : best);                               \
                if (ap && relu_input) {                                                          \
                    const I pos = best > (V){0};                                                 \
                    idx = (idx & pos) | (((I){0} + 255) & ~pos);                                 \
                }                                                                                \
                if (ap) FN_POOL_ST(ap + k, __builtin_convertvector(idx, B));                     \
            }                                                                                    \
            for (ptrdiff_t k = cv; k < c; ++k) {                                                 \
                T best = first[k];                                                               \
                unsigned char idx = (unsigned char)e0;                                           \
                for (ptrdiff_t i = ilo; i < ihi; ++i)                                            \
                    for (ptrdiff_t j = jlo; j < jhi; ++j) {                                      \
                        if (i == ilo && j == jlo) continue;                                      \
                        const T v = xn[(i * p->w + iw0 + j) * c + k];                            \
                        if (average) {                                                           \
                            best += v;                                                           \
                        } else if (v > best) {                                                   \
                            best = v;                                                            \
                            idx = (unsigned char)(i * p->pw + j);                                \
                        }                                                                        \
                    }                                                                            \
                yp[k] = average ? best * scale : best;                                           \
                if (ap) ap[k] = relu_input && !(best > (T)0) ? (unsigned char)255 : idx;         \
            }                                                                                    \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* dx (+)= the gradient of output row (n, oh).  Max: each channel's gradient goes to the   \
     * first element of its window equal to y; ``pending`` (c scratch) holds what is still to   \
     * be handed out.  Average: spread evenly over the window's real elements.  store: windows   \
     * do not overlap (sh >= ph, sw >= pw), so dx is written instead of accumulated, and the    \
     * columns of the window rows that no window covers are zeroed here (the caller zeroes the  \
     * rows no window covers); otherwise dx must be zeroed beforehand. */                        \
    FN_CLONES static void fn_pool_backward_row_##S(const T *restrict x, const T *restrict y,     \
                                                   const unsigned char *restrict am,             \
                                                   const T *restrict dy, T *restrict dx,         \
                                                   const fn_pool_geom *p, ptrdiff_t n,           \
                                                   ptrdiff_t oh, int average, int store,         \
                                                   T *restrict pending)                          \
    {                                                                                            \
        const ptrdiff_t r = n * p->oh + oh, c = p->c;                                            \
        FN_POOL_WINDOW_ROWS(p, oh)                                                               \
        const ptrdiff_t base = (n * p->h + ih0) * p->w * c;                                      \
        for (ptrdiff_t ow = 0; ow < p->ow; ++ow) {                                               \
            FN_POOL_WINDOW_COLS(p, ow)                                                           \
            const ptrdiff_t o = (r * p->ow + ow) * c;                                            \
            if (store) {                                                                         \
                ptrdiff_t gap = ow == 0 ? 0 : (ow - 1) * p->sw - p->pl + p->pw;                  \
                gap = gap < 0 ? 0 : gap;                                                         \
                for (ptrdiff_t i = ilo; i < ihi; ++i) {                                          \
                    T *dxr = dx + base + i * p->w * c;                                           \
                    if (iw0 + jlo > gap)                                                         \
                        memset(dxr + gap * c, 0, (size_t)((iw0 + jlo - gap) * c) * sizeof(T));   \
                    if (ow == p->ow - 1 && iw0 + jhi < p->w)                                     \
                        memset(dxr + (iw0 + jhi) * c, 0,                                         \
                               (size_t)((p->w - iw0 - jhi) * c) * sizeof(T));                    \
                }                                                                                \
            }                                                                                    \
            if (average) {                                                                       \
                const T scale = (T)1 / (T)((ihi - ilo) * (jhi - jlo));                           \
                for (ptrdiff_t k = 0; k < c; ++k) pending[k] = dy[o + k] * scale;                \
                for (ptrdiff_t i = ilo; i < ihi; ++i)                                            \
                    for (ptrdiff_t j = jlo; j < jhi; ++j) {                                      \
                        T *dxp = dx + base + (i * p->w + iw0 + j) * c;                           \
                        if (store)                                                               \
                            for (ptrdiff_t k = 0; k < c; ++k) dxp[k] = pending[k];               \
                        else                                                                     \
                            for (ptrdiff_t k = 0; k < c; ++k) dxp[k] += pending[k];              \
                    }                                                                            \
                continue;                                                                        \
            }                                                                                    \
            for (ptrdiff_t k = 0; k < c; ++k) pending[k] = dy[o + k];                            \
            for (ptrdiff_t i = ilo; i < ihi; ++i)                                                \
                for (ptrdiff_t j = jlo; j < jhi; ++j) {                                          \
                    const ptrdiff_t e = base + (i * p->w + iw0 + j) * c;                         \
                    if (store)                                                                   \
                        for (ptrdiff_t k = 0; k < c; ++k) {                                      \
                            const int hit = x[e + k] == y[o + k];                                \
                            dx[e + k] = hit ? pending[k] : (T)0;                                 \
                            pending[k] = hit ? (T)0 : pending[k];                                \
                        }                                                                        \
                    else                                                                         \
                        for (ptrdiff_t k = 0; k < c; ++k) {                                      \
                            const int hit = x[e + k] == y[o + k];                                \
                            dx[e + k] += hit ? pending[k] : (T)0;                                \
                            pending[k] = hit ? (T)0 : pending[k];                                \
                        }                                                                        \
                }                                                                                \
        }                                                                                        \
    }                                                                                            \
                                                                                                 \
    /* dx (+)= the max-pool gradient of output row (n, oh) from the forward's argmax: one byte  \
     * per output channel is read instead of x and y.  Window rows outermost, so each input   \
     * row is written as a few contiguous runs; store: as in fn_pool_backward_row. */           \
    FN_CLONES static void fn_pool_backward_argmax_row_##S(const unsigned char *restrict am,     \
                                                          const T *restrict dy,                 \
                                                          T *restrict dx,                       \
                                                          const fn_pool_geom *p, ptrdiff_t n,   \
                                                          ptrdiff_t oh, int store)              \
    {                                                                                            \
        typedef fn_pool_v##S V;                                                                  \
        typedef fn_pool_i##S I;                                                                  \
        enum { VL = 64 / sizeof(T) };                                                            \
        const ptrdiff_t r = n * p->oh + oh, c = p->c, cv = c - c % VL;                           \
        FN_POOL_WINDOW_ROWS(p, oh)                                                               \
        for (ptrdiff_t i = ilo; i < ihi; ++i) {                                                  \
            T *dxr = dx + (n * p->h + ih0 + i) * p->w * c;                                       \
            ptrdiff_t done = 0;     /* store: columns written so far (the gaps get zeros) */     \
            for (ptrdiff_t ow = 0; ow < p->ow; ++ow) {                                           \
                FN_POOL_WINDOW_COLS(p, ow)                                                       \
                const unsigned char *a = am + (r * p->ow + ow) * c;                              \
                const T *g = dy + (r * p->ow + ow) * c;                                          \
                if (store && iw0 + jlo > done)                                                   \
                    memset(dxr + done * c, 0, (size_t)((iw0 + jlo - done) * c) * sizeof(T));     \
                for (ptrdiff_t j = jlo; j < jhi; ++j) {                                          \
                    T *d = dxr + (iw0 + j) * c;                                                  \
                    const IT e = (IT)(i * p->pw + j);                                            \
                    if (store) {                                                                 \
                        for (ptrdiff_t k = 0; k < cv; k += VL) {                                 \
                            I idx;      /* a lane loop: GCC widens bytes poorly otherwise */    \
                            for (int l = 0; l < VL; ++l) idx[l] = a[k + l];                      \
                            FN_POOL_ST(d + k, (V)((I)FN_POOL_LD(V, g + k) & (idx == e)));        \
                        }                                                                        \
                    } else {                                                                     \
                        for (ptrdiff_t k = 0; k < cv; k += VL) {                                 \
                            I idx;                                                               \
                            for (int l = 0; l < VL; ++l) idx[l] = a[k + l];                      \
                            const V v = (V)((I)FN_POOL_LD(V, g + k) & (idx == e));               \
                            FN_POOL_ST(d + k, FN_POOL_LD(V, d + k) + v);                         \
                        }                                                                        \
                    }                                                                            \
                    for (ptrdiff_t k = cv; k < c; ++k) {                                         \
                        const T v = a[k] == e ? g[k] : (T)0;                                     \
                        d[k] = store ? v : d[k] + v;                                             \
                    }                                                                            \
                }                                                                                \
                done = iw0 + jhi;                                                                \
            }                                                                                    \
            if (store && done < p->w)                                                            \
                memset(dxr + done * c, 0, (size_t)((p->w - done) * c) * sizeof(T));              \
        }                                                                                        \
    }


    FN_POOL_DEFINE(float, int32_t, s)
    FN_POOL_DEFINE(double, int64_t, d)
    """
    ctypedef struct fn_pool_geom:
        Py_ssize_t n, h, w, c, oh, ow, ph, pw, sh, sw, pt, pl
    void fn_pool_row_s(const float *x, float *y, unsigned char *am, const fn_pool_geom *p,
                       Py_ssize_t r, int average, int relu_input) nogil
    void fn_pool_row_d(const double *x, double *y, unsigned char *am, const fn_pool_geom *p,
                       Py_ssize_t r, int average, int relu_input) nogil
    void fn_pool_backward_argmax_row_s(const unsigned char *am, const float *dy, float *dx,
                                       const fn_pool_geom *p, Py_ssize_t n, Py_ssize_t oh,
                                       int store) nogil
    void fn_pool_backward_argmax_row_d(const unsigned char *am, const double *dy, double *dx,
                                       const fn_pool_geom *p, Py_ssize_t n, Py_ssize_t oh,
                                       int store) nogil
    void fn_pool_backward_row_s(const float *x, const float *y, const unsigned char *am,
                                const float *dy, float *dx, const fn_pool_geom *p, Py_ssize_t n,
                                Py_ssize_t oh, int average, int store, float *pending) nogil
    void fn_pool_backward_row_d(const double *x, const double *y, const unsigned char *am,
                                const double *dy, double *dx, const fn_pool_geom *p,
                                Py_ssize_t n, Py_ssize_t oh, int average, int store,
                                double *pending) nogil

ctypedef fn_pool_geom Pool


cdef Pool _pool(const Py_ssize_t *xshape, const Py_ssize_t *yshape, Py_ssize_t ph, Py_ssize_t pw,
                Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt, Py_ssize_t pl):
    cdef Pool p
    p.n, p.h, p.w, p.c = xshape[0], xshape[1], xshape[2], xshape[3]
    p.oh, p.ow = yshape[1], yshape[2]
    p.ph, p.pw, p.sh, p.sw, p.pt, p.pl = ph, pw, sh, sw, pt, pl
    return p


cdef inline Py_ssize_t imin(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t imax(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a > b else b


cdef inline void owned_rows(const Pool *p, Py_ssize_t oh, Py_ssize_t *lo,
                            Py_ssize_t *hi) noexcept nogil:
    """Input rows [lo, hi) that output row oh zeroes and writes in the row-parallel backward."""
    lo[0] = 0 if oh == 0 else oh * p.sh - p.pt
    hi[0] = p.h if oh == p.oh - 1 else (oh + 1) * p.sh - p.pt


cdef inline void pool_row(const floating *x, floating *y, unsigned char *am, const Pool *p,
                          Py_ssize_t r, bint average, bint relu_input) noexcept nogil:
    if floating is float:
        fn_pool_row_s(x, y, am, p, r, average, relu_input)
    else:
        fn_pool_row_d(x, y, am, p, r, average, relu_input)


cdef inline void backward_rows(const floating *x, const floating *y, const unsigned char *am,
                               const floating *dy, floating *dx, const Pool *p, Py_ssize_t n,
                               Py_ssize_t oh, bint average, bint store,
                               floating *pending) noexcept nogil:
    if am != NULL:
        if floating is float:
            fn_pool_backward_argmax_row_s(am, dy, dx, p, n, oh, store)
        else:
            fn_pool_backward_argmax_row_d(am, dy, dx, p, n, oh, store)
    elif floating is float:
        fn_pool_backward_row_s(x, y, am, dy, dx, p, n, oh, average, store, pending)
    else:
        fn_pool_backward_row_d(x, y, am, dy, dx, p, n, oh, average, store, pending)


def pool2d_forward(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, bint average,
                   Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw, Py_ssize_t pt,
                   Py_ssize_t pl, int nthreads, unsigned char[:, :, :, ::1] argmax=None,
                   bint relu_input=False):
    """y = max (or mean) of every window of x; windows clipped to the input.  ``argmax`` (max
    pooling, may be None; ph * pw <= 256): each channel's first maximum as i * pw + j, or 255
    where the maximum is not positive when ``relu_input`` (ph * pw <= 255)."""
    cdef Pool p = _pool(x.shape, y.shape, ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t r
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    cdef unsigned char *pam = &argmax[0, 0, 0, 0] if argmax is not None else NULL
    with nogil:
        for r in prange(p.n * p.oh, num_threads=nthreads, schedule='static'):
            pool_row(px, py, pam, &p, r, average, relu_input)


# --------------------------------------------------------------------------------- backward
cdef void backward_row(const floating *x, const floating *y, const unsigned char *am,
                       const floating *dy, floating *dx, const Pool *p, bint average,
                       Py_ssize_t r, floating *pending) noexcept nogil:
    """Row-parallel backward (sh >= ph): output row r zeroes the input rows it owns and then
    accumulates into them; when the windows do not overlap in width either, it zeroes only the
    rows its windows miss and stores the rest (one pass over dx instead of two)."""
    cdef Py_ssize_t n = r // p.oh, oh = r - n * p.oh, lo, hi, top, bottom
    cdef Py_ssize_t row = p.w * p.c
    cdef bint store = p.sw >= p.pw
    owned_rows(p, oh, &lo, &hi)
    if store:
        top = imax(oh * p.sh - p.pt, 0)                   # the window rows: [top, bottom)
        bottom = imin(oh * p.sh - p.pt + p.ph, p.h)
        memset(dx + (n * p.h + lo) * row, 0, (top - lo) * row * sizeof(floating))
        memset(dx + (n * p.h + bottom) * row, 0, (hi - bottom) * row * sizeof(floating))
    else:
        memset(dx + (n * p.h + lo) * row, 0, (hi - lo) * row * sizeof(floating))
    backward_rows(x, y, am, dy, dx, p, n, oh, average, store, pending)


cdef void backward_image(const floating *x, const floating *y, const unsigned char *am,
                         const floating *dy, floating *dx, const Pool *p, bint average,
                         Py_ssize_t n, floating *pending) noexcept nogil:
    """Image-parallel backward (overlapping rows of windows): zero image n, then scatter."""
    cdef Py_ssize_t oh
    memset(dx + n * p.h * p.w * p.c, 0, p.h * p.w * p.c * sizeof(floating))
    for oh in range(p.oh):
        backward_rows(x, y, am, dy, dx, p, n, oh, average, False, pending)


cdef void backward(const floating *x, const floating *y, const unsigned char *am,
                   const floating *dy, floating *dx, const Pool *p, bint average,
                   floating *pending, Py_ssize_t stride, int nthreads,
                   int nparts) noexcept nogil:
    cdef Py_ssize_t r, n, b, colour, oh, nb, reach
    if p.sh >= p.ph:
        for r in prange(p.n * p.oh, num_threads=nthreads, schedule='static'):
            backward_row(x, y, am, dy, dx, p, average, r, pending + threadid() * stride)
        return
    # Overlapping rows of windows.  Enough images: whole images per thread.  Fewer images than
    # threads: each image's output rows in nb blocks, the even blocks in parallel, then the odd
    # ones; a block of at least ceil(ph / sh) - 1 rows keeps same-colour blocks' windows apart,
    # and the fixed colour order keeps the sums reproducible.
    reach = (p.ph + p.sh - 1) // p.sh - 1
    nb = imin(2 * nparts, p.oh // imax(reach, 1))
    if p.n >= nparts or nb < 4:
        for n in prange(p.n, num_threads=nthreads, schedule='static'):
            backward_image(x, y, am, dy, dx, p, average, n, pending + threadid() * stride)
        return
    for n in range(p.n):
        for r in prange(p.h, num_threads=nthreads, schedule='static'):
            memset(dx + (n * p.h + r) * p.w * p.c, 0, p.w * p.c * sizeof(floating))
        for colour in range(2):
            for b in prange(colour, nb, 2, num_threads=nthreads, schedule='static'):
                for oh in range(p.oh * b // nb, p.oh * (b + 1) // nb):
                    backward_rows(x, y, am, dy, dx, p, n, oh, average, False,
                                  pending + threadid() * stride)


def max_pool2d_backward(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] y,
                        const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, floating[::1] pending, int nthreads,
                        const unsigned char[:, :, :, ::1] argmax=None, int nparts=0):
    """dx = gradient of max pooling (x the input, y the output, dy its gradient);
    ``pending`` is per-thread scratch: nthreads slices of C elements, ``pending.size //
    nthreads`` apart (pad them so that threads never share a cache line).  With ``argmax``
    (the forward's), x and y are not read.  ``nparts`` (<= 0: nthreads) picks the split of
    overlapping windows (see the module docstring)."""
    if nparts <= 0:
        nparts = nthreads
    cdef Pool p = _pool(dx.shape, dy.shape, ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t stride = pending.shape[0] // nthreads
    cdef const unsigned char *pam = &argmax[0, 0, 0, 0] if argmax is not None else NULL
    with nogil:
        backward(&x[0, 0, 0, 0], &y[0, 0, 0, 0], pam, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &p,
                 False, &pending[0], stride, nthreads, nparts)


def avg_pool2d_backward(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                        Py_ssize_t ph, Py_ssize_t pw, Py_ssize_t sh, Py_ssize_t sw,
                        Py_ssize_t pt, Py_ssize_t pl, floating[::1] pending, int nthreads,
                        int nparts=0):
    """dx = gradient of average pooling (dx's shape is the input's); ``pending`` and
    ``nparts`` as for max_pool2d_backward."""
    if nparts <= 0:
        nparts = nthreads
    cdef Pool p = _pool(dx.shape, dy.shape, ph, pw, sh, sw, pt, pl)
    cdef Py_ssize_t stride = pending.shape[0] // nthreads
    with nogil:
        backward(<const floating *>NULL, <const floating *>NULL, <const unsigned char *>NULL,
                 &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &p, True, &pending[0], stride, nthreads,
                 nparts)
