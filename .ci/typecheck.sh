#!/usr/bin/env bash
# Type check of the package implicit_ssm_eval with mypy (settings: pyproject.toml [tool.mypy]).
# The repository root is the package, and the checkout's folder name need not be a valid import name, so mypy reads
# the package through a link named implicit_ssm_eval in a folder of its own. Extra arguments go to mypy.
# Usage: .ci/typecheck.sh [mypy options]    (mypy and the stub packages come with the `test` extra)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
# One folder per checkout, kept between runs so that mypy's cache (beside the link) stays valid.
work="${TMPDIR:-/tmp}/implicit-ssm-typecheck-$(printf '%s' "$root" | cksum | cut -d' ' -f1)"
mkdir -p "$work"
ln -sfn "$root" "$work/implicit_ssm_eval"
cd "$work"
exec "$python" -m mypy --config-file "$root/pyproject.toml" -p implicit_ssm_eval "$@"
