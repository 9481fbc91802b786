"""Wove integration: the command/event codec, the executor and its config, ``install()``, and
the worker with its credentials check and run stats."""
