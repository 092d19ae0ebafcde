"""The augmentation ops (fastnet.ops.augment, kernels in fastnet/_kernels/augment.pyx) against
plain NumPy references: exact flips, 90-degree rotations equal to np.rot90, identity rotations,
integer translations equal to np.pad shifts for every fill mode, a NumPy bilinear/nearest warp,
adjoints checked by the dot-product identity, crops, cutout, brightness/contrast with their
gradients (float64 finite differences), MixUp blending, per-channel affine maps and the shuffle
buffer; plus thread-count independence and argument checks."""
import numpy as np
import pytest
from _gradcheck import numeric_grad

import fastnet
from fastnet.ops import augment as A

NP_PAD_MODE = {"reflect": "symmetric", "wrap": "wrap", "nearest": "edge", "constant": "constant"}


def _images(rng, n, h, w, c, dtype=np.float64):
    return rng.standard_normal((n, h, w, c)).astype(dtype)


# ---- NumPy reference warp ---------------------------------------------------------------------

def _map_index(i, n, mode):
    """(index, valid) of integer coordinates i on an axis of length n."""
    if mode == "constant":
        return np.clip(i, 0, n - 1), (i >= 0) & (i < n)
    if mode == "nearest":
        return np.clip(i, 0, n - 1), np.ones(i.shape, bool)
    if mode == "wrap":
        return np.mod(i, n), np.ones(i.shape, bool)
    m = np.mod(i, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m), np.ones(i.shape, bool)


def ref_warp(x, t, out_hw=None, interpolation="bilinear", fill_mode="reflect", fill=0.0):
    n, h, w, c = x.shape
    oh, ow = out_hw or (h, w)
    oy, ox = np.mgrid[0:oh, 0:ow].astype(np.float64)
    out = np.empty((n, oh, ow, c))
    for b in range(n):
        a = t[b]
        k = a[6] * ox + a[7] * oy + 1.0
        xs = (a[0] * ox + a[1] * oy + a[2]) / k
        ys = (a[3] * ox + a[4] * oy + a[5]) / k
        img = x[b].astype(np.float64)

        def read(yy, xx):
            yi, vy = _map_index(yy, h, fill_mode)
            xi, vx = _map_index(xx, w, fill_mode)
            v = img[yi, xi]
            return np.where((vy & vx)[..., None], v, fill)

        if interpolation == "nearest":
            out[b] = read(np.floor(ys + 0.5).astype(int), np.floor(xs + 0.5).astype(int))
            continue
        x0, y0 = np.floor(xs), np.floor(ys)
        fx, fy = (xs - x0)[..., None], (ys - y0)[..., None]
        x0, y0 = x0.astype(int), y0.astype(int)
        out[b] = ((1 - fx) * (1 - fy) * read(y0, x0) + fx * (1 - fy) * read(y0, x0 + 1)
                  + (1 - fx) * fy * read(y0 + 1, x0) + fx * fy * read(y0 + 1, x0 + 1))
    return out


def _random_transforms(rng, n, h, w, projective=False):
    t = np.zeros((n, 8))
    ang = rng.uniform(-0.7, 0.7, n)
    t[:, 0], t[:, 1], t[:, 3], t[:, 4] = np.cos(ang) * 1.1, -np.sin(ang), np.sin(ang), np.cos(ang)
    t[:, 2] = rng.uniform(-w, w, n) * 0.6 + 0.37
    t[:, 5] = rng.uniform(-h, h, n) * 0.6 + 0.21
    if projective:
        t[:, 6:] = rng.uniform(-0.01, 0.01, (n, 2))
    return t


# ---- exact cases -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", sorted(A.FILL_MODES))
def test_rotation_by_90_degrees_equals_rot90(dtype, mode):
    rng = np.random.default_rng(1)
    for size in (1, 4, 7):
        x = _images(rng, 3, size, size, 2, dtype)
        for k in (1, 2, 3, -1):
            t = A.rotation_transforms(np.full(3, k * np.pi / 2), size, size)
            for interp in A.INTERPOLATIONS:
                y = A.warp(x, t, fill_mode=mode, interpolation=interp)
                np.testing.assert_array_equal(y, np.rot90(x, k, axes=(1, 2)))


def test_rotation_by_90_degrees_of_a_non_square_image_keeps_the_centre_column():
    x = np.arange(3 * 5, dtype=np.float32).reshape(1, 3, 5, 1)
    y = A.warp(x, A.rotation_transforms([np.pi / 2], 3, 5), fill_mode="constant",
               fill_value=-1.0)
    # the 3x3 middle of a 3x5 image rotates into itself; the rest maps outside
    np.testing.assert_array_equal(y[0, :, 1:4, 0], np.rot90(x[0, :, 1:4, 0]))
    assert (y[0, :, [0, 4], 0] == -1).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_rotation_and_identity_transform_are_exact(dtype):
    rng = np.random.default_rng(2)
    x = _images(rng, 2, 5, 9, 3, dtype)
    for mode in A.FILL_MODES:
        for interp in A.INTERPOLATIONS:
            y = A.warp(x, A.rotation_transforms(np.zeros(2), 5, 9), fill_mode=mode,
                       interpolation=interp, fill_value=np.nan)
            np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("mode", sorted(A.FILL_MODES))
def test_integer_translation_is_an_exact_shift(mode):
    rng = np.random.default_rng(3)
    x = _images(rng, 4, 6, 7, 2)
    shifts = [(2, 1), (-1, 0), (0, -3), (9, -8)]          # (dx, dy), also beyond the image
    t = A.translation_transforms([s[0] for s in shifts], [s[1] for s in shifts])
    y = A.warp(x, t, fill_mode=mode, fill_value=0.5)
    pad = 20
    for i, (dx, dy) in enumerate(shifts):
        kw = {"constant_values": 0.5} if mode == "constant" else {}
        p = np.pad(x[i], ((pad, pad), (pad, pad), (0, 0)), mode=NP_PAD_MODE[mode], **kw)
        ref = p[pad - dy:pad - dy + 6, pad - dx:pad - dx + 7]
        np.testing.assert_array_equal(y[i], ref)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flip_is_exact(dtype):
    rng = np.random.default_rng(4)
    x = _images(rng, 4, 5, 3, 2, dtype)
    flags = np.array([0, 1, 2, 3], np.uint8)
    y = A.flip(x, flags)
    np.testing.assert_array_equal(y[0], x[0])
    np.testing.assert_array_equal(y[1], x[1, :, ::-1])
    np.testing.assert_array_equal(y[2], x[2, ::-1])
    np.testing.assert_array_equal(y[3], x[3, ::-1, ::-1])
    np.testing.assert_array_equal(A.flip(y, flags), x)          # its own inverse and adjoint


def test_zoom_by_one_is_identity_and_zoom_out_by_two_matches_subsampling():
    rng = np.random.default_rng(5)
    x = _images(rng, 2, 5, 5, 1)
    np.testing.assert_array_equal(A.warp(x, A.zoom_transforms([1, 1], [1, 1], 5, 5)), x)
    y = A.warp(x, A.zoom_transforms([2, 2], [2, 2], 5, 5), fill_mode="constant")
    # zoom 2 about the centre (2, 2): output pixel 1 samples input 0, 2 -> 2, 3 -> 4
    np.testing.assert_array_equal(y[:, 1:4, 1:4], x[:, ::2, ::2])


# ---- general warps against the NumPy reference -----------------------------------------------

@pytest.mark.parametrize("mode", sorted(A.FILL_MODES))
@pytest.mark.parametrize("interp", sorted(A.INTERPOLATIONS))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-12)])
def test_warp_matches_numpy_reference(mode, interp, dtype, tol):
    rng = np.random.default_rng(6)
    for (n, h, w, c) in [(1, 1, 1, 1), (3, 7, 5, 3), (2, 9, 13, 1)]:
        x = _images(rng, n, h, w, c, dtype)
        for projective in (False, True):
            t = _random_transforms(rng, n, h, w, projective)
            y = A.warp(x, t, fill_mode=mode, interpolation=interp, fill_value=0.25)
            ref = ref_warp(x, t, None, interp, mode, 0.25)
            np.testing.assert_allclose(y, ref, rtol=tol, atol=tol)
            out_hw = (h + 2, max(1, w - 1))
            y2 = A.warp(x, t, out_hw, fill_mode=mode, interpolation=interp, fill_value=0.25)
            np.testing.assert_allclose(y2, ref_warp(x, t, out_hw, interp, mode, 0.25),
                                       rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", sorted(A.FILL_MODES))
@pytest.mark.parametrize("dtype,tol", [(np.float32, 2e-5), (np.float64, 1e-10)])
def test_fractional_translations_and_x_zooms_match_numpy_reference(mode, dtype, tol):
    # the warp's fast spans (a fixed source row: translations; x-only zoom/shear with C > 1)
    # against the reference, with the span ends at every column of odd-sized images.  A
    # translation's span uses dx's own fraction where the reference rounds ox + dx first: the
    # float64 results differ in the last bits, hence the looser float64 tolerance
    rng = np.random.default_rng(16)
    for (n, h, w, c) in [(5, 7, 11, 1), (4, 6, 9, 3), (2, 1, 5, 2), (2, 8, 2, 1)]:
        x = _images(rng, n, h, w, c, dtype)
        dx = rng.uniform(-w, w, n)
        dx[0] = 0.5
        dy = rng.uniform(-h, h, n)
        dy[1 % n] = 1e-12                       # within the snap of an integer
        t = A.translation_transforms(dx, dy)
        zoom = t.copy()
        zoom[:, 0] = rng.uniform(0.3, 1.7, n)   # x step != 1 (a zoom along x)
        for tt in (t, zoom):
            y = A.warp(x, tt, fill_mode=mode, fill_value=0.25)
            np.testing.assert_allclose(y, ref_warp(x, tt, None, "bilinear", mode, 0.25),
                                       rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", sorted(A.FILL_MODES))
@pytest.mark.parametrize("interp", sorted(A.INTERPOLATIONS))
def test_warp_backward_is_the_adjoint(mode, interp):
    rng = np.random.default_rng(7)
    x = _images(rng, 3, 6, 8, 2)
    t = _random_transforms(rng, 3, 6, 8, projective=True)
    dy = _images(rng, 3, 5, 9, 2)
    y = A.warp(x, t, (5, 9), fill_mode=mode, interpolation=interp, fill_value=0.0)
    dx = A.warp_backward(dy, t, (6, 8), fill_mode=mode, interpolation=interp)
    assert abs(np.sum(y * dy) - np.sum(x * dx)) < 1e-10 * np.abs(y * dy).sum()


def test_warp_is_independent_of_the_thread_count():
    rng = np.random.default_rng(8)
    x = _images(rng, 8, 40, 40, 3, np.float32)            # large enough to run in parallel
    t = _random_transforms(rng, 8, 40, 40)
    dy = _images(rng, 8, 40, 40, 3, np.float32)
    prev = fastnet.get_num_threads()
    try:
        fastnet.set_num_threads(1)
        one = A.warp(x, t), A.warp_backward(dy, t, (40, 40)), A.flip(x, np.arange(8) % 4)
        fastnet.set_num_threads(2)
        two = A.warp(x, t), A.warp_backward(dy, t, (40, 40)), A.flip(x, np.arange(8) % 4)
    finally:
        fastnet.set_num_threads(prev)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
    with A.single_threaded():
        np.testing.assert_array_equal(A.warp(x, t), one[0])


@pytest.mark.skipif(not __import__("fastnet._kernels.augment", fromlist=["x"]).simd_warp(),
                    reason="no AVX-512 warp kernel on this CPU")
def test_simd_warp_matches_the_scalar_path_and_the_reference():
    # the AVX-512 kernels (one-channel float32, bilinear, constant fill) against the scalar
    # rows and the NumPy reference: small and large rotations (the permute and the gather
    # paths), zooms, shears, pure translations (the masked-load path) including far outside
    # the image, odd sizes, 1-pixel images and output sizes other than the input's.  The
    # kernel computes coordinates in float32 away from integers (as PyTorch's grid_sample
    # does): ~1e-5 pixel, so ~1e-4 on these standard-normal images
    from fastnet._kernels import augment as K
    rng = np.random.default_rng(31)
    for (n, h, w, oh, ow) in [(7, 28, 28, 28, 28), (5, 9, 13, 11, 7), (4, 1, 1, 3, 2),
                              (3, 5, 1, 5, 1), (6, 17, 3, 17, 19), (2, 40, 33, 41, 35)]:
        x = _images(rng, n, h, w, 1, np.float32)
        rot = A.rotation_transforms(rng.uniform(-0.25, 0.25, n), h, w)
        big = _random_transforms(rng, n, h, w)
        zoom = A.zoom_transforms(rng.uniform(0.6, 1.5, n), rng.uniform(0.6, 1.5, n), h, w)
        shift = A.translation_transforms(rng.uniform(-1.2 * w, 1.2 * w, n),
                                         rng.uniform(-1.2 * h, 1.2 * h, n))
        shift[0, 2], shift[-1, 5] = 1e-12, -3.0          # snapped and integer shifts
        far = A.translation_transforms(np.full(n, 1e7), np.full(n, -1e7))
        for t in (rot, big, zoom, shift, far):
            for fill in (0.0, -1.5):
                try:
                    K.simd_warp(True)
                    fast = A.warp(x, t, (oh, ow), fill_mode="constant", fill_value=fill)
                    K.simd_warp(False)
                    slow = A.warp(x, t, (oh, ow), fill_mode="constant", fill_value=fill)
                finally:
                    K.simd_warp(True)
                np.testing.assert_allclose(fast, slow, rtol=3e-4, atol=3e-4)
                ref = ref_warp(x, t, (oh, ow), "bilinear", "constant", fill)
                np.testing.assert_allclose(fast, ref, rtol=3e-4, atol=3e-4)
                assert np.abs(fast - ref).mean() < 1e-5
    # exact cases on the SIMD path: a quarter turn, the identity, integer shifts
    x = _images(rng, 4, 28, 28, 1, np.float32)
    np.testing.assert_array_equal(A.warp(x, A.rotation_transforms(np.full(4, np.pi / 2), 28,
                                                                   28), fill_mode="constant"),
                                  np.rot90(x, 1, axes=(1, 2)))
    np.testing.assert_array_equal(A.warp(x, A.rotation_transforms(np.zeros(4), 28, 28),
                                         fill_mode="constant"), x)
    y = A.warp(x, A.translation_transforms(np.full(4, 3.0), np.full(4, -2.0)),
               fill_mode="constant", fill_value=7.0)
    np.testing.assert_array_equal(y[:, :26, 3:], x[:, 2:, :25])
    assert (y[:, 26:] == 7.0).all() and (y[:, :, :3] == 7.0).all()


def test_warp_survives_degenerate_transforms():
    x = np.ones((2, 4, 4, 1), np.float32)
    t = np.zeros((2, 8))
    t[0, 6] = -1.0                                  # k = 0 on a whole column: divide by zero
    t[1, 2] = 1e300                                 # far outside any image
    for mode in A.FILL_MODES:
        y = A.warp(x, t, fill_mode=mode, fill_value=-2.0)
        assert np.isfinite(y).all()


# ---- crops, cutout, brightness, contrast ---------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_shift_crop_matches_padding_then_slicing(dtype):
    rng = np.random.default_rng(9)
    x = _images(rng, 5, 6, 7, 3, dtype)
    pad = 3
    top = rng.integers(0, 6 + 2 * pad - 4 + 1, 5)
    left = rng.integers(0, 7 + 2 * pad - 5 + 1, 5)
    y = A.shift_crop(x, np.stack([top - pad, left - pad], 1), (4, 5), fill_value=7.0)
    p = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=7.0)
    for i in range(5):
        np.testing.assert_array_equal(y[i], p[i, top[i]:top[i] + 4, left[i]:left[i] + 5])
    # the adjoint: negated offsets back to the input size, zero fill
    dy = _images(rng, 5, 4, 5, 3, dtype)
    y0 = A.shift_crop(x, np.stack([top - pad, left - pad], 1), (4, 5), fill_value=0.0)
    dx = A.shift_crop(dy, np.stack([pad - top, pad - left], 1), (6, 7))
    np.testing.assert_allclose(np.sum(y0 * dy), np.sum(x * dx), rtol=1e-5)


def test_cutout_matches_numpy_and_clips_boxes():
    rng = np.random.default_rng(10)
    x = _images(rng, 3, 6, 5, 2)
    boxes = np.array([[1, 3, 2, 4], [-2, 2, 3, 9], [4, 4, 0, 5]])
    y = A.cutout(x, boxes, fill_value=-9.0)
    ref = x.copy()
    ref[0, 1:3, 2:4] = -9.0
    ref[1, 0:2, 3:5] = -9.0
    np.testing.assert_array_equal(y, ref)
    z = x.copy()
    assert A.cutout(z, boxes, fill_value=-9.0, out=z) is z      # in place
    np.testing.assert_array_equal(z, ref)


def test_scale_shift_clip_and_channel_means_match_numpy():
    rng = np.random.default_rng(11)
    x = rng.uniform(0, 255, (4, 5, 6, 3))
    s, t = rng.uniform(0.5, 1.5, (4, 3)), rng.uniform(-60, 60, (4, 3))
    y = A.scale_shift_clip(x, s, t, (0, 255))
    np.testing.assert_allclose(y, np.clip(x * s[:, None, None] + t[:, None, None], 0, 255))
    np.testing.assert_allclose(A.channel_means(x), x.mean(axis=(1, 2)), rtol=1e-13)
    np.testing.assert_allclose(A.scale_shift_clip(x, s, t), x * s[:, None, None]
                               + t[:, None, None])


def _contrast(x, f, lo, hi):
    s = np.repeat(f[:, None], x.shape[3], 1)
    return A.scale_shift_clip(x, s, (1 - s) * A.channel_means(x), (lo, hi)), s


def test_contrast_and_brightness_gradients_by_finite_differences():
    rng = np.random.default_rng(12)
    x = rng.uniform(0, 1, (2, 4, 3, 2))
    f = np.array([1.6, 0.4])
    dy = rng.standard_normal(x.shape)
    y, s = _contrast(x, f, 0.05, 0.95)
    dx = A.scale_shift_clip_backward(x, dy, s, (1 - s) * A.channel_means(x), (0.05, 0.95),
                                     contrast=True)
    idx, num = numeric_grad(lambda: float(np.sum(_contrast(x, f, 0.05, 0.95)[0] * dy)), x)
    np.testing.assert_allclose(dx.reshape(-1)[idx], num, atol=1e-6)
    shift = np.full((2, 2), 0.3)
    db = A.scale_shift_clip_backward(x, dy, np.ones((2, 2)), shift, (0, 1))
    np.testing.assert_array_equal(db, np.where(x + 0.3 <= 1, dy, 0.0))


def test_mix_matches_numpy():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((5, 3, 2, 2)).astype(np.float32)
    p = rng.permutation(5)
    w = rng.uniform(0, 1, 5)
    ref = w[:, None, None, None] * x + (1 - w[:, None, None, None]) * x[p]
    np.testing.assert_allclose(A.mix(x, p, w), ref, rtol=1e-6, atol=1e-6)
    y2 = rng.standard_normal((5, 4))
    np.testing.assert_allclose(A.mix(y2, p, w), w[:, None] * y2 + (1 - w[:, None]) * y2[p])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_affine_channels_for_every_axis_layout(dtype):
    rng = np.random.default_rng(14)
    x = rng.standard_normal((3, 4, 5, 6)).astype(dtype)
    for axis, bshape in [(-1, (1, 1, 1, 6)), (3, (1, 1, 1, 6)), (1, (1, 4, 1, 1)),
                         ((1, 2), (1, 4, 5, 1)), ((2, 3), (1, 1, 5, 6)), (None, (1, 1, 1, 1)),
                         ((1, 2, 3), (1, 4, 5, 6))]:
        k = int(np.prod(bshape))
        s, t = rng.standard_normal(k), rng.standard_normal(k)
        y = A.affine_channels(x, s, t, axis)
        ref = x * s.reshape(bshape).astype(dtype) + t.reshape(bshape).astype(dtype)
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="consecutive"):
        A.affine_channels(x, np.ones(24), np.ones(24), (1, 3))


def test_shuffle_buffer_follows_the_tf_data_rule():
    def reference(items, size, u):
        buf, out, k = [], [], 0
        for item in items:
            if len(buf) < size:
                buf.append(item)
                continue
            j = int(u[k] * len(buf))
            k += 1
            out.append(buf[j])
            buf[j] = item
        while buf:
            j = int(u[k] * len(buf))
            k += 1
            out.append(buf[j])
            buf[j] = buf[-1]
            buf.pop()
        return out

    for size in (1, 3, 10, 50):
        rng = np.random.default_rng(size)
        u = np.random.default_rng(size).random(40)
        sb = A.ShuffleBuffer(size, rng)
        got = np.concatenate([sb.feed(np.arange(0, 17)), sb.feed(np.arange(17, 40)), sb.drain()])
        assert got.tolist() == reference(range(40), size, u)
        assert sorted(got.tolist()) == list(range(40))
    assert A.ShuffleBuffer(1, np.random.default_rng(0)).feed(np.arange(5)).tolist() == [0, 1, 2, 3]


# ---- argument checks ---------------------------------------------------------------------------

def test_bad_arguments_raise_clear_errors():
    x = np.zeros((2, 4, 4, 1), np.float32)
    t = np.zeros((2, 8))
    with pytest.raises(ValueError, match="fill_mode"):
        A.warp(x, t, fill_mode="mirror")
    with pytest.raises(ValueError, match="interpolation"):
        A.warp(x, t, interpolation="bicubic")
    with pytest.raises(ValueError, match=r"transforms must have shape \(2, 8\)"):
        A.warp(x, np.zeros((2, 6)))
    with pytest.raises(ValueError, match="finite"):
        A.warp(x, np.full((2, 8), np.nan))
    with pytest.raises(ValueError, match="4 dimensions"):
        A.warp(x[0], t)
    with pytest.raises(TypeError, match="float32 or float64"):
        A.flip(x.astype(np.uint8), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="C-contiguous"):
        A.flip(x.transpose(0, 2, 1, 3), np.zeros(2, np.uint8))
    with pytest.raises(ValueError, match="flags must be 0-3"):
        A.flip(x, np.array([0, 4]))
    with pytest.raises(TypeError, match="integers"):
        A.shift_crop(x, np.zeros((2, 2)), (4, 4))
    with pytest.raises(ValueError, match="output_size"):
        A.shift_crop(x, np.zeros((2, 2), int), (0, 4))
    with pytest.raises(ValueError, match="overlap"):
        A.warp(x, t, out=x)
    with pytest.raises(ValueError, match="partner"):
        A.mix(x, np.array([0, 2]), np.ones(2))
    with pytest.raises(ValueError, match="buffer_size"):
        A.ShuffleBuffer(0, np.random.default_rng(0))
    empty = np.zeros((0, 4, 4, 1), np.float32)
    assert A.warp(empty, np.zeros((0, 8))).shape == (0, 4, 4, 1)
