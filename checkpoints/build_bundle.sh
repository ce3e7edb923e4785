#!/usr/bin/env bash
# Rebuild the bundled checkpoints from finished training runs, the committed leaderboard, and the model cards.
#   python checkpoints/recipes.py parity-implicit parity-explicit parity-explicit-2l a5-implicit a5-explicit a5-explicit-2l --runs runs
#   bash checkpoints/build_bundle.sh runs
set -euo pipefail
RUNS=${1:-runs}
NAMES="parity-implicit parity-explicit parity-explicit-2l a5-implicit a5-explicit a5-explicit-2l"
for n in $NAMES; do
  python -c "from pathlib import Path; from implicit_ssm_eval.harness.model_card import copy_model; copy_model(Path('$RUNS/$n'), Path('checkpoints/$n'))"
done
implicit-eval leaderboard --results results/leaderboard --out leaderboards --quiet > /dev/null
for n in $NAMES; do
  cmd=$(python -c "import sys; sys.path.insert(0, 'checkpoints'); from recipes import command; from pathlib import Path; \
print(' '.join(['implicit-eval', *command('$n', Path('runs'), 'cpu', 0, False)[3:]]))")
  python -m implicit_ssm_eval.harness.model_card "$RUNS/$n" "checkpoints/$n" --sweep results/leaderboard --command "$cmd"
done
