"""Expected errors of the code that runs on the device. Standard library only, Python 3.8+.

The controller's error modules (``devices.errors``, ``variants.errors``) derive from and re-export these,
so one ``except`` catches the same failure on either side.
"""


class DevicesError(Exception):
    """Base of every expected error raised by ``devices`` (a bad protocol, an unreachable board, ...)."""


class VariantsError(Exception):
    """Base of every expected error about models and artifacts; the CLI prints it as one line (exit 2)."""


class FrontendError(VariantsError):
    """Text the frontend cannot turn into phones (empty, only punctuation, too long)."""


class ArtifactError(VariantsError):
    """An artifact directory is missing, corrupt (sha256 mismatch) or of an unknown format version."""


class ModelDirError(VariantsError):
    """A ModelScope model directory is unusable (a file missing or unparsable, a bad dictionary entry)."""
