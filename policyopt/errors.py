"""User-facing errors.

Anything raised as :class:`UserError` is a mistake in the input (an unknown algorithm, a bad config
value, a missing file). The CLI prints its message on one line and exits with status 2, with no
traceback. Errors that are bugs stay ordinary exceptions.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: printed as one line by the CLI, exit status 2."""


class UnknownChoice(UserError, KeyError):
    """A name that is not in a registry or a fixed set of choices."""

    def __init__(self, kind: str, value: object, choices):
        import difflib

        self.kind, self.value, self.choices = kind, value, sorted(map(str, choices))
        close = difflib.get_close_matches(str(value), self.choices, n=3, cutoff=0.6)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        super().__init__(f"unknown {kind} {value!r}{hint}; valid choices: {', '.join(self.choices)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class NonFiniteLoss(RuntimeError):
    """A loss or gradient became NaN/inf; training stopped before writing anything further."""
