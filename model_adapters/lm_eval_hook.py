"""Registers `implicit_ssm` and `explicit_ssm` with lm-eval the moment lm-eval's registry is imported.

lm-eval 0.4.13 has no plugin discovery, so `pip install` drops a one-line .pth file
(implicit_ssm_lm_eval.pth) that imports this module at interpreter start-up. It only appends a finder to
sys.meta_path (no torch, no lm-eval import: well under a millisecond); the finder waits for
`lm_eval.api.registry`, lets it load normally, and then registers the two names as lazy "module:Class"
placeholders, so the adapters (and torch) are imported only when one of these models is used.
"""

import sys

TARGET = "lm_eval.api.registry"
MODELS = {
    "implicit_ssm": "implicit_ssm_eval.model_adapters.lm_eval_models:ImplicitSSMLM",
    "explicit_ssm": "implicit_ssm_eval.model_adapters.lm_eval_models:ExplicitSSMLM",
}


def register(registry) -> None:
    # lm-eval's get_model() fills the registry with its own models only while it is empty, so load that
    # table first (a dict of placeholders; cheap) instead of leaving ours as the only entries.
    import lm_eval.models  # noqa: F401

    for name, target in MODELS.items():
        if name not in registry.model_registry:
            registry.model_registry.register(name, target=target)


class RegistryHook:
    """A meta-path finder that wraps the loader of lm-eval's registry module; finds nothing else."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != TARGET:
            return None
        spec = next((s for s in self._other_specs(fullname, path, target) if s is not None), None)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            register(module)

        spec.loader.exec_module = exec_module
        return spec

    def _other_specs(self, fullname, path, target):
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                yield finder.find_spec(fullname, path, target)


def install() -> None:
    if TARGET in sys.modules:  # imported before us (unusual): register right away
        register(sys.modules[TARGET])
    elif not any(isinstance(f, RegistryHook) for f in sys.meta_path):
        sys.meta_path.insert(0, RegistryHook())  # ahead of the path finder that would load it unwrapped


install()
