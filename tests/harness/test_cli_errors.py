"""Every user mistake or fault ends in one line naming what was wrong and what is valid: exit 2 for mistakes, 1 for
faults, no traceback unless --debug (see the table in docs/VALIDATION.md)."""

import errno
import json
import shutil

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
