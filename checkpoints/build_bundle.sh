#!/usr/bin/env bash
# Rebuild the bundled checkpoints from finished training runs, the committed leaderboard, and the model cards.
#   python checkpoints/recipes.py parity-implicit parity-explicit parity-explicit-2l --runs runs
#   python checkpoints/recipes.py a5-implicit-v1 a5-explicit-v1 a5-explicit-2l-v1 --runs runs
#   python checkpoints/recipes.py a5-implicit-ft a5-explicit-ft a5-explicit-2l-ft --runs runs
#   python checkpoints/recipes.py parity-transformer a5-transformer-v1 --runs runs; then a5-transformer-ft
#   bash checkpoints/build_bundle.sh runs
# Each entry is bundle-name:recipe-name; checkpoints/notes/<bundle-name>.md, where present, becomes the card's
# "What was tried" section. A bundle whose run is not under RUNS keeps its weights and card as they are.
set -euo pipefail
RUNS=${1:-runs}
PAIRS="parity-implicit:parity-implicit parity-explicit:parity-explicit parity-explicit-2l:parity-explicit-2l
a5-implicit:a5-implicit-ft a5-explicit:a5-explicit-ft a5-explicit-2l:a5-explicit-2l-ft"
for pair in $PAIRS; do
  n=${pair%%:*} r=${pair##*:}
  [[ -d $RUNS/$r/model ]] || { echo "$n: no run $RUNS/$r, kept as bundled" >&2; continue; }
  python -c "from pathlib import Path; from implicit_ssm_eval.harness.model_card import copy_model; copy_model(Path('$RUNS/$r'), Path('checkpoints/$n'))"
done
implicit-eval leaderboard --results results/leaderboard --out leaderboards --quiet > /dev/null
for pair in $PAIRS; do
  n=${pair%%:*} r=${pair##*:}
  [[ -d $RUNS/$r/model ]] || continue
  cmd=$(python -c "import sys; sys.path.insert(0, 'checkpoints'); from recipes import command; from pathlib import Path; \
print(' '.join(['implicit-eval', *command('$r', Path('runs'), 'cpu', 0, False)[3:]]))")
  notes=()
  [[ -f checkpoints/notes/$n.md ]] && notes=(--notes "checkpoints/notes/$n.md")
  python -m implicit_ssm_eval.harness.model_card "$RUNS/$r" "checkpoints/$n" --sweep results/leaderboard \
    --command "$cmd" --recipe "$r" "${notes[@]}"
done
# The transformer twins: HF directories, scored by lm-eval's own `--model hf` (100 documents a bucket, as the
# leaderboard's sweep); the results JSON is kept beside the weights as lm_eval_results.json.
TRANSFORMERS="parity-transformer:parity-transformer:st_parity a5-transformer:a5-transformer-ft:st_a5"
for triple in $TRANSFORMERS; do
  IFS=: read -r n r group <<< "$triple"
  [[ -d $RUNS/$r/model ]] || { echo "$n: no run $RUNS/$r, kept as bundled" >&2; continue; }
  python -c "from pathlib import Path; from implicit_ssm_eval.harness.model_card import copy_model; copy_model(Path('$RUNS/$r'), Path('checkpoints/$n'))"
  rm -rf "results/hf/$n"
  implicit-eval run --model hf --model_args "pretrained=checkpoints/$n,dtype=float32" --tasks "$group" --device cpu \
    --batch_size 64 --metadata '{"st_num_docs": 100}' --output_path "results/hf/$n" > /dev/null
  cp "$(find "results/hf/$n" -name 'results_*.json' | sort | tail -n 1)" "checkpoints/$n/lm_eval_results.json"
  cmd=$(python -c "import sys; sys.path.insert(0, 'checkpoints'); from recipes import command; from pathlib import Path; \
print(' '.join(['implicit-eval', *command('$r', Path('runs'), 'cpu', 0, False)[3:]]))")
  notes=()
  [[ -f checkpoints/notes/$n.md ]] && notes=(--notes "checkpoints/notes/$n.md")
  python -m implicit_ssm_eval.harness.model_card "$RUNS/$r" "checkpoints/$n" \
    --lm-eval-results "checkpoints/$n/lm_eval_results.json" --command "$cmd" --recipe "$r" "${notes[@]}"
done
