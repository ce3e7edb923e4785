"""`implicit-eval train`: train a small implicit or explicit Mamba2 LM, or a transformer baseline, on a task of a
registered family.

Flags are TrainConfig's fields (help text from their declarations), plus the architecture (ModelConfig fields for the
Mamba2 kinds; d_model, n_layer, n_head and intermediate_size for the transformer; unset ones take the kind's defaults),
the budgets (--train-max-iter/--train-tol, --eval-max-iter/--eval-tol, --tau for both) and the family's training
options, flattened into one flag each. Examples:

    implicit-eval train --task parity --kind implicit --out runs/p --steps 1500
    implicit-eval train --task a5 --out runs/a5 --d-model 128 --p-identity-mix 0 0.25 0.5 0.75 --resume
    implicit-eval train --task parity --kind transformer --out runs/pt --d-model 48 --n-head 3 --intermediate-size 96
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from .train import ARCH_DEFAULTS, TrainConfig, export, run
from .transformer import TRANSFORMER_ARCH_DEFAULTS

NESTED = ("data_options", "arch", "train_budget", "eval_budget")
ARCH_HELP = {"d_model": "width of the residual stream (the transformer's hidden size)",
             "n_layer": "Mamba2 blocks or transformer decoder layers", "d_state": "Mamba2: SSM state size N",
             "expand": "Mamba2: d_inner = expand * d_model", "headdim": "Mamba2: head size P",
             "chunk_size": "Mamba2: SSD chunk length", "ngroups": "Mamba2: B/C groups",
             "n_head": "transformer: attention heads (of size d_model / n_head)",
             "intermediate_size": "transformer: SwiGLU width"}
BUDGET_FLAGS = {"train_max_iter": ("train_budget", "max_iter", int, "training fixed point: f evaluations"),
                "train_tol": ("train_budget", "tol", float, "training fixed point: tolerance (0: fixed count)"),
                "eval_max_iter": ("eval_budget", "max_iter", int, "stored evaluation budget: cap"),
                "eval_tol": ("eval_budget", "tol", float, "stored evaluation budget: tolerance")}
DATA_FLAGS = {"p_identity": (float, None, "word problems: probability a symbol is the identity"),
              "p_identity_mix": (float, "+", "word problems: per sequence, an identity probability drawn from these"),
              "p_identity_run": (float, None, "word problems: probability a sequence gets one identity run")}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="implicit-eval train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="run folder (state, log, final checkpoint)")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--export", action="store_true", help="only write OUT/model from the saved state")
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NESTED:
            _add(parser, f.name, type(_default(f)), _default(f), f.metadata.get("help", ""))
    for name, text in ARCH_HELP.items():  # unset (None): the kind's default
        by_kind = {kind: table[name] for kind, table in (("Mamba2", ARCH_DEFAULTS),
                                                          ("transformer", TRANSFORMER_ARCH_DEFAULTS)) if name in table}
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, type=int, default=None,
                            help=f"architecture: {text} (default: " + ", ".join(f"{v} ({k})" for k, v in
                                                                               by_kind.items()) + ")")
    defaults = TrainConfig()
    for flag, (budget, key, kind, text) in BUDGET_FLAGS.items():
        _add(parser, flag, kind, getattr(getattr(defaults, budget), key), text)
    _add(parser, "tau", float, defaults.train_budget.tau, "damping of both budgets, in (0, 1]")
    for flag, (kind, nargs, text) in DATA_FLAGS.items():
        parser.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=kind, nargs=nargs, default=None, help=text)
    return parser


def _default(f: dataclasses.Field):
    return cast(Callable[[], Any], f.default_factory)() if f.default is dataclasses.MISSING else f.default


def _add(parser: argparse.ArgumentParser, name: str, kind, default, text: str) -> None:
    flag = f"--{name.replace('_', '-')}"
    if kind is bool:
        parser.add_argument(flag, dest=name, default=default, action=argparse.BooleanOptionalAction,
                            help=f"{text} (default: {default})")
    else:
        parser.add_argument(flag, dest=name, type=kind, default=default, help=f"{text} (default: {default})")


def config_from(args: dict) -> TrainConfig:
    """The flat flags, gathered into TrainConfig's nested fields."""
    defaults = TrainConfig()
    arch = {name: value for name in ARCH_HELP if (value := args.pop(name)) is not None}
    budgets: dict[str, dict[str, Any]] = {"train_budget": {}, "eval_budget": {}}
    for flag, (budget, key, _, _) in BUDGET_FLAGS.items():
        budgets[budget][key] = args.pop(flag)
    tau = args.pop("tau")
    data = {k: v for k in DATA_FLAGS if (v := args.pop(k)) is not None}
    return TrainConfig(**args, arch=arch, data_options=data,
                       train_budget=defaults.train_budget.replace(tau=tau, **budgets["train_budget"]),
                       eval_budget=defaults.eval_budget.replace(tau=tau, **budgets["eval_budget"]))


def main(argv: list[str]) -> int:
    args = vars(build_parser().parse_args(argv))
    out, resume, progress = args.pop("out"), args.pop("resume"), not args.pop("no_progress")
    if args.pop("export"):
        print(f"exported: {export(out)}")
        return 0
    result = run(config_from(args), out, resume=resume, progress=progress)
    print(f"finished: {result}" if result else f"stopped with the state saved; continue with --resume --out {out}")
    return 0
