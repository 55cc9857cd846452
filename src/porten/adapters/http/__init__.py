"""The HTTP shell: the OpenAI-compatible ``/v1`` surface and its error mapping.

``openai_types`` decodes and validates request bodies, ``errors`` is the one
place where a failure becomes an HTTP status and an OpenAI-shaped body.
"""
