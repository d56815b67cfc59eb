"""Errors that are the user's to fix: the CLI prints them as one line, without a traceback.

Every such error subclasses `UserError` where it is defined (a bad record, a bad manifest or
stored group, an unknown model, a re-index that cannot proceed). This module imports nothing
from the packages, so any of them can depend on it.
"""

from __future__ import annotations


class UserError(Exception):
    """Raised for a problem in the user's input, data or setup, never for a bug of ours: the
    message is complete and names what to fix."""


def is_user_error(exc: BaseException) -> bool:
    """A `UserError`, or a missing/forbidden path the user named."""
    return isinstance(exc, (UserError, FileNotFoundError, PermissionError))
