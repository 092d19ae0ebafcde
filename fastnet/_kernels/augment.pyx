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
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t, uint8_t
from libc.string cimport memcpy

from fastnet._kernels._vecmath cimport split_bound

cdef extern from *:
    """
    /* AVX-512 warps of one-channel float32 images with bilinear sampling and a constant fill
       (MNIST-style augmentation), whole images at a time; warp() falls back to _warp_row
       for everything else.  Measured on Zen 4, 64 28x28 images, 1 thread: a 7 degree
       rotation 95 us (scalar 450 in the same run), a translation 20 us (scalar 195).

       fn_warp_image1_avx512: an affine map, 8 pixels per step.  Coordinates are float32
       where every lane's fraction is clear of an integer by more than their rounding error
       (a bound from the transform's size; ~1e-5 pixel on 28 x 28 images, as PyTorch's
       float32 grid_sample); a step with a lane near an integer takes _warp_row's double
       coordinates and its snap, so 90-degree turns, the identity and integer shifts stay
       exact.  The weights and the blend are float32 (8 lanes of ymm cost half as much as 8
       of double zmm on Zen 4), a zero-weight neighbour adding nothing.  The image is
       first copied into pad with a zero border (FN_WARP_PAD_*), so every neighbour read is
       valid memory once x0, y0 are clamped to [-2, W], [-2, H]; the fill is selected by mask
       where a neighbour is outside the image.  x0 and y0 are monotone along a row, so lanes
       0 and 7 bound the step's windows: when they lie in two rows and 15 columns (small
       rotations, zooms near 1) the neighbours are two-register permutes of three 16-float
       loads, else 64-bit gathers of neighbour pairs.  The caller checks that the corners'
       coordinates are within +-2**30, so the int32 indices are exact.

       fn_warp_shift1_avx512: a pure translation, 16 pixels per step from masked loads (see
       there). */
    #if (defined(__GNUC__) || defined(__clang__)) && defined(__x86_64__)
    #include <immintrin.h>
    #define FN_WARP_HAVE_AVX512 1
    #define FN_WARP_PAD_W(W) ((W) + 20)    /* 2 left, 18 right: 16-float loads stay inside */
    #define FN_WARP_PAD_H(H) ((H) + 5)     /* 2 above, 3 below */
    /* v = floor part of v (snapped as _split), *f its fraction */
    static inline double fn_warp_split(double v, double *f)
    {
        double fl = __builtin_floor(v), fr = v - fl;
        if (fr < 1e-9) fr = 0.0;
        else if (fr > 1.0 - 1e-9) { fr = 0.0; fl += 1.0; }
        *f = fr;
        return fl;
    }
    /* A pure translation (source = (ox + dx, oy + dy)): every pixel of a row has the same
       four weights and reads two contiguous runs of two input rows, so 16 pixels are four
       masked loads (lanes outside the image take the fill; masked lanes never fault) and
       four multiply-adds in float32.  The weights come from the shifts' fractions, as the
       span path of _warp_row: within an ulp of the weight of the general path, which rounds
       ox + dx first.  A zero weight's term is skipped, as there. */
    __attribute__((target("avx512f,avx512vl,avx512dq")))
    static void fn_warp_shift1_avx512(const float *img, float *out, ptrdiff_t H, ptrdiff_t W,
                                      ptrdiff_t OH, ptrdiff_t OW, double dx, double dy,
                                      double fill)
    {
        double fx, fy;
        const double kx = fn_warp_split(dx, &fx);
        /* shifts beyond the image are all fill: clamp so the int arithmetic stays small */
        const ptrdiff_t k = kx < -(double)(OW + 2) ? -(OW + 2) : kx > (double)(W + 2) ? W + 2
                            : (ptrdiff_t)kx;
        const __m512 vfill = _mm512_set1_ps((float)fill);
        const __m512i lane = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2,
                                              1, 0);
        const __m512i iw = _mm512_set1_epi32((int)W), ione = _mm512_set1_epi32(1);
        for (ptrdiff_t oy = 0; oy < OH; ++oy) {
            const double kyd = fn_warp_split(1.0 * (double)oy + dy, &fy);
            const ptrdiff_t ky = kyd < -2.0 ? -2 : kyd > (double)H ? H : (ptrdiff_t)kyd;
            const float w00 = (float)((1.0 - fx) * (1.0 - fy)), w01 = (float)(fx * (1.0 - fy));
            const float w10 = (float)((1.0 - fx) * fy), w11 = (float)(fx * fy);
            const int row0 = ky >= 0 && ky < H, row1 = ky + 1 >= 0 && ky + 1 < H && fy > 0.0;
            const float *r0 = img + (row0 ? ky : 0) * W, *r1 = img + (row1 ? ky + 1 : 0) * W;
            float *orow = out + oy * OW;
            for (ptrdiff_t ox = 0; ox < OW; ox += 16) {
                const __mmask16 live = OW - ox >= 16 ? 0xffff
                                                     : (__mmask16)((1u << (OW - ox)) - 1);
                const __m512i c0 = _mm512_add_epi32(_mm512_set1_epi32((int)(ox + k)), lane);
                const __m512i c1 = _mm512_add_epi32(c0, ione);
                const __mmask16 in0 = _mm512_cmplt_epu32_mask(c0, iw) & live;
                const __mmask16 in1 = _mm512_cmplt_epu32_mask(c1, iw) & live & (fx > 0.0 ? 0xffff : 0);
                /* the masked loads address ox + k (+1) of a row; lanes outside are not read */
                const ptrdiff_t at = ox + k;
                __m512 v = _mm512_mul_ps(_mm512_set1_ps(w00),
                    row0 ? _mm512_mask_loadu_ps(vfill, in0, r0 + at) : vfill);
                if (w01 != 0.0f)
                    v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(w01),
                        row0 ? _mm512_mask_loadu_ps(vfill, in1, r0 + at + 1) : vfill));
                if (w10 != 0.0f)
                    v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(w10),
                        row1 ? _mm512_mask_loadu_ps(vfill, in0, r1 + at) : vfill));
                if (w11 != 0.0f)
                    v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_set1_ps(w11),
                        row1 ? _mm512_mask_loadu_ps(vfill, in1, r1 + at + 1) : vfill));
                _mm512_mask_storeu_ps(orow + ox, live, v);
            }
        }
    }
    __attribute__((target("avx512f,avx512vl,avx512dq")))
    static void fn_warp_image1_avx512(const float *img, float *pad, float *out, ptrdiff_t H,
                                      ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, const double *t,
                                      double fill)
    {
        if (t[0] == 1.0 && t[1] == 0.0 && t[3] == 0.0 && t[4] == 1.0) {
            fn_warp_shift1_avx512(img, out, H, W, OH, OW, t[2], t[5], fill);
            return;
        }
        const ptrdiff_t PW = FN_WARP_PAD_W(W);
        memset(pad, 0, (size_t)(2 * PW) * sizeof(float));
        for (ptrdiff_t r = 0; r < H; ++r) {
            float *d = pad + (r + 2) * PW;
            d[0] = d[1] = 0.0f;
            memcpy(d + 2, img + r * W, (size_t)W * sizeof(float));
            memset(d + W + 2, 0, 18 * sizeof(float));
        }
        memset(pad + (H + 2) * PW, 0, (size_t)(3 * PW) * sizeof(float));
        const float *org = pad + 2 * PW + 2;                      /* pixel (0, 0) */
        const double *base = (const double *)(const void *)org;   /* gathers of float pairs */
        const __m512d vtx = _mm512_set1_pd(t[0]), vty = _mm512_set1_pd(t[3]);
        const __m512d one = _mm512_set1_pd(1.0), zero = _mm512_setzero_pd();
        const __m512d snap = _mm512_set1_pd(1e-9), top = _mm512_set1_pd(1.0 - 1e-9);
        const __m256 sfill = _mm256_set1_ps((float)fill), fone = _mm256_set1_ps(1.0f);
        const __m256 fzero = _mm256_setzero_ps();
        const __m512d lox = _mm512_set1_pd(-2.0), hix = _mm512_set1_pd((double)W);
        const __m512d hiy = _mm512_set1_pd((double)H);
        const __m256i iw = _mm256_set1_epi32((int)W), ih = _mm256_set1_epi32((int)H);
        const __m256i ione = _mm256_set1_epi32(1), ipw = _mm256_set1_epi32((int)PW);
        const __m512d step = _mm512_set_pd(7, 6, 5, 4, 3, 2, 1, 0);
        /* float32 coordinates: each term and sum within L = |t0| OW + |t1| OH + |t2| (or the
           y row's) rounds by at most 2**-24 L; four roundings, a margin of 16 of them */
        const double L = fmax(fabs(t[0]) * (double)OW + fabs(t[1]) * (double)OH + fabs(t[2]),
                              fabs(t[3]) * (double)OW + fabs(t[4]) * (double)OH + fabs(t[5]));
        const double margin = 16.0 * L / 16777216.0;
        const int use_float = margin < 1e-3;
        const __m256 ftx = _mm256_set1_ps((float)t[0]), fty = _mm256_set1_ps((float)t[3]);
        const __m256 lowm = _mm256_set1_ps((float)margin), highm = _mm256_set1_ps(
            (float)(1.0 - margin));
        const __m256 flox = _mm256_set1_ps(-2.0f), fhix = _mm256_set1_ps((float)W);
        const __m256 fhiy = _mm256_set1_ps((float)H);
        const __m256 fstep = _mm256_set_ps(7, 6, 5, 4, 3, 2, 1, 0);
        for (ptrdiff_t oy = 0; oy < OH; ++oy) {
            const __m512d vbx = _mm512_set1_pd(t[1] * (double)oy + t[2]);
            const __m512d vby = _mm512_set1_pd(t[4] * (double)oy + t[5]);
            const __m256 fbx = _mm256_set1_ps((float)(t[1] * (double)oy + t[2]));
            const __m256 fby = _mm256_set1_ps((float)(t[4] * (double)oy + t[5]));
            float *orow = out + oy * OW;
            for (ptrdiff_t ox = 0; ox < OW; ox += 8) {
                const __mmask8 live = OW - ox >= 8 ? 0xff : (__mmask8)((1u << (OW - ox)) - 1);
                __m256i x0, y0;
                __m256 sfx, sfy;
                /* float32 coordinates where every live lane's fraction is clear of an integer
                   by more than their rounding error (margin): the same neighbours, weights
                   within ~margin / 16; else (and near every integer, where the snap decides)
                   the double coordinates of _warp_row */
                const __m256 sox = _mm256_add_ps(_mm256_set1_ps((float)ox), fstep);
                const __m256 xs = _mm256_add_ps(_mm256_mul_ps(ftx, sox), fbx);
                const __m256 ys = _mm256_add_ps(_mm256_mul_ps(fty, sox), fby);
                const __m256 sflx = _mm256_round_ps(xs, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                const __m256 sfly = _mm256_round_ps(ys, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                const __m256 rx = _mm256_sub_ps(xs, sflx), ry = _mm256_sub_ps(ys, sfly);
                const __mmask8 near = live & (
                    _mm256_cmp_ps_mask(rx, lowm, _CMP_LT_OQ) |
                    _mm256_cmp_ps_mask(rx, highm, _CMP_GT_OQ) |
                    _mm256_cmp_ps_mask(ry, lowm, _CMP_LT_OQ) |
                    _mm256_cmp_ps_mask(ry, highm, _CMP_GT_OQ));
                if (use_float && !near) {
                    x0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(sflx, flox), fhix));
                    y0 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(sfly, flox), fhiy));
                    sfx = rx;
                    sfy = ry;
                } else {
                    const __m512d vox = _mm512_add_pd(_mm512_set1_pd((double)ox), step);
                    const __m512d xf = _mm512_add_pd(_mm512_mul_pd(vtx, vox), vbx);
                    const __m512d yf = _mm512_add_pd(_mm512_mul_pd(vty, vox), vby);
                    __m512d flx = _mm512_roundscale_pd(xf, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                    __m512d fly = _mm512_roundscale_pd(yf, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
                    __m512d fx = _mm512_sub_pd(xf, flx), fy = _mm512_sub_pd(yf, fly);
                    const __mmask8 upx = _mm512_cmp_pd_mask(fx, top, _CMP_GT_OQ);
                    const __mmask8 upy = _mm512_cmp_pd_mask(fy, top, _CMP_GT_OQ);
                    flx = _mm512_mask_add_pd(flx, upx, flx, one);
                    fly = _mm512_mask_add_pd(fly, upy, fly, one);
                    fx = _mm512_mask_mov_pd(fx, upx | _mm512_cmp_pd_mask(fx, snap, _CMP_LT_OQ), zero);
                    fy = _mm512_mask_mov_pd(fy, upy | _mm512_cmp_pd_mask(fy, snap, _CMP_LT_OQ), zero);
                    x0 = _mm512_cvttpd_epi32(_mm512_min_pd(_mm512_max_pd(flx, lox), hix));
                    y0 = _mm512_cvttpd_epi32(_mm512_min_pd(_mm512_max_pd(fly, lox), hiy));
                    sfx = _mm512_cvtpd_ps(fx);
                    sfy = _mm512_cvtpd_ps(fy);
                }
                const __m256i x1 = _mm256_add_epi32(x0, ione), y1 = _mm256_add_epi32(y0, ione);
                /* the weights and the blend in float32 (8 lanes of ymm: half the cost of
                   double zmm on Zen 4) */
                const __m256 gx = _mm256_sub_ps(fone, sfx), gy = _mm256_sub_ps(fone, sfy);
                const __m256 w00 = _mm256_mul_ps(gx, gy), w01 = _mm256_mul_ps(sfx, gy);
                const __m256 w10 = _mm256_mul_ps(gx, sfy), w11 = _mm256_mul_ps(sfx, sfy);
                const __mmask8 inx0 = _mm256_cmplt_epu32_mask(x0, iw);
                const __mmask8 inx1 = _mm256_cmplt_epu32_mask(x1, iw);
                const __mmask8 iny0 = _mm256_cmplt_epu32_mask(y0, ih);
                const __mmask8 iny1 = _mm256_cmplt_epu32_mask(y1, ih);
                /* x0 and y0 are monotone along the row (an affine map, floor and clamp are
                   monotone): lanes 0 and 7 bound them */
                const int xa = _mm256_extract_epi32(x0, 0), xb = _mm256_extract_epi32(x0, 7);
                const int ya = _mm256_extract_epi32(y0, 0), yb = _mm256_extract_epi32(y0, 7);
                const int xlo = xa < xb ? xa : xb, ylo = ya < yb ? ya : yb;
                __m256 f00, f01, f10, f11;
                if ((xa - xb <= 14 && xb - xa <= 14) && (ya - yb <= 1 && yb - ya <= 1)) {
                    /* the 8 windows lie in rows ylo .. ylo + 2, columns xlo .. xlo + 15:
                       three 16-float loads and two-register permutes, no gathers */
                    const float *r = org + (ptrdiff_t)ylo * PW + xlo;
                    const __m512 ra = _mm512_loadu_ps(r), rb = _mm512_loadu_ps(r + PW);
                    const __m512 rc = _mm512_loadu_ps(r + 2 * PW);
                    const __m256i i = _mm256_add_epi32(
                        _mm256_sub_epi32(x0, _mm256_set1_epi32(xlo)),
                        _mm256_slli_epi32(_mm256_sub_epi32(y0, _mm256_set1_epi32(ylo)), 4));
                    const __m512i i0 = _mm512_castsi256_si512(i);
                    const __m512i i1 = _mm512_castsi256_si512(_mm256_add_epi32(i, ione));
                    f00 = _mm512_castps512_ps256(_mm512_permutex2var_ps(ra, i0, rb));
                    f01 = _mm512_castps512_ps256(_mm512_permutex2var_ps(ra, i1, rb));
                    f10 = _mm512_castps512_ps256(_mm512_permutex2var_ps(rb, i0, rc));
                    f11 = _mm512_castps512_ps256(_mm512_permutex2var_ps(rb, i1, rc));
                } else {
                    const __m256i i0 = _mm256_add_epi32(_mm256_mullo_epi32(y0, ipw), x0);
                    const __m512i q0 = _mm512_castpd_si512(_mm512_i32gather_pd(i0, base, 4));
                    const __m512i q1 = _mm512_castpd_si512(_mm512_i32gather_pd(
                        _mm256_add_epi32(i0, ipw), base, 4));
                    f00 = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(q0));
                    f01 = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(_mm512_srli_epi64(q0, 32)));
                    f10 = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(q1));
                    f11 = _mm256_castsi256_ps(_mm512_cvtepi64_epi32(_mm512_srli_epi64(q1, 32)));
                }
                const __m256 p00 = _mm256_mask_mov_ps(sfill, inx0 & iny0, f00);
                const __m256 p01 = _mm256_mask_mov_ps(sfill, inx1 & iny0, f01);
                const __m256 p10 = _mm256_mask_mov_ps(sfill, inx0 & iny1, f10);
                const __m256 p11 = _mm256_mask_mov_ps(sfill, inx1 & iny1, f11);
                __m256 v = _mm256_mul_ps(w00, p00);    /* zero-weight terms are skipped */
                v = _mm256_mask3_fmadd_ps(w01, p01, v, _mm256_cmp_ps_mask(w01, fzero, _CMP_NEQ_UQ));
                v = _mm256_mask3_fmadd_ps(w10, p10, v, _mm256_cmp_ps_mask(w10, fzero, _CMP_NEQ_UQ));
                v = _mm256_mask3_fmadd_ps(w11, p11, v, _mm256_cmp_ps_mask(w11, fzero, _CMP_NEQ_UQ));
                _mm256_mask_storeu_ps(orow + ox, live, v);
            }
        }
    }
    static int fn_warp_simd = -1;     /* -1: not yet probed */
    static int fn_warp_simd_on(void)
    {
        if (fn_warp_simd < 0) fn_warp_simd = __builtin_cpu_supports("avx512f") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
        return fn_warp_simd;
    }
    #else
    #define FN_WARP_HAVE_AVX512 0
    #define FN_WARP_PAD_W(W) (W)
    #define FN_WARP_PAD_H(H) (H)
    static int fn_warp_simd = 0;
    static int fn_warp_simd_on(void) { return 0; }
    static void fn_warp_image1_avx512(const float *img, float *pad, float *out, ptrdiff_t H,
                                      ptrdiff_t W, ptrdiff_t OH, ptrdiff_t OW, const double *t,
                                      double fill) {}
    #endif
    """
    int FN_WARP_HAVE_AVX512
    Py_ssize_t FN_WARP_PAD_W(Py_ssize_t W) noexcept nogil
    Py_ssize_t FN_WARP_PAD_H(Py_ssize_t H) noexcept nogil
    int fn_warp_simd
    int fn_warp_simd_on() noexcept nogil
    void fn_warp_image1_avx512(const float *img, float *pad, float *out, Py_ssize_t H,
                               Py_ssize_t W, Py_ssize_t OH, Py_ssize_t OW, const double *t,
                               double fill) noexcept nogil

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


cdef bint _affine_in_range(const double *t, Py_ssize_t OH, Py_ssize_t OW) noexcept nogil:
    """Whether t is affine and maps every output pixel within +-COORD_LIMIT (the corners
    suffice): what _warp_row's affine path needs on every row."""
    cdef double xs = t[0] * (OW - 1), ys = t[3] * (OW - 1), bx, by
    cdef Py_ssize_t oy, k
    if t[6] != 0.0 or t[7] != 0.0:
        return False
    for k in range(2):
        oy = k * (OH - 1)
        bx = t[1] * oy + t[2]
        by = t[4] * oy + t[5]
        if not (-COORD_LIMIT < bx < COORD_LIMIT and -COORD_LIMIT < bx + xs < COORD_LIMIT and
                -COORD_LIMIT < by < COORD_LIMIT and -COORD_LIMIT < by + ys < COORD_LIMIT):
            return False
    return True


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


def simd_warp(enabled=None):
    """Whether float32 one-channel affine bilinear warps with a constant fill use the AVX-512
    row kernel (the CPU has it and it is not switched off); ``enabled`` = False / True switches
    it off / back on (for tests: both paths must give the same pixels)."""
    global fn_warp_simd
    if enabled is not None:
        fn_warp_simd = -1 if enabled and FN_WARP_HAVE_AVX512 else 0
    return bool(fn_warp_simd_on())


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
    cdef float *pad
    if floating is float:
        # one-channel batches with a constant fill: whole images on the AVX-512 kernel
        if C == 1 and interpolation == INTERP_BILINEAR and fill_mode == FILL_CONSTANT \
                and N >= nthreads and FN_WARP_PAD_H(H) * FN_WARP_PAD_W(W) < (1 << 30) \
                and OW < (1 << 30) \
                and fn_warp_simd_on():
            pad = NULL
            with nogil, parallel(num_threads=nthreads):
                pad = <float *>malloc(FN_WARP_PAD_H(H) * FN_WARP_PAD_W(W) * sizeof(float))
                for b in prange(N, schedule='static'):
                    if pad != NULL and _affine_in_range(pt + 8 * b, OH, OW):
                        fn_warp_image1_avx512(px + b * H * W, pad, py + b * OH * OW, H, W, OH,
                                              OW, pt + 8 * b, fill_value)
                    else:
                        for oy in range(OH):
                            _warp_row(px + b * H * W, py + (b * OH + oy) * OW, H, W, 1, OW, oy,
                                      pt + 8 * b, interpolation, fill_mode, fill_value)
                free(pad)
            return
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
