"""How our command lines end on a user mistake (one ``error:`` line on stderr, exit status 2)
and print warnings (one ``warning:`` line)."""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager


def _one_line(message, category, filename, lineno, line=None):
    return f"warning: {message}\n"


def plain_warnings():
    """Warnings print as ``warning: message`` on stderr, without the source line that raised them."""
    warnings.formatwarning = _one_line


@contextmanager
def user_errors(*types: type[BaseException], prog: str | None = None):
    """Exceptions of ``types`` raised in the block are the user's mistakes (a missing or
    unreadable file, bad annotations): printed as ``[prog: ]error: message`` on stderr, exit 2.
    Any other exception is a bug and keeps its traceback."""
    try:
        yield
    except types as e:
        print(f"{prog + ': ' if prog else ''}error: {e}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
