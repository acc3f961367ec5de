"""Expected errors of the variants layer (bad recipes, untreatable text, unreadable artifacts).

Runs on the device too (it travels in the agent bundle): standard library only, Python 3.8+.
"""


class VariantsError(Exception):
    """Base of every expected error raised by ``variants``; the CLI prints it as one line (exit 2)."""


class RecipeError(VariantsError):
    """A recipe is invalid (unknown step, ratio outside [0, 1), a pruning that removes every head)."""


class FrontendError(VariantsError):
    """Text the frontend cannot turn into phones (empty, only punctuation, too long)."""


class ArtifactError(VariantsError):
    """An artifact directory is missing, corrupt (sha256 mismatch) or of an unknown format version."""


class ModelDirError(VariantsError):
    """A ModelScope model directory is unusable (a file missing or unparsable, a bad dictionary entry)."""
