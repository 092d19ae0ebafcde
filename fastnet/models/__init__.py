"""Models: Sequential (and the shared training loop in Model)."""
from fastnet.models.model import Model  # noqa: F401
from fastnet.models.sequential import Sequential  # noqa: F401
from fastnet.saving import load_model  # noqa: F401,E402
