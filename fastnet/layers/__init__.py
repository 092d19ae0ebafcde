"""Keras-style layers: each a small class holding weights and configuration over fastnet.ops."""
from fastnet.layers.base import Layer  # noqa: F401
from fastnet.layers.conv import Conv2D  # noqa: F401
from fastnet.layers.core import (  # noqa: F401
    Activation, Dense, Flatten, Input, InputLayer, KerasTensor)
from fastnet.layers.merge import (  # noqa: F401
    Add, Average, Concatenate, Dot, Maximum, Minimum, Multiply, Subtract)
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
from fastnet.layers.recurrent import GRU, LSTM, SimpleRNN  # noqa: F401,E402
from fastnet.layers.embedding import Embedding  # noqa: F401,E402
from fastnet.layers.wrappers import Bidirectional, TimeDistributed  # noqa: F401,E402
from fastnet.preprocessing.scaling import (  # noqa: F401,E402  (Keras keeps these in layers)
    MinMaxScaling, Normalization, Rescaling)
from fastnet.preprocessing.augmentation import (  # noqa: F401,E402
    CutOut, RandomBrightness, RandomContrast, RandomCrop, RandomCutout, RandomFlip,
    RandomRotation, RandomTranslation, RandomZoom)
from fastnet.layers.convolutional_depthwise import (  # noqa: F401,E402
    DepthwiseConv2D, SeparableConv2D)
from fastnet.layers.convolutional_transpose import Conv2DTranspose  # noqa: F401,E402
from fastnet.layers.convolutional_1d import Conv1D  # noqa: F401,E402
from fastnet.layers.upsampling import UpSampling2D  # noqa: F401,E402
SeparableConvolution2D = SeparableConv2D
Convolution2DTranspose = Conv2DTranspose
Convolution1D = Conv1D
from fastnet.layers.pooling_1d import (  # noqa: F401,E402
    GlobalAveragePooling1D, GlobalMaxPooling1D)
GlobalAvgPool1D = GlobalAveragePooling1D
GlobalMaxPool1D = GlobalMaxPooling1D
