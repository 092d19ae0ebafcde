"""Data preprocessing: cleaning, scaling layers and random augmentation layers.

Cleaning (arrays in, arrays out):
    ``drop_invalid_rows(x, y)`` drops rows with NaN/inf and duplicate rows and reports them;
    ``minmax_scale(x)`` scales each feature to [0, 1].

Layers for the front of a model (Keras names; saved with the model):
    ``Normalization`` (``adapt()`` per-channel mean/variance), ``Rescaling``, ``MinMaxScaling``;
    ``RandomFlip``, ``RandomRotation``, ``RandomTranslation``, ``RandomZoom``, ``RandomCrop``,
    ``RandomBrightness``, ``RandomContrast``, ``CutOut`` (active only with ``training=True``,
    seeded).  ``MixUp`` mixes images and labels: use it in ``fastnet.data.Dataset.map``.

>>> from fastnet import layers, models, preprocessing as pp
>>> model = models.Sequential([layers.Input((28, 28, 1)),
...                            pp.RandomRotation(10 / 360), pp.RandomTranslation(0.1, 0.1),
...                            layers.Conv2D(32, 3, activation="relu"), ...])
"""
import fastnet.layers  # noqa: F401,I001  (first: fastnet.layers re-exports these layers)
from fastnet.preprocessing.augmentation import (  # noqa: F401
    CutOut, MixUp, RandomBrightness, RandomContrast, RandomCrop, RandomCutout, RandomFlip,
    RandomRotation, RandomTranslation, RandomZoom)
from fastnet.preprocessing.cleaning import CleaningReport, drop_invalid_rows  # noqa: F401
from fastnet.preprocessing.scaling import (  # noqa: F401
    MinMaxScaling, Normalization, Rescaling, minmax_scale)
