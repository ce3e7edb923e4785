"""Reading lm-eval results: any results JSON (a sweep's, or a plain `lm_eval --output_path` run's), into runs.

A run is one (checkpoint, budget) evaluation: a results JSON of `implicit_ssm`/`explicit_ssm` carries what it needs
under config.ssm_model (checkpoint, content hash, budget, convergence, and per task the fields its documents carry);
a results JSON with anytime budgets holds several runs. Files of other models, non-results JSON and duplicates are
skipped, each with its reason; failed sweep jobs (failed.json) become failed runs.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from ..model_adapters.errors import ConfigError
from ..model_adapters.summaries import split_anytime

FAILED = "failed.json"


@dataclass
class Run:
    source: Path  # the results file
    checkpoint: str  # a label, unique among the runs read together (see label_checkpoints)
    content_hash: str
    kind: str  # "implicit" | "explicit"
    budget: dict | None
    info: dict  # config.ssm_model
    results: dict  # lm-eval's "results" section: task -> {"metric,filter": value}
    configs: dict = field(default_factory=dict)  # lm-eval's "configs" section
    date: float | None = None
    git_hash: str | None = None
    wall_s: float | None = None
    error: str | None = None  # a failed run: the message

    @property
    def implicit_budget(self) -> dict:
        """budget, of an implicit run (an explicit run has none)."""
        return cast(dict, self.budget)

    @property
    def greedy_log(self) -> Path | None:
        path = self.info.get("greedy_log")
        if not path:
            return None
        path = Path(path)
        return path if path.is_absolute() else self.source.parent / path


@dataclass
class Loaded:
    runs: list[Run]
    skipped: list[tuple[Path, str]]  # (file, why)


def load_runs(paths: Iterable[str | Path]) -> Loaded:
    """Every run in the given results files and folders (searched recursively for *.json)."""
    files, skipped = [], []
    for path in map(Path, paths):
        if not path.exists():
            raise ConfigError(f"{path}: no such file or folder")
        files += sorted(path.rglob("*.json")) if path.is_dir() else [path]
    runs = []
    for file in files:
        found, why = _runs_of(file)
        runs += found
        if why:
            skipped.append((file, why))
    runs, dropped = _deduplicate(runs)
    skipped += dropped
    label_checkpoints(runs)
    if not runs:
        found_in = ", ".join(map(str, paths))
        raise ConfigError(f"no results of implicit_ssm, explicit_ssm, hf or mamba_ssm found in {found_in}"
                          + "".join(f"\n  skipped {f}: {why}" for f, why in skipped[:10]))
    return Loaded(runs, skipped)


def _runs_of(file: Path) -> tuple[list[Run], str | None]:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return [], f"not valid JSON ({exc})"
    if isinstance(data, list) or file.name == "sweep.json":  # a report's tidy table, a sweep's spec
        return [], None
    if file.parent.parts[-2:] == ("slurm", "submissions") and "tasks" in data:  # a SLURM submission's record
        return [], None
    if not isinstance(data, dict):
        return [], "not an lm-eval results file"
    if file.name == FAILED and "error" in data:
        return [_failed_run(file, data)], None
    if "results" not in data or "config" not in data:
        return [], "not an lm-eval results file (no 'results' and 'config')"
    if "ssm_model" not in data["config"]:
        return _other_model_run(file, data)
    return [_run(file, part) for part in split_anytime(data).values()], None


OTHER_MODELS = {"hf": "hf", "HFLM": "hf", "mamba_ssm": "mamba_ssm", "MambaLMWrapper": "mamba_ssm"}


def _other_model_run(file: Path, data: dict) -> tuple[list[Run], str | None]:
    """A results JSON of another lm-eval model (hf, mamba_ssm): a run with no budget, keyed by its checkpoint (the
    `pretrained` model_arg) and model_args; the task fields come from the task registry."""
    config = data["config"]
    kind = OTHER_MODELS.get(str(config.get("model")))
    args = config.get("model_args")
    if isinstance(args, str):
        args = dict(part.split("=", 1) for part in args.split(",") if "=" in part)
    pretrained = (args or {}).get("pretrained") if isinstance(args, dict) else None
    if kind is None or not pretrained:
        return [], (f"results of model {config.get('model')!r}, which the report does not read (it reads "
                    f"implicit_ssm, explicit_ssm, {', '.join(sorted(set(OTHER_MODELS.values())))})")
    key = hashlib.sha256(json.dumps(args, sort_keys=True, default=str).encode()).hexdigest()[:16]
    info = {"checkpoint": str(pretrained), "kind": kind, "model_args": args, "device": config.get("device"),
            "dtype": config.get("model_dtype") or args.get("dtype")}
    sweep = data.get("sweep") or {}
    return [Run(source=file, checkpoint=Path(str(pretrained)).name, content_hash=sweep.get("content_hash", key),
                kind=kind, budget=None, info=info, results=data.get("results", {}), configs=data.get("configs", {}),
                date=data.get("date"), git_hash=data.get("git_hash"), wall_s=sweep.get("wall_s"))], None


def _run(file: Path, data: dict) -> Run:
    info = data["config"]["ssm_model"]
    sweep = data.get("sweep") or {}
    return Run(source=file, checkpoint=Path(info["checkpoint"]).name, content_hash=info.get("content_hash", ""),
               kind=info.get("kind", "?"), budget=info.get("budget"), info=info, results=data.get("results", {}),
               configs=data.get("configs", {}), date=data.get("date"), git_hash=data.get("git_hash"),
               wall_s=sweep.get("wall_s", info.get("request_seconds")))


def _failed_run(file: Path, data: dict) -> Run:
    info = {"checkpoint": data.get("checkpoint_path", data.get("checkpoint", "?")),
            "tasks": {task: {} for task in data.get("tasks", [])}}
    return Run(source=file, checkpoint=Path(info["checkpoint"]).name, content_hash=data.get("content_hash", ""),
               kind=data.get("kind", "?"), budget=data.get("budget"), info=info, results={},
               date=data.get("date"), error=data.get("error", "failed"))


def run_key(run: Run) -> tuple:
    return (run.content_hash, json.dumps(run.budget, sort_keys=True), run.info.get("dtype"),
            run.info.get("backend"), tuple(sorted(run.results)), data_identity(run))


def data_identity(run: Run) -> tuple:
    """What tells the data a run scored apart, so that runs at other data seeds are kept: our adapters record each
    task's data hash; another model's results (hf, mamba_ssm) only the task parameters in its task configs."""
    tasks = run.info.get("tasks") or {}
    if tasks:
        return tuple(sorted((t, r.get("data_hash")) for t, r in tasks.items()))
    return tuple(sorted((t, json.dumps((c or {}).get("metadata"), sort_keys=True, default=str))
                        for t, c in run.configs.items()))


def _deduplicate(runs: list[Run]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """The same checkpoint, budget, dtype, backend and tasks read twice (a file copied, a rerun): keep the newest."""
    newest: dict[tuple, Run] = {}
    dropped = []
    for run in runs:
        key = run_key(run)
        other = newest.get(key)
        if other is not None and run.error is None and other.error is None:
            older, newer = sorted((other, run), key=lambda r: r.date or 0)
            dropped.append((older.source, f"the same run as {newer.source} (newer), kept once"))
            newest[key] = newer
        else:
            newest.setdefault(key, run)
    return list(newest.values()), dropped


def label_checkpoints(runs: list[Run]) -> None:
    """Checkpoints are named by their folder; two different checkpoints with the same folder name keep both rows,
    told apart by their content hash."""
    hashes: dict[str, set[str]] = {}
    for run in runs:
        if run.error is None:
            hashes.setdefault(run.checkpoint, set()).add(run.content_hash)
    for run in runs:
        if len(hashes.get(run.checkpoint, ())) > 1:
            run.checkpoint = f"{run.checkpoint}@{run.content_hash[:8]}"
