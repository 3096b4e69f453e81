"""Typed errors of the retrieval index. The text is part of the contract and is tested."""

from __future__ import annotations

from edgeloop.runtime.errors import EdgeloopError


class RetrievalError(EdgeloopError):
    """Base of the retrieval index's errors."""


class UnknownCollection(RetrievalError):
    """No collection of that name in the index file."""


class BadVector(RetrievalError):
    """A vector of the wrong dimension, with NaN or infinite values, or not numbers at all."""


class BadQuery(RetrievalError):
    """k out of range, an unknown filter column, a filter value of the wrong type."""


class ModelVersionMismatch(RetrievalError):
    """The collection was built by another embedding model or version."""


class BadDelta(RetrievalError):
    """An index delta that does not decode, or is for another collection, model or version."""
