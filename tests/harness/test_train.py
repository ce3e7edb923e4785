"""The training recipe: it learns, it resumes exactly, and its phantom gradient is the right gradient."""

import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from implicit_ssm_eval.harness.train import TrainConfig, Trainer, finish, phantom_steps, run
from implicit_ssm_eval.model_adapters.config import Budget, ConfigError
from implicit_ssm_eval.model_adapters.fixed_point import solve
from implicit_ssm_eval.model_adapters.formats import load_checkpoint
from implicit_ssm_eval.model_adapters.testing import rel_err, tiny_model

TINY = dict(task="parity", min_len=1, max_len=6, batch_size=32, arch=dict(d_model=32, d_state=8, headdim=8), lr=5e-3,
            warmup_steps=10, train_budget=Budget(max_iter=8, tau=0.8), grad_steps=3, save_every=1000, log_every=5,
            eval_budget=Budget(max_iter=16, tol=0.05, tau=0.8))


def log_rows(out):
    with open(out / "train_log.csv") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.parametrize("kind", ["implicit", "explicit"])
def test_tiny_training_learns_parity_of_short_strings(tmp_path, kind):
    cfg = TrainConfig(kind=kind, steps=120 if kind == "implicit" else 200, **TINY)
    ckpt_dir = run(cfg, tmp_path, progress=False)
    rows = log_rows(tmp_path)
    first, last = float(rows[0]["loss"]), sum(float(r["loss"]) for r in rows[-3:]) / 3
    assert last < 0.6 * first, (first, last)
    assert sum(float(r["token_acc"]) for r in rows[-3:]) / 3 > 0.75  # chance is 0.5
    ckpt = load_checkpoint(ckpt_dir)
    assert ckpt.format == "native" and ckpt.tokenizer.eos_token_id is not None
    if kind == "implicit":
        assert ckpt.default_budget == Budget(max_iter=16, tol=0.05, tau=0.8)
        assert "weight" in dict(ckpt.model.layers[0].mixer.in_proj.named_parameters())  # weight norm folded


def test_resume_gives_the_same_model_as_an_uninterrupted_run(tmp_path):
    cfg = TrainConfig(kind="implicit", steps=12, unroll_steps=4, **TINY)
    straight = run(cfg, tmp_path / "a", progress=False)
    assert run(cfg, tmp_path / "b", progress=False, stop_after=7) is None
    with pytest.raises(ConfigError, match="pass --resume"):
        run(cfg, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="holds no saved training state"):
        run(cfg, tmp_path / "c", resume=True, progress=False)
    resumed = run(cfg, tmp_path / "b", resume=True, progress=False)
    a, b = load_checkpoint(straight).model.state_dict(), load_checkpoint(resumed).model.state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [r["step"] for r in log_rows(tmp_path / "b")] == [r["step"] for r in log_rows(tmp_path / "a")]


def test_resume_refuses_changed_settings(tmp_path):
    run(TrainConfig(kind="explicit", steps=6, **TINY), tmp_path, progress=False, stop_after=3)
    with pytest.raises(ConfigError, match=r"\['lr'\] differ from the saved run"):
        run(TrainConfig(kind="explicit", steps=6, **{**TINY, "lr": 1e-3}), tmp_path, resume=True, progress=False)


def ift_gradient(model, ids, loss_fn, tau):
    """The exact implicit-function-theorem gradient at the fixed point z* = f(z*): solve the adjoint
    g = dL/dz* + J^T g by iteration with vector-Jacobian products, then contract with df/dtheta."""
    u = model.inject(ids)
    with torch.no_grad():
        z = solve(lambda z, u_rows, commit: model.f(z, u_rows), torch.zeros(*ids.shape, 32, dtype=torch.float64),
                  Budget(max_iter=400, tol=1e-13, tau=tau), context=u).z
    z = z.requires_grad_()
    fz = model.f(z, u)[0]
    v = torch.autograd.grad(loss_fn(fz), fz, retain_graph=True)[0]
    g = v.clone()
    for _ in range(400):
        g = v + torch.autograd.grad(fz, z, g, retain_graph=True)[0]
    params = [p for p in model.parameters()]
    return torch.autograd.grad(fz, params, g, allow_unused=True)


def phantom_gradient(model, ids, loss_fn, steps, tau):
    u = model.inject(ids)
    with torch.no_grad():
        z = solve(lambda z, u_rows, commit: model.f(z, u_rows), torch.zeros(*ids.shape, 32, dtype=torch.float64),
                  Budget(max_iter=400, tol=1e-13, tau=tau), context=u).z
    out = phantom_steps(model, z.detach(), u, None, steps, tau)
    return torch.autograd.grad(loss_fn(out), list(model.parameters()), allow_unused=True)


def manual_unroll_gradient(model, ids, loss_fn, steps, tau):
    """The same phantom steps written out by hand, differentiated by autograd."""
    u = model.inject(ids)
    z = torch.zeros(*ids.shape, 32, dtype=torch.float64)
    with torch.no_grad():
        for _ in range(399):
            fz = model.f(z, u)[0]
            if float((fz - z).norm() / (1e-6 + z.norm())) < 1e-13:
                break
            z = (1 - tau) * z + tau * fz
    for _ in range(steps - 1):
        z = (1 - tau) * z + tau * model.f(z, u)[0]
    out = model.f(z, u)[0]
    return torch.autograd.grad(loss_fn(out), list(model.parameters()), allow_unused=True)


def flat(grads):
    return torch.cat([g.flatten() for g in grads if g is not None])


def test_phantom_gradient_matches_autograd_and_approaches_the_exact_gradient():
    model = tiny_model("implicit", contractive=True, dtype=torch.float64)
    ids = torch.randint(0, 37, (2, 7))
    target = torch.randn(2, 7, 32, dtype=torch.float64)

    def loss_fn(h):
        return ((h - target) ** 2).mean()

    exact = flat(ift_gradient(model, ids, loss_fn, 0.8))
    phantom4 = flat(phantom_gradient(model, ids, loss_fn, 4, 0.8))
    assert rel_err(phantom4, flat(manual_unroll_gradient(model, ids, loss_fn, 4, 0.8))) < 1e-8
    errors = [rel_err(flat(phantom_gradient(model, ids, loss_fn, k, 0.8)), exact) for k in (1, 4, 30)]
    assert errors[2] < 1e-4 and errors[0] > errors[1] > errors[2], errors


def test_train_config_validation():
    with pytest.raises(ConfigError, match="kind must be"):
        TrainConfig(kind="hybrid")
    with pytest.raises(ConfigError, match=r"max_len \(2\) must be >= min_len \(5\)"):
        TrainConfig(min_len=5, max_len=2)
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['stpes'\]"):
        TrainConfig.from_dict({"stpes": 3})
    with pytest.raises(ConfigError, match=r"arch: unknown key\(s\) \['d_modle'\]"):
        TrainConfig(arch={"d_modle": 8})
    with pytest.raises(ConfigError, match="headdim"):
        TrainConfig(arch={"d_model": 30, "headdim": 16})
    cfg = TrainConfig(**TINY)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_weight_decay_spares_decay_rates_steps_skips_norms_and_biases(tmp_path):
    """AdamW decays projection, convolution and embedding weights only: decaying A_log would pull every decay rate
    towards A = -1 (mamba_ssm marks A_log, D and dt_bias _no_weight_decay)."""
    trainer = Trainer(TrainConfig(kind="implicit", **TINY), tmp_path)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    decayed, kept = ({names[id(p)] for p in g["params"]} for g in trainer.optimizer.param_groups)
    assert trainer.optimizer.param_groups[0]["weight_decay"] == 0.01 and trainer.optimizer.param_groups[1][
        "weight_decay"] == 0.0
    for name in ("layers.0.mixer.A_log", "layers.0.mixer.dt_bias", "layers.0.mixer.D", "layers.0.norm.weight",
                 "layers.0.mixer.norm.weight", "norm_f.weight", "injection_norm.weight",
                 "layers.0.mixer.in_proj.parametrizations.weight.original0", "layers.0.mixer.conv1d.bias",
                 "injection.bias"):
        assert name in kept, name
    for name in ("embedding.weight", "layers.0.mixer.in_proj.parametrizations.weight.original1",
                 "layers.0.mixer.out_proj.parametrizations.weight.original1",
                 "layers.0.mixer.conv1d.parametrizations.weight.original1"):
        assert name in decayed, name
    assert decayed | kept == set(names.values())


def test_the_trained_model_is_saved_with_weight_norm_folded_exactly(tmp_path):
    cfg = TrainConfig(kind="implicit", steps=3, **TINY)
    trainer = Trainer(cfg, tmp_path)
    ids = torch.randint(3, 5, (2, 6))
    with torch.no_grad():
        expected = trainer.model(ids, Budget(max_iter=5)).hidden
    ckpt = load_checkpoint(finish(trainer, tmp_path))
    with torch.no_grad():
        got = ckpt.model(ids, Budget(max_iter=5)).hidden
    assert rel_err(got, expected) < 1e-6


def test_trainer_uses_weight_norm_for_implicit_only(tmp_path):
    imp = Trainer(TrainConfig(kind="implicit", **TINY), tmp_path)
    exp = Trainer(TrainConfig(kind="explicit", **TINY), tmp_path)
    assert torch.nn.utils.parametrize.is_parametrized(imp.model.layers[0].mixer.in_proj)
    assert not torch.nn.utils.parametrize.is_parametrized(exp.model.layers[0].mixer.in_proj)


def test_model_card_from_a_run_and_a_sweep(tmp_path):
    from pathlib import Path

    from implicit_ssm_eval.harness.model_card import main as card_main

    run(TrainConfig(kind="implicit", steps=6, **TINY), tmp_path / "run", progress=False)
    target = tmp_path / "parity-implicit"  # the fixed sweep holds results under this checkpoint name
    sweep = Path(__file__).parents[1] / "fixtures" / "sweep_small"
    assert card_main([str(tmp_path / "run"), str(target), "--sweep", str(sweep), "--copy", "--command",
                      "implicit-eval train --steps 6"]) == 0
    text = (target / "README.md").read_text()
    for needle in ("# parity-implicit", "parameters: ", "command: `implicit-eval train --steps 6`", "6 steps",
                   "phantom-gradient", "| budget", "tol=0.05 (≤32), simultaneous", "Robustness", "10% '1' (80)"):
        assert needle in text, needle
    adaptive = json.loads((sweep / "parity-implicit/k32_tol0.05_tau0.8_sequential_fixed_point/results.json")
                          .read_text())["results"]["st_parity_ood4x"]["acc,none"]
    assert re.search(rf"\| tol=0.05 \(≤32\), sequential +\|.*\| {adaptive:.3f} \(\d+ it\)", text)
    assert (target / "training_curve.png").stat().st_size > 0
    assert (target / "accuracy_vs_budget.png").stat().st_size > 0
    assert load_checkpoint(target).format == "native"


def test_fine_tuning_starts_from_the_checkpoints_weights(tmp_path):
    first = run(TrainConfig(kind="implicit", steps=3, **TINY), tmp_path / "a", progress=False)
    tuned = Trainer(TrainConfig(kind="implicit", init_from=str(first), **TINY), tmp_path / "b")
    ids = torch.randint(3, 5, (2, 6))
    with torch.no_grad():
        expected = load_checkpoint(first).model(ids, Budget(max_iter=5)).hidden
        assert rel_err(tuned.model(ids, Budget(max_iter=5)).hidden, expected) < 1e-6
    with pytest.raises(ConfigError, match=r"architecture differs in \['d_model'"):
        Trainer(TrainConfig(kind="implicit", init_from=str(first), **{**TINY, "arch": dict(d_model=16, d_state=8,
                                                                                          headdim=8)}), tmp_path / "c")


def test_model_card_of_a_fine_tuned_run_names_its_base_recipe_and_notes(tmp_path):
    from pathlib import Path

    from implicit_ssm_eval.harness.model_card import main as card_main

    base = run(TrainConfig(kind="implicit", steps=2, **TINY), tmp_path / "base", progress=False)
    run(TrainConfig(kind="implicit", steps=2, init_from=str(base), **TINY), tmp_path / "ft", progress=False)
    (tmp_path / "notes.md").write_text("Training from scratch on the mixture reached 0.48.")
    target = tmp_path / "parity-implicit"
    sweep = Path(__file__).parents[1] / "fixtures" / "sweep_small"
    assert card_main([str(tmp_path / "ft"), str(target), "--sweep", str(sweep), "--copy", "--command", "x",
                      "--recipe", "parity-implicit-ft", "--notes", str(tmp_path / "notes.md")]) == 0
    text = (target / "README.md").read_text()
    assert "(recipe `parity-implicit-ft` in" in text
    assert f"start from the finished run `{base}`" in text
    assert text.index("## What was tried") > text.index("## Evaluation")
    assert "from scratch on the mixture reached 0.48." in text


# The parity pair predates the nested TrainConfig (its config.json keeps the flat fields of its time).
BUNDLED_A5 = {"a5-implicit": "a5-implicit-ft", "a5-explicit": "a5-explicit-ft", "a5-explicit-2l": "a5-explicit-2l-ft"}


@pytest.mark.parametrize("bundled", sorted(BUNDLED_A5))
def test_bundled_checkpoints_were_trained_by_their_recipe(bundled):
    """The model cards print recipes.py's command: it must give the configuration each checkpoint records."""
    import sys
    from pathlib import Path

    from implicit_ssm_eval.harness.train_cli import build_parser, config_from

    root = Path(__file__).parents[2]
    sys.path.insert(0, str(root / "checkpoints"))
    try:
        from recipes import command
    finally:
        sys.path.remove(str(root / "checkpoints"))
    args = vars(build_parser().parse_args(command(BUNDLED_A5[bundled], Path("runs"), "cpu", 0, False)[4:]))
    for key in ("out", "resume", "no_progress", "export"):
        args.pop(key)
    made = json.loads(json.dumps(config_from(args).to_dict()))
    recorded = json.loads((root / "checkpoints" / bundled / "config.json").read_text())["training"]["config"]
    assert {k: v for k, v in made.items() if k != "time_limit"} == {k: v for k, v in recorded.items()
                                                                    if k != "time_limit"}


@pytest.mark.parametrize("kind,extra", [("implicit", dict(unroll_steps=1)), ("explicit", {}), ("transformer", {})])
def test_a_bf16_autocast_step_trains_every_parameter(tmp_path, monkeypatch, kind, extra):
    """The CUDA path's bf16 autocast, run on the CPU's autocast: the warm-up unroll (step 1), the phantom gradient
    (step 2) and the one-pass kinds give logits of a bf16 head, a finite float32 loss and finite gradients for every
    parameter; the loss falls when the step is repeated on one batch."""
    from implicit_ssm_eval.harness import train

    monkeypatch.setattr(train, "AUTOCAST_DEVICE_TYPES", ("cuda", "cpu"))
    arch = dict(d_model=32, n_layer=2, n_head=2, intermediate_size=64) if kind == "transformer" else \
        dict(d_model=32, n_layer=4, d_state=8, headdim=8)
    trainer = Trainer(TrainConfig(kind=kind, **{**TINY, "arch": arch, "max_len": 40, "lr": 1e-2}, **extra), tmp_path)
    seen = []
    forward = trainer.forward
    monkeypatch.setattr(trainer, "forward", lambda *a: seen.append(forward(*a)) or seen[-1])
    batch = next(trainer.family.training_batches("parity", min_len=30, max_len=40, batch_size=8, seed=0))
    losses = []
    for _ in range(3):
        losses.append(trainer.train_step(batch)["loss"])
        for name, p in trainer.model.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        logits = seen[-1][0].detach()
        assert torch.equal(logits.float(), logits.float().bfloat16().float())  # a bf16 head (Mamba2's: as float32)
        expected = F.cross_entropy(logits.float().flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
        assert losses[-1] == pytest.approx(float(expected), rel=1e-6)  # the loss of float32 logits, not bf16's
    assert math.isfinite(losses[0]) and losses[-1] < losses[0], losses


def test_the_weight_norm_cache_keeps_the_phantom_gradient(tmp_path, monkeypatch):
    """Weight norm is computed once for the solve and once for the phantom steps: the gradients of the magnitudes
    and directions equal those of computing it at every f evaluation (a cache shared with the no-grad solve would
    hand the phantom steps weights without a gradient)."""
    import contextlib

    from implicit_ssm_eval.harness import train

    cfg = TrainConfig(kind="implicit", **{**TINY, "arch": dict(d_model=32, n_layer=2, d_state=8, headdim=8)})
    trainer = Trainer(cfg, tmp_path)
    ids = torch.randint(3, 5, (4, 6))
    lengths = torch.full((4,), 6)

    def grads():
        trainer.model.zero_grad()
        hidden, _ = train.phantom_forward(trainer.model, ids, lengths, cfg)
        hidden.square().mean().backward()
        return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if "parametrizations" in n}

    cached = grads()
    monkeypatch.setattr(train.parametrize, "cached", contextlib.nullcontext)
    plain = grads()
    assert len(cached) == (3 * 2 + 1) * 2  # in_proj, conv1d, out_proj of 2 layers, and the injection: g and v
    for name, grad in plain.items():
        assert grad.abs().max() > 0 and rel_err(cached[name], grad) < 1e-5, name


def test_a_saved_state_loads_onto_the_cpu_first(tmp_path, monkeypatch):
    """On CUDA, torch.load(map_location=cuda) would make the saved CPU RNG state a CUDA tensor, which
    torch.set_rng_state refuses: the state is read onto the CPU, the model and optimizer move it to their device."""
    from implicit_ssm_eval.harness import train

    run(TrainConfig(kind="explicit", steps=4, **TINY), tmp_path, progress=False, stop_after=2)
    where = []
    load = torch.load
    monkeypatch.setattr(train.torch, "load", lambda *a, **kw: where.append(kw.get("map_location")) or load(*a, **kw))
    run(TrainConfig(kind="explicit", steps=4, **TINY), tmp_path, resume=True, progress=False)
    assert where == ["cpu"]


def test_non_finite_weights_are_never_written(tmp_path):
    """Neither a training state nor a finished checkpoint is written from a model holding nan or inf."""
    from implicit_ssm_eval.model_adapters.errors import NonFiniteError

    out = tmp_path / "r"
    out.mkdir()
    trainer = Trainer(TrainConfig(kind="explicit", steps=2, **TINY), out)
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"the training state at step 0 has non-finite weights \(.*\); nothing "
                                             "was written"):
        trainer.save_state()
    with pytest.raises(NonFiniteError, match="has non-finite weights"):
        finish(trainer, out)
    assert not list(out.iterdir())


def test_every_file_training_writes_is_replaced_atomically(tmp_path, monkeypatch):
    """A write that fails half way (a full disk) leaves the previous train_state.pt, train_log.csv and training.json
    as they were and no temporary behind."""
    import errno

    cfg = TrainConfig(kind="explicit", steps=2, **{**TINY, "save_every": 1, "log_every": 1})
    out = tmp_path / "r"
    run(cfg, out, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert set(before) == {"train_state.pt", "train_log.csv", "training.json", "tokenizer.json"}

    def full_disk(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device", str(f))

    from implicit_ssm_eval.harness import train

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(train, "write_text_atomic", lambda path, text: train.write_atomic(
        path, lambda tmp: full_disk(None, tmp)))
    trainer = Trainer(cfg, out)
    for write in (trainer.save_state, lambda: train._append_log(out, {k: 1 for k in train.LOG_FIELDS}),
                  lambda: finish(trainer, out)):
        with pytest.raises(OSError, match="No space left"):
            write()
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
