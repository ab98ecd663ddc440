"""Errors that reach users: each says what went wrong and what to do about it."""


class TextSRError(Exception):
    """Base class; the CLI prints the message (no traceback) and exits with ``exit_code``."""

    exit_code = 1


class UsageError(TextSRError):
    """Bad input from the user (arguments, image, sizes): exit code 2."""

    exit_code = 2


class InputImageError(UsageError):
    """The input image cannot be read or does not fit the model/scale."""


class ModelNotFoundError(UsageError):
    """Unknown model name, or weights missing while offline."""


class RuntimeFailure(TextSRError):
    """A failure while running (out of memory, numerical trouble): exit code 1."""

    exit_code = 1


class OutputFolderError(UsageError):
    """The output folder cannot be created or written, or holds another run: found before any work."""


class OutputWriteError(TextSRError):
    """Writing the results failed at the end (disk full, permissions): exit code 2. Nothing was left
    half-written in the output folder; ``rescued`` is the fallback folder that holds the complete
    results (None when that failed too)."""

    exit_code = 2

    def __init__(self, message: str, rescued=None):
        super().__init__(message)
        self.rescued = rescued
