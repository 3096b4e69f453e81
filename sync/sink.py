"""``RecordSink``: what takes records durably. ``Outbox`` (in this process) and ``SyncWorker``
(the outbox in a child process) both are one, so the agent and the tools take either.

An item is ``(stream, body)`` or ``(stream, body, trace)``. ``enqueue_many`` returns once the
records are durable; ``enqueue_then`` returns at once and calls ``done`` with the stored records
(or the typed error, e.g. ``OutboxFull``) when they are."""

from __future__ import annotations

from typing import Any, Callable, Iterable, Protocol, Sequence, Union

from .outbox import Enqueued

Item = Union[tuple[str, Any], tuple[str, Any, Union[str, None]]]


class RecordSink(Protocol):
    def enqueue_many(self, items: Iterable[Item], *, priority: int | None = None, ttl_s: float | None = None,
                     trace: str | None = None) -> list[Enqueued]: ...

    def enqueue_then(self, items: Iterable[Item], done: Callable[[Sequence[Enqueued] | BaseException], None], *,
                     priority: int | None = None, ttl_s: float | None = None, trace: str | None = None) -> None: ...

    def stats(self) -> dict[str, Any]: ...

    def close(self) -> None: ...
