"""The README's data-parallel command (lm-eval's torchrun path with our adapter, on several nodes), run as two nodes
of one CPU process each on this machine: the metrics are those of one process, bit for bit."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
       "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun() -> list[str]:
    """The venv's torchrun script, or the module it runs."""
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.exists() else [sys.executable, "-m", "torch.distributed.run"]


def results(folder: Path) -> dict:
    (path,) = folder.rglob("results_*.json")  # one file, written by rank 0
    return json.loads(path.read_text())


@pytest.mark.slow
def test_the_readmes_multi_node_command_gives_one_process_metrics(tmp_path, readme):
    words = readme("torchrun", "--nnodes")
    nodes = int(words[words.index("--nnodes") + 1])
    assert nodes == 2 and words[words.index("--nproc_per_node") + 1] == "1"
    port = free_port()
    swap = {"HOST:29500": f"127.0.0.1:{port}", "results/dp": str(tmp_path / "dp")}
    cmd = torchrun() + [swap.get(w, w) for w in words[1:]]
    procs = [subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(nodes)]  # every node runs the same command
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs[0][-3000:] + logs[1][-3000:]
    lm_eval = words[words.index("-m") + 1:]
    one = subprocess.run([sys.executable, "-m", *[swap.get(w, w) for w in lm_eval[:-1]], str(tmp_path / "one")],
                         cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    dp, single = results(tmp_path / "dp"), results(tmp_path / "one")
    assert dp["config"]["ssm_model"]["world_size"] == 2 and single["config"]["ssm_model"]["world_size"] == 1
    assert len(dp["results"]) > 5 and dp["results"] == single["results"]  # every metric and stderr, exactly
    assert without_clocks(dp) == without_clocks(single)  # and convergence, per task, samples, configs: all of it


def without_clocks(results: dict) -> dict:
    """A results JSON less what differs between any two runs: clocks, and the number of processes."""
    results = {k: v for k, v in results.items() if k not in ("date", "total_evaluation_time_seconds")}
    info = {k: v for k, v in results["config"]["ssm_model"].items() if k not in ("world_size", "request_seconds")}
    return {**results, "config": {**results["config"], "ssm_model": info}}
