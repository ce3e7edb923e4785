"""`implicit-eval train`: train small implicit or explicit Mamba2 models, or a transformer baseline, on the tasks of a
registered family.

Implicit training follows the paper's essentials: the fixed point is found without gradients at a training
budget, then `grad_steps` damped steps are taken with gradients from the (detached) fixed point, the last one
undamped so that, as in evaluation, a final f evaluation feeds the head (the phantom gradient). An optional
warm-up phase first trains a fixed short unroll with full backpropagation. Explicit training is ordinary
backprop. The transformer kind (harness/transformer.py: a transformers LlamaForCausalLM) is ordinary backprop too, on
the same data stream. All use AdamW, linear warm-up + cosine decay, gradient clipping and, on CUDA, bf16 autocast
(the loss is taken from float32 logits).

A run is resumable: every `save_every` steps (and when `time_limit` runs out, or on SIGINT/SIGTERM) the full state is
written atomically to OUT/train_state.pt; `--resume` continues from it and, batches being indexed by step
and all RNG state saved, ends exactly where an uninterrupted run would (bit for bit on the CPU; CUDA kernels
with atomic adds make GPU runs reproducible only up to rounding). The finished model is written to OUT/model with
the task's tokenizer: the project's checkpoint format for the Mamba2 kinds, an ordinary Hugging Face directory for
the transformer. The step log (with tokens per second) goes to OUT/train_log.csv.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from ..model_adapters.config import Budget, ConfigError, ModelConfig, reject_unknown_keys
from ..model_adapters.errors import NonFiniteError
from ..model_adapters.fixed_point import damp, solve
from ..model_adapters.formats import save
from ..model_adapters.formats.common import fold_weight_norm
from ..model_adapters.models import ExplicitLM, ImplicitLM, build_model
from ..model_adapters.tensors import valid_mask
from .io import write_atomic, write_text_atomic
from .transformer import (
    PAD_VOCAB_MULTIPLE,
    build_transformer,
    check_arch,
    eos_token_of,
    load_transformer_weights,
    save_hf,
    transformer_logits,
)

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM

STATE_FILE, LOG_FILE = "train_state.pt", "train_log.csv"
LOG_FIELDS = ("step", "loss", "token_acc", "last_acc", "mean_iters", "lr", "elapsed_s", "tokens_per_s")
KINDS = ("implicit", "explicit", "transformer")
# ModelConfig fields of the Mamba2 kinds (the transformer's are TRANSFORMER_ARCH_DEFAULTS)
ARCH_DEFAULTS = dict(d_model=64, n_layer=1, d_state=16, expand=2, headdim=16, chunk_size=64, ngroups=1)
# Device types whose training steps run under bf16 autocast (a test adds "cpu" to run that path here).
AUTOCAST_DEVICE_TYPES = ("cuda",)


# The float settings and their valid values: inf or nan (which argparse's float() accepts) would train a model of
# non-finite weights, or never stop.
NUMBER_FIELDS = {
    "lr": (lambda x: 0 < x < math.inf, "a finite number > 0"),
    "clip": (lambda x: 0 < x < math.inf, "a finite number > 0"),
    "weight_decay": (lambda x: 0 <= x < math.inf, "a finite number >= 0"),
    "min_lr_ratio": (lambda x: 0 <= x <= 1, "a number in [0, 1]"),
    "time_limit": (lambda x: 0 <= x < math.inf, "a finite number of seconds >= 0 (0: none)"),
}


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """A training run. The architecture is a set of ModelConfig fields, the budgets are Budgets: each is declared and
    validated once, where it belongs."""

    task: str = _help("a task of a registered family (tasks/registry.py), e.g. parity, a5, qa1", default="parity")
    kind: str = _help("implicit (Mamba2 iterated to a fixed point), explicit (Mamba2, one pass) or transformer "
                      "(LlamaForCausalLM, one pass)", default="implicit")
    seed: int = _help("model initialisation seed", default=0)
    data_seed: int = _help("training stream seed (evaluation data use a disjoint namespace)", default=0)
    min_len: int = _help("shortest training sequence", default=1)
    max_len: int = _help("longest training sequence (the length buckets are multiples of it)", default=40)
    data_options: dict = _help("the family's training options, e.g. {\"p_identity_mix\": [0, 0.5]}",
                               default_factory=dict)
    steps: int = _help("optimiser steps", default=2000)
    batch_size: int = _help("sequences per step", default=64)
    lr: float = _help("peak learning rate (AdamW)", default=3e-3)
    weight_decay: float = _help("on projection, convolution and embedding weights only", default=0.01)
    warmup_steps: int = _help("linear learning-rate warm-up", default=100)
    min_lr_ratio: float = _help("the cosine schedule decays to lr * this", default=0.1)
    clip: float = _help("gradient-norm clip", default=1.0)
    arch: dict = _help("the model's sizes: ModelConfig fields (Mamba2 kinds) or TRANSFORMER_ARCH_DEFAULTS' keys "
                       "(transformer); unset ones take the kind's defaults", default_factory=dict)
    train_budget: Budget = _help("fixed point without gradients (implicit)", default=Budget(max_iter=16, tau=0.8))
    grad_steps: int = _help("phantom-gradient steps from the fixed point", default=4)
    unroll_steps: int = _help("warm-up: optimiser steps that train a fixed unroll with backprop", default=0)
    unroll_iters: int = _help("the warm-up unroll's iterations", default=4)
    weight_norm: bool = _help("weight norm on every Linear and Conv1d of an implicit model, as the reference does",
                              default=True)
    eval_budget: Budget = _help("the default evaluation budget stored in the checkpoint",
                                default=Budget(max_iter=256, tol=0.05, tau=0.8))
    save_every: int = _help("save the training state every this many steps (and on SIGINT/SIGTERM)", default=50)
    log_every: int = _help("log a row every this many steps", default=10)
    time_limit: float = _help("seconds per call (0: none); the state is saved when it runs out", default=0.0)
    init_from: str = _help("start from this checkpoint's weights (fine-tuning; its architecture must match)",
                           default="")
    device: str = _help("cpu, cuda, cuda:1, ...", default="cpu")

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        for name in ("steps", "batch_size", "grad_steps", "unroll_iters", "save_every", "log_every", "min_len",
                     "max_len"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_len < self.min_len:
            raise ConfigError(f"max_len ({self.max_len}) must be >= min_len ({self.min_len})")
        for name, (valid, text) in NUMBER_FIELDS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not valid(value):
                raise ConfigError(f"{name} must be {text}, got {value!r}")
        # The architecture is recorded in full (the kind's defaults filled in) and validated now, not at the first step.
        if self.kind == "transformer":
            object.__setattr__(self, "arch", check_arch(self.arch))
        else:
            if not isinstance(self.arch, dict):
                raise ConfigError(f"arch must be a mapping of ModelConfig fields, got {self.arch!r}")
            object.__setattr__(self, "arch", {**ARCH_DEFAULTS, **self.arch})
            self.model_config(8)

    def model_config(self, vocab_size: int) -> ModelConfig:
        """The Mamba2 kinds' ModelConfig (the transformer's sizes are harness/transformer.py's)."""
        if self.kind == "transformer":
            raise ConfigError("kind=transformer has no ModelConfig (see harness/transformer.py)")
        budget = self.eval_budget if self.kind == "implicit" else None
        try:
            return ModelConfig.from_dict({**self.arch, "kind": self.kind, "vocab_size": vocab_size, "budget": budget,
                                          "pad_vocab_size_multiple": PAD_VOCAB_MULTIPLE}, where="arch")
        except TypeError as exc:
            raise ConfigError(f"arch: {exc}") from None

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["train_budget"], d["eval_budget"] = self.train_budget.to_dict(), self.eval_budget.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        reject_unknown_keys("train config", d, [f.name for f in dataclasses.fields(cls)])
        d = dict(d)
        for name in ("train_budget", "eval_budget"):
            if isinstance(d.get(name), dict):
                d[name] = Budget.from_dict(d[name], where=name)
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
        from ..tasks.registry import family_for_task

        torch.manual_seed(self.cfg.seed)
        self.device = torch.device(self.cfg.device)
        self.family = family_for_task(self.cfg.task)
        self.tokenizer = self.family.tokenizer_for(self.cfg.task)
        if self.cfg.kind == "transformer":
            self.model = build_transformer(self.cfg.arch, self.tokenizer).to(self.device)
        else:
            self.model = build_model(self.cfg.model_config(self.tokenizer.get_vocab_size())).to(self.device)
        if self.cfg.init_from:
            self._load_weights(Path(self.cfg.init_from))
        if self.cfg.kind == "implicit" and self.cfg.weight_norm:
            apply_weight_norm(self.model)
        self.optimizer = torch.optim.AdamW(parameter_groups(self.model, self.cfg.weight_decay), lr=self.cfg.lr,
                                           betas=(0.9, 0.95))

    # self.model as its kind's class (one attribute for the three kinds)
    @property
    def transformer(self) -> LlamaForCausalLM:
        return cast("LlamaForCausalLM", self.model)

    @property
    def ssm(self) -> ExplicitLM | ImplicitLM:
        return cast("ExplicitLM | ImplicitLM", self.model)

    @property
    def implicit(self) -> ImplicitLM:
        return cast(ImplicitLM, self.model)

    def _load_weights(self, directory: Path) -> None:
        """Weights of a checkpoint of the same architecture (weight norm is applied afterwards, from them)."""
        from ..model_adapters.formats import load_checkpoint

        if self.cfg.kind == "transformer":
            load_transformer_weights(self.transformer, directory)
            return
        ckpt = load_checkpoint(directory)
        ours = {k: v for k, v in self.ssm.cfg.to_dict().items() if k != "budget"}
        theirs = {k: v for k, v in ckpt.config.to_dict().items() if k != "budget"}
        changed = sorted(k for k in ours if ours[k] != theirs.get(k))
        if changed:
            raise ConfigError(f"init_from={directory}: its architecture differs in {changed}")
        self.model.load_state_dict(ckpt.model.state_dict())

    # -- one optimisation step ------------------------------------------------------------------------
    def lr_at(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        progress = (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps)
        return c.lr * (c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on a batch {"input_ids": (B, L), "labels": (B, L), -100 on right padding}: labels[b, t]
        is what position t predicts (the families align them). Returns the step's loss, accuracies, mean
        iterations and its number of labelled tokens."""
        ids, labels = batch["input_ids"].to(self.device), batch["labels"].to(self.device)
        lengths = (labels != -100).sum(1)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        with autocast(self.device):
            logits, mean_iters = self.forward(ids, lengths)
        # float32 logits: a bf16 log-softmax over the vocabulary would round the loss (a no-op without autocast)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        self._refuse_non_finite("loss", loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._refuse_non_finite("gradient norm", torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip))
        self.optimizer.step()
        self.step += 1
        return {"loss": float(loss.detach()), **accuracies(logits.detach(), labels, lengths), "mean_iters": mean_iters,
                "tokens": int(lengths.sum())}

    def _refuse_non_finite(self, what: str, value: torch.Tensor) -> None:
        """Stop before a non-finite loss or gradient reaches the weights: the saved state stays the last finite one."""
        if not bool(torch.isfinite(value)):
            raise NonFiniteError(f"training diverged at step {self.step + 1}: the {what} is {float(value.detach())} "
                                 f"(lr={self.cfg.lr:g}, clip={self.cfg.clip:g}); the step was not applied and "
                                 f"{self.out / STATE_FILE} keeps the last saved state; lower --lr and train again")

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, float]:
        """logits (B, L, V) and the mean f evaluations per sequence (1 for the one-pass kinds)."""
        if self.cfg.kind == "transformer":
            return transformer_logits(self.transformer, ids), 1.0
        if self.cfg.kind == "explicit":
            return self.ssm.logits(self.ssm(ids, lengths=lengths).hidden), 1.0
        if self.step < self.cfg.unroll_steps:
            hidden = unrolled_forward(self.implicit, ids, lengths, self.cfg.unroll_iters, self.cfg.train_budget.tau)
            return self.implicit.logits(hidden), float(self.cfg.unroll_iters)
        hidden, mean_iters = phantom_forward(self.implicit, ids, lengths, self.cfg)
        return self.implicit.logits(hidden), mean_iters

    # -- state ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"config": self.cfg.to_dict(), "step": self.step, "elapsed": self.elapsed,
                "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "rng_cpu": torch.get_rng_state(),
                "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}

    def save_state(self) -> None:
        check_finite(self.model, f"the training state at step {self.step}")
        state = self.state_dict()
        write_atomic(self.out / STATE_FILE, lambda tmp: torch.save(state, tmp))

    def load_state(self) -> None:
        # Onto the CPU: the RNG states must stay CPU byte tensors (set_rng_state refuses CUDA ones); the model and
        # the optimizer copy their tensors to the parameters' device as they load them.
        state = torch.load(self.out / STATE_FILE, map_location="cpu", weights_only=True)
        saved = TrainConfig.from_dict(state["config"])
        free = ("steps", "time_limit", "device", "save_every", "log_every")
        changed = {f.name for f in dataclasses.fields(saved)
                   if f.name not in free and getattr(saved, f.name) != getattr(self.cfg, f.name)}
        if changed:
            raise ConfigError(f"--resume: {sorted(changed)} differ from the saved run in {self.out}; a resumed run "
                              "must use the same settings")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.elapsed = state["step"], state["elapsed"]
        torch.set_rng_state(state["rng_cpu"])
        if state["rng_cuda"]:
            torch.cuda.set_rng_state_all(state["rng_cuda"])


# Parameters whose decay would change what they mean, not regularise: decay rates (A_log; decaying it pulls every
# rate towards A = -1), step sizes (dt_bias), skips (D), norm gains and weight-norm magnitudes, and biases.
NO_DECAY_SUFFIXES = ("A_log", "dt_bias", ".D", "norm.weight", "norm_f.weight", "parametrizations.weight.original0",
                     "bias")


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on projection, convolution and embedding weights only (as mamba_ssm marks
    A_log, D and dt_bias `_no_weight_decay`)."""
    decay: list[nn.Parameter] = []
    keep: list[nn.Parameter] = []
    for name, param in model.named_parameters():
        (keep if name.endswith(NO_DECAY_SUFFIXES) else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def autocast(device: torch.device):
    """bf16 autocast on the device types of AUTOCAST_DEVICE_TYPES (CUDA), a no-op elsewhere."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type in AUTOCAST_DEVICE_TYPES)


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
    valid = valid_mask(lengths, ids.shape[1])
    u = model.inject(ids)
    # Weight norm computed once per phase, not at every f evaluation. Two caches, never one: a weight first
    # computed under no_grad would carry no gradient into the phantom steps.
    with torch.no_grad(), parametrize.cached():
        z0 = torch.zeros(*ids.shape, model.cfg.d_model, device=ids.device)
        budget = cfg.train_budget.replace(mode="simultaneous")
        sol = solve(lambda z, ctx, commit: model.f(z, ctx[0], None, ctx[1], commit), z0, budget, (u, valid), valid)
    mean_iters = float(sol.stats.iterations.float().mean())
    with parametrize.cached():
        return phantom_steps(model, sol.z.detach(), u, valid, cfg.grad_steps, budget.tau), mean_iters


def phantom_steps(model: ImplicitLM, z: torch.Tensor, u: torch.Tensor, valid, steps: int, tau: float) -> torch.Tensor:
    for _ in range(steps - 1):
        z = damp(z, model.f(z, u, None, valid)[0], tau)
    return model.f(z, u, None, valid)[0]


def unrolled_forward(model: ImplicitLM, ids: torch.Tensor, lengths: torch.Tensor, iters: int, tau: float):
    """The warm-up phase: a fixed unroll from z = 0, differentiated end to end."""
    valid = valid_mask(lengths, ids.shape[1])
    u = model.inject(ids)
    z = torch.zeros(*ids.shape, model.cfg.d_model, device=ids.device)
    with parametrize.cached():
        return phantom_steps(model, z, u, valid, iters, tau)


def check_finite(model: nn.Module, what: str) -> None:
    """Non-finite weights are never written, neither as a training state nor as a finished checkpoint."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not bool(t.isfinite().all())]
    if bad:
        raise NonFiniteError(f"{what} has non-finite weights ({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); "
                             "nothing was written")


def weight_normed_modules(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv1d)) and m is not model.lm_head]


def apply_weight_norm(model: nn.Module) -> None:
    for module in weight_normed_modules(model):
        torch.nn.utils.parametrizations.weight_norm(module, "weight", dim=0)


def folded_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with weight norm folded by the loaders' one folding rule (formats.common)."""
    names = {".parametrizations.weight.original0": ".weight_g", ".parametrizations.weight.original1": ".weight_v"}
    state = {}
    for key, value in model.state_dict().items():
        for old, new in names.items():
            key = key.replace(old, new)
        state[key] = value.detach()
    return fold_weight_norm(state, where="training state")


def run(cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True,
        stop_after: int | None = None) -> Path | None:
    """Train (or continue); returns the checkpoint directory when training finished, None when the time limit,
    `stop_after` steps in this call, or SIGINT/SIGTERM stopped it first: the state is saved, run again with
    resume=True."""
    from tqdm import tqdm

    trainer = _start(cfg, out, resume)
    batches = trainer.family.training_batches(cfg.task, min_len=cfg.min_len, max_len=cfg.max_len,
                                              batch_size=cfg.batch_size, seed=cfg.data_seed, start=trainer.step,
                                              **cfg.data_options)
    _reset_log(out, trainer.step)
    first_step, call_started = trainer.step, time.monotonic()
    started, bar = call_started, tqdm(total=cfg.steps, initial=trainer.step, disable=not progress)
    window = Throughput()
    with StopSignals() as signals:
        while trainer.step < cfg.steps:
            row = trainer.train_step(next(batches))
            window.add(row.pop("tokens"))
            row.update(step=trainer.step, lr=trainer.lr_at(trainer.step - 1),
                       elapsed_s=trainer.elapsed + time.monotonic() - started)
            if trainer.step % cfg.log_every == 0 or trainer.step == cfg.steps:
                _append_log(out, {**row, "tokens_per_s": window.rate()})
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.3f}", acc=f"{row['last_acc']:.2f}", iters=f"{row['mean_iters']:.1f}")
            stop = signals.received or (cfg.time_limit and time.monotonic() - call_started > cfg.time_limit) or \
                (stop_after is not None and trainer.step - first_step >= stop_after)
            if trainer.step % cfg.save_every == 0 or stop or trainer.step == cfg.steps:
                trainer.elapsed += time.monotonic() - started  # wall time of training, across resumed calls
                started = time.monotonic()
                trainer.save_state()
            if stop and trainer.step < cfg.steps:
                bar.close()
                return None
    bar.close()
    return finish(trainer, out)


def _start(cfg: TrainConfig, out: Path, resume: bool) -> Trainer:
    if resume and not (out / STATE_FILE).exists():
        raise ConfigError(f"--resume: {out} holds no saved training state ({STATE_FILE}); start without --resume")
    if not resume and (out / STATE_FILE).exists():
        raise ConfigError(f"{out} holds a training run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, out)
    if resume:
        trainer.load_state()
    return trainer


class Throughput:
    """Labelled tokens per second of wall time since the last reading (data, steps and saves included)."""

    def __init__(self):
        self.tokens, self.since = 0, time.monotonic()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    def rate(self) -> float:
        now = time.monotonic()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.tokens, self.since = 0, now
        return rate


class StopSignals:
    """SIGINT/SIGTERM during training: finish the step, save the state, stop (a second signal stops at once)."""

    def __init__(self):
        self.received = False

    def __enter__(self):
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        if threading.current_thread() is threading.main_thread():
            for sig in self._previous:
                signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.received:
            raise KeyboardInterrupt
        self.received = True

    def __exit__(self, *exc):
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._previous.items():
                signal.signal(sig, handler)


def export(out: Path) -> Path:
    """Write the checkpoint of a run's saved state (mid-training or finished) to OUT/model."""
    if not (out / STATE_FILE).exists():
        raise ConfigError(f"--export: {out} holds no saved training state ({STATE_FILE})")
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    trainer = Trainer(dataclasses.replace(TrainConfig.from_dict(state["config"]), device="cpu"), out)
    trainer.load_state()
    return finish(trainer, out)


def finish(trainer: Trainer, out: Path) -> Path:
    """The trained model with the task's tokenizer at OUT/model: the Mamba2 kinds in the project's format (weight
    norm folded), the transformer as a Hugging Face directory (harness/transformer.py)."""
    check_finite(trainer.model, f"the model of {out}")
    tokenizer_path = out / "tokenizer.json"
    write_atomic(tokenizer_path, lambda tmp: trainer.family.write_tokenizer(trainer.cfg.task, tmp))
    device = torch.cuda.get_device_name() if trainer.device.type == "cuda" else "cpu"
    training = {"config": trainer.cfg.to_dict(), "family": trainer.family.name, "steps": trainer.step,
                "wall_time_s": round(trainer.elapsed, 1), "device": device, "torch": torch.__version__}
    target = out / "model"
    if trainer.cfg.kind == "transformer":
        save_hf(trainer.transformer, tokenizer_path, target, training)
    else:
        plain = build_model(trainer.ssm.cfg)
        plain.load_state_dict(folded_state(trainer.model))
        save(plain, target, tokenizer_path=tokenizer_path, eos_token=eos_token_of(trainer.tokenizer),
             training=training)
    write_text_atomic(out / "training.json", json.dumps(training, indent=2) + "\n")
    return target


def _reset_log(out: Path, step: int) -> None:
    """Start the step log, or, when resuming, keep only the rows up to the saved step (no duplicates)."""
    path = out / LOG_FILE
    rows = []
    if step and path.exists():
        with path.open() as fh:
            rows = [r for r in csv.DictReader(fh) if int(r["step"]) <= step]
    write_text_atomic(path, _csv_text(rows, header=True))


def _append_log(out: Path, row: dict) -> None:
    """One row more, the whole file rewritten atomically (a few hundred rows: a reader never sees half a row)."""
    path = out / LOG_FILE
    write_text_atomic(path, path.read_text() + _csv_text([{k: _fmt(row[k]) for k in LOG_FIELDS}], header=False))


def _csv_text(rows: list[dict], header: bool) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, LOG_FIELDS, lineterminator="\n")
    if header:
        writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(x):
    return f"{x:.6g}" if isinstance(x, float) else x
