"""Typed errors. Each one says what is wrong and what to do about it.

The message is part of the contract (tests check it): ``str(err)`` is
``"<problem>: <fix>"`` when a fix is known.
"""

from __future__ import annotations


class EdgeloopError(Exception):
    """Base of every error edgeloop raises on purpose."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


class ConfigError(EdgeloopError):
    """A configuration value is missing or invalid; the message names the key."""


class BackendUnavailable(EdgeloopError):
    """The interpreter backend asked for cannot be imported or is broken."""


class DelegateUnavailable(EdgeloopError):
    """A hardware delegate could not be loaded (library missing, device absent)."""


class ModelError(EdgeloopError):
    """Base for problems with a model file or its manifest entry."""


class ManifestError(ModelError):
    """The model manifest is malformed; the message names the entry and key."""


class ModelNotFound(ModelError):
    """No model of that name is registered and no such file exists."""


class ModelIntegrityError(ModelError):
    """The file's sha256 does not match the manifest."""


class ModelRejected(ModelError):
    """The model failed the isolated check (malformed, crashed, or cannot run)."""


class ModelLoadError(ModelError):
    """The interpreter could not be created or its tensors allocated."""


class DelegateRequired(ModelError):
    """The model only runs with a delegate that is missing, and no CPU variant exists."""


class InputError(EdgeloopError):
    """An input does not fit the model (shape, dtype, unreadable image)."""


class InferenceError(EdgeloopError):
    """``invoke`` failed for a loaded model."""
