"""Every error a user can cause, under one base.

The CLI catches :class:`EdgepipeError` alone and prints its message, which names
the file, key or value at fault; anything else is a bug and keeps its traceback.
Each class also derives from the built-in error it refines, so ``except ValueError``
code written against earlier versions still catches it.
"""

from __future__ import annotations


class EdgepipeError(Exception):
    """An expected error: bad input, a missing stage output, an unusable model or source."""


class ConfigError(EdgepipeError, ValueError):
    """A config file or override is invalid; the message names the key and value."""


class DataError(EdgepipeError, ValueError):
    """The dataset on disk is unusable; the message names the file or folder."""


class ImageError(DataError):
    """An image file cannot be read or decoded."""


class StageInputError(EdgepipeError, RuntimeError):
    """A stage's inputs are missing or damaged in the run folder; says which stage rewrites them."""


class ModelFileError(EdgepipeError, ValueError):
    """A file is not a loadable TFLite model, or its sidecar is unusable."""


class ModelNotFoundError(ModelFileError, FileNotFoundError):
    """A model file (or the sidecar beside it) does not exist."""


class MetadataError(ModelFileError):
    """A model's TFLite metadata is missing, malformed or not what the task needs."""


class RunError(EdgepipeError, ValueError):
    """The runner cannot use the model, its sidecar or an option; raised before any frame is read."""


class SourceError(EdgepipeError, ValueError):
    """A video source cannot be opened or read."""


class WeightsError(ConfigError):
    """``model.weights`` names weights that cannot be had or do not fit the model."""


class UsageError(EdgepipeError, ValueError):
    """A command-line argument outside the config (e.g. ``--threads``) is invalid."""
