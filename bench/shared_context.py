"""Multiple choice with the context read once (share_context, model_adapters/adapter/shared_context.py) against
every (context + continuation) read from the start, side by side in one process, on a synthesized 4-choice task:
random contexts of --context tokens, --choices continuations of --min-cont to --max-cont tokens each.

    python bench/shared_context.py [--device cuda] [--questions 16 --context 512 --choices 4 --batch-size 8]
        [--run explicit:checkpoints/text-explicit] [--run "implicit:checkpoints/text-implicit:mode=blockwise,..."]

Each --run is KIND:CHECKPOINT[:MODEL_ARGS] (model_args separated by commas, as lm-eval's --model_args); the default
runs are the bundled text models, explicit and implicit in three readings. --make-130m DIR writes the paper's 130M
configuration (24 layers, d_model 768, d_state 128, headdim 64; random initialisation, the text models' tokenizer of
4,096 tokens) as an explicit and an implicit checkpoint under DIR, and the default runs read those instead, in
bfloat16 (a language model of the size users bring: on a GPU the bundled 4-layer models leave the FLOPs it saves
to spare):

    python3 bench/shared_context.py --device cuda --make-130m /tmp/m130 --context 1024 --questions 8

The requests go through the adapter's loglikelihood entry (TemplateLM's _loglikelihood_tokens: lm-eval's tokenised
triples). Per run it prints the wall time of both ways (best of --repeats interleaved rounds, after two warm-up rounds
that compile the kernels and capture the CUDA graphs of every batch shape),
the speed-up, the largest difference of a log-likelihood and whether every greedy flag agrees.
"""

from __future__ import annotations

import argparse
import os
import random
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
READINGS = ("mode=simultaneous,max_iter=16,tol=0", "mode=blockwise,block_size=32,max_iter=16,tol=0.05",
            "mode=sequential,max_iter=4,tol=0")
DEFAULT_RUNS = ("explicit:checkpoints/text-explicit",
                *(f"implicit:checkpoints/text-implicit:{reading}" for reading in READINGS))


def make_130m(root: Path) -> tuple[str, ...]:
    """The 130M pair under root (see the module's docstring) and the default runs over it."""
    from implicit_ssm_eval.model_adapters.config import ModelConfig
    from implicit_ssm_eval.model_adapters.formats.native import save
    from implicit_ssm_eval.model_adapters.models import build_model

    arch = dict(vocab_size=4096, pad_vocab_size_multiple=16, d_model=768, n_layer=24, d_state=128, headdim=64,
                expand=2, ngroups=1, chunk_size=256)
    tokenizer = ROOT / "checkpoints/text-explicit/tokenizer.json"
    for kind in ("explicit", "implicit"):
        torch.manual_seed(0)
        budget = {"budget": {"max_iter": 4, "tol": 0.0, "tau": 0.8}} if kind == "implicit" else {}
        model = build_model(ModelConfig(kind=kind, **arch, **budget))
        save(model, root / f"{kind}-130m", tokenizer, eos_token="<eos>")
    return (f"explicit:{root}/explicit-130m:dtype=bfloat16",
            *(f"implicit:{root}/implicit-130m:{reading},dtype=bfloat16" for reading in READINGS))


def task(questions: int, context: int, choices: int, cont: tuple[int, int], vocab: int, seed: int = 0) -> list:
    """lm-eval's tokenised loglikelihood triples ((context, continuation), context ids, continuation ids)."""
    rng = random.Random(seed)
    requests = []
    for _ in range(questions):
        ctx = [rng.randrange(3, vocab) for _ in range(context)]
        for _ in range(choices):
            ids = [rng.randrange(3, vocab) for _ in range(rng.randint(*cont))]
            requests.append((("", ""), ctx, ids))
    return requests


def make_lm(kind: str, checkpoint: str, model_args: str, share: bool, device: str, batch_size: int):
    from implicit_ssm_eval.model_adapters.adapter.args import split_model_args
    from implicit_ssm_eval.model_adapters.adapter.lm import ExplicitSSMLM, ImplicitSSMLM

    cls = ImplicitSSMLM if kind == "implicit" else ExplicitSSMLM
    args = split_model_args(model_args)
    return cls(pretrained=str(ROOT / checkpoint), device=device, batch_size=batch_size, share_context=share,
               progress=False, **args)


def timed(lm, requests: list) -> tuple[float, list]:
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    results = lm._loglikelihood_tokens(requests)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", help="KIND:CHECKPOINT[:MODEL_ARGS] (repeatable)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--context", type=int, default=512)
    parser.add_argument("--choices", type=int, default=4)
    parser.add_argument("--min-cont", type=int, default=4)
    parser.add_argument("--max-cont", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best time of each is shown")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--make-130m", type=Path, default=None, help="write the 130M pair here and read it")
    args = parser.parse_args()
    defaults = make_130m(args.make_130m) if args.make_130m else DEFAULT_RUNS
    os.environ.setdefault("TQDM_DISABLE", "1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, {args.questions} questions x "
          f"{args.choices} choices, contexts of {args.context} tokens, continuations of {args.min_cont}-"
          f"{args.max_cont}, batch size {args.batch_size}")
    print(f"{'run':<78} {'from start':>10} {'shared':>8} {'speed-up':>8} {'max |d|':>9} greedy")
    for run in args.run or defaults:
        kind, checkpoint, *rest = run.split(":", 2)
        model_args = rest[0] if rest else ""
        lms = {share: make_lm(kind, checkpoint, model_args, share, args.device, args.batch_size)
               for share in (False, True)}
        requests = task(args.questions, args.context, args.choices, (args.min_cont, args.max_cont),
                        lms[False].ckpt.config.vocab_size)
        times, results = {False: float("inf"), True: float("inf")}, {}
        for lm in lms.values():  # warm-up: kernels, caches, and CUDA graphs of every batch shape (captured when a
            for _ in range(2):  # shape comes twice in a row): the steady state of a task with many batches alike
                lm._loglikelihood_tokens(requests)
        for _ in range(args.repeats):  # interleaved: a busy machine slows both alike
            for share, lm in lms.items():
                seconds, results[share] = timed(lm, requests)
                times[share] = min(times[share], seconds)
        diff = max(abs(a[0] - b[0]) for a, b in zip(results[False], results[True]))
        greedy = all(a[1] == b[1] for a, b in zip(results[False], results[True]))
        print(f"{run:<78} {times[False]:>9.2f}s {times[True]:>7.2f}s {times[False] / times[True]:>7.2f}x "
              f"{diff:>9.1e} {greedy}")


if __name__ == "__main__":
    main()
