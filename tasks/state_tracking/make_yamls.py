"""Generate the state-tracking lm-eval YAMLs and ``fingerprints.json``.

    python -m implicit_ssm_eval.tasks.state_tracking.make_yamls          # rewrite
    python -m implicit_ssm_eval.tasks.state_tracking.make_yamls --check  # exit 1 if anything on disk is stale

Tasks ``st_<task>_<bucket>`` (length and shifted buckets), groups ``st_<task>`` (its buckets) and
``state_tracking`` (all tasks); names from the registry entry in ``family.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from ..yaml_writer import family_fingerprints, family_yaml_files, make_yamls_main
from .data import HASHED_FIELDS, buckets_of, make_docs
from .family import FAMILY
from .specs import TASK_NAMES, get_spec

MODULE = "implicit_ssm_eval.tasks.state_tracking.make_yamls"
HERE = Path(__file__).parent
YAML_DIR = HERE / "yaml"
FINGERPRINTS = HERE / "fingerprints.json"
TEMPLATE = "_st_template.yaml"
GROUP_VERSION = 2  # 2: the task groups gained the shifted buckets
FINGERPRINT_DOCS = 8  # documents per bucket in the version fingerprint: enough to see any change


def _versions() -> dict[str, int]:
    return {task: get_spec(task).version for task in TASK_NAMES}


def yaml_files() -> dict[str, str]:
    return family_yaml_files(MODULE, "implicit_ssm_eval.tasks.state_tracking.lm_eval_hooks", TEMPLATE, FAMILY,
                             _versions(), GROUP_VERSION)


def fingerprints() -> dict[str, dict[str, object]]:
    return family_fingerprints(_versions(), buckets_of, make_docs, HASHED_FIELDS, FINGERPRINT_DOCS)


def main(argv: list[str] | None = None) -> int:
    return make_yamls_main(argv, __doc__, YAML_DIR, FINGERPRINTS, yaml_files, fingerprints, MODULE)


if __name__ == "__main__":
    sys.exit(main())
