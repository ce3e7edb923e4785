"""The project's errors that end a run in one line, and their names, in one place (imports nothing).

A user's mistake (a bad model_arg, checkpoint, tokenizer or task) or a model's fault (non-finite values) is reported
as one line naming what was wrong and what is valid: by `implicit-eval` (harness/cli.py, exit status 2 or 1) and by
the stock `lm_eval` (the registration hook, adapter/hook.py, which matches them by name because it runs at interpreter
start-up). UnknownTaskError is the task registry's (tasks/registry.py): tasks import nothing of the models.
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


USER_ERRORS = frozenset({"ConfigError", "CheckpointError", "TokenizerError", "UnknownTaskError"})
FAULTS = frozenset({"NonFiniteError", "OutputError"})
ONE_LINE_ERRORS = USER_ERRORS | FAULTS
PACKAGE = "implicit_ssm_eval"


def one_line_error(exc: BaseException | None) -> BaseException | None:
    """exc, or the exception it was raised from or during, if it is one of ours (ONE_LINE_ERRORS), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__name__ in ONE_LINE_ERRORS and type(exc).__module__.split(".")[0] == PACKAGE:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None
