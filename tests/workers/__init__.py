"""Child-process bodies and helpers for the tests, one module per object family.

``workers.segment`` (segments, mutexes, events), ``workers.queue``,
``workers.topic``, ``workers.board`` and ``workers.connection``.  Spawned
children import their targets from these modules by name; ``tests/`` is on
``sys.path`` (see ``support.py``).
"""
