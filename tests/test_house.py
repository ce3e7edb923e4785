"""The house rules that keep the code easy to change, checked from the files themselves (no code is run).

- Imports that tools follow: inside the package folders every import of the project is relative.
- The seams: the models never import lm-eval, the harness or the tasks; tasks import no model; checkpoint loaders
  know no lm-eval; the lm-eval face knows no sweep; the runtime is the model's performance layer, which the models
  never import.
- The lm-eval face is made of small parts: no function or method of model_adapters/adapter/ is over 40 lines.
- Reports are light: `implicit-eval report` imports neither torch nor lm-eval.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_FOLDERS = ("model_adapters", "tasks", "harness")
MODEL_FILES = ("models.py", "mamba2.py", "ssd.py", "norms.py", "reading.py", "readings.py", "fixed_point.py",
               "config.py", "tensors.py", "errors.py", "implicit_lm.py", "convergence.py", "summaries.py")


def python_files(*folders: str) -> list[Path]:
    return sorted(f for folder in folders for f in (ROOT / folder).rglob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, resolved to a dotted name under implicit_ssm_eval for relative imports."""
    tree = ast.parse(path.read_text())
    package = ["implicit_ssm_eval", *path.relative_to(ROOT).parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                names.add(".".join(base + ([node.module] if node.module else [])))
            else:
                names.add(node.module or "")
    return names


def offenders(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f.relative_to(ROOT)} imports {name}" for f in files for name in sorted(imported_modules(f))
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden)]


def test_imports_inside_the_package_are_relative():
    absolute = [f"{f.relative_to(ROOT)}: {name}" for f in python_files(*PACKAGE_FOLDERS)
                for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, ast.ImportFrom) and not node.level
                for name in [node.module or ""] if name.split(".")[0] == "implicit_ssm_eval"]
    absolute += [f"{f.relative_to(ROOT)}: {alias.name}" for f in python_files(*PACKAGE_FOLDERS)
                 for node in ast.walk(ast.parse(f.read_text())) if isinstance(node, ast.Import)
                 for alias in node.names if alias.name.split(".")[0] == "implicit_ssm_eval"]
    assert not absolute, absolute


def test_the_models_import_no_lm_eval_no_harness_no_tasks_and_no_runtime():
    files = [ROOT / "model_adapters" / name for name in MODEL_FILES]
    ours = "implicit_ssm_eval.model_adapters"
    assert not offenders(files, ("lm_eval", "implicit_ssm_eval.harness", "implicit_ssm_eval.tasks", f"{ours}.runtime",
                                 f"{ours}.adapter"))


def test_tasks_import_no_model_and_loaders_know_no_lm_eval():
    assert not offenders(python_files("tasks"), ("implicit_ssm_eval.model_adapters", "implicit_ssm_eval.harness"))
    no_face = ("lm_eval", "implicit_ssm_eval.model_adapters.adapter", "implicit_ssm_eval.harness")
    assert not offenders(python_files("model_adapters/formats"), no_face)
    assert not offenders(python_files("model_adapters/runtime"), no_face)


def test_the_lm_eval_face_knows_no_sweep():
    assert not offenders(python_files("model_adapters/adapter"), ("implicit_ssm_eval.harness",))


def test_a_seam_check_sees_a_broken_seam(tmp_path):
    """The checks above would see it: a model file that imports the harness is named."""
    bad = ROOT / "model_adapters" / "_seam_probe.py"
    bad.write_text("from ..harness import sweep\n")
    try:
        assert offenders([bad], ("implicit_ssm_eval.harness",)) == [
            "model_adapters/_seam_probe.py imports implicit_ssm_eval.harness"]
    finally:
        bad.unlink()


def long_functions(files: list[Path], limit: int) -> list[str]:
    found = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{f.relative_to(ROOT)}:{node.lineno} {node.name} ({lines})")
    return found


def test_the_lm_eval_face_has_no_function_over_40_lines():
    assert not long_functions(python_files("model_adapters/adapter"), 40)


@pytest.mark.slow
def test_the_report_imports_neither_torch_nor_lm_eval(tmp_path):
    fixture = ROOT / "tests" / "fixtures" / "sweep_small"
    code = ("import sys\nfrom implicit_ssm_eval.harness.cli import main\n"
            f"code = main(['report', {str(fixture)!r}, '--out', {str(tmp_path / 'report')!r}])\n"
            "print(sorted(m for m in ('torch', 'lm_eval', 'transformers') if m in sys.modules), code)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.split("\n")[0] == "[] 0", out.stdout + out.stderr
    assert (tmp_path / "report" / "leaderboard.md").is_file()
