"""Generate the state-tracking lm-eval YAMLs and ``fingerprints.json``.

    python -m tasks.state_tracking.make_yamls          # rewrite
    python -m tasks.state_tracking.make_yamls --check  # exit 1 if anything on disk is stale

Tasks ``st_<task>_<bucket>``, groups ``st_<task>`` (its buckets) and ``state_tracking`` (all tasks).
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.common import data_hash
from tasks.configs import group_yaml, make_yamls_main, task_yaml, template_yaml
from tasks.state_tracking.data import BUCKETS, HASHED_FIELDS, make_docs
from tasks.state_tracking.specs import TASK_NAMES, get_spec

MODULE = "tasks.state_tracking.make_yamls"
HERE = Path(__file__).parent
YAML_DIR = HERE / "yaml"
FINGERPRINTS = HERE / "fingerprints.json"
TEMPLATE = "_st_template.yaml"
GROUP_VERSION = 1
FINGERPRINT_DOCS = 8  # documents per bucket in the version fingerprint: enough to see any change


def task_name(task: str, bucket: str | None = None) -> str:
    """lm-eval name of a task's group (``st_s5``) or of one of its buckets (``st_s5_ood2x``)."""
    return f"st_{task}" if bucket is None else f"st_{task}_{bucket}"


def yaml_files() -> dict[str, str]:
    files = {TEMPLATE: template_yaml(MODULE, "tasks.state_tracking.lm_eval_hooks", "st_<task>_<bucket>")}
    for task in TASK_NAMES:
        version = get_spec(task).version
        for bucket in BUCKETS:
            kwargs = {"st_task": task, "st_bucket": bucket}
            files[f"{task_name(task, bucket)}.yaml"] = task_yaml(
                MODULE, task_name(task, bucket), TEMPLATE, kwargs, version
            )
        members = [task_name(task, bucket) for bucket in BUCKETS]
        files[f"{task_name(task)}.yaml"] = group_yaml(MODULE, task_name(task), members, GROUP_VERSION)
    files["state_tracking.yaml"] = group_yaml(MODULE, "state_tracking", map(task_name, TASK_NAMES), GROUP_VERSION)
    return files


def fingerprints() -> dict[str, dict[str, object]]:
    """Per task: its version and the hash of FINGERPRINT_DOCS default documents of every bucket (seed 0)."""
    entries = {}
    for task in TASK_NAMES:
        docs = [doc for bucket in BUCKETS for doc in make_docs(task, bucket, num_docs=FINGERPRINT_DOCS)]
        entries[task] = {"version": get_spec(task).version, "hash": data_hash(docs, HASHED_FIELDS)}
    return entries


def main(argv: list[str] | None = None) -> int:
    return make_yamls_main(argv, __doc__, YAML_DIR, FINGERPRINTS, yaml_files, fingerprints, MODULE)


if __name__ == "__main__":
    sys.exit(main())
