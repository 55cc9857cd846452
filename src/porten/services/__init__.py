"""The service layer: the shell's long-lived workers between the adapters and the pure core.

The domain folds and plans without I/O; the adapters talk to Postgres and
sockets. Services hold what lives in between: the one batching writer that
turns many appends into few transactions, and the projection that keeps the
fleet state folded from the log. They depend on the domain's ports, never on
a particular adapter, so the same services run on the in-memory store in
tests and simulations.
"""
