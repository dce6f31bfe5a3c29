"""Errors a user can fix: bad input, a busy or damaged run directory, a model that does not load.

The `clipbench` command prints such an error as one line (`clipbench SUB: error: ...`) and exits
with code 2; `clipbench --debug SUB ...` shows the traceback instead. Anything else that escapes
is a bug and keeps its traceback. The message names the input (field, flag, file) and the fix.
"""

from __future__ import annotations


class UserError(Exception):
    """An input the user can fix; the message names it and says how."""


class RunDirError(UserError):
    """A run directory that cannot be used as it is; the message says why and how to proceed."""
