"""Small shared helpers: the global random seed, the progress bar, atomic files."""
from fastnet.utils.files import atomic_path, atomic_write  # noqa: F401
from fastnet.utils.progbar import Progbar  # noqa: F401
from fastnet.utils.random import get_rng, set_random_seed  # noqa: F401
