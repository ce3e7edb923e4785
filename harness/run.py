"""`implicit-eval run`: lm-eval's own CLI with this project's tasks included and a model-safe cache path.

Everything after `run` is lm-eval's `run` arguments. Two additions:
- `--include_path` defaults to the project's tasks/ folder (lm-eval's CLI takes one path: a user's own
  --include_path replaces it).
- `--use_cache DIR` becomes DIR/<model fingerprint>, because lm-eval keys its cache on the request text
  only (see model_adapters/adapter/lm.py, set_cache_hook).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import tasks as tasks_package

TASKS_DIR = Path(tasks_package.__file__).parent
SSM_MODELS = ("implicit_ssm", "explicit_ssm")


def lm_eval_argv(args: list[str]) -> list[str]:
    args = list(args)
    args = _with_tasks_dir(args)
    if "--use_cache" in args and (model := _model_of(args)) in SSM_MODELS:
        i = args.index("--use_cache") + 1
        args[i] = str(Path(args[i]) / cache_fingerprint(model, _value_of(args, "--model_args") or ""))
    return ["implicit-eval", "run", *args]  # argv[0] names the program in lm-eval's help and errors


def _with_tasks_dir(args: list[str]) -> list[str]:
    return args if "--include_path" in args else [*args, "--include_path", str(TASKS_DIR)]


def _value_of(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def _model_of(args: list[str]) -> str | None:
    return _value_of(args, "--model")


def cache_fingerprint(model: str, model_args: str) -> str:
    """The adapter's fingerprint for these model_args, computed without building the model."""
    from ..model_adapters.adapter.args import DEFAULT_MAX_LENGTH, parse_model_args, split_model_args
    from ..model_adapters.adapter.info import model_fingerprint
    from ..model_adapters.backends import resolve_backend
    from ..model_adapters.config import resolve_budget
    from ..model_adapters.formats import inspect_checkpoint

    kind = model.split("_")[0]
    args = parse_model_args(kind, split_model_args(model_args))
    ckpt = inspect_checkpoint(args.pretrained, tokenizer=args.tokenizer)
    # The ignore: an explicit checkpoint under implicit_ssm has no budget, so this raises AttributeError, not a
    # ConfigError naming the mismatch (a behaviour change to make, left as it is here).
    budget = resolve_budget(ckpt.default_budget, args.budget_overrides) if kind == "implicit" else None  # type: ignore[arg-type]
    return model_fingerprint(ckpt.content_hash, budget, args.dtype_name, resolve_backend(args.backend, args.device),
                             args.max_length or DEFAULT_MAX_LENGTH)


def main(args: list[str]) -> None:
    from lm_eval.__main__ import cli_evaluate

    sys.argv = lm_eval_argv(args)
    cli_evaluate()
