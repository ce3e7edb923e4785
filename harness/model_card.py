"""Model cards for trained checkpoints:

    python -m implicit_ssm_eval.harness.model_card RUN_DIR CKPT_DIR --sweep SWEEP_DIR --command "..."
    python -m implicit_ssm_eval.harness.model_card RUN_DIR CKPT_DIR --lm-eval-results RESULTS --command "..."

Copies the run's exported model into CKPT_DIR (with --copy) and writes CKPT_DIR/README.md: task, architecture,
parameter count, the exact training command, data, seeds, steps, wall time and device, the evaluation tables from a
sweep of this checkpoint through the lm-eval adapters (length buckets and distribution-shift buckets), a training
curve and accuracy against the budget. A transformer (an HF directory, `--kind transformer`) is evaluated by lm-eval's
own `--model hf`; its card reads those results (--lm-eval-results: lm-eval's results JSON files or their folder).
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

from tabulate import tabulate

from . import plots, report
from .io import write_text_atomic
from .leaderboard import bucket_heading, budget_label, cell
from .results import load_runs

HF_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", "training.json")


def copy_model(run: Path, target: Path, weights_dtype: str | None = None) -> None:
    """The run's exported model into the bundle. weights_dtype ("bfloat16"): its floating-point weights stored in
    that dtype (half the size; loaders compute in the dtype asked for, float32 by default)."""
    target.mkdir(parents=True, exist_ok=True)
    hf = (run / "model" / "training.json").is_file()  # an HF directory (the transformer kind)
    for name in HF_FILES if hf else ("config.json", "model.safetensors", "tokenizer.json"):
        if (run / "model" / name).is_file():
            shutil.copyfile(run / "model" / name, target / name)
    if weights_dtype is not None:
        store_weights_as(target / "model.safetensors", weights_dtype)


def store_weights_as(path: Path, dtype_name: str) -> None:
    import torch
    from safetensors.torch import load_file, save_file

    dtype = getattr(torch, dtype_name)
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in load_file(str(path)).items()}
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    tmp.replace(path)


def training_curve(run: Path, out: Path) -> Path:
    plt = plots.pyplot()
    with open(run / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(steps, [float(r["token_acc"]) for r in rows], label="token accuracy (all positions)")
    ax.plot(steps, [float(r["last_acc"]) for r in rows], label="last-position accuracy", alpha=0.7)
    ax.set_xlabel("training step")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="lower right")
    return plots.save_figure(fig, out / "training_curve.png")


def evaluation_table(rows: list[dict], buckets: list[str]) -> str:
    cells: dict[str, dict] = {}
    for r in rows:
        if r["metric"] == "acc" and r["bucket"] in buckets:
            cells.setdefault(budget_label(r), {})[r["bucket"]] = r
    table = [[label, *[cell(by.get(b)) for b in buckets]] for label, by in cells.items()]
    return tabulate(table, headers=["budget", *[bucket_heading(rows, b) for b in buckets]], tablefmt="github")


def parameter_count(ckpt_dir: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(ckpt_dir / "model.safetensors")).values())


def card(run: Path, ckpt: Path, sweep: Path, command: str, recipe: str | None = None, notes: str = "") -> str:
    config = json.loads((ckpt / "config.json").read_text())
    training, model = config["training"], config["model"]
    tc = training["config"]
    runs = [r for r in load_runs([sweep]).runs if r.checkpoint == ckpt.name]
    rows = report.tidy_rows(runs)
    group = next((r["group"] for r in rows if r["bucket"]), "?")
    order = report.bucket_order(group)
    lengths = [b for b in order if any(r["bucket"] == b and not r["shift"] for r in rows)]
    shifted = [b for b in order if any(r["bucket"] == b and r["shift"] for r in rows)]
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), float("nan"))
    training_curve(run, ckpt)
    budget_plot = sorted(plots.accuracy_vs_budget([r for r in rows if r["kind"] == "implicit"] or rows, ckpt))
    for path in budget_plot:
        path.rename(ckpt / "accuracy_vs_budget.png")
    arch = {k: model[k] for k in ("kind", "d_model", "n_layer", "d_state", "expand", "headdim", "ngroups")}
    lines = [
        f"# {ckpt.name}", "",
        f"An {model['kind']} Mamba2 language model trained on the `{tc['task']}` task of this repository's "
        f"`{training.get('family', 'state_tracking')}` family, sequences of length {tc['min_len']}–{tc['max_len']}.",
        "", "## Model", "",
        f"- architecture: {arch}; vocabulary {model['vocab_size']} (padded to a multiple of "
        f"{model['pad_vocab_size_multiple']}), tied embeddings",
        f"- parameters: {parameter_count(ckpt):,}",
        f"- default evaluation budget: {model.get('budget') or 'none (explicit)'}",
        "", "## Training", "",
        f"- command: `{command}` (recipe `{recipe or ckpt.name}` in `checkpoints/recipes.py`)",
        f"- data: the family's `training_batches('{tc['task']}', seed={tc['data_seed']}"
        + "".join(f", {k}={v}" for k, v in (tc.get("data_options") or {}).items())
        + f")`, lengths uniform in [{tc['min_len']}, {tc['max_len']}], batch {tc['batch_size']}; evaluation "
        "documents come from a disjoint seed namespace and held-out prefixes",
        f"- model seed {tc['seed']}; {training['steps']} steps; AdamW lr {tc['lr']} (warm-up {tc['warmup_steps']}, "
        f"cosine to {tc['min_lr_ratio']}x), clip {tc['clip']}, weight decay {tc['weight_decay']} on projection, "
        "convolution and embedding weights only",
    ]
    if tc.get("init_from"):
        lines.append(f"- fine-tuned: the weights start from the finished run `{tc['init_from']}` (its recipe and "
                     "history are under *What was tried* below); the steps, schedule and curve here are the "
                     "fine-tuning's")
    if model["kind"] == "implicit":
        train = tc["train_budget"]
        lines.append(f"- implicit: fixed point without gradients at {train['max_iter']} iterations (tau "
                     f"{train['tau']}), then {tc['grad_steps']} phantom-gradient steps; warm-up: {tc['unroll_steps']} "
                     f"steps of a {tc['unroll_iters']}-iteration unroll; weight norm (folded in this checkpoint)")
    lines += [f"- wall time {training['wall_time_s']:.0f} s on {training['device']} (torch {training['torch']})", "",
              "![training curve](training_curve.png)", "",
              "The curve is accuracy on training batches; the evaluation below is on held-out documents.", "",
              "## Evaluation", "",
              f"`{group}` through the lm-eval adapter (`implicit-eval sweep`, results in `{sweep}`), accuracy per "
              f"length bucket (chance {chance:.3f}):", "", evaluation_table(rows, lengths), ""]
    if shifted:
        adaptive = [r for r in rows if r["kind"] == "explicit" or r["tol"]]
        lines += ["Robustness: accuracy under distribution shift (adaptive budgets):", "",
                  evaluation_table(adaptive, shifted), ""]
    lines += ["![accuracy vs budget](accuracy_vs_budget.png)", ""]
    if notes:
        lines += ["## What was tried", "", notes.strip(), ""]
    return "\n".join(lines)


def lm_eval_rows(paths: list[Path]) -> list[dict]:
    """Accuracy per bucket from lm-eval results JSON files of any model (e.g. `--model hf`), with the bucket's fields
    from the task registry (lengths under the default options)."""
    from ..tasks.registry import family_of

    rows = []
    for path in paths:
        for file in sorted(path.rglob("results*.json")) if path.is_dir() else [path]:
            for task, metrics in json.loads(file.read_text())["results"].items():
                found = family_of(task)
                if "acc,none" not in metrics or found is None:
                    continue
                family, name, bucket = found
                if bucket is None:
                    continue
                info = family.bucket_info(name, bucket)
                rows.append({"group": family.lm_eval_name(name), "bucket": bucket, "shift": info.shift,
                             "multiplier": info.multiplier, "length_min": info.lengths[0],
                             "length_max": info.lengths[1], "chance": family.chance(name), "value": metrics["acc,none"],
                             "kind": "one pass", "status": "ok", "tol": None})
    return rows


def one_pass_table(rows: list[dict], buckets: list[str]) -> str:
    by_bucket = {r["bucket"]: r for r in rows}
    return tabulate([["one pass", *[cell(by_bucket.get(b)) for b in buckets]]],
                    headers=["reading", *[bucket_heading(rows, b) for b in buckets]], tablefmt="github")


def transformer_card(run: Path, ckpt: Path, results: list[Path], command: str, recipe: str | None = None,
                     notes: str = "") -> str:
    """The card of a transformer (HF directory): its sizes from config.json, its training from training.json, its
    evaluation from lm-eval's own `--model hf` results."""
    config = json.loads((ckpt / "config.json").read_text())
    training = json.loads((ckpt / "training.json").read_text())
    tc = training["config"]
    rows = lm_eval_rows(results)
    group = next((r["group"] for r in rows if r["bucket"]), "?")
    order = report.bucket_order(group)
    lengths = [b for b in order if any(r["bucket"] == b and not r["shift"] for r in rows)]
    shifted = [b for b in order if any(r["bucket"] == b and r["shift"] for r in rows)]
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), float("nan"))
    training_curve(run, ckpt)
    arch = {k: tc["arch"][k] for k in ("d_model", "n_layer", "n_head", "intermediate_size")}
    lines = [
        f"# {ckpt.name}", "",
        f"A Llama-style transformer (transformers' `LlamaForCausalLM`: rotary positions, RMSNorm, SwiGLU) trained on "
        f"the `{tc['task']}` task of this repository's `{training.get('family', 'state_tracking')}` family, "
        f"sequences of length {tc['min_len']}–{tc['max_len']}: the transformer baseline beside the Mamba2 models of "
        "the same recipe. An ordinary Hugging Face directory: `lm_eval --model hf --model_args pretrained=<this "
        "folder>` loads it offline.", "",
        "## Model", "",
        f"- architecture: {arch}, head size {arch['d_model'] // arch['n_head']}; vocabulary "
        f"{config['vocab_size']} (the task's tokenizer padded to a multiple of 8), tied embeddings, "
        f"max_position_embeddings {config['max_position_embeddings']}",
        f"- parameters: {parameter_count(ckpt):,}",
        "- tokenizer: the task's own (`tokenizer.json`), adding no special tokens; no bos token, so lm-eval's prefix "
        "for an empty context is eos, as for the Mamba2 models",
        "", "## Training", "",
        f"- command: `{command}` (recipe `{recipe or ckpt.name}` in `checkpoints/recipes.py`)",
        f"- data: the family's `training_batches('{tc['task']}', seed={tc['data_seed']}"
        + "".join(f", {k}={v}" for k, v in (tc.get("data_options") or {}).items())
        + f")`, lengths uniform in [{tc['min_len']}, {tc['max_len']}], batch {tc['batch_size']}; evaluation "
        "documents come from a disjoint seed namespace and held-out prefixes",
        f"- model seed {tc['seed']}; {training['steps']} steps; AdamW lr {tc['lr']} (warm-up {tc['warmup_steps']}, "
        f"cosine to {tc['min_lr_ratio']}x), clip {tc['clip']}, weight decay {tc['weight_decay']} on projection and "
        "embedding weights only; ordinary backpropagation",
    ]
    if tc.get("init_from"):
        lines.append(f"- fine-tuned: the weights start from the finished run `{tc['init_from']}` (its recipe and "
                     "history are under *What was tried* below); the steps, schedule and curve here are the "
                     "fine-tuning's")
    lines += [f"- wall time {training['wall_time_s']:.0f} s on {training['device']} (torch {training['torch']})", "",
              "![training curve](training_curve.png)", "",
              "The curve is accuracy on training batches; the evaluation below is on held-out documents.", "",
              "## Evaluation", "",
              f"`{group}` through lm-eval's own `--model hf` (results: {', '.join(f'`{p}`' for p in results)}), "
              f"accuracy per length bucket (chance {chance:.3f}):", "",
              one_pass_table(rows, lengths), ""]
    if shifted:
        lines += ["Robustness: accuracy under distribution shift:", "",
                  one_pass_table(rows, shifted), ""]
    if notes:
        lines += ["## What was tried", "", notes.strip(), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path)
    p.add_argument("checkpoint", type=Path)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--sweep", type=Path, help="an `implicit-eval sweep` of the checkpoint (Mamba2 kinds)")
    source.add_argument("--lm-eval-results", type=Path, nargs="+",
                        help="lm-eval results JSON files or folders of `--model hf` (the transformer kind)")
    source.add_argument("--language-results", type=Path, nargs="+",
                        help="results folders of the language leaderboard (a model of the text trio, any kind)")
    p.add_argument("--command", required=True, help="the exact training command, for the card")
    p.add_argument("--recipe", help="the recipe's name in checkpoints/recipes.py (default: the checkpoint's name)")
    p.add_argument("--notes", type=Path, help="a markdown file for the card's 'What was tried' section")
    p.add_argument("--copy", action="store_true", help="copy RUN/model into CHECKPOINT first")
    args = p.parse_args(argv)
    if args.copy:
        copy_model(args.run, args.checkpoint)
    notes = args.notes.read_text() if args.notes else ""
    if args.language_results:
        text = language_card(args.run, args.checkpoint, args.language_results, args.command, args.recipe, notes)
    elif args.lm_eval_results:
        text = transformer_card(args.run, args.checkpoint, args.lm_eval_results, args.command, args.recipe, notes)
    else:
        text = card(args.run, args.checkpoint, args.sweep, args.command, args.recipe, notes)
    write_text_atomic(args.checkpoint / "README.md", text)
    return 0


# -- language models (the pydoc family) --------------------------------------------------------------------------------
def heldout_loss(ckpt: Path, split: str = "validation", length: int = 256) -> dict:
    """Mean next-token loss (nats) and bits per byte on a held-out split, packed as the training rows are (pages
    joined by the end-of-text token, rows of `length` + 1 tokens): an implicit model at its checkpoint's default
    budget, an explicit one in one pass, a transformer (HF directory) through transformers."""
    import math

    import torch

    from ..tasks.text.shipped import corpus_tokenizer, held_out

    tokenizer = corpus_tokenizer()
    eos = tokenizer.token_to_id("<eos>")
    stream = [t for page in held_out(split) for t in [eos, *tokenizer.encode(page["text"]).ids]]
    rows = torch.tensor([stream[i: i + length + 1] for i in range(0, len(stream) - length - 1, length)])
    nll = torch.zeros(())
    with torch.inference_mode():
        for batch in rows.split(16):
            logits = _logits_of(ckpt, batch[:, :-1])
            nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum")
    tokens = rows[:, 1:].numel()
    text_bytes = sum(len(tokenizer.decode(r[1:].tolist()).encode()) for r in rows)
    return {"split": split, "tokens": tokens, "loss": float(nll / tokens),
            "bits_per_byte": float(nll / text_bytes / math.log(2))}


def _logits_of(ckpt: Path, ids):
    from .transformer import is_transformer_dir

    if is_transformer_dir(ckpt):
        from transformers import LlamaForCausalLM

        model = _cached(ckpt, lambda: LlamaForCausalLM.from_pretrained(ckpt).eval())
        return model(ids).logits[..., : model.config.vocab_size].float()
    from ..model_adapters.formats import load_checkpoint

    loaded = _cached(ckpt, lambda: load_checkpoint(ckpt))
    out = loaded.model(ids, loaded.default_budget, want_state=False) if loaded.default_budget else loaded.model(ids)
    return loaded.model.logits(out.hidden)


_MODELS: dict = {}


def _cached(key, make):
    if key not in _MODELS:
        _MODELS[key] = make()
    return _MODELS[key]


def loss_curve(run: Path, out: Path) -> Path:
    """Training loss against step (a language model's curve: its token accuracy says little)."""
    plt = plots.pyplot()
    with open(run / "train_log.csv") as fh:
        rows = list(csv.DictReader(fh))
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label="training loss (nats a token)")
    ax.set_xlabel("training step")
    ax.legend(fontsize=7, loc="upper right")
    return plots.save_figure(fig, out / "training_curve.png")


def language_card(run: Path, ckpt: Path, results: list[Path], command: str, recipe: str | None = None,
                  notes: str = "") -> str:
    """The card of a model of the text trio: sizes, training (corpus and tokenizer hashes), training curve, held-out
    loss, and its rows of the language leaderboard (perplexity and cloze, per budget and length)."""
    from ..tasks.text.shipped import manifest, tokenizer_sha256
    from . import leaderboard
    from .transformer import TRAINING_FILE, is_transformer_dir

    hf = is_transformer_dir(ckpt)
    training = json.loads((ckpt / TRAINING_FILE).read_text()) if hf else \
        json.loads((ckpt / "config.json").read_text())["training"]
    tc, data = training["config"], manifest()
    rows = report.tidy_rows([r for r in load_runs(results).runs if r.checkpoint == ckpt.name])
    metrics = report.headline_metrics(rows)
    loss_curve(run, ckpt)
    val = heldout_loss(ckpt)
    lines = [f"# {ckpt.name}", "", _language_intro(ckpt, tc, hf), "", "## Model", "",
             f"- parameters: {parameter_count(ckpt):,}", f"- architecture: {tc['arch']}",
             "", "## Training", "",
             f"- command: `{command}` (recipe `{recipe or ckpt.name}` in `checkpoints/recipes.py`)",
             f"- data: the pydoc corpus's training split ({data['splits']['train']['tokens']:,} tokens, sha256 "
             f"`{data['splits']['train']['sha256'][:16]}`), packed in rows of {tc['max_len']} tokens, batch "
             f"{tc['batch_size']}, {training['steps']} steps ({training['steps'] * tc['batch_size'] * tc['max_len']:,} "
             f"tokens); tokenizer sha256 `{tokenizer_sha256()[:16]}` (tasks/text/data/MANIFEST.json)",
             f"- AdamW lr {tc['lr']} (warm-up {tc['warmup_steps']}, cosine to {tc['min_lr_ratio']}x), clip "
             f"{tc['clip']}, weight decay {tc['weight_decay']}; bf16 autocast on {training.get('device', '?')}; wall "
             f"time {training.get('wall_time_s', 0):.0f} s",
             "- weights stored in bfloat16 (the bundle's size); every evaluation computes in float32",
             "", "![training curve](training_curve.png)", "",
             f"Held-out loss on the validation split ({val['tokens']:,} tokens, packed as in training, "
             f"{'the default budget' if tc.get('kind') == 'implicit' else 'one pass'}): **{val['loss']:.3f} "
             f"nats a token, {val['bits_per_byte']:.3f} bits per byte**; final training loss "
             f"{_last_loss(run):.3f}.", "", "## Evaluation", "",
             f"The language leaderboard's rows of this model (`{', '.join(map(str, results))}`; 16 documents a "
             "bucket of the test split; see leaderboards/language/leaderboard.md for all models):", ""]
    for group in sorted(metrics):
        group_rows = [r for r in rows if r["group"] == group and r["metric"] == metrics[group]]
        lines += leaderboard.group_section_lines(group, group_rows, metrics[group])
    if notes:
        lines += ["## What was tried and what it showed", "", notes.strip(), ""]
    return "\n".join(lines)


def _language_intro(ckpt: Path, tc: dict, hf: bool) -> str:
    kind = "A Llama-style transformer (LlamaForCausalLM, rotary positions)" if hf else \
        f"An {tc['kind']} Mamba2 language model"
    return (f"{kind} trained on English prose: the pydoc corpus (the Python 3.11 documentation, PSF licence; "
            f"tasks/text/README.md), training context {tc['max_len']} tokens, one of the text trio that share tokens, "
            "tokenizer, context, steps and schedule (`text-implicit`, `text-explicit`, `text-explicit-deep`, "
            "`text-transformer`).")


def _last_loss(run: Path) -> float:
    with open(run / "train_log.csv") as fh:
        return float(list(csv.DictReader(fh))[-1]["loss"])


if __name__ == "__main__":
    raise SystemExit(main())
