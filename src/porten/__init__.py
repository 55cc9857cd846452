"""Porten: an OpenAI-compatible inference hub that places models on a GPU fleet on demand."""

__version__ = "0.1.0"
