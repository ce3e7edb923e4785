"""`implicit-eval`: the project's command. Each subcommand lives in its own module and is imported lazily.

One error path: a user mistake (a bad argument, config, checkpoint, task or path) ends in one line naming what was
wrong and what is valid, exit code 2; a fault of the environment or the model (a full disk, non-finite values)
one line and exit code 1; never a traceback, unless --debug is given (anywhere on the command line).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import sys
import warnings

COMMANDS = {
    "run": "lm-eval's CLI with this project's tasks included (all lm-eval run arguments pass through)",
    "train": "train a small implicit or explicit model on a task of a registered family (resumable)",
    "sweep": "evaluate checkpoints over fixed-point budgets (anytime, resumable) and print the leaderboard",
    "report": "tables, plots and leaderboard from any lm-eval results of implicit_ssm/explicit_ssm",
    "leaderboard": "sweep the bundled checkpoints in every reading and regenerate leaderboards/",
}
USER_ERROR, FAULT = 2, 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    parser = argparse.ArgumentParser(prog="implicit-eval", description="Evaluate implicit and explicit SSM LMs",
                                     epilog="--debug (anywhere): show tracebacks; --quiet (sweep, leaderboard): no "
                                     "progress or log lines")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        print(f"implicit-eval: error: unknown command {argv[0]!r}; valid commands are {list(COMMANDS)}",
              file=sys.stderr)
        return USER_ERROR
    with _logging("--quiet" in argv):
        return _dispatch(argv[0], argv[1:], debug)


@contextlib.contextmanager
def _logging(quiet: bool):
    """Log lines (or none with --quiet) for this command only: levels, filters, warning filters and environment come
    back as they were, so a caller in the same process (a test, a notebook) keeps its own logging."""
    root = logging.getLogger()
    saved_levels = {name: logging.getLogger(name).level for name in ("", *QUIET_LOGGERS)}
    saved_env = {key: os.environ.get(key) for key in QUIET_ENV}
    had_handlers = bool(root.handlers)
    logging.basicConfig(level=logging.ERROR if quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    once = OncePerMessage()
    handlers = list(root.handlers)
    for handler in handlers:  # on the handler: a logger's filter misses its children's records
        handler.addFilter(once)
    try:
        with warnings.catch_warnings():
            if quiet:
                _silence()
            yield
    finally:
        for handler in handlers:
            handler.removeFilter(once)
        if not had_handlers:
            for handler in handlers:
                root.removeHandler(handler)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _dispatch(command: str, rest: list[str], debug: bool) -> int:
    try:
        return _run(command, rest)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM where a command turns it into this (sweep.Terminated)
        print(f"implicit-eval {command}: interrupted", file=sys.stderr)
        return getattr(exc, "code", 130)
    except Exception as exc:  # noqa: BLE001 - the one place that turns every failure into one line
        if debug:
            raise
        code, message = classify(exc)
        hint = "" if code == USER_ERROR else " (rerun with --debug for the traceback)"
        print(f"implicit-eval {command}: error: {message}{hint}", file=sys.stderr)
        return code


def _run(command: str, rest: list[str]) -> int:
    if command in ("sweep", "train"):
        refuse_repeated_flags(rest)
    if command == "run":
        from . import run

        run.main(rest)
        return 0
    if command == "train":
        from . import train_cli

        return train_cli.main(rest)
    if command == "report":  # imports neither torch nor lm-eval
        from . import report_cli

        return report_cli.report_main(rest)
    from . import sweep_cli

    return {"sweep": sweep_cli.sweep_main, "leaderboard": sweep_cli.leaderboard_main}[command](rest)


REPEATABLE_FLAGS = ("--sbatch", "--quiet")  # sweep's --sbatch collects one option per use


def refuse_repeated_flags(args: list[str]) -> None:
    """A flag given twice (`--tau 0.5 ... --tau 0.8`): argparse keeps the last value without a word, so one setting
    would be silently dropped; refused instead (`run` passes lm-eval's flags through; its --model_args are checked
    in run.py)."""
    from ..model_adapters.errors import ConfigError

    names = [a.partition("=")[0] for a in args if a.startswith("--") and a != "--"]
    twice = sorted({n for n in names if names.count(n) > 1 and n not in REPEATABLE_FLAGS})
    if twice:
        raise ConfigError(f"{', '.join(twice)} given more than once; give each flag once (a flag taking several "
                          "values takes them all after one use: --max-iter 4 8 16)")


def classify(exc: Exception) -> tuple[int, str]:
    """(exit code, one-line message) of an exception."""
    from ..model_adapters.errors import USER_ERRORS, home_not_a_folder, one_line_error

    ours = one_line_error(exc)  # the same errors end stock `lm_eval` runs in one line (model_adapters/errors.py)
    if ours is not None:
        return (USER_ERROR if type(ours).__name__ in USER_ERRORS else FAULT), str(ours)
    if home_not_a_folder(exc):
        return USER_ERROR, str(home_not_a_folder(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        user = exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES)
        return (USER_ERROR if user else FAULT), f"{where}{exc.strerror or exc}"
    return FAULT, f"{type(exc).__name__}: {exc}"


class OncePerMessage(logging.Filter):
    """lm-eval repeats some warnings for every task ("st_s5_id: Custom kwargs can be passed to --metadata ..."): let
    each one through once, whatever task it names."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        key = text.split(": ", 1)[-1] if ": " in text[:80] else text
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


QUIET_LOGGERS = ("lm_eval", "lm-eval", "datasets", "implicit_ssm_eval", "absl")
QUIET_ENV = ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def _silence() -> None:
    """--quiet: no warnings, no lm-eval or datasets chatter (their loggers and warnings go to stderr)."""
    warnings.filterwarnings("ignore")
    for key in QUIET_ENV:
        os.environ.setdefault(key, "1")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


if __name__ == "__main__":
    sys.exit(main())
