"""The project's errors that end a run in one line, and their names, in one place (imports nothing).

A user's mistake (a bad model_arg, checkpoint, tokenizer or task) or a model's fault (non-finite values) is reported
as one line naming what was wrong and what is valid: by `implicit-eval` (harness/cli.py, exit status 2 or 1) and by
the stock `lm_eval` (the registration hook, adapter/hook.py, which matches them by name because it runs at interpreter
start-up). UnknownTaskError (tasks/registry.py) and TaskError (tasks/common.py) are the tasks': tasks import nothing of
the models.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A user-supplied configuration value is invalid; the message says what was expected."""


class CheckpointError(ValueError):
    """A checkpoint directory that cannot be loaded as it is; the message names the file and the problem."""


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file and the problem."""


class NonFiniteError(FloatingPointError):
    """The model produced NaN or inf: no score or generated token may be computed from it."""


class OutputError(OSError):
    """A file the run writes could not be written (a full disk, a folder gone): one line, not lm-eval's traceback."""


USER_ERRORS = frozenset({"ConfigError", "CheckpointError", "TokenizerError", "UnknownTaskError", "TaskError"})
FAULTS = frozenset({"NonFiniteError", "OutputError"})
ONE_LINE_ERRORS = USER_ERRORS | FAULTS
PACKAGE = "implicit_ssm_eval"


def read_text(path, error: type[Exception], what: str) -> str:
    """A file's UTF-8 text; other bytes are `error` naming the file, the first bad byte and what the file is (a
    UnicodeDecodeError names neither the file nor what it should hold)."""
    with open(path, "rb") as fh:
        raw = fh.read()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); {what} must be "
                    "UTF-8") from None


def home_not_a_folder(exc: BaseException) -> str | None:
    """The one-line message for an OSError that comes from HOME not being a folder (caches live under it), or None.
    Imports os here: this module imports nothing at start-up (adapter/hook.py)."""
    import os

    home = os.environ.get("HOME", "")
    if not isinstance(exc, OSError) or not home or os.path.isdir(home):
        return None
    if not str(exc.filename or "").startswith(home.rstrip("/")):
        return None
    return (f"HOME={home} is not a folder, and caches (Hugging Face datasets, Triton kernels) are kept under it; "
            "set HOME to a folder (or HF_HOME and XDG_CACHE_HOME to folders)")


def one_line_error(exc: BaseException | None) -> BaseException | None:
    """exc, or the exception it was raised from or during, if it is one of ours (ONE_LINE_ERRORS), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ONE_LINE_ERRORS and type(exc).__module__.split(".")[0] == PACKAGE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
