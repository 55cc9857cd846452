"""Model weights on a node: the disk cache, downloads into it, and a loopback file server.

:class:`~porten.agent.weights.fetcher.WeightFetcher` is what an engine
calls; :mod:`~porten.agent.weights.cache` bounds the disk,
:mod:`~porten.agent.weights.download` moves the bytes and
:mod:`~porten.agent.weights.serve` is the other end for local weights.
"""
