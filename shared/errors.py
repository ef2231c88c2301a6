"""Errors every layer may raise, in a module that imports nothing of the project."""


class TransientError(Exception):
    """Raise from a handler to have the batch retried rather than dead-lettered."""
