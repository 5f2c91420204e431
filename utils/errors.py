"""User-facing errors: one clear sentence and a non-zero exit, never a traceback.

Code that detects a user's mistake (a missing folder, a wrong class count, a corrupt image, a bad
flag, an unsafe weight file) raises ``UserError("what is wrong; how to fix it.")``. Entry points wrap
their ``main`` with :func:`run_main`, which prints that sentence to stderr and exits with status 2.
Programming errors still surface as ordinary tracebacks.
"""

import functools
import sys

EXIT_USER_ERROR = 2


class UserError(Exception):
    """A mistake the user can fix; its message is one sentence naming the thing and the fix."""


def first_line(exc, default=None) -> str:
    """The first line of an exception's message (some carry tracebacks or advice below it); ``default``
    (the exception's type name when None) for an empty message."""
    text = str(exc).strip()
    if text:
        return text.splitlines()[0]
    return type(exc).__name__ if default is None else default


def user_message(exc):
    """The clean message of a UserError, also when DataLoader re-raised it from a worker process.

    A worker's exception reaches the main process re-created with the worker's traceback in its
    message; the original sentence is the text after the last ``UserError: ``.
    """
    text = str(exc)
    marker = "UserError: "
    if "Original Traceback" in text and marker in text:
        text = text.rsplit(marker, 1)[1]
    return text.strip()


def run_main(main):
    """Decorate an entry point so a UserError becomes ``error: <sentence>`` and exit code 2; the output
    folder it held is released when it returns."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UserError as exc:
            print(f"error: {user_message(exc)}", file=sys.stderr, flush=True)
            sys.exit(EXIT_USER_ERROR)
        finally:
            from utils.files import release_folders  # utils.files imports this module

            release_folders()  # the output folder the run held (the process may go on: tests, notebooks)

    return wrapper
