"""A node's agent: one connection out to the hub, an inference engine behind it.

:class:`~porten.agent.connection.Agent` keeps the connection (reconnecting
with backoff), :mod:`porten.agent.session` serves the hub's commands over
it, and :mod:`porten.agent.engines` holds the engines it drives.
:func:`porten.agent.runner.run_agent` runs it all in the foreground.
"""
