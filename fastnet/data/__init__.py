"""Input pipelines and splits.

``Dataset`` (``from_tensor_slices`` / ``from_arrays`` / ``from_generator``, ``shuffle``,
``batch``, ``map``, ``filter``, ``repeat``, ``take``, ``skip``, ``prefetch``) is a small
``tf.data``: ``Model.fit`` accepts it, a generator or any iterable of (x, y[, w]) batches.
``train_test_split`` and ``validation_split`` make seeded, stratified splits.

>>> from fastnet.data import Dataset, train_test_split
>>> x_tr, x_val, y_tr, y_val = train_test_split(x, y, test_size=0.1, stratify=y, seed=0)
>>> ds = Dataset.from_tensor_slices((x_tr, y_tr)).shuffle(len(x_tr), seed=0).batch(64).prefetch(2)
>>> model.fit(ds, epochs=5, validation_data=(x_val, y_val))
"""
from fastnet.data.adapter import is_dataset_like  # noqa: F401
from fastnet.data.dataset import AUTOTUNE, INFINITE, UNKNOWN, Dataset  # noqa: F401
from fastnet.data.split import train_test_split, validation_split  # noqa: F401

from_tensor_slices = Dataset.from_tensor_slices
from_arrays = Dataset.from_arrays
from_generator = Dataset.from_generator
