"""The controls YAMLs through lm-eval itself: they load offline, several requests per document score as they must,
and a model trained on a control task reads its documents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lm_eval import simple_evaluate
from lm_eval.api.model import LM
from lm_eval.tasks import TaskManager

import implicit_ssm_eval.tasks
from implicit_ssm_eval.tasks.controls import make_docs, request_arguments
from implicit_ssm_eval.tasks.controls import make_yamls as ctl_yamls
from implicit_ssm_eval.tasks.controls.lm_eval_hooks import ControlsTask
from implicit_ssm_eval.tasks.registry import families, family_of
from implicit_ssm_eval.tasks.yaml_writer import regenerate

TASKS_DIR = Path(implicit_ssm_eval.tasks.__file__).parent
REPO = TASKS_DIR.parent
DOC_FIELDS = ("family", "task", "bucket", "length", "chance", "data_hash")
METRICS = {"token_acc", "seq_acc", "scaled_token_acc"}

sys.path.insert(0, str(Path(__file__).parent))
from test_controls import remaining_answer  # noqa: E402  (the independent solvers)


class ScriptedLM(LM):
    """A continuation is greedy iff it is what ``predict(task, context)`` starts with; records the documents."""

    def __init__(self, predict) -> None:
        super().__init__()
        self.predict = predict
        self.docs: dict[str, dict[int, dict]] = {}
        self.requests: dict[str, int] = {}

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        results = []
        for request in requests:
            self.docs.setdefault(request.task_name, {})[request.doc_id] = request.doc
            self.requests[request.task_name] = self.requests.get(request.task_name, 0) + 1
            context, continuation = request.args
            wanted = continuation.split()
            greedy = self.predict(request.doc["task"], context)[: len(wanted)] == wanted
            results.append((0.0 if greedy else -5.0, greedy))
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm: bool = False):
        raise NotImplementedError("the controls score log-likelihoods only")


def _manager(**metadata) -> TaskManager:
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=False, metadata=metadata)


def _run(predict, task_names: list[str], **metadata) -> tuple[dict, ScriptedLM]:
    model = ScriptedLM(predict)
    return simple_evaluate(model=model, tasks=task_names, task_manager=_manager(**metadata)), model


def test_generated_yamls_and_fingerprints_are_fresh():
    problems = regenerate(ctl_yamls.YAML_DIR, ctl_yamls.FINGERPRINTS, ctl_yamls.yaml_files(), ctl_yamls.fingerprints(),
                          module=ctl_yamls.MODULE, check=True)  # fmt: skip
    assert not problems, "\n".join(problems)


def test_every_controls_yaml_loads_and_names_a_registered_task():
    manager = _manager(ctl_num_docs=2)
    names = {Path(name).stem for name in ctl_yamls.yaml_files() if not name.startswith("_")}
    assert names <= set(manager.all_tasks)
    loaded = manager.load(["controls"])["tasks"]
    ctl = families()["controls"]
    assert set(loaded) == {ctl.lm_eval_name(task, bucket) for task in ctl.tasks for bucket in ctl.buckets(task)}
    assert len(loaded) == 4 * 4
    for name, task in loaded.items():
        assert isinstance(task, ControlsTask) and task.VERSION == 1, name
        assert family_of(name)[0] is ctl and len(task.test_docs()) == 2


def test_an_oracle_scores_one_and_the_documents_reach_the_model():
    results, model = _run(remaining_answer, ["controls"], ctl_num_docs=3)
    ctl = families()["controls"]
    for task in ctl.tasks:
        for bucket in ctl.buckets(task):
            name = ctl.lm_eval_name(task, bucket)
            metrics = results["results"][name]
            assert {k.split(",")[0] for k in metrics if k.endswith(",none") and "_stderr" not in k} == METRICS
            assert all(metrics[f"{m},none"] == pytest.approx(1.0) for m in METRICS), name
            docs = make_docs(task, bucket, num_docs=3)
            seen = [model.docs[name][i] for i in range(3)]
            assert [{f: d[f] for f in DOC_FIELDS} for d in seen] == [{f: d[f] for f in DOC_FIELDS} for d in docs]
            assert model.requests[name] == sum(len(request_arguments(d)) for d in docs)
    assert results["groups"]["controls"]["seq_acc,none"] == pytest.approx(1.0)


def test_one_wrong_position_costs_its_share_of_token_acc_and_the_whole_sequence():
    def wrong_last(task: str, context: str) -> list[str]:
        rest = remaining_answer(task, context)
        return rest[:-1] + ["x"]  # right up to the final answer symbol

    results, _ = _run(wrong_last, ["ctl_reverse_string_id"], ctl_num_docs=6, ctl_positions=4)
    metrics = results["results"]["ctl_reverse_string_id"]
    docs = make_docs("reverse_string", "id", num_docs=6, positions=4)
    expected = sum(1 - 1 / len(d["scored"]) for d in docs) / len(docs)  # every document misses its last position
    assert metrics["token_acc,none"] == pytest.approx(expected) and metrics["seq_acc,none"] == 0.0
    assert metrics["scaled_token_acc,none"] == pytest.approx((expected - 0.5) / 0.5)


def test_a_constant_model_scores_the_share_of_its_symbol():
    results, _ = _run(lambda task, context: ["1"] * 400, ["ctl_reverse_string_id"], ctl_num_docs=20)
    docs = make_docs("reverse_string", "id", num_docs=20)
    answers = [d["target"].split() for d in docs]
    token = [sum(a[k] == "1" for k in d["scored"]) / len(d["scored"]) for a, d in zip(answers, docs)]
    metrics = results["results"]["ctl_reverse_string_id"]
    assert metrics["token_acc,none"] == pytest.approx(sum(token) / 20)
    assert metrics["seq_acc,none"] == pytest.approx(sum(set(a) == {"1"} for a in answers) / 20)


@pytest.mark.slow
def test_the_stock_cli_runs_a_control_offline(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "lm_eval", "--model", "dummy", "--include_path", str(TASKS_DIR), "--tasks",
               "ctl_mqar_id,ctl_stack_manipulation_ood2x", "--metadata", json.dumps({"ctl_num_docs": 3}),
               "--output_path", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (results_file,) = tmp_path.glob("*/results_*.json")
    results = json.loads(results_file.read_text())["results"]
    assert {"ctl_mqar_id", "ctl_stack_manipulation_ood2x"} <= set(results)
    assert 0.0 <= results["ctl_mqar_id"]["token_acc,none"] <= 1.0


@pytest.mark.slow
def test_a_model_trained_on_a_control_reads_its_documents(tmp_path):
    from implicit_ssm_eval.harness.train import TrainConfig, run
    from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM

    cfg = TrainConfig(task="stack_manipulation", kind="explicit", steps=3, min_len=1, max_len=8, batch_size=8,
                      arch=dict(d_model=16, d_state=8, headdim=8), warmup_steps=1, save_every=100, log_every=1)
    checkpoint = run(cfg, tmp_path, progress=False)
    model = ExplicitSSMLM(pretrained=str(checkpoint))  # unknown_tokens=refuse: an unreadable task would raise
    results = simple_evaluate(model=model, tasks=["ctl_stack_manipulation_id"],
                              task_manager=_manager(ctl_num_docs=2, ctl_positions=3))  # fmt: skip
    metrics = results["results"]["ctl_stack_manipulation_id"]
    assert 0.0 <= metrics["token_acc,none"] <= 1.0 and 0.0 <= metrics["seq_acc,none"] <= 1.0


def test_every_family_with_data_takes_its_seed_option():
    # the committed leaderboard is generated at three data seeds: each seed must give other documents
    options = {name: f.seed_option for name, f in families().items()}
    assert options.items() >= {"state_tracking": "st_seed", "babi": "babi_seed", "text": None,
                               "controls": "ctl_seed"}.items()
    for family in families().values():
        if family.seed_option is None:
            continue
        task = family.tasks[0]
        name = family.lm_eval_name(task, family.buckets(task)[0])
        hashes = set()
        for seed in (0, 1, 2):
            loaded = _manager(**{family.num_docs_option: 2, family.seed_option: seed}).load([name])["tasks"]
            hashes.add(loaded[name].test_docs()[0]["data_hash"])
        assert len(hashes) == 3, name


def test_the_report_keeps_the_controls_metrics_with_their_bucket():
    from implicit_ssm_eval.harness.report import tidy_rows
    from implicit_ssm_eval.harness.results import Run

    info = {"tasks": {"ctl_mqar_ood2x": {"family": "controls", "bucket": "ood2x", "chance": 1 / 512,
                                         "data_hash": "abc", "length": [32, 32]}}}
    results = {"ctl_mqar_ood2x": {"token_acc,none": 0.5, "token_acc_stderr,none": 0.1, "seq_acc,none": 0.0,
                                  "scaled_token_acc,none": 0.499, "alias": "ctl_mqar_ood2x"}}
    run = Run(source=Path("r.json"), checkpoint="m", content_hash="h", kind="explicit", budget=None, info=info,
              results=results)
    rows = {r["metric"]: r for r in tidy_rows([run])}
    assert set(rows) == METRICS
    assert rows["token_acc"]["value"] == 0.5 and rows["token_acc"]["stderr"] == 0.1
    assert (rows["seq_acc"]["group"], rows["seq_acc"]["bucket"], rows["seq_acc"]["multiplier"]) == ("ctl_mqar", "ood2x",
                                                                                                   2.0)
