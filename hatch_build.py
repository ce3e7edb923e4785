"""An editable install copies none of the package's files: it leaves the checkout as the package.

The repository root is the package implicit_ssm_eval (its __init__.py, with model_adapters/, tasks/ and harness/
beside it). A wheel copies those into implicit_ssm_eval/ (force-include in pyproject.toml). Hatchling would copy
forced files into an editable install too, where they would shadow the checkout; this hook gives the editable
install only the lm-eval registration hook (a .pth). The checkout goes on sys.path (dev-mode-dirs), where the
folder implicit_ssm_eval/ points the package at the root.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LM_EVAL_HOOK = {"model_adapters/implicit_ssm_lm_eval.pth": "zz_implicit_ssm_lm_eval.pth"}  # source -> wheel path


class EditableInstall(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict) -> None:
        if version == "editable":
            build_data["force_include_editable"] = dict(LM_EVAL_HOOK)
