"""Models: ``Model(inputs, outputs)`` (functional, any graph of layers) and Sequential."""
from fastnet.models.model import Model  # noqa: F401
from fastnet.models.functional import Functional  # noqa: F401
from fastnet.models.sequential import Sequential  # noqa: F401
from fastnet.saving import load_model  # noqa: F401,E402
