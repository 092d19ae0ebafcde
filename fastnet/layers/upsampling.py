"""UpSampling2D: repeat or bilinearly interpolate NHWC images by integer factors."""
from fastnet.layers.base import Layer
from fastnet.layers.conv import check_data_format, check_image_shape
from fastnet.ops import conv_general as general_ops
from fastnet.ops._checks import pair


class UpSampling2D(Layer):
    """(batch, H, W, C) -> (batch, H * size[0], W * size[1], C).

    interpolation 'nearest' repeats each pixel in a size[0] x size[1] block; 'bilinear' uses
    half-pixel centres (as Keras / ``tf.image.resize`` and PyTorch's ``align_corners=False``).

    >>> UpSampling2D(2, interpolation="bilinear")
    """

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kwargs):
        super().__init__(**kwargs)
        check_data_format("UpSampling2D", data_format)
        self.size = pair(size, "size")
        if interpolation not in ("nearest", "bilinear"):
            raise ValueError(f"UpSampling2D: interpolation must be 'nearest' or 'bilinear', "
                             f"got {interpolation!r}")
        self.interpolation = interpolation

    def compute_output_shape(self, input_shape):
        check_image_shape(self, input_shape)
        h, w, c = input_shape
        return (h * self.size[0], w * self.size[1], c)

    def forward(self, x, training=False):
        self._in_shape = x.shape
        return general_ops.upsampling2d(x, self.size, self.interpolation,
                                        out=self.buffer("y", (x.shape[0],) + self.output_shape))

    def backward(self, dy):
        if not self.need_input_grad:
            return None
        return general_ops.upsampling2d_backward(dy, self.size, self.interpolation,
                                                 out=self.buffer("dx", self._in_shape))

    def get_config(self):
        cfg = super().get_config()
        cfg.update(size=self.size, interpolation=self.interpolation)
        return cfg
