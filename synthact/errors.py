"""The one error type users see: a readable message, no traceback."""


class SynthactError(ValueError):
    """Bad input or an unusable environment. The message says what was wrong and how to fix it."""
