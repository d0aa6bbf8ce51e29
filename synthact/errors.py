"""The one error type users see, and how any error becomes one line for them."""

from __future__ import annotations

import traceback


class SynthactError(ValueError):
    """Bad input or an unusable environment. The message says what was wrong and how to fix it."""


class SpecError(SynthactError):
    """A job spec that cannot run; the message says what is wrong and how to fix it."""


def first_line(text: str) -> str:
    """The first non-blank line of `text`, stripped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def describe(error: BaseException) -> str:
    """One line for a user, plus the innermost frame for a bug report."""
    frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
    where = f" (at {frame.filename}:{frame.lineno})" if frame else ""
    return f"{type(error).__name__}: {error}{where}"


def last_line(text: str) -> str:
    """The last non-blank line of `text`, stripped."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""
