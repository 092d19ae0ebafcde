"""Small shared helpers: the global random seed and the progress bar."""
from fastnet.utils.random import get_rng, set_random_seed  # noqa: F401
from fastnet.utils.progbar import Progbar  # noqa: F401
