"""Keras-style layers: each a small class holding weights and configuration over fastnet.ops."""
from fastnet.layers.base import Layer  # noqa: F401
from fastnet.layers.conv import Conv2D  # noqa: F401
from fastnet.layers.core import Activation, Dense, Flatten, Input, InputLayer  # noqa: F401
from fastnet.layers.pooling import MaxPooling2D  # noqa: F401

MaxPool2D = MaxPooling2D
Convolution2D = Conv2D
