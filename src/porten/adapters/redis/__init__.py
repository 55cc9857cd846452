"""Redis adapters: the shared rate limiter (and, later, which hub holds which node)."""
