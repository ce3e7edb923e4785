"""`implicit-eval train`: train small implicit or explicit Mamba2 models on the synthetic state-tracking tasks.

Implicit training follows the paper's essentials: the fixed point is found without gradients at a training
budget, then `grad_steps` damped steps are taken with gradients from the (detached) fixed point, the last one
undamped so that, as in evaluation, a final f evaluation feeds the head (the phantom gradient). An optional
warm-up phase first trains a fixed short unroll with full backpropagation. Explicit training is ordinary
backprop. Both use AdamW, linear warm-up + cosine decay, gradient clipping and, on CUDA, bf16 autocast.

A run is resumable: every `save_every` steps (and when `time_limit` runs out) the full training state is
written atomically to OUT/train_state.pt; `--resume` continues from it and, batches being indexed by step
and all RNG state saved, ends exactly where an uninterrupted run would. The finished model is written to
OUT in the project's checkpoint format with the task's tokenizer; the step log goes to OUT/train_log.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from implicit_ssm_eval.model_adapters.config import Budget, ConfigError, ModelConfig, reject_unknown_keys
from implicit_ssm_eval.model_adapters.fixed_point import solve
from implicit_ssm_eval.model_adapters.formats import save
from implicit_ssm_eval.model_adapters.models import ImplicitLM, build_model, lengths_to_valid

STATE_FILE, LOG_FILE = "train_state.pt", "train_log.csv"
LOG_FIELDS = ("step", "loss", "token_acc", "last_acc", "mean_iters", "lr", "elapsed_s")


@dataclass(frozen=True)
class TrainConfig:
    task: str = "parity"
    kind: str = "implicit"
    seed: int = 0  # model initialisation
    data_seed: int = 0  # the training stream (evaluation data use a disjoint namespace, see tasks/)
    min_len: int = 1
    max_len: int = 40
    p_identity: float | None = None
    steps: int = 2000
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100  # learning-rate warm-up
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    clip: float = 1.0
    # Architecture (ModelConfig fields).
    d_model: int = 64
    n_layer: int = 1
    d_state: int = 16
    expand: int = 2
    headdim: int = 16
    chunk_size: int = 64
    # Implicit training: fixed point without gradients, then phantom-gradient steps.
    train_max_iter: int = 16
    train_tol: float = 0.0
    tau: float = 0.8
    grad_steps: int = 4
    unroll_steps: int = 0  # warm-up phase: this many optimiser steps train a fixed unroll with backprop
    unroll_iters: int = 4
    weight_norm: bool = True  # on every Linear and Conv1d of an implicit model, as the reference does
    # The default evaluation budget stored in the checkpoint (adaptive: a tolerance and a generous cap).
    eval_max_iter: int = 256
    eval_tol: float = 0.05
    # Bookkeeping.
    save_every: int = 200
    log_every: int = 10
    time_limit: float = 0.0  # seconds; 0 = none. The run saves its state and stops when it is spent.
    device: str = "cpu"

    def __post_init__(self):
        if self.kind not in ("implicit", "explicit"):
            raise ConfigError(f"kind must be 'implicit' or 'explicit', got {self.kind!r}")
        for name in ("steps", "batch_size", "train_max_iter", "grad_steps", "unroll_iters", "save_every",
                     "log_every", "min_len", "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < self.min_len:
            raise ConfigError(f"max_len ({self.max_len}) must be >= min_len ({self.min_len})")
        if not 0 < self.tau <= 1:
            raise ConfigError(f"tau must be in (0, 1], got {self.tau}")

    def model_config(self, vocab_size: int) -> ModelConfig:
        budget = {"max_iter": self.eval_max_iter, "tol": self.eval_tol, "tau": self.tau} if self.kind == "implicit" \
            else {}
        return ModelConfig(kind=self.kind, vocab_size=vocab_size, pad_vocab_size_multiple=8, d_model=self.d_model,
                           n_layer=self.n_layer, d_state=self.d_state, expand=self.expand, headdim=self.headdim,
                           chunk_size=self.chunk_size, budget=budget)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        reject_unknown_keys("train config", d, [f.name for f in dataclasses.fields(cls)])
        return cls(**d)


@dataclass
class Trainer:
    cfg: TrainConfig
    out: Path
    model: nn.Module = field(init=False)
    optimizer: torch.optim.Optimizer = field(init=False)
    step: int = 0
    elapsed: float = 0.0

    def __post_init__(self):
        from implicit_ssm_eval.tasks.state_tracking import tokenizer_for

        torch.manual_seed(self.cfg.seed)
        self.device = torch.device(self.cfg.device)
        self.tokenizer = tokenizer_for(self.cfg.task)
        self.model = build_model(self.cfg.model_config(self.tokenizer.get_vocab_size())).to(self.device)
        if self.cfg.kind == "implicit" and self.cfg.weight_norm:
            apply_weight_norm(self.model)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
                                           betas=(0.9, 0.95))

    # -- one optimisation step ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def train_step(self, batch: dict) -> dict:
        ids, labels = batch["input_ids"].to(self.device), batch["labels"].to(self.device)
        lengths = (labels != -100).sum(1)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            hidden, mean_iters = self.forward(ids, lengths)
            logits = self.model.logits(hidden)
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=-100)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip)
        self.optimizer.step()
        self.step += 1
        return {"loss": float(loss.detach()), **accuracies(logits.detach(), labels, lengths), "mean_iters": mean_iters}

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, float]:
        if self.cfg.kind == "explicit":
            return self.model(ids, lengths=lengths).hidden, 1.0
        if self.step < self.cfg.unroll_steps:
            hidden = unrolled_forward(self.model, ids, lengths, self.cfg.unroll_iters, self.cfg.tau)
            return hidden, float(self.cfg.unroll_iters)
        return phantom_forward(self.model, ids, lengths, self.cfg)

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": dataclasses.asdict(self.cfg), "step": self.step, "elapsed": self.elapsed,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def save_state(self) -> None:
        tmp = self.out / (STATE_FILE + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, self.out / STATE_FILE)

    def load_state(self) -> None:
        state = torch.load(self.out / STATE_FILE, map_location=self.device, weights_only=True)
        saved = TrainConfig.from_dict(state["config"])
        changed = {k for k in dataclasses.asdict(saved) if k not in ("steps", "time_limit", "device", "save_every",
                                                                         "log_every")
                   and getattr(saved, k) != getattr(self.cfg, k)}
        if changed:
            raise ConfigError(f"--resume: {sorted(changed)} differ from the saved run in {self.out}; a resumed run "
                              "must use the same settings")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])


def accuracies(logits: torch.Tensor, labels: torch.Tensor, lengths: torch.Tensor) -> dict:
    pred = logits.argmax(-1)
    mask = labels != -100
    last = labels.gather(1, (lengths - 1)[:, None])[:, 0]
    last_pred = pred.gather(1, (lengths - 1)[:, None])[:, 0]
    return {"token_acc": float((pred == labels)[mask].float().mean()),
            "last_acc": float((last_pred == last).float().mean())}


def phantom_forward(model: ImplicitLM, ids: torch.Tensor, lengths: torch.Tensor, cfg: TrainConfig):
    """Fixed point without gradients at the training budget, then grad_steps evaluations with gradients
    from the detached fixed point: grad_steps - 1 damped updates and a final f (the evaluation semantics)."""
    valid = lengths_to_valid(lengths, ids.shape[1])
    u = model.inject(ids)
    with torch.no_grad():
        z0 = torch.zeros(*ids.shape, model.cfg.d_model, device=ids.device)
        budget = Budget(max_iter=cfg.train_max_iter, tol=cfg.train_tol, tau=cfg.tau)
        z, _, stats = solve(lambda z, rows: model.f(z, u[rows], None, valid[rows])[0], z0, budget, valid)
    return phantom_steps(model, z.detach(), u, valid, cfg.grad_steps, cfg.tau), float(stats.iterations.float().mean())


def phantom_steps(model: ImplicitLM, z: torch.Tensor, u: torch.Tensor, valid, steps: int, tau: float) -> torch.Tensor:
    for _ in range(steps - 1):
        z = (1 - tau) * z + tau * model.f(z, u, None, valid)[0]
    return model.f(z, u, None, valid)[0]


def unrolled_forward(model: ImplicitLM, ids: torch.Tensor, lengths: torch.Tensor, iters: int, tau: float):
    """The warm-up phase: a fixed unroll from z = 0, differentiated end to end."""
    valid = lengths_to_valid(lengths, ids.shape[1])
    u = model.inject(ids)
    z = torch.zeros(*ids.shape, model.cfg.d_model, device=ids.device)
    return phantom_steps(model, z, u, valid, iters, tau)


def weight_normed_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d)) and m is not model.lm_head]


def apply_weight_norm(model: nn.Module) -> None:
    for module in weight_normed_modules(model):
        torch.nn.utils.parametrizations.weight_norm(module, "weight", dim=0)


def fold_weight_norm(model: nn.Module) -> None:
    for module in weight_normed_modules(model):
        if torch.nn.utils.parametrize.is_parametrized(module, "weight"):
            torch.nn.utils.parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)


def run(cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
        stop_after: int | None = None) -> Path | None:
    """Train (or continue); returns the checkpoint directory when training finished, None when the time limit
    (or `stop_after` steps in this call) stopped it first: the state is saved, run again with resume=True."""
    from tqdm import tqdm

    from implicit_ssm_eval.tasks.state_tracking import training_batches, write_tokenizer

    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, out)
    if resume and (out / STATE_FILE).exists():
        trainer.load_state()
    elif (out / STATE_FILE).exists():
        raise ConfigError(f"{out} holds a training run; pass --resume to continue it or choose another --out")
    batches = training_batches(cfg.task, min_len=cfg.min_len, max_len=cfg.max_len, batch_size=cfg.batch_size,
                               seed=cfg.data_seed, p_identity=cfg.p_identity, start=trainer.step)
    _reset_log(out, trainer.step)
    first_step, call_started = trainer.step, time.monotonic()
    started, bar = call_started, tqdm(total=cfg.steps, initial=trainer.step, disable=not progress)
    while trainer.step < cfg.steps:
        row = trainer.train_step(next(batches))
        row.update(step=trainer.step, lr=trainer.lr_at(trainer.step - 1),
                   elapsed_s=trainer.elapsed + time.monotonic() - started)
        if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
            _append_log(out, row)
        bar.update(1)
        bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['last_acc']:.2f}", iters=f"{row['mean_iters']:.1f}")
        out_of_time = (cfg.time_limit and time.monotonic() - call_started > cfg.time_limit) or \
            (stop_after is not None and trainer.step - first_step >= stop_after)
        if trainer.step % cfg.save_every == 0 or out_of_time or trainer.step == cfg.steps:
            trainer.elapsed += time.monotonic() - started  # wall time of training, across resumed calls
            started = time.monotonic()
            trainer.save_state()
        if out_of_time and trainer.step < cfg.steps:
            bar.close()
            return None
    bar.close()
    return finish(trainer, out, write_tokenizer(cfg.task, out / "tokenizer.json"))


def export(out: Path) -> Path:
    """Write the checkpoint of a run's saved state (mid-training or finished) to OUT/model."""
    from implicit_ssm_eval.tasks.state_tracking import write_tokenizer

    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    trainer = Trainer(replace_device(TrainConfig.from_dict(state["config"]), "cpu"), out)
    trainer.load_state()
    return finish(trainer, out, write_tokenizer(trainer.cfg.task, out / "tokenizer.json"))


def replace_device(cfg: TrainConfig, device: str) -> TrainConfig:
    return dataclasses.replace(cfg, device=device)


def finish(trainer: Trainer, out: Path, tokenizer_path: Path) -> Path:
    fold_weight_norm(trainer.model)
    device = torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu"
    training = {"config": dataclasses.asdict(trainer.cfg), "steps": trainer.step,
                "wall_time_s": round(trainer.elapsed, 1), "device": device, "torch": torch.__version__}
    target = out / "model"
    save(trainer.model.cpu(), target, tokenizer_path=tokenizer_path, eos_token="<eos>", training=training)
    (out / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return target


def _reset_log(out: Path, step: int) -> None:
    """Start the step log, or, when resuming, keep only the rows up to the saved step (no duplicates)."""
    path = out / LOG_FILE
    rows = []
    if step and path.exists():
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, LOG_FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def _append_log(out: Path, row: dict) -> None:
    with (out / LOG_FILE).open("a", newline="") as fh:
        csv.DictWriter(fh, LOG_FIELDS).writerow({k: _fmt(row[k]) for k in LOG_FIELDS})


def _fmt(x):
    return f"{x:.6g}" if isinstance(x, float) else x
