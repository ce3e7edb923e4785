"""lm-evaluation-harness adapters: `--model implicit_ssm` and `--model explicit_ssm`.

Built on lm-eval's TemplateLM (tokenisation and request plumbing) with our own batching:
- loglikelihood: lm-eval's Collator sorts by length and groups requests that share context + continuation[:-1],
  so multiple-choice over many one-token labels costs one forward pass; batches are right padded, which a
  causal model cannot see, and scores are read at each sequence's own positions. Log-softmax runs over the
  checkpoint's padded vocabulary, as lm-eval's HF and mamba_ssm models do (scores stay comparable).
- loglikelihood_rolling: lm-eval's rolling windows, scored like loglikelihood.
- generate_until: greedy decoding through the recurrent state (model_adapters/generation.py).
The budget (implicit only) comes from the checkpoint and model_args; it and the convergence statistics of the
whole run are written into lm-eval's results through get_model_info().
"""

from __future__ import annotations

import hashlib
import json
import logging
import time

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import Collator
from tqdm import tqdm

from . import distributed
from .backends import resolve_backend
from .config import ConfigError
from .convergence import ConvergenceLog
from .eval_args import DEFAULT_MAX_LENGTH, parse_model_args
from .formats import load_checkpoint
from .generation import greedy_generate, right_pad

logger = logging.getLogger(__name__)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
DEFAULT_MAX_GEN_TOKS = 256


class NonFiniteError(FloatingPointError):
    """The model produced NaN or inf: no score may be computed from it."""


class SSMLM(TemplateLM):
    KIND = ""  # "implicit" | "explicit"

    def __init__(self, **kwargs):
        super().__init__()
        args = parse_model_args(self.KIND, kwargs)
        self._rank, self._world_size, self._device = distributed.init(args.device)
        ckpt = load_checkpoint(args.pretrained, tokenizer=args.tokenizer, dtype=args.dtype, device=self._device)
        _check_checkpoint(ckpt, self.KIND, args.pretrained)
        self.ckpt, self.model, self.tokenizer = ckpt, ckpt.model, ckpt.tokenizer
        self.budget = ckpt.default_budget.replace(**args.budget_overrides) if self.KIND == "implicit" else None
        self.backend = resolve_backend(args.backend, self._device)
        self.model.use_backend(self.backend)
        self.args, self.max_length = args, args.max_length or DEFAULT_MAX_LENGTH
        self.vocab_size = ckpt.config.vocab_size
        # This rank's statistics; scoring logs one entry per sequence (per token in sequential mode), decoding
        # one per generated token. self.convergence / self.truncated hold the merged view over all ranks.
        self._local = {"scoring": ConvergenceLog(), "generation": ConvergenceLog()}
        self._local_truncated, self._local_seconds = 0, 0.0
        self.convergence, self.truncated, self.request_seconds = self._local, 0, 0.0
        self._names: dict[tuple[str, str], str] = {}
        self._auto_batch: int | None = None
        # Anytime budgets: scored from the one trajectory of the run's budget (simultaneous, tol = 0).
        self.anytime = _check_anytime(args.anytime, self.budget)
        self.budgets_scored = [self.budget.max_iter if self.budget else 0] + [k for k in self.anytime
                                                                               if k != self.budget.max_iter]
        self.anytime_records: dict[int, dict] = {k: {} for k in self.budgets_scored[1:]}
        self._local_anytime = {k: ConvergenceLog() for k in self.budgets_scored[1:]}
        self._last_anytime: dict[int, list] = {}

    # -- tokenisation -------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens)

    @property
    def tokenizer_name(self) -> str:
        return f"{self.ckpt.format}-{self.ckpt.content_hash[:16]}"

    # -- distributed (lm-eval shards requests by rank) ----------------------------------------------
    def all_gather(self, tensor):
        return distributed.all_gather(tensor) if self._world_size > 1 else tensor

    def gather_object(self, obj, dst=0):
        return distributed.gather_object(obj, dst) if self._world_size > 1 else [obj]

    def barrier(self) -> None:
        if self._world_size > 1:
            torch.distributed.barrier()

    # -- loglikelihood ------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._call_started = time.perf_counter()
        self._names = {req.args: _request_name(req) for req in requests}
        results = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        for k, answers in self._last_anytime.items():  # same order as `requests`
            self.anytime_records[k].update({("loglikelihood", req.args): a for req, a in zip(requests, answers)})
        return self._finish_call(results)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, names: list[str] | None = None):
        """requests: ((context, continuation) | None, context_enc, continuation_enc) -> [(logprob, is_greedy)]
        at the budget; answers at the anytime budgets are left in self._last_anytime, in the same order."""
        names = names or [self._names.get(r[0], "request") for r in requests]
        # The first element carries (cache key, request name) through the Collator, which regroups by it.
        items = [((r[0], name), r[1], r[2]) for r, name in zip(requests, names)]
        collator = Collator(items, sort_fn=lambda x: (-len(x[1] + x[2]), tuple(x[1] + x[2])),
                            group_by="contexts", group_fn=lambda x: x[1] + x[2][:-1])
        answers: dict[int, list] = {k: [] for k in self.budgets_scored}
        bar = tqdm(total=len(requests), disable=disable_tqdm or self._rank != 0, desc="loglikelihood")
        for chunk in collator.get_batched(n=self._batch_size(items), batch_fn=None):
            for (key, ctx, cont), logprobs in zip(chunk, self._score(chunk)):
                # (positions, budgets, vocab) travels flattened: the Collator expands a (1, positions, *) tensor
                for (req_str, _), cont_toks, lp in collator.get_cache(req_str=key, cxt_toks=ctx, cont_toks=cont,
                                                                      logits=logprobs.flatten(1)[None]):
                    lp = lp[0].unflatten(-1, (len(self.budgets_scored), -1))
                    for b, k in enumerate(self.budgets_scored):
                        answers[k].append(_answer(lp[:, b], cont_toks))
                    if req_str is not None:
                        self.cache_hook.add_partial("loglikelihood", req_str, answers[self.budgets_scored[0]][-1])
                    bar.update(1)
        bar.close()
        main, *extra = self.budgets_scored
        self._last_anytime = {k: collator.get_original(answers[k]) for k in extra}
        return collator.get_original(answers[main])

    @torch.inference_mode()
    def _score(self, chunk) -> list[torch.Tensor]:
        """Log-probabilities at each request's continuation positions, one row per scored budget: a list of
        (positions, budgets, vocab) tensors."""
        inputs, spans = [], []
        for _, ctx, cont in chunk:
            if len(cont) > self.max_length:
                raise ConfigError(f"a continuation of {len(cont)} tokens exceeds max_length={self.max_length}")
            full = ctx + cont
            self._local_truncated += len(full) - 1 > self.max_length
            inputs.append(full[-(self.max_length + 1):][:-1])
            spans.append(len(cont))
        ids, lengths = right_pad(inputs, self._device)
        out = self.model(ids, self.budget, lengths=lengths, anytime=self.anytime)
        hidden = {self.budgets_scored[0]: out.hidden, **out.anytime}
        self._record(out.stats, lengths)
        for k, log in self._local_anytime.items():
            log.add(out.anytime_stats[k])
        self._check_finite(out.hidden, lengths, [name for (_, name), _, _ in chunk])
        if self.args.record_greedy:
            self._write_greedy(inputs, hidden, out, lengths, [name for (_, name), _, _ in chunk])
        rows = []
        for i, (n, c) in enumerate(zip(lengths.tolist(), spans)):
            stacked = torch.stack([hidden[k][i, n - c: n] for k in self.budgets_scored], 1)
            # Over the embedding table's padded vocabulary, as lm-eval's own HF and mamba_ssm models score.
            rows.append(F.log_softmax(self.model.logits(stacked), dim=-1))
        return rows

    def _write_greedy(self, inputs, hidden, out, lengths, names: list[str]) -> None:
        """One JSON line per scored sequence: its request, tokens and the greedy next token at every position, per
        budget, with the iterations used (the raw material of agreement and iteration-distribution reports)."""
        stats = {self.budgets_scored[0]: out.stats, **out.anytime_stats}
        with open(self.args.record_greedy, "a") as fh:
            for i, (tokens, n) in enumerate(zip(inputs, lengths.tolist())):
                record = {"request": names[i], "input": tokens, "greedy": {}, "iterations": {}}
                for k, h in hidden.items():
                    record["greedy"][str(k)] = self.model.logits(h[i, :n])[:, : self.vocab_size].argmax(-1).tolist()
                    if stats.get(k) is not None:
                        its = stats[k].iterations[i]
                        record["iterations"][str(k)] = its[:n].tolist() if its.dim() else int(its)
                fh.write(json.dumps(record) + "\n")

    # -- loglikelihood_rolling ----------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        self._call_started = time.perf_counter()
        windows, owners, names = [], [], []
        for index, req in enumerate(requests):
            tokens = self.tok_encode(req.args[0])
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                windows.append((None, ctx, cont))
                owners.append(index)
                names.append(_request_name(req))
        totals = _sum_by_owner(self._loglikelihood_tokens(windows, disable_tqdm=disable_tqdm, names=names), owners,
                               len(requests))
        for k, answers in self._last_anytime.items():
            per_request = _sum_by_owner(answers, owners, len(requests))
            self.anytime_records[k].update({("loglikelihood_rolling", req.args): t
                                            for req, t in zip(requests, per_request)})
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return self._finish_call(totals)

    # -- generate_until -----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        self._call_started = time.perf_counter()
        collator = Collator([req.args for req in requests], sort_fn=lambda x: (-len(self.tok_encode(x[0])), x[0]),
                            group_by="gen_kwargs", group_fn=lambda x: x[1])
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm or self._rank != 0, desc="generate_until")
        for chunk in collator.get_batched(n=self._batch_size(None), batch_fn=None):
            contexts, gen_kwargs = zip(*chunk)
            for context, text in zip(contexts, self._generate(list(contexts), gen_kwargs[0])):
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs[0]), text)
                bar.update(1)
        bar.close()
        return self._finish_call(collator.get_original(results))

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        if self.anytime:
            raise ConfigError("anytime budgets score loglikelihood requests only; evaluate generation tasks with "
                              "one budget per run")
        until, max_new = _parse_gen_kwargs(gen_kwargs, self.tok_decode([self.eot_token_id]))
        budget_ctx = max(1, self.max_length - max_new)
        prompts = []
        for context in contexts:
            tokens = self.tok_encode(context) or [self.prefix_token_id]
            self._local_truncated += len(tokens) > budget_ctx
            prompts.append(tokens[-budget_ctx:])

        def is_done(row: int, tokens: list[int]) -> bool:
            return self.eot_token_id in tokens or any(s in self.tok_decode(tokens) for s in until)

        log = ConvergenceLog()
        generated = greedy_generate(self.model, prompts, max_new, self.budget, is_done, self.vocab_size, log=log,
                                    cuda_graphs=self.args.cuda_graphs)
        self._local["generation"].extend(log)
        return [_cut(self.tok_decode(_before_eot(toks, self.eot_token_id)), until) for toks in generated]

    # -- batching, checks, statistics ---------------------------------------------------------------
    def _batch_size(self, items) -> int:
        if self.args.batch_size != "auto":
            return self.args.batch_size
        if self._auto_batch is None:
            longest = max((len(x[1]) + len(x[2]) for x in items), default=self.max_length) if items else \
                self.max_length
            self._auto_batch = self._detect_batch_size(min(longest, self.max_length))
        return self._auto_batch

    @torch.inference_mode()
    def _detect_batch_size(self, length: int) -> int:
        """The largest batch (halving from max_batch_size) whose forward at `length` fits in GPU memory."""
        size = self.args.max_batch_size
        if self._device.type != "cuda":
            logger.info("batch_size=auto on %s: no memory probe, using max_batch_size=%d", self._device, size)
            return size
        while size > 1:
            try:
                ids = torch.zeros(size, length, dtype=torch.long, device=self._device)
                self.model.logits(self.model(ids, self.budget).hidden[:, -1:])
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                size //= 2
        logger.info("batch_size=auto: %d sequences of %d tokens fit", size, length)
        return size

    def _record(self, stats, lengths) -> None:
        if stats is None:
            return
        valid = None
        if stats.iterations.dim() == 2:
            valid = torch.arange(stats.iterations.shape[1], device=lengths.device) < lengths[:, None]
        self._local["scoring"].add(stats, valid)

    def _check_finite(self, hidden: torch.Tensor, lengths: torch.Tensor, names: list[str]) -> None:
        valid = torch.arange(hidden.shape[1], device=hidden.device) < lengths[:, None]
        bad = (~torch.isfinite(hidden) & valid[..., None]).flatten(1).any(1)
        if bad.any():
            which = [names[i] for i in bad.nonzero().flatten().tolist()]
            raise NonFiniteError(f"{self.KIND}_ssm produced non-finite values (NaN/inf) for {which[0]}"
                                 f"{f' and {len(which) - 1} more' if len(which) > 1 else ''}"
                                 f" at budget {self.budget}; no score is reported from such values")

    def _finish_call(self, results):
        """After each request type: merge statistics across ranks, report truncation."""
        self._local_seconds += time.perf_counter() - self._call_started
        self.convergence, self.truncated = self._local, self._local_truncated
        self._anytime_logs, self.request_seconds = self._local_anytime, self._local_seconds
        if self._world_size > 1:  # every rank runs each request type once, so this collective is matched
            parts = distributed.all_gather_object((self._local, self._local_truncated, self._local_anytime,
                                                   self._local_seconds))
            self.truncated = sum(p[1] for p in parts)
            self.convergence = _merge_logs([p[0] for p in parts])
            self._anytime_logs = _merge_logs([p[2] for p in parts])
            self.request_seconds = max(p[3] for p in parts)  # the slowest rank sets the pace
        if self.truncated:
            logger.warning("%d request(s) longer than max_length=%d were truncated from the left", self.truncated,
                           self.max_length)
        return results

    # -- results ------------------------------------------------------------------------------------
    def fingerprint(self) -> str:
        return model_fingerprint(self.ckpt.content_hash, self.budget, self.args.dtype_name, self.backend,
                                 self.max_length)

    def get_model_info(self) -> dict:
        info = {
            "checkpoint": str(self.ckpt.path), "content_hash": self.ckpt.content_hash, "kind": self.KIND,
            "format": self.ckpt.format, "backend": self.backend, "dtype": self.args.dtype_name,
            "device": str(self._device), "world_size": self._world_size, "max_length": self.max_length,
            "truncated_requests": self.truncated, "fingerprint": self.fingerprint(),
            "request_seconds": round(self.request_seconds, 3),
        }
        if self.budget is not None:
            info["budget"] = self.budget.to_dict()
            info["convergence"] = {k: log.summary(self.budget.max_iter) for k, log in self.convergence.items()}
        if self.anytime:
            info["anytime_budgets"] = list(self.budgets_scored)
        return {"ssm_model": info}

    def anytime_info(self, k: int) -> dict:
        """get_model_info() as a run at max_iter = k would report it (used to replay anytime budgets)."""
        info = json.loads(json.dumps(self.get_model_info()["ssm_model"]))
        info["budget"]["max_iter"] = k
        info["convergence"] = {"scoring": self._anytime_logs[k].summary(k), "generation": {"count": 0}}
        info["fingerprint"] = model_fingerprint(self.ckpt.content_hash, self.budget.replace(max_iter=k),
                                                self.args.dtype_name, self.backend, self.max_length)
        info["anytime_of"] = self.budget.max_iter
        return {"ssm_model": info}

    def set_cache_hook(self, cache_hook) -> None:
        path = getattr(getattr(cache_hook, "dbdict", None), "filename", None)
        if path is not None and self.fingerprint() not in str(path):
            raise ConfigError(
                f"--use_cache: lm-eval keys its cache on the request text only, so one cache file shared by "
                f"different checkpoints, budgets or dtypes would return another model's scores. Put this model's "
                f"fingerprint in the path, e.g. --use_cache cache/{self.fingerprint()} (implicit-eval run "
                f"--use_cache DIR does this for you); got {path}")
        super().set_cache_hook(cache_hook)


class ImplicitSSMLM(SSMLM):
    """lm-eval model `implicit_ssm`: a Mamba2 stack iterated to a fixed point at a budget."""

    KIND = "implicit"


class ExplicitSSMLM(SSMLM):
    """lm-eval model `explicit_ssm`: a plain Mamba2 LM (any checkpoint format the loader knows)."""

    KIND = "explicit"


def _check_anytime(anytime: tuple[int, ...], budget) -> tuple[int, ...]:
    if not anytime:
        return ()
    if budget is None or budget.mode != "simultaneous" or budget.tol != 0:
        raise ConfigError("anytime budgets need an implicit model with mode=simultaneous and tol=0 (only then does "
                          f"one trajectory give every budget exactly); got {budget}")
    bad = [k for k in anytime if not 1 <= k <= budget.max_iter]
    if bad:
        raise ConfigError(f"anytime budgets must lie in [1, max_iter={budget.max_iter}], got {bad}")
    return tuple(sorted(set(anytime) | {budget.max_iter}))


def model_fingerprint(content_hash: str, budget, dtype: str, backend: str, max_length: int) -> str:
    """What determines scores: weights + tokenizer, budget, dtype, backend, context window."""
    key = json.dumps([content_hash, budget.to_dict() if budget else None, dtype, backend, max_length])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _check_checkpoint(ckpt, kind: str, path: str) -> None:
    if ckpt.config.kind != kind:
        raise ConfigError(f"{path} holds an {ckpt.config.kind} model; use --model {ckpt.config.kind}_ssm")
    if ckpt.tokenizer is None:
        raise ConfigError(f"{path} has no tokenizer.json; pass tokenizer=<path to a tokenizer.json>")
    if ckpt.tokenizer.eos_token_id is None:
        raise ConfigError(f"{ckpt.tokenizer.path}: no end-of-text token found (looked for '<eos>', "
                          "'<|endoftext|>', '</s>'); lm-eval needs one")
    if ckpt.tokenizer.vocab_size > ckpt.config.padded_vocab_size:
        raise ConfigError(f"{ckpt.tokenizer.path} has {ckpt.tokenizer.vocab_size} tokens but the model only "
                          f"{ckpt.config.padded_vocab_size} embeddings: tokenizer and checkpoint do not match")


def _merge_logs(parts: list[dict]) -> dict:
    merged = {key: ConvergenceLog() for key in parts[0]}
    for logs in parts:
        for key, log in logs.items():
            merged[key].extend(log)
    return merged


def _sum_by_owner(answers: list[tuple[float, bool]], owners: list[int], n: int) -> list[float]:
    totals = [0.0] * n
    for owner, (logprob, _) in zip(owners, answers):
        totals[owner] += logprob
    return totals


def _request_name(req) -> str:
    return f"task {getattr(req, 'task_name', '?')} doc {getattr(req, 'doc_id', '?')}"


def _answer(logprobs: torch.Tensor, cont_toks: list[int]) -> tuple[float, bool]:
    """logprobs (positions, vocab): the trailing len(cont_toks) positions score the continuation."""
    logprobs = logprobs[-len(cont_toks):]
    target = torch.tensor(cont_toks, device=logprobs.device)
    greedy = bool((logprobs.argmax(-1) == target).all())
    return float(logprobs.gather(1, target[:, None]).sum()), greedy


def _parse_gen_kwargs(kwargs: dict, eot_text: str) -> tuple[list[str], int]:
    unknown = sorted(set(kwargs) - set(GEN_KWARGS))
    if unknown:
        raise ConfigError(f"generation_kwargs {unknown} are not supported; valid: {list(GEN_KWARGS)}")
    if kwargs.get("do_sample") or (kwargs.get("temperature") or 0) > 0:
        raise ConfigError("only greedy decoding is supported: set do_sample=false and temperature=0")
    until = kwargs.get("until") or []
    until = [until] if isinstance(until, str) else list(until)
    if eot_text and eot_text not in until:
        until.append(eot_text)
    max_new = kwargs.get("max_gen_toks", DEFAULT_MAX_GEN_TOKS)
    if not isinstance(max_new, int) or max_new < 1:
        raise ConfigError(f"max_gen_toks must be a positive integer, got {max_new!r}")
    return until, max_new


def _before_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot)] if eot in tokens else tokens


def _cut(text: str, until: list[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
