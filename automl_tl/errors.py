"""Exception types. The CLI prints an AutoTLError as one line and exits non-zero."""

from __future__ import annotations

__all__ = [
    "AutoTLError",
    "DataError",
    "BackboneError",
    "NotFittedError",
    "ExportError",
    "OutputError",
]


class AutoTLError(Exception):
    """Base class: a problem the user can fix; the message names the value and the fix."""


class DataError(AutoTLError):
    """The input data cannot be used as given."""


class BackboneError(AutoTLError):
    """A backbone is unknown or its weights cannot be found."""


class NotFittedError(AutoTLError, AttributeError):
    """An estimator method needs `fit` to have run first."""


class ExportError(AutoTLError):
    """The exported model does not reproduce the torch model."""


class OutputError(AutoTLError):
    """The output folder cannot be created or written."""
