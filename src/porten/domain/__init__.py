"""The domain: events, the fleet state folded from them, and the ports the shell implements.

Nothing here performs I/O, reads a clock or draws randomness; time and ids
arrive as arguments.
"""
