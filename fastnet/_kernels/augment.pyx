# cython: language_level=3
"""Image augmentation kernels on NHWC batches: projective warps (rotation, translation, zoom)
with bilinear or nearest sampling and Keras's fill modes, flips, crops with padding, cutout,
per-image brightness/contrast, MixUp blending and per-channel affine maps (Normalization,
Rescaling), with the adjoints the layers need for their backward pass.

Kernel design
-------------
Every random choice is made in Python from a seeded NumPy Generator and arrives here as a small
per-image parameter array (transforms (N, 8), flip flags (N,), offsets (N, 2), boxes (N, 4),
scales (N, C)), so a kernel is a pure function of its inputs and the result does not depend on
the thread count.  Forward kernels are split by output rows of the whole batch
(``prange`` over N * OH rows, static schedule): each output element is written by one thread,
and a batch of one large image still uses every thread.  Adjoints that scatter (the warp's) are
split by images, so two threads never add into the same input pixel.

Warp coordinates follow Keras's ``affine_transform``: output pixel (x, y) samples the input at
((a0 x + a1 y + a2) / k, (b0 x + b1 y + b2) / k) with k = c0 x + c1 y + 1, pixel centres at
integer coordinates.  Bilinear sampling reads the four neighbours; each neighbour index outside
the image is mapped by the fill mode (constant: the fill value; nearest: clamp; reflect:
d c b a | a b c d | d c b a; wrap: a b c d | a b c d), as Keras 3 / JAX's ``map_coordinates``.
Coordinates within 1e-9 of an integer are snapped to it: cos(pi / 2) is not exactly 0 in
floating point, and the snap keeps a 90-degree rotation or an integer shift an exact copy.
"""
from cython cimport floating
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy

from fastnet._kernels._vecmath cimport split_bound

cdef enum:
    FILL_CONSTANT = 0
    FILL_NEAREST = 1
    FILL_REFLECT = 2
    FILL_WRAP = 3
    INTERP_NEAREST = 0
    INTERP_BILINEAR = 1

cdef double SNAP = 1e-9
cdef double COORD_LIMIT = 1073741824.0      # 2**30: keeps the integer casts defined


cdef inline double _clean(double v) noexcept nogil:
    # NaN or a huge coordinate (a projective divide by ~0) is far outside any image
    if v != v:
        return -COORD_LIMIT
    if v > COORD_LIMIT:
        return COORD_LIMIT
    if v < -COORD_LIMIT:
        return -COORD_LIMIT
    return v


cdef inline double _floor(double v) noexcept nogil:
    # libm's floor is a call without SSE4.1 (the build targets baseline x86-64); coordinates
    # are within +-2**30 here, so a truncating cast is exact
    cdef double t = <double><long long>v
    return t - 1.0 if t > v else t


cdef inline Py_ssize_t _map_index(Py_ssize_t i, Py_ssize_t n, int mode) noexcept nogil:
    """Index of the pixel that stands in for index i of an axis of length n (-1: fill)."""
    cdef Py_ssize_t m, p
    if 0 <= i < n:
        return i
    if mode == FILL_CONSTANT:
        return -1
    if mode == FILL_NEAREST:
        return 0 if i < 0 else n - 1
    if mode == FILL_REFLECT:
        p = 2 * n
        m = i % p
        if m < 0:
            m = m + p
        return m if m < n else p - 1 - m
    m = i % n
    if m < 0:
        m = m + n
    return m


cdef inline void _split(double v, Py_ssize_t *i0, double *f) noexcept nogil:
    """v = i0 + f with 0 <= f < 1, f snapped to 0 within SNAP of an integer."""
    cdef double fl = _floor(v)
    cdef double fr = v - fl
    if fr < SNAP:
        fr = 0.0
    elif fr > 1.0 - SNAP:
        fr = 0.0
        fl = fl + 1.0
    i0[0] = <Py_ssize_t>fl
    f[0] = fr


cdef inline void _source(const double *t, Py_ssize_t ox, Py_ssize_t oy, double *xf,
                         double *yf) noexcept nogil:
    cdef double k = t[6] * ox + t[7] * oy + 1.0
    xf[0] = t[0] * ox + t[1] * oy + t[2]
    yf[0] = t[3] * ox + t[4] * oy + t[5]
    if k != 1.0:
        xf[0] = xf[0] / k
        yf[0] = yf[0] / k
    xf[0] = _clean(xf[0])
    yf[0] = _clean(yf[0])


cdef void _warp_row(const floating *img, floating *out, Py_ssize_t H, Py_ssize_t W,
                    Py_ssize_t C, Py_ssize_t OW, Py_ssize_t oy, const double *t, int interp,
                    int mode, double fill) noexcept nogil:
    cdef Py_ssize_t ox, c, x0, y0, x1, y1, mx0, mx1, my0, my1
    cdef double xf, yf, fx, fy, w00, w01, w10, w11, v
    cdef const floating *p00
    cdef const floating *p01
    cdef const floating *p10
    cdef const floating *p11
    cdef floating *o
    # an affine row (c0 = c1 = 0) whose end points are in range needs no divide and no clamp
    cdef bint affine = t[6] == 0.0 and t[7] == 0.0
    cdef double bx = t[1] * oy + t[2], by = t[4] * oy + t[5]
    cdef Py_ssize_t lo = 0, hi = 0
    if affine:
        for xf in (bx, bx + t[0] * (OW - 1), by, by + t[3] * (OW - 1)):
            if not -COORD_LIMIT < xf < COORD_LIMIT:
                affine = False
    if affine and interp == INTERP_BILINEAR and t[3] == 0.0 and (t[0] == 1.0 or C > 1):
        # the source row is fixed (a translation, or a zoom/shear along x of a multi-channel
        # image): the columns [lo, hi) whose neighbours are all inside the image get the loops
        # of _bilinear_span_row, without range checks and fills; the rest the general code.
        # (A rotation gains nothing from it: its per-pixel work is the same.)
        _inside_span(t[0], bx, W, OW, &lo, &hi)
        if hi > lo:
            _inside_span(t[3], by, H, OW, &lo, &hi)
    for ox in range(OW):
        if lo <= ox < hi:
            if ox == lo:
                _bilinear_span_row(img, out, W, C, lo, hi, t[0], bx, by)
            continue
        if affine:
            xf = t[0] * ox + bx
            yf = t[3] * ox + by
        else:
            _source(t, ox, oy, &xf, &yf)
        o = out + ox * C
        if interp == INTERP_NEAREST:
            mx0 = _map_index(<Py_ssize_t>_floor(xf + 0.5), W, mode)
            my0 = _map_index(<Py_ssize_t>_floor(yf + 0.5), H, mode)
            if mx0 < 0 or my0 < 0:
                for c in range(C):
                    o[c] = <floating>fill
            else:
                p00 = img + (my0 * W + mx0) * C
                for c in range(C):
                    o[c] = p00[c]
            continue
        _split(xf, &x0, &fx)
        _split(yf, &y0, &fy)
        w00 = (1.0 - fx) * (1.0 - fy)
        w01 = fx * (1.0 - fy)
        w10 = (1.0 - fx) * fy
        w11 = fx * fy
        if 0 <= x0 < W - 1 and 0 <= y0 < H - 1:     # all four neighbours inside: no fill
            p00 = img + (y0 * W + x0) * C
            p10 = p00 + W * C
            if C == 1:
                o[0] = <floating>(w00 * p00[0] + w01 * p00[1] + w10 * p10[0] + w11 * p10[1])
                continue
            for c in range(C):
                o[c] = <floating>(w00 * p00[c] + w01 * p00[C + c] + w10 * p10[c]
                                  + w11 * p10[C + c])
            continue
        x1 = x0 + 1 if fx > 0.0 else x0      # a zero weight never reads outside the image
        y1 = y0 + 1 if fy > 0.0 else y0
        mx0 = _map_index(x0, W, mode)
        mx1 = _map_index(x1, W, mode)
        my0 = _map_index(y0, H, mode)
        my1 = _map_index(y1, H, mode)
        p00 = img + (my0 * W + mx0) * C if my0 >= 0 and mx0 >= 0 else NULL
        p01 = img + (my0 * W + mx1) * C if my0 >= 0 and mx1 >= 0 else NULL
        p10 = img + (my1 * W + mx0) * C if my1 >= 0 and mx0 >= 0 else NULL
        p11 = img + (my1 * W + mx1) * C if my1 >= 0 and mx1 >= 0 else NULL
        for c in range(C):
            v = w00 * (p00[c] if p00 != NULL else fill)
            if w01 != 0.0:
                v = v + w01 * (p01[c] if p01 != NULL else fill)
            if w10 != 0.0:
                v = v + w10 * (p10[c] if p10 != NULL else fill)
            if w11 != 0.0:
                v = v + w11 * (p11[c] if p11 != NULL else fill)
            o[c] = <floating>v


cdef inline bint _inside(double v, Py_ssize_t n) noexcept nogil:
    """Bilinear sampling at v reads indices floor(v) and floor(v) + 1, both in [0, n), even
    after the snap of ``_split`` (kept clear of it by the margins)."""
    return 4.0 * SNAP <= v and v <= <double>(n - 1) - 4.0 * SNAP


cdef void _inside_span(double slope, double base, Py_ssize_t n, Py_ssize_t OW, Py_ssize_t *lo,
                       Py_ssize_t *hi) noexcept nogil:
    """Narrow [lo, hi) (initially [0, OW) when hi == 0 and lo == 0) to the ox for which
    base + slope * ox is ``_inside`` n.  fl(slope * ox) + base is monotone in ox, so checking
    the end points of the span is enough; the end points come from the exact inequality, then
    are moved inwards until they check."""
    cdef Py_ssize_t a = lo[0], b = hi[0] if hi[0] > 0 else OW
    cdef double ea, eb
    if slope == 0.0:
        if not _inside(base, n):
            b = a
    else:
        ea = (4.0 * SNAP - base) / slope
        eb = (<double>(n - 1) - 4.0 * SNAP - base) / slope
        if slope < 0.0:
            ea, eb = eb, ea
        # ox in [ceil(ea), floor(eb)], clipped to [a, b), then shrunk until the ends check
        if ea > <double>a:
            a = <Py_ssize_t>_floor(ea) if ea < <double>b else b
        if eb < <double>(b - 1):
            b = <Py_ssize_t>_floor(eb) + 1 if eb >= <double>a else a
        while a < b and not _inside(slope * a + base, n):
            a += 1
        while b > a and not _inside(slope * (b - 1) + base, n):
            b -= 1
    lo[0] = a
    hi[0] = b if b > a else a


cdef void _bilinear_span_row(const floating *img, floating *out, Py_ssize_t W, Py_ssize_t C,
                             Py_ssize_t lo, Py_ssize_t hi, double tx, double bx,
                             double by) noexcept nogil:
    """Output columns [lo, hi) of an affine row whose source row is fixed (ty == 0) and whose
    neighbours are all inside the image, when either the x step is 1 (a translation: the
    weights are the same for the whole span, a contiguous stencil the compiler vectorises) or
    C > 1 (the weights per pixel, the channel loop contiguous)."""
    cdef Py_ssize_t ox, c, x0, y0, i, n
    cdef double xf, fx, fy, w00, w01, w10, w11
    cdef const floating *r0
    cdef const floating *r1
    cdef const floating *p00
    cdef const floating *p10
    cdef floating *o
    _split(by, &y0, &fy)
    r0 = img + y0 * W * C
    r1 = r0 + W * C
    if tx != 1.0:
        for ox in range(lo, hi):
            xf = tx * ox + bx
            _split(xf, &x0, &fx)
            w00 = (1.0 - fx) * (1.0 - fy)
            w01 = fx * (1.0 - fy)
            w10 = (1.0 - fx) * fy
            w11 = fx * fy
            p00 = r0 + x0 * C
            p10 = r1 + x0 * C
            o = out + ox * C
            for c in range(C):
                o[c] = <floating>(w00 * p00[c] + w01 * p00[C + c] + w10 * p10[c]
                                  + w11 * p10[C + c])
        return
    # a translation: source x = ox + bx, so every column has bx's fraction and x0 = ox + k
    # (the general path rounds ox + bx first; the two differ by at most an ulp of the weight)
    _split(bx, &x0, &fx)
    x0 = x0 + lo
    w00 = (1.0 - fx) * (1.0 - fy)
    w01 = fx * (1.0 - fy)
    w10 = (1.0 - fx) * fy
    w11 = fx * fy
    p00 = r0 + x0 * C
    p10 = r1 + x0 * C
    o = out + lo * C
    n = (hi - lo) * C
    for i in range(n):
        o[i] = <floating>(w00 * p00[i] + w01 * p00[C + i] + w10 * p10[i] + w11 * p10[C + i])


cdef void _warp_adjoint_image(const floating *dy, floating *dimg, Py_ssize_t H, Py_ssize_t W,
                              Py_ssize_t C, Py_ssize_t OH, Py_ssize_t OW, const double *t,
                              int interp, int mode) noexcept nogil:
    cdef Py_ssize_t ox, oy, c, i, x0, y0, x1, y1, mx0, mx1, my0, my1
    cdef double xf, yf, fx, fy, w00, w01, w10, w11
    cdef const floating *g
    for i in range(H * W * C):
        dimg[i] = 0
    for oy in range(OH):
        for ox in range(OW):
            _source(t, ox, oy, &xf, &yf)
            g = dy + (oy * OW + ox) * C
            if interp == INTERP_NEAREST:
                mx0 = _map_index(<Py_ssize_t>_floor(xf + 0.5), W, mode)
                my0 = _map_index(<Py_ssize_t>_floor(yf + 0.5), H, mode)
                if mx0 >= 0 and my0 >= 0:
                    _axpy(dimg + (my0 * W + mx0) * C, g, 1.0, C)
                continue
            _split(xf, &x0, &fx)
            _split(yf, &y0, &fy)
            x1 = x0 + 1 if fx > 0.0 else x0
            y1 = y0 + 1 if fy > 0.0 else y0
            mx0 = _map_index(x0, W, mode)
            mx1 = _map_index(x1, W, mode)
            my0 = _map_index(y0, H, mode)
            my1 = _map_index(y1, H, mode)
            w00 = (1.0 - fx) * (1.0 - fy)
            w01 = fx * (1.0 - fy)
            w10 = (1.0 - fx) * fy
            w11 = fx * fy
            if my0 >= 0 and mx0 >= 0:
                _axpy(dimg + (my0 * W + mx0) * C, g, w00, C)
            if w01 != 0.0 and my0 >= 0 and mx1 >= 0:
                _axpy(dimg + (my0 * W + mx1) * C, g, w01, C)
            if w10 != 0.0 and my1 >= 0 and mx0 >= 0:
                _axpy(dimg + (my1 * W + mx0) * C, g, w10, C)
            if w11 != 0.0 and my1 >= 0 and mx1 >= 0:
                _axpy(dimg + (my1 * W + mx1) * C, g, w11, C)


cdef inline void _axpy(floating *dst, const floating *src, double a,
                       Py_ssize_t C) noexcept nogil:
    cdef Py_ssize_t c
    for c in range(C):
        dst[c] = dst[c] + <floating>(a * src[c])


def warp(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
         const double[:, ::1] transforms, int interpolation, int fill_mode, double fill_value,
         int nthreads):
    """y[n] = x[n] sampled through transforms[n] (8 Keras affine_transform coefficients).

    x (N, H, W, C), y (N, OH, OW, C), transforms (N, 8); y must not overlap x."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2], r, b, oy
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    cdef const double *pt = &transforms[0, 0]
    for r in prange(N * OH, nogil=True, num_threads=nthreads, schedule='static'):
        b = r // OH
        oy = r - b * OH
        _warp_row(px + b * H * W * C, py + (b * OH + oy) * OW * C, H, W, C, OW, oy,
                  pt + 8 * b, interpolation, fill_mode, fill_value)


def warp_adjoint(const floating[:, :, :, ::1] dy, floating[:, :, :, ::1] dx,
                 const double[:, ::1] transforms, int interpolation, int fill_mode,
                 int nthreads):
    """dx = the adjoint of ``warp`` applied to dy (fill values contribute nothing).

    dy (N, OH, OW, C), dx (N, H, W, C) overwritten; dx must not overlap dy."""
    cdef Py_ssize_t N = dx.shape[0], H = dx.shape[1], W = dx.shape[2], C = dx.shape[3]
    cdef Py_ssize_t OH = dy.shape[1], OW = dy.shape[2], b
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    cdef const double *pt = &transforms[0, 0]
    for b in prange(N, nogil=True, num_threads=nthreads, schedule='static'):
        _warp_adjoint_image(pdy + b * OH * OW * C, pdx + b * H * W * C, H, W, C, OH, OW,
                            pt + 8 * b, interpolation, fill_mode)


cdef void _flip_row(const floating *src, floating *dst, Py_ssize_t W, Py_ssize_t C,
                    bint mirror) noexcept nogil:
    cdef Py_ssize_t j, c
    if not mirror:
        memcpy(dst, src, W * C * sizeof(floating))
        return
    for j in range(W):
        for c in range(C):
            dst[j * C + c] = src[(W - 1 - j) * C + c]


def flip(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y, const uint8_t[::1] flags,
         int nthreads):
    """y[n] = x[n] mirrored left-right if flags[n] & 1 and upside down if flags[n] & 2.
    y must not overlap x (the flip is its own adjoint)."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3], r, b, i
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    cdef const uint8_t *pf = &flags[0]
    for r in prange(N * H, nogil=True, num_threads=nthreads, schedule='static'):
        b = r // H
        i = r - b * H
        if pf[b] & 2:
            i = H - 1 - i
        _flip_row(px + (b * H + i) * W * C, py + r * W * C, W, C, pf[b] & 1)


cdef void _shift_row(const floating *img, floating *out, Py_ssize_t H, Py_ssize_t W,
                     Py_ssize_t C, Py_ssize_t OW, Py_ssize_t si, Py_ssize_t oj,
                     double fill) noexcept nogil:
    """out[j] = img[si, j + oj] where inside the image, else fill (one output row)."""
    cdef Py_ssize_t j, lo, hi
    if si < 0 or si >= H:
        lo = hi = OW
    else:
        lo = -oj if oj < 0 else 0
        hi = W - oj if W - oj < OW else OW
        if lo > OW:
            lo = OW
        if hi < lo:
            hi = lo
    for j in range(lo * C):
        out[j] = <floating>fill
    if hi > lo:
        memcpy(out + lo * C, img + (si * W + lo + oj) * C, (hi - lo) * C * sizeof(floating))
    for j in range(hi * C, OW * C):
        out[j] = <floating>fill


def shift_crop(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
               const int64_t[:, ::1] offsets, double fill_value, int nthreads):
    """y[n, i, j] = x[n, i + offsets[n, 0], j + offsets[n, 1]] where that pixel exists, else
    fill_value: a crop of a padded image (offset = top - pad), and, with the offsets negated,
    its adjoint.  x (N, H, W, C), y (N, OH, OW, C), no overlap."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t OH = y.shape[1], OW = y.shape[2], r, b, i
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    cdef const int64_t *po = &offsets[0, 0]
    for r in prange(N * OH, nogil=True, num_threads=nthreads, schedule='static'):
        b = r // OH
        i = r - b * OH
        _shift_row(px + b * H * W * C, py + r * OW * C, H, W, C, OW, i + po[2 * b],
                   po[2 * b + 1], fill_value)


def cutout(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
           const int64_t[:, ::1] boxes, double fill_value, int nthreads):
    """y = x with rows [boxes[n,0], boxes[n,1]) x columns [boxes[n,2], boxes[n,3]) of image n
    set to fill_value (boxes already clipped to the image).  y may be x itself."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t r, b, i, j
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    cdef const int64_t *pb = &boxes[0, 0]
    cdef bint inplace = <const void *>px == <void *>py
    for r in prange(N * H, nogil=True, num_threads=nthreads, schedule='static'):
        b = r // H
        i = r - b * H
        if not inplace:
            memcpy(py + r * W * C, px + r * W * C, W * C * sizeof(floating))
        if pb[4 * b] <= i < pb[4 * b + 1]:
            for j in range(pb[4 * b + 2] * C, pb[4 * b + 3] * C):
                py[r * W * C + j] = <floating>fill_value


def scale_shift_clip(const floating[:, :, :, ::1] x, floating[:, :, :, ::1] y,
                     const double[:, ::1] scale, const double[:, ::1] shift, double lo,
                     double hi, int nthreads):
    """y[n, :, :, c] = clip(x[n, :, :, c] * scale[n, c] + shift[n, c], lo, hi) (brightness,
    contrast); lo = -inf and hi = inf for no clipping.  y may be x itself."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3]
    cdef Py_ssize_t r, b, j, c
    cdef double v
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef floating *py = &y[0, 0, 0, 0]
    cdef const double *ps = &scale[0, 0]
    cdef const double *pt = &shift[0, 0]
    for r in prange(N * H, nogil=True, num_threads=nthreads, schedule='static'):
        b = r // H
        for j in range(W):
            for c in range(C):
                v = px[(r * W + j) * C + c] * ps[b * C + c] + pt[b * C + c]
                v = lo if v < lo else v
                v = hi if v > hi else v
                py[(r * W + j) * C + c] = <floating>v


def scale_shift_clip_adjoint(const floating[:, :, :, ::1] x, const floating[:, :, :, ::1] dy,
                             floating[:, :, :, ::1] dx, const double[:, ::1] scale,
                             const double[:, ::1] shift, const double[:, ::1] mean_coef,
                             double lo, double hi, int nthreads):
    """The gradient of y = clip(x * s + t(x), lo, hi) with t = (1 - s) * mean_hw(x) (contrast;
    mean_coef[n, c] = (1 - s) / (H * W)) or t constant (brightness; mean_coef = 0):
    dz = dy where lo <= x * s + t <= hi, else 0; dx = s * dz + mean_coef * sum_hw(dz).
    Channel sums are kept in double on the stack for up to 64 channels, else redone per pixel
    row (no allocation).  dx may be dy itself."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3], b
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef const floating *pdy = &dy[0, 0, 0, 0]
    cdef floating *pdx = &dx[0, 0, 0, 0]
    for b in prange(N, nogil=True, num_threads=nthreads, schedule='static'):
        _ssc_adjoint_image(px + b * H * W * C, pdy + b * H * W * C, pdx + b * H * W * C,
                           H * W, C, &scale[b, 0], &shift[b, 0], &mean_coef[b, 0], lo, hi)


cdef void _ssc_adjoint_image(const floating *x, const floating *dy, floating *dx, Py_ssize_t P,
                             Py_ssize_t C, const double *s, const double *t,
                             const double *coef, double lo, double hi) noexcept nogil:
    cdef double sums[64]
    cdef Py_ssize_t p, c, c0, c1
    cdef double v, g, acc
    # channels in blocks of 64 so the sums live on the stack
    c0 = 0
    while c0 < C:
        c1 = c0 + 64 if c0 + 64 < C else C
        for c in range(c0, c1):
            sums[c - c0] = 0.0
        for p in range(P):
            for c in range(c0, c1):
                v = x[p * C + c] * s[c] + t[c]
                g = dy[p * C + c] if lo <= v <= hi else 0.0
                sums[c - c0] = sums[c - c0] + g
                dx[p * C + c] = <floating>(s[c] * g)
        for c in range(c0, c1):
            acc = coef[c] * sums[c - c0]
            if acc != 0.0:
                for p in range(P):
                    dx[p * C + c] = <floating>(dx[p * C + c] + acc)
        c0 = c1


def channel_means(const floating[:, :, :, ::1] x, double[:, ::1] means, int nthreads):
    """means[n, c] = the mean of x[n, :, :, c], accumulated in double."""
    cdef Py_ssize_t N = x.shape[0], H = x.shape[1], W = x.shape[2], C = x.shape[3], b, p, c
    cdef const floating *px = &x[0, 0, 0, 0]
    cdef double *pm = &means[0, 0]
    for b in prange(N, nogil=True, num_threads=nthreads, schedule='static'):
        for c in range(C):
            pm[b * C + c] = 0.0
        for p in range(H * W):
            for c in range(C):
                pm[b * C + c] = pm[b * C + c] + px[(b * H * W + p) * C + c]
        for c in range(C):
            pm[b * C + c] = pm[b * C + c] / (H * W)


def mix(const floating[:, ::1] x, floating[:, ::1] y, const int64_t[::1] partner,
        const double[::1] weight, int nthreads):
    """y[n] = weight[n] * x[n] + (1 - weight[n]) * x[partner[n]] (MixUp), x and y (N, P);
    y must not overlap x."""
    cdef Py_ssize_t N = x.shape[0], P = x.shape[1], b, i, q
    cdef double w
    cdef const floating *px = &x[0, 0]
    cdef floating *py = &y[0, 0]
    for b in prange(N, nogil=True, num_threads=nthreads, schedule='static'):
        w = weight[b]
        q = partner[b]
        for i in range(P):
            py[b * P + i] = <floating>(w * px[b * P + i] + (1.0 - w) * px[q * P + i])


cdef void _affine_rows(const floating *x, floating *y, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t L, const floating *a, const floating *c) noexcept nogil:
    cdef Py_ssize_t r, j
    for r in range(r0, r1):
        for j in range(L):
            y[r * L + j] = x[r * L + j] * a[j] + c[j]


def affine_rows(const floating[:, ::1] x, floating[:, ::1] y, const floating[::1] scale,
                const floating[::1] shift, int nthreads):
    """y[r, j] = x[r, j] * scale[j] + shift[j] (Normalization, Rescaling; the per-channel
    vector tiled along a row).  y may be x itself."""
    cdef Py_ssize_t R = x.shape[0], L = x.shape[1], t
    cdef const floating *px = &x[0, 0]
    cdef floating *py = &y[0, 0]
    cdef const floating *pa = &scale[0]
    cdef const floating *pc = &shift[0]
    if nthreads <= 1:
        with nogil:
            _affine_rows(px, py, 0, R, L, pa, pc)
        return
    for t in prange(nthreads, nogil=True, num_threads=nthreads, schedule='static'):
        _affine_rows(px, py, split_bound(R, t, nthreads, 1), split_bound(R, t + 1, nthreads, 1),
                     L, pa, pc)


def shuffle_feed(const int64_t[::1] items, int64_t[::1] out, const double[::1] u,
                 int64_t[::1] buf):
    """One step of a full shuffle buffer (tf.data's rule) per item: out[k] = buf[j] with
    j = floor(u[k] * len(buf)), then buf[j] = items[k].  len(items) == len(out) == len(u)."""
    cdef Py_ssize_t n = items.shape[0], size = buf.shape[0], k, j
    with nogil:
        for k in range(n):
            j = <Py_ssize_t>(u[k] * size)
            if j >= size:
                j = size - 1
            out[k] = buf[j]
            buf[j] = items[k]


def shuffle_drain(int64_t[::1] buf, int64_t[::1] out, const double[::1] u):
    """Empty a shuffle buffer in random order: out[k] = buf[j], j = floor(u[k] * left), the
    last slot moved into j.  len(out) == len(u) == len(buf); buf is consumed."""
    cdef Py_ssize_t left = buf.shape[0], k, j
    with nogil:
        for k in range(out.shape[0]):
            j = <Py_ssize_t>(u[k] * left)
            if j >= left:
                j = left - 1
            out[k] = buf[j]
            left = left - 1
            buf[j] = buf[left]
