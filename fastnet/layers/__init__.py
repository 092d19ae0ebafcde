"""Keras-style layers: each a small class holding weights and configuration over fastnet.ops."""
from fastnet.layers.base import Layer  # noqa: F401
from fastnet.layers.conv import Conv2D  # noqa: F401
from fastnet.layers.core import Activation, Dense, Flatten, Input, InputLayer  # noqa: F401
from fastnet.layers.pooling import (  # noqa: F401
    AveragePooling2D, GlobalAveragePooling2D, GlobalMaxPooling2D, MaxPooling2D)
from fastnet.layers.activation_layers import ELU, GELU, LeakyReLU, ReLU, Softmax  # noqa: F401
from fastnet.layers.normalization import BatchNormalization  # noqa: F401
from fastnet.layers.regularization import Dropout  # noqa: F401
from fastnet.layers.reshaping import Reshape, ZeroPadding2D  # noqa: F401

MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D
Convolution2D = Conv2D
