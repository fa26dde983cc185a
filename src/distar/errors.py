"""Errors shown to the user as one line (``distar`` exits with status 2 on them, never a traceback)."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; printed as one line."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message, or its class name when the message is empty."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
