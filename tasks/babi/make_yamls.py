"""Generate the bAbI lm-eval YAMLs and ``fingerprints.json``.

    python -m tasks.babi.make_yamls          # rewrite
    python -m tasks.babi.make_yamls --check  # exit 1 if anything on disk is stale

Tasks ``babi_gen_<task>_<bucket>``, groups ``babi_gen_<task>`` (its buckets) and ``babi_gen`` (all).
The ``babi_gen`` prefix keeps clear of lm-eval's own ``babi`` task.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tasks.babi.data import BUCKETS, HASHED_FIELDS, make_docs
from tasks.babi.stories import TASKS
from tasks.common import data_hash
from tasks.configs import group_yaml, make_yamls_main, task_yaml, template_yaml

MODULE = "tasks.babi.make_yamls"
HERE = Path(__file__).parent
YAML_DIR = HERE / "yaml"
FINGERPRINTS = HERE / "fingerprints.json"
TEMPLATE = "_babi_template.yaml"
GROUP_VERSION = 1
FINGERPRINT_DOCS = 8


def task_name(task: str, bucket: str | None = None) -> str:
    """lm-eval name of a task's group (``babi_gen_qa1``) or of one bucket (``babi_gen_qa1_ood2x``)."""
    return f"babi_gen_{task}" if bucket is None else f"babi_gen_{task}_{bucket}"


def yaml_files() -> dict[str, str]:
    files = {TEMPLATE: template_yaml(MODULE, "tasks.babi.lm_eval_hooks", "babi_gen_<task>_<bucket>")}
    for task in TASKS:
        for bucket in BUCKETS:
            kwargs = {"babi_task": task, "babi_bucket": bucket}
            name = task_name(task, bucket)
            files[f"{name}.yaml"] = task_yaml(MODULE, name, TEMPLATE, kwargs, TASKS[task].version)
        members = [task_name(task, bucket) for bucket in BUCKETS]
        files[f"{task_name(task)}.yaml"] = group_yaml(MODULE, task_name(task), members, GROUP_VERSION)
    files["babi_gen.yaml"] = group_yaml(MODULE, "babi_gen", map(task_name, TASKS), GROUP_VERSION)
    return files


def fingerprints() -> dict[str, dict[str, object]]:
    """Per task: its version and the hash of FINGERPRINT_DOCS default documents of every bucket (seed 0)."""
    entries = {}
    for task in TASKS:
        docs = [doc for bucket in BUCKETS for doc in make_docs(task, bucket, num_docs=FINGERPRINT_DOCS)]
        entries[task] = {"version": TASKS[task].version, "hash": data_hash(docs, HASHED_FIELDS)}
    return entries


def main(argv: list[str] | None = None) -> int:
    return make_yamls_main(argv, __doc__, YAML_DIR, FINGERPRINTS, yaml_files, fingerprints, MODULE)


if __name__ == "__main__":
    sys.exit(main())
