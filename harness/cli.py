"""`implicit-eval`: the project's command. Each subcommand lives in its own module and is imported lazily."""

from __future__ import annotations

import argparse
import logging
import sys

COMMANDS = {
    "run": "lm-eval's CLI with this project's tasks included (all lm-eval run arguments pass through)",
    "train": "train a small implicit or explicit model on a state-tracking task (resumable)",
    "sweep": "evaluate checkpoints over fixed-point budgets (anytime, resumable) and print the leaderboard",
    "report": "turn a sweep into a tidy table, plots and leaderboard markdown",
    "leaderboard": "sweep the bundled checkpoints in both modes and regenerate leaderboards/",
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="implicit-eval", description="Evaluate implicit and explicit SSM LMs")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    return _dispatch(argv[0], argv[1:])


def _dispatch(command: str, rest: list[str]) -> int:
    from implicit_ssm_eval.model_adapters.config import ConfigError
    from implicit_ssm_eval.model_adapters.formats import CheckpointError
    from implicit_ssm_eval.model_adapters.tokenizer import TokenizerError

    try:
        if command == "run":
            from . import run

            run.main(rest)
            return 0
        if command == "train":
            from . import train_cli

            return train_cli.main(rest)
        from . import sweep_cli

        return {"sweep": sweep_cli.sweep_main, "report": sweep_cli.report_main,
                "leaderboard": sweep_cli.leaderboard_main}[command](rest)
    except (ConfigError, CheckpointError, TokenizerError) as exc:
        print(f"implicit-eval {command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
