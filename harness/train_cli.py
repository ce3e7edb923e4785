"""Argument parsing for `implicit-eval train`: one flag per TrainConfig field, typed from its default."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from .train import TrainConfig, export, run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implicit-eval train", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="run directory (state, log, final checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export", action="store_true", help="only write OUT/model from the saved state")
    for f in dataclasses.fields(TrainConfig):
        kind = _type_of(f)
        if kind is bool:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=f.default,
                                action=argparse.BooleanOptionalAction)
        else:
            parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=kind, default=f.default)
    return parser


def _type_of(f: dataclasses.Field):
    if f.name == "p_identity":
        return float
    return type(f.default)


def main(argv: list[str]) -> int:
    args = vars(build_parser().parse_args(argv))
    out, resume, progress = args.pop("out"), args.pop("resume"), not args.pop("no_progress")
    if args.pop("export"):
        print(f"exported: {export(out)}")
        return 0
    result = run(TrainConfig(**args), out, resume=resume, progress=progress)
    print(f"finished: {result}" if result else f"time limit reached; continue with --resume --out {out}")
    return 0
