"""`implicit-eval run`: lm-eval's own CLI with this project's tasks included and a model-safe cache path.

Everything after `run` is lm-eval's `run` arguments. Two additions:
- `--include_path` defaults to the project's tasks/ folder (lm-eval's CLI takes one path: a user's own
  --include_path replaces it).
- `--use_cache DIR` becomes DIR/<model fingerprint>, because lm-eval keys its cache on the request text
  only (see model_adapters/adapter/lm.py, set_cache_hook).
Before lm-eval starts, a key given twice in --model_args, and a user's task YAML or local documents that are not
UTF-8, are refused in one line (lm-eval would keep the last value, skip the YAML, or fail naming no file).
"""

from __future__ import annotations

import sys
from pathlib import Path

from .. import tasks as tasks_package
from ..model_adapters.errors import ConfigError, read_text

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
    return model_fingerprint(ckpt.content_hash, budget, args.precision, resolve_backend(args.backend, args.device),
                             args.max_length or DEFAULT_MAX_LENGTH)


def main(args: list[str]) -> None:
    from lm_eval.__main__ import cli_evaluate

    from ..model_adapters.adapter.args import cli_duplicates

    cli_duplicates(["implicit-eval", *args])
    check_task_files(args)
    sys.argv = lm_eval_argv(args)
    try:
        cli_evaluate()
    except (AttributeError, ImportError) as exc:
        if "(from YAML in" not in str(exc):
            raise
        raise ConfigError(f"a task YAML names a function that cannot be found: {exc}") from exc


def check_task_files(args: list[str]) -> None:
    """The user's task YAMLs (under --include_path, or named in --tasks) and the local documents they name for the
    text-based loaders must be UTF-8: lm-eval skips such a YAML without a word ("Tasks not found"), and the
    documents fail deep in pyarrow, naming no file."""
    for path in _user_yamls(args):
        config = _yaml_config(path)
        if config.get("dataset_path") in TEXT_LOADERS:
            for doc in _data_files((config.get("dataset_kwargs") or {}).get("data_files"), path.parent):
                read_text(doc, ConfigError, f"task documents named in {path}")


TEXT_LOADERS = ("json", "csv", "text")  # the datasets loaders that decode their files as UTF-8


def _user_yamls(args: list[str]) -> list[Path]:
    from ..model_adapters.adapter.args import flag_values

    named = [Path(t) for v in flag_values(args, ("--tasks", "-t")) for t in v.split(",") if t.endswith(".yaml")]
    folders = [Path(v) for v in flag_values(args, ("--include_path",))]
    return [p for p in named if p.is_file()] + [p for f in folders if f.is_dir() for p in sorted(f.rglob("*.yaml"))]


def _yaml_config(path: Path) -> dict:
    import yaml

    class Loader(yaml.SafeLoader):  # lm-eval's !function tags: read as plain values here, resolved by lm-eval
        pass

    Loader.add_multi_constructor("!", lambda loader, suffix, node: None)
    text = read_text(path, ConfigError, "a task YAML")
    try:
        config = yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader that ignores tags
    except yaml.YAMLError:
        return {}  # lm-eval reports YAML syntax itself
    return config if isinstance(config, dict) else {}


def _data_files(files, base: Path) -> list[Path]:
    """The local files of a YAML's data_files (a path, a list, or a dict of split -> path or list)."""
    items = files.values() if isinstance(files, dict) else [files]
    flat = [f for item in items for f in (item if isinstance(item, list) else [item]) if isinstance(f, str)]
    candidates = [[Path(f), base / f] for f in flat]  # as given (from the working folder), or next to the YAML
    return [next(p for p in c if p.is_file()) for c in candidates if any(p.is_file() for p in c)]
