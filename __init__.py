"""implicit_ssm_eval: the repository root is the package.

Its subpackages are the folders beside this file: ``model_adapters`` (models, readings, kernels, checkpoint formats,
the lm-eval adapters), ``tasks`` (task families and their lm-eval YAMLs) and ``harness`` (the command line: train,
sweep, report, leaderboard). Inside them every import of the project is relative, so an editor, a type checker or a
drawing of the imports follows it from the files as they lie; outside (tests, scripts) the one import name is
``implicit_ssm_eval``.

A wheel installs this file and the three folders as ``implicit_ssm_eval/`` (pyproject.toml), so a user's environment
gains no generic top-level names such as ``tasks`` or ``harness``. In a source checkout (an editable install, or the
root on PYTHONPATH) the folder ``implicit_ssm_eval/`` points the package here.
"""
