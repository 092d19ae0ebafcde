/* Direct convolution kernels for small kw*Cin (the first layer of an image CNN: K = 9), where a
 * register tile over K is too short for the implicit GEMM's per-segment setup.  Part of
 * conv_impl.h's instantiation (T, V, VL, F() and the CV_ helpers come from there).
 *
 * Forward: a register tile of DMR = 4 consecutive output pixels of one row x 2 vectors of output
 * channels accumulates bias + sum_k x * W[k] straight from x and a packed copy of the kernel
 * ((1 + K) x cp: the bias row, then the kernel rows, columns zero-padded to cp, a multiple of
 * 2 vectors); for kernel row i the (j, c) pairs are contiguous both in x and in the packed
 * kernel, so the inner loop is one flat run.  Pixels whose window is clipped by the padding (or
 * the last < 4 of a row) go one at a time.  10 vector registers: no spills with 16.
 *
 * Weight gradient: a register tile of G = 3 or 4 kernel rows k (K rounded up to a multiple of G,
 * whichever pads less) x 2 vectors of output channels accumulates patch^T dy over a run of
 * output pixels; the patch values come straight from x through per-k offsets (gathered with
 * bounds checks only at the padded border).  dy may be masked by a fused ReLU's output, a run of
 * pixels at a time into a stack buffer that all the tiles then read.  Each block of pixels (one
 * per thread, or g->nparts taken in turn) is summed into its own partial (kp x cp, bias partial
 * beside it); the partials are added in block order.
 */
#define DMR 4
#define DNR (2 * VL)
#ifndef CV_DIRECT_MASK_BUF
#define CV_DIRECT_MASK_BUF 4096   /* elements of the masked-dy stack buffer (Cout at most this) */
#endif

/* Rows of the weight-gradient partial sums: K rounded up to a tile height of 3 when that pads
 * less than 4 would (K = 9: 9 rows, not 12), else 4. */
static ptrdiff_t F(direct_rows)(ptrdiff_t K)
{
    const ptrdiff_t by3 = (K + 2) / 3 * 3, by4 = (K + 3) / 4 * 4;
    return by3 < by4 ? by3 : by4;
}

/* y[0:nc] = act(a, b): the two accumulator vectors of one pixel. */
CV_INLINE void F(direct_put)(T *y, ptrdiff_t nc, V a, V b, int relu)
{
    if (relu) {
        a = F(relu)(a);
        b = F(relu)(b);
    }
    if (nc == DNR) {
        F(st)(y, a);
        F(st)(y + VL, b);
    } else {
        T t[DNR];
        F(st)(t, a);
        F(st)(t + VL, b);
        memcpy(y, t, (size_t)nc * sizeof(T));
    }
}

/* Direct convolution of output row r = (n, oh); wp: the packed kernel, cp columns. */
static void F(direct_row)(const T *x, const T *wp, T *y, const fn_conv_geom *g, ptrdiff_t r,
                          ptrdiff_t cp, int relu)
{
    const ptrdiff_t n = r / g->oh, oh = r - n * g->oh, cin = g->cin, cout = g->cout;
    const ptrdiff_t ih0 = oh * g->sh - g->pt, rowlen = g->kw * cin, xs = g->sw * cin;
    const ptrdiff_t ilo = ih0 < 0 ? -ih0 : 0;
    const ptrdiff_t ihi = g->kh < g->h - ih0 ? g->kh : g->h - ih0;
    for (ptrdiff_t co0 = 0; co0 < cout; co0 += DNR) {
        const ptrdiff_t nc = cv_min(DNR, cout - co0);
        const T *wc = wp + co0;
        ptrdiff_t ow = 0;
        while (ow < g->ow) {
            const ptrdiff_t iw0 = ow * g->sw - g->pl;
            T *yp = y + (r * g->ow + ow) * cout + co0;
            if (ow + DMR <= g->ow && iw0 >= 0 && iw0 + (DMR - 1) * g->sw + g->kw <= g->w) {
                V a0 = F(ld)(wc), b0 = F(ld)(wc + VL);
                V a1 = a0, b1 = b0, a2 = a0, b2 = b0, a3 = a0, b3 = b0;
                for (ptrdiff_t i = ilo; i < ihi; ++i) {
                    const T *xr = x + ((n * g->h + ih0 + i) * g->w + iw0) * cin;
                    const T *wr = wc + (1 + i * rowlen) * cp;
                    for (ptrdiff_t q = 0; q < rowlen; ++q) {
                        const V w0 = F(ld)(wr + q * cp), w1 = F(ld)(wr + q * cp + VL);
                        const T x0 = xr[q], x1 = xr[q + xs];
                        const T x2 = xr[q + 2 * xs], x3 = xr[q + 3 * xs];
                        a0 += x0 * w0; b0 += x0 * w1; a1 += x1 * w0; b1 += x1 * w1;
                        a2 += x2 * w0; b2 += x2 * w1; a3 += x3 * w0; b3 += x3 * w1;
                    }
                }
                F(direct_put)(yp, nc, a0, b0, relu);
                F(direct_put)(yp + cout, nc, a1, b1, relu);
                F(direct_put)(yp + 2 * cout, nc, a2, b2, relu);
                F(direct_put)(yp + 3 * cout, nc, a3, b3, relu);
                ow += DMR;
                continue;
            }
            /* one pixel, window clipped to the input row */
            const ptrdiff_t jlo = iw0 < 0 ? -iw0 : 0;
            const ptrdiff_t jhi = g->kw < g->w - iw0 ? g->kw : g->w - iw0;
            V a0 = F(ld)(wc), b0 = F(ld)(wc + VL);
            for (ptrdiff_t i = ilo; i < ihi; ++i) {
                const T *xr = x + ((n * g->h + ih0 + i) * g->w + iw0) * cin;
                const T *wr = wc + (1 + i * rowlen) * cp;
                for (ptrdiff_t q = jlo * cin; q < jhi * cin; ++q) {
                    const T x0 = xr[q];
                    a0 += x0 * F(ld)(wr + q * cp);
                    b0 += x0 * F(ld)(wr + q * cp + VL);
                }
            }
            F(direct_put)(yp, nc, a0, b0, relu);
            ow += 1;
        }
    }
}

static ptrdiff_t F(direct_cp)(const fn_conv_geom *g) { return cv_cdiv(g->cout, DNR) * DNR; }

static void F(direct_forward)(const fn_conv_geom *g, const T *x, const T *w, const T *bias,
                              T *y, int relu, T *ws, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    const ptrdiff_t K = g->kh * g->kw * g->cin, cout = g->cout, cp = F(direct_cp)(g);
    const ptrdiff_t rows = g->n * g->oh;
    T *wp = ws;
    CV_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
    {
        CV_FTZ_BEGIN
        CV_PRAGMA(omp for schedule(static))
        for (ptrdiff_t k = 0; k <= K; ++k) {   /* row 0: the bias; row 1 + k: kernel row k */
            T *d = wp + k * cp;
            for (ptrdiff_t c = 0; c < cp; ++c)
                d[c] = c >= cout ? (T)0 : k > 0 ? w[(k - 1) * cout + c] : bias ? bias[c] : (T)0;
        }
        CV_PRAGMA(omp for schedule(static))
        for (ptrdiff_t r = 0; r < rows; ++r) F(direct_row)(x, wp, y, g, r, cp, relu);
        CV_FTZ_END
    }
}

/* One register tile of the weight gradient: acc rows [k0, k0 + G) x columns [co0, co0 + 2
 * vectors) += patch^T @ dy over the pixels ow0..ow1 of one output row (dyr: dy of pixel owb);
 * G is a literal 3 or 4 (always inlined: the arrays live in registers). */
CV_INLINE void F(direct_wtile)(const T *xn, const T *dyr, ptrdiff_t owb, T *a, T *bacc,
                               const fn_conv_geom *g, ptrdiff_t ih0, int rows_inside,
                               ptrdiff_t ow0, ptrdiff_t ow1, ptrdiff_t k0, ptrdiff_t co0,
                               ptrdiff_t cp, const int G)
{
    const ptrdiff_t cin = g->cin, cout = g->cout, K = g->kh * g->kw * cin;
    const ptrdiff_t rowlen = g->kw * cin;
    const ptrdiff_t nc = cv_min(DNR, cout - co0);
    ptrdiff_t ki[4], kj[4], kc[4], off[4];
    for (int t = 0; t < G; ++t) {     /* k -> (i, j, c); rows past K read x[0], unused */
        const ptrdiff_t k = k0 + t < K ? k0 + t : 0;
        ki[t] = k / rowlen;
        kj[t] = (k - ki[t] * rowlen) / cin;
        kc[t] = k - ki[t] * rowlen - kj[t] * cin;
        off[t] = (ki[t] * g->w + kj[t]) * cin + kc[t];
    }
    V acc0[4], acc1[4], s0 = {0}, s1 = {0};
    for (int t = 0; t < G; ++t) {
        acc0[t] = F(ld)(a + t * cp);
        acc1[t] = F(ld)(a + t * cp + VL);
    }
    const int with_bias = bacc != NULL && k0 == 0;
    for (ptrdiff_t ow = ow0; ow < ow1; ++ow) {
        const ptrdiff_t iw0 = ow * g->sw - g->pl;
        const T *d = dyr + (ow - owb) * cout + co0;
        V d0, d1;
        if (nc == DNR) {
            d0 = F(ld)(d);
            d1 = F(ld)(d + VL);
        } else {
            T t[DNR] = {0};
            memcpy(t, d, (size_t)nc * sizeof(T));
            d0 = F(ld)(t);
            d1 = F(ld)(t + VL);
        }
        T c[4];
        if (rows_inside && iw0 >= 0 && iw0 + g->kw <= g->w) {
            const T *base = xn + (ih0 * g->w + iw0) * cin;
            for (int t = 0; t < G; ++t) c[t] = base[off[t]];
        } else {
            for (int t = 0; t < G; ++t) {
                const ptrdiff_t ih = ih0 + ki[t], iw = iw0 + kj[t];
                c[t] = ih >= 0 && ih < g->h && iw >= 0 && iw < g->w
                       ? xn[(ih * g->w + iw) * cin + kc[t]] : (T)0;
            }
        }
        for (int t = 0; t < G; ++t) {
            acc0[t] += c[t] * d0;
            acc1[t] += c[t] * d1;
        }
        if (with_bias) {
            s0 += d0;
            s1 += d1;
        }
    }
    for (int t = 0; t < G; ++t) {
        F(st)(a + t * cp, acc0[t]);
        F(st)(a + t * cp + VL, acc1[t]);
    }
    if (with_bias) {
        T t[DNR];
        F(st)(t, s0);
        F(st)(t + VL, s1);
        for (ptrdiff_t j = 0; j < nc; ++j) bacc[co0 + j] += t[j];
    }
}

/* Weight gradient of output pixels [lo, hi): acc (kp x cp) += patch^T @ dy (rows >= K garbage,
 * columns >= Cout zero), bacc (Cout, may be NULL) += dy summed; dy masked where y <= 0 when y
 * is given (Cout <= CV_DIRECT_MASK_BUF: the caller masks larger ones itself). */
static void F(direct_wgrad_range)(const T *x, const T *dy, const T *y, T *acc, T *bacc,
                                  const fn_conv_geom *g, ptrdiff_t lo, ptrdiff_t hi,
                                  ptrdiff_t kp, ptrdiff_t cp)
{
    const ptrdiff_t K = g->kh * g->kw * g->cin, G = F(direct_rows)(K) % 3 ? 4 : 3;
    ptrdiff_t m = lo;
    while (m < hi) {
        const ptrdiff_t r = m / g->ow, ow0 = m - r * g->ow;
        const ptrdiff_t ow1 = cv_min(g->ow, ow0 + (hi - m));
        const ptrdiff_t n = r / g->oh, oh = r - n * g->oh, ih0 = oh * g->sh - g->pt;
        const int rows_inside = ih0 >= 0 && ih0 + g->kh <= g->h;
        const T *xn = x + n * g->h * g->w * g->cin;
        const T *dyr = dy + r * g->ow * g->cout;
        const ptrdiff_t run = y ? cv_max(1, CV_DIRECT_MASK_BUF / g->cout) : ow1 - ow0;
        for (ptrdiff_t s0 = ow0; s0 < ow1; s0 += run) {
            const ptrdiff_t s1 = cv_min(ow1, s0 + run);
            const T *d = dyr;
            ptrdiff_t owb = 0;
            T buf[CV_DIRECT_MASK_BUF];
            if (y) {
                const T *src = dyr + s0 * g->cout, *yr = y + (r * g->ow + s0) * g->cout;
                for (ptrdiff_t q = 0; q < (s1 - s0) * g->cout; ++q)
                    buf[q] = yr[q] > (T)0 ? src[q] : (T)0;
                d = buf;
                owb = s0;
            }
            for (ptrdiff_t k0 = 0; k0 < kp; k0 += G)
                for (ptrdiff_t co0 = 0; co0 < g->cout; co0 += DNR) {
                    T *a = acc + k0 * cp + co0;
                    if (G == 3)
                        F(direct_wtile)(xn, d, owb, a, bacc, g, ih0, rows_inside, s0, s1, k0,
                                        co0, cp, 3);
                    else
                        F(direct_wtile)(xn, d, owb, a, bacc, g, ih0, rows_inside, s0, s1, k0,
                                        co0, cp, 4);
                }
        }
        m += ow1 - ow0;
    }
}

typedef struct {
    ptrdiff_t kp, cp, part, bpart, bparts, total;
} F(direct_wlayout);

static F(direct_wlayout) F(direct_wplan)(const fn_conv_geom *g, int nthreads)
{
    F(direct_wlayout) l;
    l.kp = F(direct_rows)(g->kh * g->kw * g->cin);
    l.cp = F(direct_cp)(g);
    l.part = F(elems)(sizeof(T) * (size_t)(l.kp * l.cp));
    l.bpart = F(elems)(sizeof(T) * (size_t)g->cout);
    l.bparts = (ptrdiff_t)nthreads * l.part;
    l.total = l.bparts + (ptrdiff_t)nthreads * l.bpart;
    return l;
}

static void F(direct_weight)(const fn_conv_geom *g, const T *x, const T *dy, const T *relu_y,
                             T *dw, T *db, T *ws, int nthreads)
{
    if (nthreads < 1) nthreads = 1;
    const F(direct_wlayout) l = F(direct_wplan)(g, (int)cv_max(nthreads, g->nparts));
    const ptrdiff_t K = g->kh * g->kw * g->cin, cout = g->cout, M = g->n * g->oh * g->ow;
    CV_PRAGMA(omp parallel num_threads(nthreads) if (nthreads > 1))
    {
        CV_FTZ_BEGIN
        const int team = CV_TEAM_SIZE(), tid = CV_THREAD_ID();
        const int nparts = g->nparts > 0 ? (int)g->nparts : team;
        /* block `part` of the pixels into its partial; by default one block per thread */
        for (int part = tid; part < nparts; part += team) {
            T *acc = ws + (ptrdiff_t)part * l.part;
            T *bacc = db ? ws + l.bparts + (ptrdiff_t)part * l.bpart : NULL;
            memset(acc, 0, (size_t)(l.kp * l.cp) * sizeof(T));
            if (bacc) memset(bacc, 0, (size_t)cout * sizeof(T));
            F(direct_wgrad_range)(x, dy, relu_y, acc, bacc, g, M * part / nparts,
                                  M * (part + 1) / nparts, l.kp, l.cp);
        }
        CV_PRAGMA(omp barrier)
        /* dw = the partials' top-left (K, Cout) corners, added in block order */
        CV_PRAGMA(omp for schedule(static))
        for (ptrdiff_t k = 0; k < K; ++k) {
            T *d = dw + k * cout;
            memcpy(d, ws + k * l.cp, (size_t)cout * sizeof(T));
            for (int t = 1; t < nparts; ++t) {
                const T *src = ws + (ptrdiff_t)t * l.part + k * l.cp;
                for (ptrdiff_t c = 0; c < cout; ++c) d[c] += src[c];
            }
        }
        CV_PRAGMA(omp single)
        if (db) {
            memcpy(db, ws + l.bparts, (size_t)cout * sizeof(T));
            for (int t = 1; t < nparts; ++t) {
                const T *src = ws + l.bparts + (ptrdiff_t)t * l.bpart;
                for (ptrdiff_t c = 0; c < cout; ++c) db[c] += src[c];
            }
        }
        CV_FTZ_END
    }
}

#undef DMR
#undef DNR
