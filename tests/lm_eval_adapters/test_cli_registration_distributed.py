"""The stock `lm_eval` CLI, the registration hook and its start-up cost, the project's `implicit-eval run`,
cache safety, and a 2-process (gloo) data-parallel run."""

import csv
import json
import os
import re
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch
from lm_eval_adapters.by_hand import expected_ll_acc, tiny_docs  # tests/ is on sys.path (tests/conftest.py)

from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM

TASKS = Path(__file__).parent / "tasks"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(cmd: list[str], cwd: Path, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)


def results_json(folder: Path) -> dict:
    files = sorted(folder.rglob("results_*.json"))
    assert files, f"no results in {folder}"
    return json.loads(files[-1].read_text())


def test_registration_hook_registers_lazily_without_torch():
    code = ("import sys; import lm_eval.api.registry as r; "
            "print('implicit_ssm' in r.model_registry, 'explicit_ssm' in r.model_registry, "
            "'hf' in r.model_registry, 'torch' in sys.modules)")
    out = run([sys.executable, "-c", code], Path.cwd())
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "True", "False"]


def test_registration_hook_adds_under_5ms_to_startup():
    """-X importtime's cumulative figure for the hook module, the only thing the .pth file runs."""
    costs = []
    for _ in range(5):
        out = run([sys.executable, "-X", "importtime", "-c", "import sys; assert 'torch' not in sys.modules"],
                  Path.cwd())
        assert out.returncode == 0, out.stderr
        hook = "implicit_ssm_eval.model_adapters.adapter.hook"
        line = next(x for x in out.stderr.splitlines() if x.rstrip().endswith(hook))
        costs.append(int(re.match(r"import time:\s+\d+ \|\s+(\d+) \|", line).group(1)))
    assert min(costs) < 5000, costs  # microseconds; the minimum of 5 filters out a busy machine


def test_entry_points_for_newer_lm_eval_are_declared():
    names = {ep.name: ep.value for ep in entry_points(group="lm_eval.models")}
    assert names["implicit_ssm"] == "implicit_ssm_eval.model_adapters.adapter.lm:ImplicitSSMLM"
    assert names["explicit_ssm"] == "implicit_ssm_eval.model_adapters.adapter.lm:ExplicitSSMLM"


def model_for(kind: str, checkpoints, args: str):
    from lm_eval.utils import simple_parse_args_string

    cls = ImplicitSSMLM if kind == "implicit" else ExplicitSSMLM
    return cls(pretrained=str(checkpoints[kind]), **simple_parse_args_string(args.strip(",")))


def test_stock_lm_eval_cli_runs_both_models(checkpoints, tmp_path):
    for kind, args in (("implicit", ",max_iter=4,tol=0"), ("explicit", "")):
        out = run(["lm_eval", "--model", f"{kind}_ssm", "--model_args", f"pretrained={checkpoints[kind]}{args}",
                   "--tasks", "tiny_ll,tiny_gen", "--include_path", str(TASKS), "--output_path",
                   str(tmp_path / kind), "--device", "cpu"], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        res = results_json(tmp_path / kind)
        assert res["config"]["ssm_model"]["kind"] == kind
        assert res["results"]["tiny_ll"]["acc,none"] == pytest.approx(
            expected_ll_acc(model_for(kind, checkpoints, args), tiny_docs()))
        if kind == "implicit":
            assert res["config"]["ssm_model"]["budget"]["max_iter"] == 4


def test_stock_cli_reports_every_anytime_budget_and_the_reporter_reads_its_output(checkpoints, tmp_path, evaluate):
    """anytime=1;2 through the stock CLI: each budget's metrics in the results JSON and in the printed table, equal to
    runs at that budget; a convergence block after the table; `implicit-eval report` on the plain output folder."""
    out = run(["lm_eval", "--model", "implicit_ssm", "--model_args",
               f"pretrained={checkpoints['implicit']},max_iter=6,tol=0,anytime=1;2", "--tasks", "tiny_ll,tiny_mc",
               "--include_path", str(TASKS), "--output_path", str(tmp_path / "out"), "--device", "cpu"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    res = results_json(tmp_path / "out")
    for k in (1, 2):
        alone = evaluate("implicit_ssm", {"pretrained": str(checkpoints["implicit"]), "max_iter": k, "tol": 0.0},
                         ["tiny_ll", "tiny_mc"])
        for task in ("tiny_ll", "tiny_mc"):
            assert res["anytime"][str(k)]["results"][task]["acc,none"] == alone["results"][task]["acc,none"]
            assert res["results"][task][f"acc@k={k},none"] == alone["results"][task]["acc,none"]
        assert res["anytime"][str(k)]["ssm_model"]["budget"]["max_iter"] == k
        assert re.search(rf"\|\s*acc@k={k}\s*\|", out.stdout), out.stdout
    assert "implicit_ssm convergence: max_iter=6, tol=0, tau=0.8, fixed_point, simultaneous" in out.stdout
    assert re.search(r"\| tiny_ll \| 6\.0 \| 6 \| 6\.0 \| 100\.0% \|", out.stdout), out.stdout
    report = run(["implicit-eval", "report", str(tmp_path / "out"), "--out", str(tmp_path / "report")], tmp_path)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "3 runs" in report.stderr
    with open(tmp_path / "report" / "results.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["task"] == "tiny_ll" and r["metric"] == "acc"]
    assert sorted(int(r["max_iter"]) for r in rows) == [1, 2, 6]


def test_lm_eval_runs_from_a_folder_with_its_own_tasks_package(tmp_path):
    """A user's own tasks/ package in the working folder shadows nothing of ours (and ours nothing of theirs)."""
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "__init__.py").write_text("MINE = True\n")
    repo = Path(__file__).parents[2]
    out = run([sys.executable, "-m", "lm_eval", "--model", "implicit_ssm", "--model_args",
               f"pretrained={repo / 'checkpoints' / 'parity-implicit'},max_iter=2,tol=0", "--tasks", "st_parity_id",
               "--include_path", str(repo / "tasks"), "--metadata", '{"st_num_docs": 3}', "--device", "cpu",
               "--output_path", str(tmp_path / "out")], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert results_json(tmp_path / "out")["results"]["st_parity_id"]["acc,none"] is not None
    code = "import tasks, implicit_ssm_eval.tasks as ours; print(tasks.MINE, ours.__name__)"
    mine = run([sys.executable, "-c", code], tmp_path)
    assert mine.stdout.split() == ["True", "implicit_ssm_eval.tasks"], mine.stderr


def test_stock_cli_bad_argument_fails_in_one_line_with_the_valid_list(checkpoints, tmp_path):
    cmd = ["lm_eval", "--model", "explicit_ssm", "--model_args", f"pretrained={checkpoints['explicit']},colour=1",
           "--tasks", "tiny_ll", "--include_path", str(TASKS), "--output_path", str(tmp_path / "out")]
    for program in (cmd, [sys.executable, "-m", *cmd]):  # the console script and `python -m lm_eval`
        out = run(program, tmp_path)
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr[-3000:]
        errors = [line for line in out.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1 and errors[0].startswith("lm_eval: error: explicit_ssm: unknown model_args "
                                                         "['colour']; valid ones are"), errors
        assert not (tmp_path / "out").exists()  # nothing written
    debug = run(cmd, tmp_path, env={**ENV, "IMPLICIT_SSM_TRACEBACK": "1"})
    assert debug.returncode == 1 and "Traceback" in debug.stderr
    assert "ConfigError: explicit_ssm: unknown" in debug.stderr


def test_only_our_errors_lose_their_traceback():
    from implicit_ssm_eval.model_adapters.errors import ConfigError
    from implicit_ssm_eval.model_adapters.errors import one_line_error as ours

    mine = ConfigError("bad")
    assert ours(mine) is mine and ours(ValueError("bad")) is None and ours(KeyboardInterrupt()) is None
    try:  # raised from ours (lm-eval re-raising), or while handling ours: still ours
        try:
            raise mine
        except ConfigError as exc:
            raise RuntimeError("wrapped") from exc
    except RuntimeError as wrapped:
        assert ours(wrapped) is mine
    ValueErrorNamedLikeOurs = type("ConfigError", (ValueError,), {})  # a class of another package, same name
    assert ours(ValueErrorNamedLikeOurs("theirs")) is None


def test_implicit_eval_run_includes_project_tasks_and_errors_cleanly(checkpoints, tmp_path):
    out = run(["implicit-eval", "run", "--model", "implicit_ssm", "--model_args",
               f"pretrained={checkpoints['implicit']},tau=3", "--tasks", "st_parity_id"], tmp_path)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1] == ("implicit-eval run: error: tau must be a number in (0, 1], "
                                                   "got 3.0")


def test_cache_is_keyed_by_model_and_budget(checkpoints, tmp_path):
    """lm-eval's cache keys on requests only: a cache path without the fingerprint is refused, and
    `implicit-eval run --use_cache DIR` keeps one file per (checkpoint, budget, dtype, backend)."""
    base = ["--model", "implicit_ssm", "--tasks", "tiny_ll", "--include_path", str(TASKS), "--device", "cpu",
            "--use_cache", str(tmp_path / "cache")]
    accs = {}
    for k in (1, 6):
        out = run(["implicit-eval", "run", *base, "--model_args", f"pretrained={checkpoints['implicit']},max_iter={k}",
                   "--output_path", str(tmp_path / f"out{k}")], tmp_path)
        assert out.returncode == 0, out.stderr[-3000:]
        accs[k] = results_json(tmp_path / f"out{k}")
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    fingerprints = {res["config"]["ssm_model"]["fingerprint"] for res in accs.values()}
    assert len(files) == 2 and {f.split("_rank")[0] for f in files} == fingerprints
    plain = run(["lm_eval", *base[:-2], "--use_cache", str(tmp_path / "shared"), "--model_args",
                 f"pretrained={checkpoints['implicit']}"], tmp_path)
    assert plain.returncode != 0 and "Put this model's fingerprint in the path" in plain.stderr


def test_fingerprint_depends_on_budget(checkpoints):
    a = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=3).fingerprint()
    b = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=4).fingerprint()
    assert a != b and a == ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), max_iter=3).fingerprint()


def test_a_bfloat16_state_is_set_on_the_model_and_changes_the_fingerprint(checkpoints):
    """state_dtype=bfloat16 scores differently, so a cache keyed on the fingerprint must not hand its scores to a
    float32-state run; the float32 default keeps the fingerprint it had before the option existed."""
    plain = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]))
    f32 = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), state_dtype="float32")
    bf16 = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), state_dtype="bfloat16")
    assert plain.fingerprint() == f32.fingerprint() != bf16.fingerprint()
    assert bf16.model.empty_state(2)[0].ssm.dtype == torch.bfloat16 == bf16.model.state_dtype
    assert plain.model.empty_state(2)[0].ssm.dtype == torch.float32
    assert bf16.model_info()["state_dtype"] == "bfloat16" and plain.model_info()["state_dtype"] == "float32"


def test_lanes_reach_the_runtime_and_the_record_but_not_the_fingerprint(checkpoints):
    """lanes=N splits the rows of the sequential and blockwise readings over CUDA streams: how fast, not what is
    scored (row groups change GEMM shapes only, as the batch size does), so the fingerprint stays; the results
    record it."""
    plain = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]))
    two = ImplicitSSMLM(pretrained=str(checkpoints["implicit"]), lanes=2)
    assert two.runtime.lanes == 2 and plain.runtime.lanes == 1
    assert two.fingerprint() == plain.fingerprint()
    assert two.model_info()["lanes"] == 2 and plain.model_info()["lanes"] == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_give_the_same_metrics_as_one(checkpoints, tmp_path):
    common = ["--model", "implicit_ssm", "--model_args", f"pretrained={checkpoints['implicit']},max_iter=20,tol=0.001",
              "--tasks", "tiny_ll,tiny_mc,tiny_roll", "--include_path", str(TASKS), "--device", "cpu",
              ]
    one = run([sys.executable, "-m", "lm_eval", *common, "--output_path", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 0, one.stderr[-3000:]
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    two = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "lm_eval", *common, "--output_path", str(tmp_path / "two")], tmp_path, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = results_json(tmp_path / "one"), results_json(tmp_path / "two")
    for task, name in (("tiny_ll", "acc,none"), ("tiny_mc", "acc,none"), ("tiny_roll", "bits_per_byte,none")):
        assert r1["results"][task][name] == pytest.approx(r2["results"][task][name], rel=1e-6), task
    assert r2["config"]["ssm_model"]["world_size"] == 2
    c1, c2 = (r["config"]["ssm_model"]["convergence"]["scoring"] for r in (r1, r2))
    assert c2["count"] >= c1["count"]  # rank-padding may add duplicate requests, never lose any
    assert c1["iterations_mean"] == pytest.approx(c2["iterations_mean"], rel=0.05)


def test_a_script_importing_lm_eval_keeps_its_traceback(tmp_path):
    """Only lm-eval's own command line shortens our errors: in a user's script the traceback points at their code."""
    script = tmp_path / "mine.py"
    script.write_text("import lm_eval.api.registry\nfrom implicit_ssm_eval.model_adapters.config import ConfigError\n"
                      "raise ConfigError('bad budget')\n")
    out = run([sys.executable, str(script)], tmp_path)
    assert out.returncode == 1 and "Traceback" in out.stderr and "mine.py" in out.stderr
    assert "lm_eval: error:" not in out.stderr
