"""Plugs this project into lm-eval at import time: the two model names, and the few patches, all here.

The patches of lm-eval (pinned: lm-eval==0.4.13), each small and each tested against the pinned version
(tests/lm_eval_adapters/test_hook.py): the registry entries, a wrapper of evaluator.evaluate (anytime budgets and
the samples' compute), a wrapper of utils.make_table (the convergence summary) and a chained sys.excepthook
(one-line errors).

lm-eval 0.4.13 has no plugin discovery, so `pip install` drops a one-line .pth file
(model_adapters/implicit_ssm_lm_eval.pth) that imports this module at interpreter start-up. It only appends a finder
to sys.meta_path (it imports nothing but sys: no torch, no lm-eval, not even functools; 2-3 ms on the 2-core
development machine, BENCHMARKS.md). The finder lets two lm-eval modules load normally and then:
- lm_eval.api.registry: registers `implicit_ssm` and `explicit_ssm` as lazy "module:Class" placeholders, so the
  adapters (and torch) are imported only when one of these models is used;
- lm_eval.evaluator: wraps `evaluate` so that a run of our adapter with anytime budgets also reports each budget's
  metrics (anytime.py), and its logged samples (--log_samples) carry what each cost (samples.py); for every other
  model the wrapper calls lm-eval's function unchanged;
- lm_eval.utils: wraps `make_table` so that lm-eval's printed results of our adapter are followed by a short
  convergence summary (budget, iterations, the share that hit max_iter unconverged); other results are unchanged.
When lm-eval's registry loads, it also chains a sys.excepthook: in lm-eval's command line, an error of ours that
reaches the top (a bad model_arg, checkpoint, tokenizer or task, non-finite scores), or a cache folder that cannot be
made because HOME is not a folder, is printed as one line,
`lm_eval: error: <message>`, instead of a traceback through lm-eval's internals (exit status 1);
IMPLICIT_SSM_TRACEBACK=1 shows the traceback. Every other exception, and any in a script that imports lm-eval, goes
to the previous hook untouched.
"""

import sys

PACKAGE = "implicit_ssm_eval.model_adapters.adapter"
MODELS = {
    "implicit_ssm": f"{PACKAGE}.lm:ImplicitSSMLM",
    "explicit_ssm": f"{PACKAGE}.lm:ExplicitSSMLM",
}


def running_lm_eval_cli() -> bool:
    """This process is lm-eval's command line (`lm_eval`, `lm-eval`, `python -m lm_eval`), not a user's script that
    imports lm-eval: there a traceback points into their own code, and it stays."""
    import os

    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    return (spec is not None and spec.name.split(".")[0] == "lm_eval") or program in ("lm_eval", "lm-eval")


def _mark(fn: object, name: str) -> None:
    """Tags a function we installed (a function attribute), so that installing twice is a no-op."""
    setattr(fn, name, True)


def install_excepthook() -> None:
    previous = sys.excepthook
    if getattr(previous, "_implicit_ssm_one_line", False):
        return

    def one_line_errors(kind, exc, tb):
        import os

        from ..errors import home_not_a_folder, one_line_error  # the errors that end a run in one line (errors.py)

        error = one_line_error(exc)
        message = home_not_a_folder(exc) if error is None else str(error)
        if message is None or not running_lm_eval_cli() or os.environ.get("IMPLICIT_SSM_TRACEBACK") == "1":
            return previous(kind, exc, tb)
        sys.stderr.write(f"lm_eval: error: {message} (IMPLICIT_SSM_TRACEBACK=1 shows the traceback)\n")

    _mark(one_line_errors, "_implicit_ssm_one_line")
    sys.excepthook = one_line_errors


def register(registry) -> None:
    # lm-eval's get_model() fills the registry with its own models only while it is empty, so load that
    # table first (a dict of placeholders; cheap) instead of leaving ours as the only entries.
    import lm_eval.models  # noqa: F401

    install_excepthook()

    for name, target in MODELS.items():
        if name not in registry.model_registry:
            registry.model_registry.register(name, target=target)


def wrap_evaluator(module) -> None:
    import functools  # here, not at the top: this module runs at every interpreter start-up (see the docstring)

    evaluate = module.evaluate
    if getattr(evaluate, "_implicit_ssm_anytime", False):
        return

    @functools.wraps(evaluate)
    def evaluate_with_anytime(lm, task_dict, *args, **kwargs):
        if args or not getattr(lm, "budgets_scored", ()):  # not ours
            return evaluate(lm, task_dict, *args, **kwargs)
        from .anytime import evaluate_with_anytime as run

        return run(evaluate, lm, task_dict, **kwargs)

    _mark(evaluate_with_anytime, "_implicit_ssm_anytime")
    module.evaluate = evaluate_with_anytime


def wrap_make_table(module) -> None:
    """lm-eval's printed results table, followed by our convergence summary when the results are ours."""
    import functools

    make_table = module.make_table
    if getattr(make_table, "_implicit_ssm_block", False):
        return

    @functools.wraps(make_table)
    def make_table_with_convergence(result_dict, column: str = "results", *args, **kwargs):
        text = make_table(result_dict, column, *args, **kwargs)
        info = (result_dict.get("config") or {}).get("ssm_model") if isinstance(result_dict, dict) else None
        if column != "results" or not info or not info.get("budget"):
            return text
        from ..summaries import convergence_block

        return f"{text}\n{convergence_block(info)}"

    _mark(make_table_with_convergence, "_implicit_ssm_block")
    module.make_table = make_table_with_convergence


TARGETS = {"lm_eval.api.registry": register, "lm_eval.evaluator": wrap_evaluator, "lm_eval.utils": wrap_make_table}


class RegistryHook:
    """A meta-path finder that wraps the loaders of the TARGETS modules; finds nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in TARGETS:
            return None
        spec = next((s for s in self._other_specs(fullname, path, target) if s is not None), None)
        if spec is None or spec.loader is None:
            return None
        load, after = spec.loader.exec_module, TARGETS[fullname]

        def exec_module(module):
            load(module)
            after(module)

        spec.loader.exec_module = exec_module
        return spec

    def _other_specs(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                yield finder.find_spec(fullname, path, target)


def install() -> None:
    for name, after in TARGETS.items():
        if name in sys.modules:  # imported before us (unusual): patch right away
            after(sys.modules[name])
    if not any(isinstance(f, RegistryHook) for f in sys.meta_path):
        sys.meta_path.insert(0, RegistryHook())  # ahead of the path finder that would load them unwrapped


install()
