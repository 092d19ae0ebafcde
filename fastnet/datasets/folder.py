"""Images from a folder of class sub-folders (Keras's ``image_dataset_from_directory`` layout)::

    flowers/
        daisy/  001.jpg 002.png ...
        rose/   a.jpg ...

``from_folder("flowers")`` returns ``(images, labels, class_names)``: uint8 (N, H, W, C)
images, int32 labels (the index of the sub-folder in ``class_names``, sorted by name) and the
class names.  Decoding PNG/JPEG needs Pillow (``pip install 'fastnet[images]'``), imported
only here.  A file that cannot be decoded raises ValueError with its path; images of different
sizes raise unless ``image_size`` asks for them to be resized.
"""
import os

import numpy as np

__all__ = ["from_folder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
_MODES = {"grayscale": "L", "rgb": "RGB", "rgba": "RGBA"}


def _pillow():
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("fastnet.datasets.from_folder needs Pillow to decode images: "
                          "pip install 'fastnet[images]' (or pip install Pillow)") from None
    return Image, UnidentifiedImageError


def _list_files(directory, class_names, follow_links):
    if class_names is None:
        class_names = sorted(e.name for e in os.scandir(directory)
                             if e.is_dir(follow_symlinks=follow_links))
    else:
        class_names = list(class_names)
        for name in class_names:
            if not os.path.isdir(os.path.join(directory, name)):
                raise ValueError(f"from_folder: class folder {os.path.join(directory, name)} "
                                 "does not exist")
    if not class_names:
        raise ValueError(f"from_folder: {directory} has no class sub-folders (expected "
                         "directory/<class>/<image files>)")
    files = []
    for label, name in enumerate(class_names):
        root = os.path.join(directory, name)
        for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_links):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(IMAGE_EXTENSIONS):
                    files.append((os.path.join(dirpath, fn), label))
    return class_names, files


def from_folder(directory, *, image_size=None, color_mode="rgb", class_names=None,
                follow_links=False):
    """Load every PNG/JPEG/BMP/GIF image under ``directory/<class>/``.

    Args:
        directory: the folder holding one sub-folder per class.
        image_size: (height, width) to resize every image to (bilinear); None keeps the
            files' size, which must then be the same for all.
        color_mode: "rgb" (3 channels), "grayscale" (1) or "rgba" (4).
        class_names: the sub-folders to use, in label order (default: all, sorted).
        follow_links: follow symbolic links to sub-folders.

    Returns ``(images uint8 (N, H, W, C), labels int32 (N,), class_names)``.
    """
    Image, Unidentified = _pillow()
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise ValueError(f"from_folder: {directory} is not a folder")
    if color_mode not in _MODES:
        raise ValueError(f"from_folder: color_mode must be one of {sorted(_MODES)}, "
                         f"got {color_mode!r}")
    if image_size is not None:
        if not isinstance(image_size, (tuple, list)) or len(image_size) != 2 or any(
                isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in image_size):
            raise ValueError(f"from_folder: image_size must be (height, width), "
                             f"got {image_size!r}")
    class_names, files = _list_files(directory, class_names, follow_links)
    if not files:
        raise ValueError(f"from_folder: no image files ({', '.join(IMAGE_EXTENSIONS)}) under "
                         f"{directory}")
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[_MODES[color_mode]]
    images, first = None, None
    labels = np.empty(len(files), dtype=np.int32)
    for i, (path, label) in enumerate(files):
        try:
            with Image.open(path) as img:
                img = img.convert(_MODES[color_mode])
                if image_size is not None:
                    img = img.resize((image_size[1], image_size[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.uint8)
        except (Unidentified, OSError, ValueError, SyntaxError) as exc:
            raise ValueError(f"from_folder: {path} is not a readable image ({exc})") from None
        arr = arr.reshape(arr.shape[0], arr.shape[1], channels)
        if images is None:
            images = np.empty((len(files),) + arr.shape, dtype=np.uint8)
            first = path
        elif arr.shape != images.shape[1:]:
            raise ValueError(f"from_folder: images of mixed sizes: {first} is "
                             f"{images.shape[2]}x{images.shape[1]} but {path} is "
                             f"{arr.shape[1]}x{arr.shape[0]} (width x height); pass "
                             "image_size=(height, width) to resize them")
        images[i] = arr
        labels[i] = label
    return images, labels, class_names
