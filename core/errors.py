"""Errors every layer may raise: the lowest module of ``core`` (it imports nothing from the package)."""
from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the command line prints it without a traceback (``core.cli`` re-exports it)."""
