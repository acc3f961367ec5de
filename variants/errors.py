"""Expected errors of the variants layer (bad recipes, untreatable text, unreadable artifacts).

The errors that can also happen on the device are defined in ``devices.ondevice.errors`` (it travels
in the agent bundle) and re-exported here.
"""

from devices.ondevice.errors import ArtifactError, FrontendError, ModelDirError, VariantsError

__all__ = ["VariantsError", "RecipeError", "FrontendError", "ArtifactError", "ModelDirError"]


class RecipeError(VariantsError):
    """A recipe is invalid (unknown step, ratio outside [0, 1), a pruning that removes every head)."""
