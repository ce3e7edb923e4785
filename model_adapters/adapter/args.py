"""model_args of the lm-eval adapters: parsed and validated in one place, with one clear message each.

lm-eval hands model_args over as a dict whose values it has already cast ("16" -> 16, "true" -> True), and
adds batch_size, max_batch_size and device from its own flags. A model_args string (the CLI's) is split here, so that
a key given twice is refused instead of one value silently dropped (split_model_args).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Budget
from ..errors import ConfigError
from ..exits import ExitPoint, parse_exit_point
from ..readings import READINGS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
STATE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}  # how the SSM state is stored between tokens
BUDGET_ARGS = ("max_iter", "tol", "tau", "solver", "mode", "block_size", "anderson_m", "exit", "anytime",
               "anytime_exits")
ANYTIME_ARGS = ("anytime", "anytime_exits")  # budgets read off the run's trajectory, not fields of its Budget
IMPLICIT_ARGS = ("lanes",)  # how an implicit model's readings in pieces run (runtime/readings.py)
COMMON_ARGS = ("pretrained", "tokenizer", "eos_token", "prefix_token", "backend", "dtype", "max_length", "batch_size",
               "max_batch_size", "device", "record_greedy", "cuda_graphs", "unknown_tokens", "progress",
               "share_context", "state_dtype")
UNKNOWN_TOKENS = ("refuse", "flag")  # a task the tokenizer cannot read: refuse it, or score it and mark it
DEFAULT_MAX_LENGTH = 2048
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalArgs:
    pretrained: str
    tokenizer: str | None
    backend: str
    dtype: torch.dtype
    max_length: int | None  # None: DEFAULT_MAX_LENGTH
    batch_size: int | str  # an int or "auto"
    max_batch_size: int
    device: torch.device
    budget_overrides: dict
    anytime: tuple[int, ...] = ()  # extra budgets scored from the run's one trajectory (see lm.py)
    anytime_exits: tuple[ExitPoint, ...] = ()  # thresholds of exit criteria read off that trajectory as well
    record_greedy: str | None = None  # a .jsonl path: greedy tokens at every position of each scored sequence
    cuda_graphs: bool | None = None  # decode through a captured CUDA graph; None = whenever possible
    eos_token: str | None = None  # the tokenizer's end-of-text token, when the checkpoint does not name one
    prefix_token: str | None = None  # the token an empty context is conditioned on (default: end-of-text)
    unknown_tokens: str = "refuse"  # see UNKNOWN_TOKENS
    progress: bool = True  # the adapter's own progress bars (a sweep shows its own instead)
    share_context: bool | None = None  # multiple choice reads a shared context once; None: wherever that is exact
    state_dtype: torch.dtype = torch.float32  # storage of the SSM state (models.set_state_dtype); scans run in float32
    lanes: int = 1  # row groups of the sequential and blockwise readings, each on its own CUDA stream

    @property
    def dtype_name(self) -> str:
        return next(k for k, v in DTYPES.items() if v == self.dtype)

    @property
    def precision(self) -> str:
        """The dtypes that determine scores: the model's, and the state's where it is not the float32 default."""
        state = next(k for k, v in STATE_DTYPES.items() if v == self.state_dtype)
        return self.dtype_name if state == "float32" else f"{self.dtype_name}+state:{state}"


def valid_args(kind: str) -> tuple[str, ...]:
    return COMMON_ARGS + (BUDGET_ARGS + IMPLICIT_ARGS if kind == "implicit" else ())


def parse_model_args(kind: str, args: dict) -> EvalArgs:
    """Validate the adapter's keyword arguments for a model of `kind` ("implicit" | "explicit")."""
    model = f"{kind}_ssm"
    unknown = sorted(set(args) - set(valid_args(kind)))
    if unknown and kind == "explicit" and set(unknown) & set(BUDGET_ARGS):
        raise ConfigError(f"{model}: {sorted(set(unknown) & set(BUDGET_ARGS))} are fixed-point budget arguments; "
                          "an explicit model has no budget (use --model implicit_ssm for implicit checkpoints)")
    if unknown:
        raise ConfigError(f"{model}: unknown model_args {unknown}; valid ones are {sorted(valid_args(kind))}")
    if not args.get("pretrained"):
        raise ConfigError(f"{model}: model_args needs pretrained=<checkpoint directory>")
    overrides = budget_overrides(args)
    return EvalArgs(
        pretrained=str(args["pretrained"]), tokenizer=_opt_str(args.get("tokenizer")),
        backend=str(args.get("backend", "auto")), dtype=_dtype(args.get("dtype", "float32"), model),
        max_length=_positive_int(args.get("max_length"), "max_length", model),
        batch_size=_batch_size(args.get("batch_size", 1), model),
        max_batch_size=_positive_int(args.get("max_batch_size"), "max_batch_size", model) or 64,
        device=_device(args.get("device")), budget_overrides=overrides,
        anytime=_int_list(args.get("anytime"), "anytime", model),
        anytime_exits=_exit_points(args.get("anytime_exits"), model),
        record_greedy=_record_path(args.get("record_greedy")),
        cuda_graphs=_opt_bool(args.get("cuda_graphs"), "cuda_graphs", model),
        eos_token=_opt_str(args.get("eos_token")), prefix_token=_opt_str(args.get("prefix_token")),
        unknown_tokens=_choice(args.get("unknown_tokens", "refuse"), "unknown_tokens", UNKNOWN_TOKENS, model),
        progress=_opt_bool(args.get("progress"), "progress", model) is not False,
        share_context=_opt_bool(args.get("share_context"), "share_context", model),
        state_dtype=STATE_DTYPES[_choice(args.get("state_dtype", "float32"), "state_dtype", tuple(STATE_DTYPES),
                                         model)],
        lanes=_positive_int(args.get("lanes"), "lanes", model) or 1)


def budget_overrides(args: dict) -> dict:
    """The budget fields among the model_args, each value checked now (before a checkpoint is read); how they
    combine with the checkpoint's own budget is config.resolve_budget's (a block_size alone is valid for a checkpoint
    that reads blockwise)."""
    overrides = {k: args[k] for k in BUDGET_ARGS if k in args and k not in ANYTIME_ARGS}
    for k in ("tol", "tau"):  # lm-eval casts "0" to int
        if k in overrides and _number(overrides[k]):
            overrides[k] = float(overrides[k])
    probe = Budget(mode="blockwise", block_size=1, tol=1.0)  # takes every field: each value is checked on its own
    for key, value in overrides.items():
        if key != "mode" and (key != "block_size" or value is not None):
            probe.replace(**{key: value})
    if "mode" in overrides and overrides["mode"] not in READINGS:
        raise ConfigError(f"mode must be one of {list(READINGS)}, got {overrides['mode']!r}")
    return overrides


def split_model_args(arg_string: str) -> dict:
    """A model_args string ("k=v,k2=v2") as lm-eval parses it, except that a key given twice is refused."""
    return once_each(_pairs(arg_string))


def _pairs(arg_string: str) -> list[tuple[str, object]]:
    from lm_eval.utils import handle_arg_string  # here: training imports this module's constants without lm-eval

    parts = (p.partition("=") for p in (arg_string or "").split(",") if p.strip())
    return [(key.strip(), handle_arg_string(value)) for key, _, value in parts]


def once_each(pairs: list[tuple[str, object]]) -> dict:
    """The pairs as a dict; a key given twice is refused (lm-eval would keep the last value without a word)."""
    out: dict = {}
    for key, value in pairs:
        if key in out:
            raise ConfigError(f"model_args gives {key} twice ({out[key]!r} and {value!r}); give each argument once")
        out[key] = value
    return out


def _choice(value, name: str, valid: tuple[str, ...], model: str) -> str:
    if value not in valid:
        raise ConfigError(f"{model}: {name} must be one of {list(valid)}, got {value!r}")
    return value


def _record_path(value) -> str | None:
    """The greedy log is appended to during scoring: its folder must exist before the first batch, not after."""
    if value is None:
        return None
    path = Path(str(value))
    if not path.parent.is_dir():
        raise ConfigError(f"record_greedy={value}: folder {path.parent} does not exist")
    return str(path)


def _opt_bool(value, name: str, model: str) -> bool | None:
    """true, false or auto (None); the words in any case too, as a model_args dict of the Python API gives them."""
    if value is None or value == "auto":
        return None
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ConfigError(f"{model}: {name} must be true, false or auto, got {value!r}")
    return value


def _int_list(value, name: str, model: str) -> tuple[int, ...]:
    """A list of ints, one int, or a ';'-separated string (model_args strings split on commas)."""
    if value is None or value == "":
        return ()
    items = value.split(";") if isinstance(value, str) else value if isinstance(value, (list, tuple)) else [value]
    try:
        out = tuple(int(x) for x in items)
    except (TypeError, ValueError):
        raise ConfigError(f"{model}: {name} must be integers separated by ';' (e.g. 1;2;4;8), got {value!r}") from None
    if any(k < 1 for k in out):
        raise ConfigError(f"{model}: {name} budgets must be >= 1, got {value!r}")
    return out


def _exit_points(value, model: str) -> tuple[ExitPoint, ...]:
    """Thresholds of exit criteria, CRITERION:THRESHOLD separated by ';' (kl:0.01;kl:0.001;argmax:2)."""
    if value is None or value == "":
        return ()
    items = value.split(";") if isinstance(value, str) else list(value)
    try:
        return tuple(parse_exit_point(str(x)) for x in items)
    except ValueError as exc:
        raise ConfigError(f"{model}: anytime_exits: {exc}") from None


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _opt_str(x) -> str | None:
    return None if x is None else str(x)


def _dtype(name, model: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"{model}: dtype must be one of {list(DTYPES)}, got {name!r}")
    return DTYPES[name]


def _positive_int(value, name: str, model: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{model}: {name} must be a positive integer, got {value!r}")
    return value


def _batch_size(value, model: str) -> int | str:
    """An integer, 'auto', or lm-eval's 'auto:N' (treated as 'auto': the search runs once per run)."""
    if isinstance(value, str) and (value == "auto" or value.startswith("auto:")):
        return "auto"
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{model}: batch_size must be a positive integer or 'auto', got {value!r}")
    return value


def _device(value) -> torch.device:
    """lm-eval's CLI asks for cuda:0 by default, even on machines without a GPU: fall back with a notice."""
    try:
        device = torch.device(value or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as exc:
        raise ConfigError(f"device must be a torch device such as cpu, cuda or cuda:1, got {value!r}") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        logger.warning("device %s requested but CUDA is not available: running on cpu", device)
        return torch.device("cpu")
    return device


def cli_duplicates(argv: list[str] | None = None) -> None:
    """In lm-eval's own command line, a key given twice in --model_args (which lm-eval turns into a dict, keeping
    the last) is refused: within one value, across values or across repeated flags (-a, --model_args=..., a JSON
    object). Other callers (scripts, the sweep) pass dicts, which cannot repeat a key; `implicit-eval run` passes its
    own argv."""
    import sys

    from .hook import running_lm_eval_cli

    argv = sys.argv if argv is None else argv
    if argv is not sys.argv or running_lm_eval_cli():
        values = flag_values(argv[1:], ("--model_args", "-a"))
        once_each([pair for value in values for pair in _value_pairs(value)])


def flag_values(args: list[str], flags: tuple[str, ...]) -> list[str]:
    """Every value of a flag that takes one or more, as argparse reads them: "--flag a b" (up to the next flag) or
    "--flag=a", the flag given any number of times under any of its names."""
    values, taking = [], False
    for arg in args:
        name, equals, value = arg.partition("=")
        if equals and name in flags:
            values.append(value)
        elif taking and not arg.startswith("-"):
            values.append(arg)
        taking = arg in flags or (taking and not arg.startswith("-"))
    return values


def _value_pairs(value: str) -> list[tuple[str, object]]:
    """lm-eval also takes a JSON object as --model_args: its keys are read in order, repeats kept."""
    import json

    if value.lstrip().startswith("{"):
        try:
            return json.loads(value, object_pairs_hook=lambda pairs: pairs)
        except ValueError:
            pass
    return _pairs(value)
