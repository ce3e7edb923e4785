"""Generate the bAbI lm-eval YAMLs and ``fingerprints.json``.

    python -m implicit_ssm_eval.tasks.babi.make_yamls          # rewrite
    python -m implicit_ssm_eval.tasks.babi.make_yamls --check  # exit 1 if anything on disk is stale

Tasks ``babi_gen_<task>_<bucket>``, groups ``babi_gen_<task>`` (its buckets) and ``babi_gen`` (all).
The ``babi_gen`` prefix keeps clear of lm-eval's own ``babi`` task.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..yaml_writer import family_fingerprints, family_yaml_files, make_yamls_main
from .data import BUCKETS, HASHED_FIELDS, make_docs
from .family import FAMILY
from .stories import TASKS

MODULE = "implicit_ssm_eval.tasks.babi.make_yamls"
HERE = Path(__file__).parent
YAML_DIR = HERE / "yaml"
FINGERPRINTS = HERE / "fingerprints.json"
TEMPLATE = "_babi_template.yaml"
GROUP_VERSION = 1
FINGERPRINT_DOCS = 8


def _versions() -> dict[str, int]:
    return {task: spec.version for task, spec in TASKS.items()}


def yaml_files() -> dict[str, str]:
    return family_yaml_files(MODULE, "implicit_ssm_eval.tasks.babi.lm_eval_hooks", TEMPLATE, FAMILY, _versions(),
                             GROUP_VERSION)


def fingerprints() -> dict[str, dict[str, object]]:
    return family_fingerprints(_versions(), lambda task: BUCKETS, make_docs, HASHED_FIELDS, FINGERPRINT_DOCS)


def main(argv: list[str] | None = None) -> int:
    return make_yamls_main(argv, __doc__, YAML_DIR, FINGERPRINTS, yaml_files, fingerprints, MODULE)


if __name__ == "__main__":
    sys.exit(main())
