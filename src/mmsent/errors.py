"""The errors that are the user's to fix (data, flags, a run folder, a missing package), as opposed to bugs.

The command line prints a :class:`UserError` as one line and exits with status 2; any other exception is a bug in
mmsent and is shown with its traceback (exit status 3). Every class here also derives from the built-in exception
that callers of the Python API would expect (``ValueError`` for a bad value, and so on).
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave cannot be used; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration key, flag or value that is not valid."""


class InputError(UserError, ValueError):
    """A post given to a loaded model that it cannot read (e.g. neither text nor image)."""


class PackageError(UserError, RuntimeError):
    """An option needs a package that is not installed, or whose files are broken."""


class UnknownNameError(UserError, KeyError):
    """A name that no registry holds."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""
