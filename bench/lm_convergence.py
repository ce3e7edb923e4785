"""How the fixed point of a language model converges: per token, per layer, against the tolerance, in bfloat16.

    python bench/lm_convergence.py --docs 8 --out bench/results/lm_convergence_text_implicit.json

On held-out pydoc windows (the test split, 256 tokens each: the training context), the simultaneous reading is
iterated at tol 0 for --max-iter evaluations, and at every iteration k this records:
- the run's residual as the solver measures it (||f(z) - z|| / (1e-6 + ||z||) over each sequence's valid tokens) and
  the per-token residuals (the same ratio for each token alone): their median, 90th percentile and maximum;
- each layer's change: ||m_l(k) - m_l(k-1)|| / ||m_l(k-1)||, m_l the layer's mixer output;
- bits per byte of the windows read at k (the anytime curve).
Then, for each tolerance, what stopping at it gives: the iteration where each sequence's residual first falls below
it, and the bits per byte there (read off the same trajectory), in float32 and in bfloat16 (is it reached at all?).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from implicit_ssm_eval.model_adapters.config import Budget
from implicit_ssm_eval.model_adapters.fixed_point import EPS, damp
from implicit_ssm_eval.model_adapters.formats import load_checkpoint

TOLS = (0.2, 0.1, 0.05, 0.02, 0.01, 0.005)


def windows(tokenizer, count: int, length: int) -> tuple[torch.Tensor, list[int]]:
    """The first `count` documents of the pydoc_ppl bucket of `length` tokens (the task's own windows of the shipped
    test split), as token ids cut to a common length (after the end-of-text token lm-eval's rolling windows start
    from), and the UTF-8 bytes of the text each scores."""
    from implicit_ssm_eval.tasks.text.heldout import make_docs

    bucket = {256: "id", 512: "ood2x", 1024: "ood4x", 2048: "ood8x"}[length]
    docs = make_docs("ppl", bucket, num_docs=count)
    encoded = [[tokenizer.eos_token_id, *tokenizer.encode(d["text"])] for d in docs]
    n = min(len(e) for e in encoded)
    ids = torch.tensor([e[:n] for e in encoded])
    return ids, [len(tokenizer.decode(e[1:n]).encode()) for e in encoded]


def trajectory(model, ids: torch.Tensor, max_iter: int, tau: float) -> list[dict]:
    """Per iteration k = 1..max_iter: residuals, layer changes and the next-token log-likelihoods of the output."""
    inputs, targets = ids[:, :-1], ids[:, 1:]
    u = model.inject(inputs)
    z = torch.zeros(*inputs.shape, model.cfg.d_model, dtype=model.cd)
    outputs: dict[int, torch.Tensor] = {}
    hooks = [layer.mixer.register_forward_hook(lambda m, a, out, i=i: outputs.__setitem__(i, out[0].float()))
             for i, layer in enumerate(model.layers)]
    previous, steps = None, []
    try:
        for k in range(1, max_iter + 1):
            fz, _ = model.f(z, u, None, None, False)
            diff, norm = (fz - z).float(), z.float()
            token_res = diff.norm(dim=-1) / (EPS + norm.norm(dim=-1))
            seq_res = diff.flatten(1).norm(dim=1) / (EPS + norm.flatten(1).norm(dim=1))
            logp = torch.log_softmax(model.logits(fz)[..., : model.cfg.vocab_size], -1)
            nll = -logp.gather(-1, targets[..., None])[..., 0].sum(1)
            layers = [] if previous is None else [float((outputs[i] - previous[i]).norm() / previous[i].norm())
                                                  for i in range(len(model.layers))]
            steps.append({"k": k, "sequence_residual": seq_res.tolist(), "nll": nll.tolist(),
                          "token_residual": [float(q) for q in torch.quantile(token_res.flatten(),
                                                                                torch.tensor([0.5, 0.9, 1.0]))],
                          "layer_change": layers})
            previous = dict(outputs)
            z = damp(z, fz, tau)
    finally:
        for hook in hooks:
            hook.remove()
    return steps


def stopping(steps: list[dict], nbytes: list[int]) -> list[dict]:
    """For each tolerance: per sequence, the first k whose residual (at its input) is below it (capped at the last),
    the mean of those k, and the bits per byte of each sequence read at its own k."""
    rows = []
    for tol in TOLS:
        ks, nll = [], 0.0
        for i in range(len(nbytes)):
            k = next((s["k"] for s in steps if s["sequence_residual"][i] < tol), steps[-1]["k"])
            reached = any(s["sequence_residual"][i] < tol for s in steps)
            ks.append((k, reached))
            nll += steps[k - 1]["nll"][i]
        rows.append({"tol": tol, "mean_k": sum(k for k, _ in ks) / len(ks),
                     "reached": sum(r for _, r in ks) / len(ks), "bits_per_byte": nll / sum(nbytes) / math.log(2)})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=Path("checkpoints/text-implicit"))
    p.add_argument("--docs", type=int, default=8)
    p.add_argument("--length", type=int, default=256)
    p.add_argument("--max-iter", type=int, default=48)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    out = {"checkpoint": str(args.checkpoint), "docs": args.docs, "length": args.length}
    for dtype in ("float32", "bfloat16"):
        ckpt = load_checkpoint(args.checkpoint, dtype=getattr(torch, dtype))
        tau = (ckpt.default_budget or Budget()).tau
        ids, nbytes = windows(ckpt.tokenizer, args.docs, args.length)
        with torch.inference_mode():
            steps = trajectory(ckpt.model.eval(), ids, args.max_iter, tau)
        out[dtype] = {"steps": steps, "stopping": stopping(steps, nbytes),
                      "bits_per_byte_at_k": [sum(s["nll"]) / sum(nbytes) / math.log(2) for s in steps]}
        print(dtype)
        for row in out[dtype]["stopping"]:
            print(f"  tol {row['tol']:<6g} mean k {row['mean_k']:5.1f}  reached {row['reached']:.2f}  "
                  f"bits/byte {row['bits_per_byte']:.4f}")
        for s in steps[:: max(1, args.max_iter // 12)]:
            print(f"  k {s['k']:3d}  seq residual median {sorted(s['sequence_residual'])[len(nbytes) // 2]:.4f}  "
                  f"token residual p50/p90/max {s['token_residual'][0]:.4f}/{s['token_residual'][1]:.4f}/"
                  f"{s['token_residual'][2]:.4f}  layers {[round(c, 4) for c in s['layer_change']]}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
