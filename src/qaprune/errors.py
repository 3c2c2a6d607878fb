"""Errors qaprune raises on bad input. Each message names the field, file or layer."""

from __future__ import annotations


class QapruneError(Exception):
    """Base class: the CLI prints these as a one-line error, without a traceback."""


class RecipeError(QapruneError, ValueError):
    """A recipe field is wrong: the message names the field and what is allowed."""


class DataNotFoundError(QapruneError, FileNotFoundError):
    """A dataset could not be found anywhere; the message says how to get it."""


class DataFormatError(QapruneError, ValueError):
    """A data file exists but is not in the expected format."""


class CheckpointError(QapruneError, ValueError):
    """A checkpoint or weights file is missing, corrupt or does not fit the model."""


class NonFiniteError(QapruneError, FloatingPointError):
    """A loss or metric became NaN/Inf; training stopped and the last good checkpoint is kept."""
