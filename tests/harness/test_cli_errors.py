"""Every user mistake or fault ends in one line naming what was wrong and what is valid: exit 2 for mistakes, 1 for
faults, no traceback unless --debug (see the table in docs/VALIDATION.md)."""

import errno
import json
import shutil
from pathlib import Path

import pytest

from implicit_ssm_eval.harness.cli import classify, main


def one_line_error(capsys, argv: list[str], code: int, pattern: str) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1, err
    assert pattern in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def ckpt(parity_checkpoints):
    return str(parity_checkpoints["implicit"])


def test_unknown_command(capsys):
    one_line_error(capsys, ["bogus"], 2, "implicit-eval: error: unknown command 'bogus'; valid commands are ['run',")


def test_unknown_task(capsys, ckpt, tmp_path):
    one_line_error(capsys, ["sweep", ckpt, "--tasks", "no_such_task", "--out", str(tmp_path)], 2,
                   "--tasks: unknown task(s) ['no_such_task']; list them with `lm-eval ls tasks --include_path")
    assert not list(tmp_path.iterdir())  # nothing written


def test_unknown_training_task(capsys, tmp_path):
    one_line_error(capsys, ["train", "--task", "nosuch", "--out", str(tmp_path / "r")], 2,
                   "unknown task 'nosuch'; valid tasks are {'state_tracking': ['s5',")


@pytest.mark.parametrize("argv,message", [
    (["sweep", "--num-docs", "0"], "argument --num-docs: must be an integer >= 1, got 0"),
    (["sweep", "--metadata", "[1]"], "argument --metadata: must be a JSON object, got [1]"),
    (["sweep", "--metadata", "{"], "argument --metadata: not valid JSON"),
    (["sweep", "--tol", "-1"], "argument --tol: must be a number >= 0, got -1"),
    (["sweep", "--modes", "parallel"], "argument --modes: invalid choice: 'parallel'"),
])
def test_bad_flags(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_bad_batch_size_and_tau(capsys, ckpt):
    one_line_error(capsys, ["sweep", ckpt, "--batch-size", "big"], 2,
                   "--batch-size must be a positive integer or 'auto', got 'big'")
    one_line_error(capsys, ["sweep", ckpt, "--tau", "0"], 2, "--tau must be a number in (0, 1], got 0")


def test_report_on_missing_empty_and_garbage_folders(capsys, tmp_path):
    one_line_error(capsys, ["report", str(tmp_path / "missing")], 2, f"{tmp_path / 'missing'}: no such file or folder")
    (tmp_path / "empty").mkdir()
    one_line_error(capsys, ["report", str(tmp_path / "empty")], 2,
                   "no results of implicit_ssm, explicit_ssm, hf or mamba_ssm found")
    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "results.json").write_text("{ not json")
    assert main(["report", str(tmp_path / "garbage")]) == 2
    err = capsys.readouterr().err
    assert "no results of implicit_ssm, explicit_ssm, hf or mamba_ssm found" in err and "not valid JSON" in err


def test_out_under_a_regular_file(capsys, ckpt, tmp_path):
    (tmp_path / "file").write_text("x")
    one_line_error(capsys, ["sweep", ckpt, "--tasks", "st_parity_id", "--max-iter", "1", "--tol", "0", "--modes",
                            "simultaneous", "--out", str(tmp_path / "file" / "sweep")], 2, "Not a directory")


def test_a_checkpoint_with_a_wrong_typed_config_field(capsys, ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    config = json.loads((bad / "config.json").read_text())
    config["model"]["norm_eps"] = "abc"
    (bad / "config.json").write_text(json.dumps(config))
    one_line_error(capsys, ["sweep", str(bad), "--out", str(tmp_path / "s")], 2,
                   "norm_eps must be a finite number > 0, got 'abc'")


def test_resume_without_state(capsys, tmp_path):
    one_line_error(capsys, ["train", "--resume", "--out", str(tmp_path / "run")], 2,
                   "holds no saved training state (train_state.pt); start without --resume")


def test_debug_shows_the_traceback(tmp_path):
    from implicit_ssm_eval.model_adapters.config import ConfigError

    with pytest.raises(ConfigError, match="no such file or folder"):
        main(["--debug", "report", str(tmp_path / "missing")])


@pytest.mark.parametrize("exc,code,text", [
    (OSError(errno.ENOSPC, "No space left on device", "/out/results.json"), 1,
     "/out/results.json: No space left on device"),
    (FileNotFoundError(errno.ENOENT, "No such file or directory", "/x"), 2, "/x: No such file or directory"),
    (FloatingPointError("boom"), 1, "FloatingPointError: boom"),
])
def test_faults_and_mistakes_are_told_apart(exc, code, text):
    assert classify(exc) == (code, text)


def test_a_failed_write_leaves_no_partial_file(tmp_path, monkeypatch):
    from implicit_ssm_eval.harness.sweep import write_json_atomic

    target = tmp_path / "results.json"
    write_json_atomic(target, {"old": 1})

    def full_disk(self, text):
        self.open("w").write(text[:10])
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(type(target), "write_text", full_disk)
    with pytest.raises(OSError, match="No space left"):
        write_json_atomic(target, {"new": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"old": 1} and not list(tmp_path.glob("*.tmp"))


def test_repeated_lm_eval_warnings_are_shown_once():
    import logging

    from implicit_ssm_eval.harness.cli import OncePerMessage

    once = OncePerMessage()

    def record(text):
        return logging.LogRecord("lm_eval.api.task", logging.WARNING, __file__, 1, text, (), None)

    assert once.filter(record("st_s5_id: Custom kwargs can be passed to `--metadata`"))
    assert not once.filter(record("st_a5_ood2x: Custom kwargs can be passed to `--metadata`"))
    assert once.filter(record("st_a5_ood2x: something else"))


def test_quiet_leaves_the_callers_logging_as_it_was(capsys, caplog, ckpt, tmp_path):
    """--quiet silences this command only: a later warning in the same process (a test, a notebook) still shows."""
    import logging
    import os

    before = {name: logging.getLogger(name).level for name in ("", "implicit_ssm_eval", "lm_eval")}
    filters = [list(h.filters) for h in logging.getLogger().handlers]
    env = {key: os.environ.get(key) for key in ("TQDM_DISABLE", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    one_line_error(capsys, ["sweep", ckpt, "--quiet", "--tasks", "no_such_task", "--out", str(tmp_path)], 2,
                   "--tasks: unknown task(s)")
    assert {name: logging.getLogger(name).level for name in before} == before
    assert [list(h.filters) for h in logging.getLogger().handlers] == filters
    assert {key: os.environ.get(key) for key in env} == env
    logging.getLogger("implicit_ssm_eval.model_adapters.adapter.lm").warning("still heard")
    assert "still heard" in caplog.text


def test_every_sweep_flag_says_what_it_does_and_its_default_once():
    from implicit_ssm_eval.harness.sweep_cli import sweep_parser

    parser = sweep_parser()
    shown = [a for a in parser._actions if a.help != "==SUPPRESS=="]
    assert all(a.help for a in shown), [a.dest for a in shown if not a.help]
    text = parser.format_help()
    assert "(default: None)" not in text and "(default: False)" not in text
    assert "(default: checkpoints/*)" in text and text.count("default: checkpoints/*") == 1
    assert "(default: 256)" in text  # a plain default is still appended


# --- second round (issue 33): inputs that ended in a traceback --------------------------------------------------

LATIN1 = "caf\xe9".encode("latin-1")  # a byte that is not UTF-8


def nothing_in(folder) -> bool:
    """Nothing written: no folder, or an empty one (the sweep makes --out before it reads the checkpoints)."""
    return not folder.exists() or not any(folder.iterdir())


RUN = ["run", "--model", "implicit_ssm", "--device", "cpu"]


def command(argv: list[str], code: int, pattern: str, env: dict | None = None, program: str = "implicit-eval") -> str:
    """one_line_error in a process of its own (lm-eval's log handlers keep the stderr of the test that first ran it),
    under `implicit-eval` or lm-eval's own command line (`lm_eval`)."""
    import os
    import subprocess
    import sys

    module = {"implicit-eval": "implicit_ssm_eval.harness", "lm_eval": "lm_eval"}[program]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env or {})}
    env = {key: value for key, value in env.items() if value is not None}  # None: unset
    out = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True, env=env, timeout=300)
    lines = [line for line in out.stderr.splitlines() if "error:" in line]
    assert out.returncode == code and "Traceback" not in out.stderr and len(lines) == 1, out.stderr[-3000:]
    assert pattern in lines[0], lines[0]
    return lines[0]


def run_args(ckpt, *rest, model_args=",max_iter=2,tol=0"):
    return [*RUN, "--model_args", f"pretrained={ckpt}{model_args}", *rest]


def copy_with(src, dst, name: str, data: bytes):
    shutil.copytree(src, dst)
    (dst / name).write_bytes(data)
    return dst


def test_a_checkpoint_config_that_is_not_utf8(capsys, ckpt, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    config = (bad / "config.json").read_bytes()
    (bad / "config.json").write_bytes(config[:-2] + LATIN1 + config[-2:])
    one_line_error(capsys, ["sweep", str(bad), "--out", str(tmp_path / "s")], 2,
                   f"{bad / 'config.json'}: not UTF-8 text (byte 0xe9 at offset {len(config) - 2 + 3}); a checkpoint's "
                   "JSON file must be UTF-8")
    assert nothing_in(tmp_path / "s")


def test_a_tokenizer_config_that_is_not_utf8(capsys, checkpoints, tmp_path):
    bad = copy_with(checkpoints["implicit"], tmp_path / "bad", "tokenizer_config.json", b'{"eos_token": "' + LATIN1
                    + b'"}')
    command(run_args(bad, "--tasks", "st_parity_id", "--output_path", str(tmp_path / "s")), 2,
                   f"{bad / 'tokenizer_config.json'}: not UTF-8 text (byte 0xe9 at offset 18); a tokenizer's JSON file "
                   "must be UTF-8")
    assert nothing_in(tmp_path / "s")


def test_a_tokenizer_with_more_ids_than_the_embedding_is_refused_at_load(capsys, ckpt, tmp_path):
    """index 60 is out of bounds, deep in a forward, became a refusal naming both sizes before anything runs."""
    a5 = Path(__file__).parents[2] / "checkpoints" / "a5-implicit" / "tokenizer.json"
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    shutil.copy(a5, bad / "tokenizer.json")
    command(run_args(bad, "--tasks", "st_parity_id", "--output_path", str(tmp_path / "s")), 2,
                   f"{bad / 'tokenizer.json'}: the tokenizer has 63 token ids but the model's embedding has 8 rows "
                   "(vocab_size 7); use the tokenizer the model was trained with")
    assert nothing_in(tmp_path / "s")


@pytest.mark.parametrize("metadata,message", [
    ({"st_num_doc": 3}, "unknown state-tracking option(s) ['st_num_doc']; valid options are ['st_bucket', "
                        "'st_lengths', 'st_num_docs',"),
    ({}, "ppl_local_text needs a file: pass --metadata '{\"ppl_text_path\": \"/path/to/file.txt\"}'"),
    ({"ppl_text_path": "MISSING"}, "ppl_text_path 'MISSING' is not a readable file"),
    ({"ppl_text_path": "LATIN1"}, "LATIN1: not UTF-8 text (byte 0xe9 at offset 3); ppl_text_path must be UTF-8"),
])
def test_task_options_and_files_end_in_one_line(capsys, ckpt, tmp_path, metadata, message):
    (tmp_path / "latin1.txt").write_bytes(LATIN1 + b" text\n")
    paths = {"MISSING": str(tmp_path / "missing.txt"), "LATIN1": str(tmp_path / "latin1.txt")}
    metadata = {k: paths.get(v, v) for k, v in metadata.items()}
    message = message.replace("MISSING", paths["MISSING"]).replace("LATIN1", paths["LATIN1"])
    task = "st_parity_id" if "st_num_doc" in metadata else "ppl_local_text"
    command(run_args(ckpt, "--tasks", task, "--metadata", json.dumps(metadata), "--output_path",
                                    str(tmp_path / "out")), 2, message)
    assert not (tmp_path / "out").exists()


TINY_TASKS = Path(__file__).parents[1] / "lm_eval_adapters" / "tasks"
JSONL_TASK = """task: my_jsonl
dataset_path: json
dataset_kwargs:
  data_files:
    test: docs.jsonl
test_split: test
output_type: loglikelihood
doc_to_text: "{{text}}"
doc_to_target: " {{target}}"
metric_list:
  - metric: acc
"""


def test_a_user_task_yaml_or_its_documents_not_utf8(capsys, ckpt, tmp_path):
    yamls = tmp_path / "yamls"
    yamls.mkdir()
    (yamls / "bad.yaml").write_bytes(b"task: my_bad\n# " + LATIN1 + b"\n")
    command(run_args(ckpt, "--tasks", "my_bad", "--include_path", str(yamls)), 2,
                   f"{yamls / 'bad.yaml'}: not UTF-8 text (byte 0xe9 at offset 18); a task YAML must be UTF-8")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "my.yaml").write_text(JSONL_TASK)
    (docs / "docs.jsonl").write_bytes(b'{"text": "a b", "target": "c"}\n{"text": "' + LATIN1 + b'", "target": "c"}\n')
    command(run_args(ckpt, "--tasks", "my_jsonl", "--include_path", str(docs)), 2,
                   f"{docs / 'docs.jsonl'}: not UTF-8 text (byte 0xe9 at offset 44); task documents named in "
                   f"{docs / 'my.yaml'} must be UTF-8")


def test_a_user_task_yaml_naming_a_missing_function(capsys, ckpt, tmp_path):
    shutil.copy(TINY_TASKS / "tiny_utils.py", tmp_path)
    (tmp_path / "tiny.yaml").write_text((TINY_TASKS / "tiny.yaml").read_text().replace("tiny_utils.load",
                                                                                       "tiny_utils.lod"))
    command(run_args(ckpt, "--tasks", "tiny_ll", "--include_path", str(tmp_path)), 2,
                   f"a task YAML names a function that cannot be found: Module '{tmp_path / 'tiny_utils.py'}' has no "
                   f"function 'lod' (from YAML in {tmp_path})")


@pytest.mark.parametrize("model_args", [
    ["--model_args", "pretrained=CKPT,max_iter=4,max_iter=8"],
    ["--model_args", "pretrained=CKPT", "max_iter=4", "max_iter=8"],
    ["-a", "pretrained=CKPT,max_iter=4,max_iter=8"],
    ["--model_args=pretrained=CKPT,max_iter=4,max_iter=8"],
    ["--model_args", "pretrained=CKPT,max_iter=4", "--model_args", "max_iter=8"],
    ["--model_args", '{"pretrained": "CKPT", "max_iter": 4, "max_iter": 8}'],
])
def test_a_model_arg_given_twice_is_found_in_every_form_of_the_command_line(model_args):
    from implicit_ssm_eval.model_adapters.adapter.args import cli_duplicates
    from implicit_ssm_eval.model_adapters.errors import ConfigError

    argv = ["lm_eval", "--model", "implicit_ssm", *model_args, "--tasks", "st_parity_id", "--device", "cpu"]
    with pytest.raises(ConfigError, match=r"model_args gives max_iter twice \(4 and 8\); give each argument once"):
        cli_duplicates(argv)
    cli_duplicates(["lm_eval", "-a", "pretrained=x,max_iter=4", "tol=0", "--model_args", "tau=1", "--tasks", "t"])


@pytest.mark.parametrize("program,code", [("implicit-eval", 2), ("lm_eval", 1)])
def test_a_model_arg_given_twice_is_refused_by_both_command_lines(ckpt, tmp_path, program, code):
    """lm-eval keeps the last value without a word; both command lines refuse instead, and write nothing."""
    argv = ["--model", "implicit_ssm", "-a", f"pretrained={ckpt},max_iter=4,max_iter=8", "--tasks", "st_parity_id",
            "--device", "cpu", "--output_path", str(tmp_path / "out")]
    if program == "implicit-eval":
        argv = ["run", *argv]
    else:
        argv += ["--include_path", str(Path(__file__).parents[2] / "tasks")]
    prefix = "implicit-eval run: error: " if code == 2 else "lm_eval: error: "
    command(argv, code, prefix + "model_args gives max_iter twice (4 and 8); give each argument once",
            program=program)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("program,code", [("implicit-eval", 2), ("lm_eval", 1)])
def test_home_that_is_not_a_folder(checkpoints, tmp_path, program, code):
    """The datasets cache goes under HOME: a HOME that is a file is named, instead of NotADirectoryError's traceback."""
    (tmp_path / "my.yaml").write_text(JSONL_TASK.replace("docs.jsonl", str(tmp_path / "docs.jsonl")))
    (tmp_path / "docs.jsonl").write_text('{"text": "a b", "target": "c"}\n')
    (tmp_path / "home").write_text("a file")
    argv = ["--model", "implicit_ssm", "-a", f"pretrained={checkpoints['implicit']},max_iter=2", "--tasks", "my_jsonl",
            "--include_path", str(tmp_path), "--device", "cpu"]
    env = {"HOME": str(tmp_path / "home"), "HF_HOME": None, "XDG_CACHE_HOME": None, "HF_DATASETS_CACHE": None}
    command(["run", *argv] if program == "implicit-eval" else argv, code,
            f"HOME={tmp_path / 'home'} is not a folder, and caches (Hugging Face datasets, Triton kernels) are kept "
            "under it; set HOME to a folder (or HF_HOME and XDG_CACHE_HOME to folders)", env=env, program=program)


@pytest.mark.parametrize("case", ["config", "option", "no_path", "missing", "latin1", "tokenizer"])
def test_the_stock_cli_ends_these_in_one_line_too(ckpt, tmp_path, case):
    """The same inputs under lm-eval's own command line: `lm_eval: error: <message>`, exit 1, nothing written."""
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    if case == "config":
        (bad / "config.json").write_bytes((bad / "config.json").read_bytes()[:-2] + LATIN1 + b"}\n")
    if case == "tokenizer":
        shutil.copy(Path(__file__).parents[2] / "checkpoints" / "a5-implicit" / "tokenizer.json", bad)
    (tmp_path / "latin1.txt").write_bytes(LATIN1 + b" text\n")
    metadata = {"config": {}, "tokenizer": {}, "option": {"st_num_doc": 3}, "no_path": {},
                "missing": {"ppl_text_path": str(tmp_path / "nope.txt")},
                "latin1": {"ppl_text_path": str(tmp_path / "latin1.txt")}}[case]
    expected = {"config": f"{bad / 'config.json'}: not UTF-8 text",
                "tokenizer": f"{bad / 'tokenizer.json'}: the tokenizer has 63 token ids but the model's embedding has "
                             "8 rows (vocab_size 7)",
                "option": "unknown state-tracking option(s) ['st_num_doc']; valid options are",
                "no_path": "ppl_local_text needs a file: pass --metadata",
                "missing": f"ppl_text_path '{tmp_path / 'nope.txt'}' is not a readable file",
                "latin1": f"{tmp_path / 'latin1.txt'}: not UTF-8 text (byte 0xe9 at offset 3); ppl_text_path must be "
                          "UTF-8"}[case]
    task = "ppl_local_text" if case in ("no_path", "missing", "latin1") else "st_parity_id"
    command(["--model", "implicit_ssm", "-a", f"pretrained={bad},max_iter=2", "--tasks", task, "--include_path",
             str(Path(__file__).parents[2] / "tasks"), "--metadata", json.dumps(metadata), "--device", "cpu",
             "--output_path", str(tmp_path / "out")], 1, f"lm_eval: error: {expected}", program="lm_eval")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag,value,message", [
    ("--lr", "inf", "lr must be a finite number > 0, got inf"),
    ("--clip", "nan", "clip must be a finite number > 0, got nan"),
    ("--weight-decay", "nan", "weight_decay must be a finite number >= 0, got nan"),
    ("--min-lr-ratio", "2", "min_lr_ratio must be a number in [0, 1], got 2.0"),
])
def test_non_finite_training_settings_are_refused_before_anything_is_written(capsys, tmp_path, flag, value, message):
    one_line_error(capsys, ["train", "--task", "parity", "--steps", "2", flag, value, "--out", str(tmp_path / "r")], 2,
                   f"implicit-eval train: error: {message}")
    assert not (tmp_path / "r").exists()


def test_a_diverging_run_stops_in_one_line_and_writes_nothing_non_finite(capsys, tmp_path):
    """lr=1e30 is finite, so it is accepted; the weights blow up after one step and the next loss is nan: the run
    stops (a fault: exit 1) before that step is applied, with no finished model and only finite states saved."""
    import torch

    out = tmp_path / "r"
    one_line_error(capsys, ["train", "--task", "parity", "--steps", "6", "--lr", "1e30", "--warmup-steps", "1",
                            "--save-every", "1", "--batch-size", "8", "--d-model", "16", "--no-progress", "--out",
                            str(out)], 1,
                   f"implicit-eval train: error: training diverged at step 2: the loss is nan (lr=1e+30, clip=1); the "
                   f"step was not applied and {out / 'train_state.pt'} keeps the last saved state; lower --lr")
    state = torch.load(out / "train_state.pt", weights_only=True)
    assert state["step"] == 1 and all(t.isfinite().all() for t in state["model"].values() if t.is_floating_point())
    assert not (out / "model").exists() and not (out / "training.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["train_log.csv", "train_state.pt"]  # no temporaries


@pytest.mark.parametrize("argv", [["sweep", "--tau", "0.5", "--tau=0.8"], ["train", "--lr", "1e-3", "--lr", "1e-2"]])
def test_a_flag_given_twice_is_refused_by_sweep_and_train(capsys, tmp_path, argv):
    flag = argv[1]
    one_line_error(capsys, [*argv, "--out", str(tmp_path / "o")], 2,
                   f"{flag} given more than once; give each flag once (a flag taking several values takes them all "
                   "after one use: --max-iter 4 8 16)")
    assert not (tmp_path / "o").exists()
