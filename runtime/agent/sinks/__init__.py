"""The agent's sinks, one file each: ``outbox.py`` (records to the durable outbox, through the
sync worker) and ``index.py`` (vectors to the local retrieval index). Each takes actions with
``put``, which never waits: a bounded in-process queue that the sink's own stage hands on in
batches; what a full queue does is a rule per stream, counted (``queue.py``)."""
