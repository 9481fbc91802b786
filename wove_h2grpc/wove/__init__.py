"""Wove integration: the command/event codec, the executor, ``install()`` and the worker."""
