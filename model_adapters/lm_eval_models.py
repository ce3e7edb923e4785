"""lm-evaluation-harness adapters: `--model implicit_ssm` and `--model explicit_ssm`.

Built on lm-eval's TemplateLM (tokenisation of context/continuation pairs, rolling windows) with our own batching:
- loglikelihood: requests whose model input is the same token sequence (multiple choice over one-token answers)
  share one forward pass; sequences are batched longest first and right padded, which a causal model cannot see;
  each request is scored at its own positions. Log-softmax runs over the checkpoint's padded vocabulary, as
  lm-eval's HF and mamba_ssm models do, so scores stay comparable.
- loglikelihood_rolling: lm-eval's rolling windows, scored like loglikelihood and summed per document.
- generate_until: greedy decoding through the recurrent state (generation.py).

Scoring is typed (scores.py): every request gets an Answer at the run's budget and at each anytime budget read off
the same trajectory; a BudgetRecord per budget holds answers and convergence statistics, a TaskRecord per task the
fields its documents carry. get_model_info() writes budget, convergence and per-task records into lm-eval's results
(`config.ssm_model`); at_budget(k) answers lm-eval at an anytime budget without model compute (anytime.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from . import distributed
from .backends import resolve_backend
from .config import ConfigError
from .convergence import ConvergenceLog, unconverged_tasks
from .eval_args import DEFAULT_MAX_LENGTH, parse_model_args
from .formats import load_checkpoint
from .generation import greedy_generate, right_pad
from .reading import ReadStats
from .scores import Answer, BudgetRecord, RequestKey, TaskRecord
from .tensors import NonFiniteError, valid_mask

logger = logging.getLogger(__name__)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
DEFAULT_MAX_GEN_TOKS = 256
UNREADABLE_FRACTION = 0.01  # a task with more unknown tokens than this is one the tokenizer cannot read
UNITS = {"simultaneous": "sequence", "sequential": "token", "blockwise": "block"}


@dataclass
class Item:
    """One continuation to score: its request key, task and doc (for records), and its tokens."""

    key: RequestKey | None
    task: str
    doc_id: object
    context: list[int]
    continuation: list[int]


class SSMLM(TemplateLM):
    KIND = ""  # "implicit" | "explicit"

    def __init__(self, **kwargs):
        super().__init__()
        args = parse_model_args(self.KIND, kwargs)
        self._rank, self._world_size, self._device = distributed.init(args.device)
        ckpt = load_checkpoint(args.pretrained, tokenizer=args.tokenizer, dtype=args.dtype, device=self._device,
                               eos_token=args.eos_token, prefix_token=args.prefix_token)
        _check_checkpoint(ckpt, self.KIND, args.pretrained)
        self.ckpt, self.model, self.tokenizer = ckpt, ckpt.model, ckpt.tokenizer
        self.budget = ckpt.default_budget.replace(**args.budget_overrides) if self.KIND == "implicit" else None
        self.kernels = resolve_backend(args.backend, self._device)  # not `backend`: TemplateLM's means "causal"
        self.model.use_backend(self.kernels)
        self.model.use_graphs(_graph_mode(args.cuda_graphs, self._device))
        self.args, self.max_length = args, args.max_length or DEFAULT_MAX_LENGTH
        self.vocab_size = ckpt.config.vocab_size
        # Budgets scored per request: the run's own first, then anytime budgets read off the same trajectory.
        main = self.budget.max_iter if self.budget else 0
        self.anytime = self.budget.anytime_budgets(args.anytime) if args.anytime else ()
        self.budgets_scored = (main, *[k for k in self.anytime if k != main])
        # This rank's records; self.records / self.tasks hold the view merged over all ranks after each call.
        self._local = {k: BudgetRecord() for k in self.budgets_scored}
        self._local_tasks: dict[str, TaskRecord] = {}
        self._local_generation = ConvergenceLog()
        self._local_truncated, self._local_seconds = 0, 0.0
        self.records, self.tasks, self.generation = self._local, self._local_tasks, self._local_generation
        self.truncated, self.request_seconds = 0, 0.0
        self._auto_batch: int | None = None
        self.show_progress = True

    # -- tokenisation -------------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        if self.tokenizer.eos_token_id is None:
            raise ConfigError(f"{self.tokenizer.path} has no end-of-text token, which this request needs (generation "
                              "stops, rolling windows, empty contexts); pass eos_token=<token> in model_args")
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        prefix = self.tokenizer.prefix_token_id
        return prefix if prefix is not None else self.eot_token_id

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
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        started = time.perf_counter()
        wholes = self._observe(requests)
        items = self._items(requests, wholes)
        answers = self._score_items(items, disable_tqdm)
        for item, by_budget in zip(items, answers):
            for k, answer in by_budget.items():
                self._local[k].answers[item.key] = answer
            self.cache_hook.add_partial("loglikelihood", item.key[1], by_budget[self.budgets_scored[0]].as_lm_eval())
        return self._finish_call([a[self.budgets_scored[0]].as_lm_eval() for a in answers], started)

    def _items(self, requests, wholes: list[list[int]]) -> list[Item]:
        """Each request's Item, split as lm-eval's _encode_pair splits it (trailing spaces of the context move to the
        continuation; the whole is encoded, then the context, and the continuation is what the whole has beyond the
        context's length), from batched encodings: `wholes` holds each context + continuation's tokens."""
        split = [_move_trailing_spaces(*req.args) for req in requests]
        contexts = iter(self.tokenizer.encode_batch([c for c, _ in split if c is not None]))
        items = []
        for req, (context, _), whole in zip(requests, split, wholes):
            if context is None:  # no context: the prefix token stands for it
                context_enc, continuation_enc = [self.prefix_token_id], whole
            else:
                context_enc = next(contexts)
                continuation_enc = whole[len(context_enc):]
            items.append(Item(("loglikelihood", req.args), _task_of(req), getattr(req, "doc_id", None), context_enc,
                              continuation_enc))
        return items

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """TemplateLM's entry point: ((context, continuation) | None, context_enc, continuation_enc) tuples."""
        items = [Item(None, "request", None, ctx, cont) for _, ctx, cont in requests]
        return [a[self.budgets_scored[0]].as_lm_eval() for a in self._score_items(items, disable_tqdm)]

    def _score_items(self, items: list[Item], disable_tqdm: bool = False) -> list[dict[int, Answer]]:
        """Every item's Answer at every scored budget. Items whose model input is the same token sequence share
        one forward; sequences run longest first in batches."""
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, item in enumerate(items):
            groups.setdefault(self._model_input(item), []).append(i)
        order = sorted(groups, key=lambda seq: (-len(seq), seq))
        answers: list[dict[int, Answer]] = [{} for _ in items]
        bar = self._progress(len(items), "loglikelihood", disable_tqdm)
        size = self._batch_size(max((len(s) for s in order), default=1))
        for start in range(0, len(order), size):
            batch = order[start: start + size]
            members = [[items[i] for i in groups[seq]] for seq in batch]
            for seq, scored in zip(batch, self._score_batch(list(batch), members)):
                for i, by_budget in zip(groups[seq], scored):
                    answers[i] = by_budget
                bar.update(len(groups[seq]))
        bar.close()
        return answers

    def _model_input(self, item: Item) -> tuple[int, ...]:
        """The tokens the model reads for an item: context + continuation minus its last token, cut from the left
        to max_length (so the continuation is predicted from at most max_length tokens)."""
        if not item.continuation:
            raise ConfigError(f"{item.task}: a request with an empty continuation cannot be scored")
        if len(item.continuation) > self.max_length:
            raise ConfigError(f"{item.task}: a continuation of {len(item.continuation)} tokens exceeds "
                              f"max_length={self.max_length}")
        full = item.context + item.continuation
        self._local_truncated += len(full) - 1 > self.max_length
        return tuple(full[-(self.max_length + 1):][:-1])

    @torch.inference_mode()
    def _score_batch(self, sequences: list[tuple[int, ...]], members: list[list[Item]]
                     ) -> list[list[dict[int, Answer]]]:
        """One forward over `sequences`; per sequence, per member item, its Answer at every scored budget."""
        ids, lengths = right_pad([list(s) for s in sequences], self._device)
        out = self.model(ids, self.budget, lengths=lengths, anytime=self.anytime, want_state=False)  # scores only
        hidden = {k: r.hidden for k, r in out.anytime.items()} or {self.budgets_scored[0]: out.hidden}
        stats = {k: r.stats for k, r in out.anytime.items()} or {self.budgets_scored[0]: out.stats}
        self._log_stats(stats, [m[0].task for m in members])
        if self.args.record_greedy:
            self._write_greedy(sequences, members, hidden, stats)
        results = []
        for i, (n, group) in enumerate(zip(lengths.tolist(), members)):
            span = max(len(item.continuation) for item in group)
            logprobs = {k: self._logprobs(h[i, n - span: n], group[0], k) for k, h in hidden.items()}
            results.append([{k: _answer(lp, item.continuation) for k, lp in logprobs.items()} for item in group])
        return results

    def _logprobs(self, hidden: torch.Tensor, item: Item, k: int) -> torch.Tensor:
        """Log-softmax over the padded vocabulary (as lm-eval's own HF and mamba_ssm models score); never computed
        from non-finite logits."""
        logits = self.model.logits(hidden)
        if not torch.isfinite(logits).all():
            where = f"task {item.task} doc {item.doc_id}" if item.key else "a request"
            raise NonFiniteError(f"{self.KIND}_ssm produced non-finite logits (NaN/inf) for {where}"
                                 f"{f' at max_iter={k}' if self.budget else ''}; no score is reported from them")
        return F.log_softmax(logits, dim=-1)

    def _log_stats(self, stats: dict[int, ReadStats | None], tasks: list[str]) -> None:
        if self.budget is None:
            return
        for k, s in stats.items():
            for task in dict.fromkeys(tasks):  # each sequence's statistics go to the task of its first request
                rows = torch.tensor([t == task for t in tasks], device=s.iterations.device)
                self._local[k].log(task, ReadStats(*(getattr(s, f)[rows] for f in
                                                     ("iterations", "residual", "converged", "tokens"))))

    def _write_greedy(self, sequences, members, hidden, stats) -> None:
        """One JSON line per scored sequence: its task and doc, tokens, and per budget the greedy next token at
        every position and the iterations of each piece (the raw material of agreement and iteration reports)."""
        with open(self.args.record_greedy, "a") as fh:
            for i, (seq, group) in enumerate(zip(sequences, members)):
                n = len(seq)
                record = {"task": group[0].task, "doc_id": group[0].doc_id, "input": list(seq), "greedy": {},
                          "iterations": {}, "piece_tokens": {}}
                for k, h in hidden.items():
                    record["greedy"][str(k)] = self.model.logits(h[i, :n])[:, : self.vocab_size].argmax(-1).tolist()
                    if stats.get(k) is not None:
                        present = stats[k].present[i]
                        record["iterations"][str(k)] = stats[k].iterations[i][present].tolist()
                        record["piece_tokens"][str(k)] = stats[k].tokens[i][present].tolist()
                fh.write(json.dumps(record, default=str) + "\n")

    # -- loglikelihood_rolling ----------------------------------------------------------------------
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        started = time.perf_counter()
        encoded = self._observe(requests)  # each request's text, args[0]
        items, owners = [], []
        for index, (req, tokens) in enumerate(zip(requests, encoded)):
            for ctx, cont in map(lm_utils.make_disjoint_window, lm_utils.get_rolling_token_windows(
                    token_list=tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
                    context_len=1)):
                items.append(Item(("window", (index,)), _task_of(req), getattr(req, "doc_id", None), ctx, cont))
                owners.append(index)
        answers = self._score_items(items, disable_tqdm)
        totals = {k: [0.0] * len(requests) for k in self.budgets_scored}
        for owner, by_budget in zip(owners, answers):
            for k, answer in by_budget.items():
                totals[k][owner] += answer.logprob
        for k, values in totals.items():
            self._local[k].answers.update({("loglikelihood_rolling", req.args): v for req, v in zip(requests, values)})
        main = totals[self.budgets_scored[0]]
        for req, total in zip(requests, main):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return self._finish_call(main, started)

    # -- generate_until -----------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        started = time.perf_counter()
        if self.anytime:
            raise ConfigError("anytime budgets score loglikelihood requests only; evaluate generation tasks with "
                              "one budget per run")
        encoded = self._observe(requests)  # each request's context, args[0]
        order = sorted(range(len(requests)), key=lambda i: (-len(encoded[i]), requests[i].args[0]))
        by_kwargs: dict[str, list[int]] = {}
        for i in order:
            by_kwargs.setdefault(json.dumps(requests[i].args[1], sort_keys=True, default=str), []).append(i)
        results: list[str | None] = [None] * len(requests)
        bar = self._progress(len(requests), "generate_until", disable_tqdm)
        size = self._batch_size(None)
        for indices in by_kwargs.values():
            for start in range(0, len(indices), size):
                chunk = indices[start: start + size]
                gen_kwargs = requests[chunk[0]].args[1]
                for i, text in zip(chunk, self._generate([requests[i].args[0] for i in chunk], gen_kwargs)):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                bar.update(len(chunk))
        bar.close()
        return self._finish_call(results, started)

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        until, max_new = _parse_gen_kwargs(gen_kwargs, self.tok_decode([self.eot_token_id]))
        budget_ctx = max(1, self.max_length - max_new)
        prompts = []
        for context in contexts:
            tokens = self.tok_encode(context) or [self.prefix_token_id]
            self._local_truncated += len(tokens) > budget_ctx
            prompts.append(tokens[-budget_ctx:])

        def is_done(row: int, tokens: list[int]) -> bool:
            return self.eot_token_id in tokens or any(s in self.tok_decode(tokens) for s in until)

        generated = greedy_generate(self.model, prompts, max_new, self.budget, is_done, self.vocab_size,
                                    log=self._local_generation, cuda_graphs=self.args.cuda_graphs)
        return [_cut(self.tok_decode(_before_eot(toks, self.eot_token_id)), until) for toks in generated]

    # -- what the requests say about their tasks ----------------------------------------------------
    def _observe(self, requests) -> list[list[int]]:
        """Per task: the fields its documents carry and how many of its tokens the tokenizer does not know. A task
        the tokenizer cannot read is refused before anything is scored (or flagged, with unknown_tokens=flag).
        Returns each request's text (its string arguments joined) encoded."""
        texts = ["".join(a for a in req.args if isinstance(a, str)) for req in requests]
        encoded = self.tokenizer.encode_batch_counting_unknown(texts)
        for req, (tokens, unknown) in zip(requests, encoded):
            record = self._local_tasks.setdefault(_task_of(req), TaskRecord())
            record.observe(getattr(req, "doc_id", None), getattr(req, "doc", None), len(tokens), unknown)
        self._refuse_unreadable_tasks()
        return [tokens for tokens, _ in encoded]

    def _refuse_unreadable_tasks(self) -> None:
        unreadable = {t: r for t, r in self._local_tasks.items() if r.unknown_fraction > UNREADABLE_FRACTION}
        if not unreadable:
            return
        detail = "; ".join(f"{t}: {r.unknown_fraction:.0%} of {r.tokens} tokens unknown (e.g. "
                           f"{', '.join(repr(w) for w in r.unknown_examples[:3])})"
                           for t, r in sorted(unreadable.items()))
        message = (f"the tokenizer of {self.ckpt.path} cannot read {len(unreadable)} task(s): {detail}. Evaluate these "
                   "tasks with a checkpoint whose vocabulary covers them")
        if self.args.unknown_tokens == "refuse":
            raise ConfigError(message + ", or pass unknown_tokens=flag to score them anyway (the results mark them)")
        logger.warning("%s; scoring anyway (unknown_tokens=flag): the results mark these tasks", message)

    def _progress(self, total: int, desc: str, disable: bool):
        """A progress bar on rank 0 (unless show_progress is off: a sweep shows its own); otherwise tqdm's own
        defaults apply (TQDM_DISABLE=1 silences it)."""
        off = disable or self._rank != 0 or not self.show_progress
        return tqdm(total=total, desc=desc, **({"disable": True} if off else {}))

    # -- batching -----------------------------------------------------------------------------------
    def _batch_size(self, longest: int | None) -> int:
        if self.args.batch_size != "auto":
            return self.args.batch_size
        if self._auto_batch is None:
            self._auto_batch = self._detect_batch_size(min(longest or self.max_length, self.max_length))
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
                self.model.logits(self.model(ids, self.budget, want_state=False).hidden[:, -1:])
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                size //= 2
        logger.info("batch_size=auto: %d sequences of %d tokens fit", size, length)
        return size

    def _finish_call(self, results: list, started: float) -> list:
        """After each request type: merge records across ranks, report truncation."""
        self._local_seconds += time.perf_counter() - started
        self.records, self.tasks, self.generation = self._local, self._local_tasks, self._local_generation
        self.truncated, self.request_seconds = self._local_truncated, self._local_seconds
        if self._world_size > 1:  # every rank runs each request type once, so this collective is matched
            parts = distributed.all_gather_object((
                {k: BudgetRecord(scoring=r.scoring, per_task=r.per_task) for k, r in self._local.items()},
                self._local_tasks, self._local_generation, self._local_truncated, self._local_seconds))
            self.records = _merge_records(self._local, [p[0] for p in parts])
            self.tasks = _merge_tasks([p[1] for p in parts])
            self.generation = ConvergenceLog()
            for p in parts:
                self.generation.extend(p[2])
            self.truncated = sum(p[3] for p in parts)
            self.request_seconds = max(p[4] for p in parts)  # the slowest rank sets the pace
        if self.truncated:
            logger.warning("%d request(s) longer than max_length=%d were truncated from the left", self.truncated,
                           self.max_length)
        for task, share in unconverged_tasks(self.model_info()).items():
            logger.warning("%s: %.0f%% of its %ss hit max_iter=%d unconverged: its score is that of an unconverged "
                           "model (raise max_iter or tol)", task, 100 * share, UNITS[self.budget.mode],
                           self.budget.max_iter)
        return results

    # -- results ------------------------------------------------------------------------------------
    def fingerprint(self, k: int | None = None) -> str:
        budget = self.budget.replace(max_iter=k) if self.budget and k else self.budget
        return model_fingerprint(self.ckpt.content_hash, budget, self.args.dtype_name, self.kernels, self.max_length)

    def model_info(self, k: int | None = None) -> dict:
        """What results must say about this run at budget k (default: the run's own budget)."""
        k = k or self.budgets_scored[0]
        info = {
            "checkpoint": str(self.ckpt.path), "content_hash": self.ckpt.content_hash, "kind": self.KIND,
            "format": self.ckpt.format, "backend": self.kernels, "dtype": self.args.dtype_name,
            "device": str(self._device), "world_size": self._world_size, "max_length": self.max_length,
            "truncated_requests": self.truncated, "fingerprint": self.fingerprint(k),
            "request_seconds": round(self.request_seconds, 3), "tasks": self._task_info(k),
        }
        if self.args.record_greedy:
            info["greedy_log"] = str(self.args.record_greedy)
        if self.budget is not None:
            budget = self.budget.replace(max_iter=k)
            scoring = self.records[k].scoring.summary(k)
            generation = self.generation.summary(k) if k == self.budgets_scored[0] else {"count": 0}
            info.update(budget=budget.to_dict(), unit=UNITS[budget.mode],
                        convergence={"scoring": scoring, "generation": generation})
        if self.anytime:
            info["anytime_budgets"] = list(self.budgets_scored)
            if k != self.budgets_scored[0]:
                info["anytime_of"] = self.budgets_scored[0]
        return info

    def _task_info(self, k: int) -> dict:
        out = {}
        for task, record in sorted(self.tasks.items()):
            out[task] = record.summary()
            log = self.records[k].per_task.get(task) if self.budget else None
            if log is not None:
                out[task]["convergence"] = log.summary(k)
        return out

    def get_model_info(self) -> dict:
        return {"ssm_model": self.model_info()}

    def at_budget(self, k: int):
        """This run's answers at anytime budget k as an lm-eval model (no model compute): see anytime.py."""
        from .anytime import BudgetView

        return BudgetView(self, k)

    def set_cache_hook(self, cache_hook) -> None:
        path = getattr(getattr(cache_hook, "dbdict", None), "filename", None)
        if path is not None and self.fingerprint() not in str(path):
            raise ConfigError(
                f"--use_cache: lm-eval keys its cache on the request text only, so one cache file shared by "
                f"different checkpoints, budgets or dtypes would return another model's scores. Put this model's "
                f"fingerprint in the path, e.g. --use_cache cache/{self.fingerprint()} (implicit-eval run "
                f"--use_cache DIR does this for you); got {path}")
        super().set_cache_hook(cache_hook)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
        """lm-eval's --batch_size/--device flags join model_args; the same key in model_args wins (the README
        documents device= and batch_size= there), instead of the TypeError of a key given twice."""
        args = lm_utils.simple_parse_args_string(arg_string)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in args}
        return cls(**args, **extra)


class ImplicitSSMLM(SSMLM):
    """lm-eval model `implicit_ssm`: a Mamba2 stack iterated to a fixed point at a budget."""

    KIND = "implicit"


class ExplicitSSMLM(SSMLM):
    """lm-eval model `explicit_ssm`: a plain Mamba2 LM (any checkpoint format the loader knows)."""

    KIND = "explicit"


def model_fingerprint(content_hash: str, budget, dtype: str, backend: str, max_length: int) -> str:
    """What determines scores: weights + tokenizer, budget, dtype, backend, context window."""
    key = json.dumps([content_hash, budget.to_dict() if budget else None, dtype, backend, max_length])
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _check_checkpoint(ckpt, kind: str, path: str) -> None:
    if ckpt.config.kind != kind:
        raise ConfigError(f"{path} holds an {ckpt.config.kind} model; use --model {ckpt.config.kind}_ssm")
    if ckpt.tokenizer is None:
        raise ConfigError(f"{path} has no tokenizer.json; pass tokenizer=<path to a tokenizer.json>")
    if ckpt.tokenizer.vocab_size > ckpt.config.padded_vocab_size:
        raise ConfigError(f"{ckpt.tokenizer.path} has {ckpt.tokenizer.vocab_size} tokens but the model only "
                          f"{ckpt.config.padded_vocab_size} embeddings: tokenizer and checkpoint do not match")


def _graph_mode(requested: bool | None, device: torch.device) -> str:
    """cuda_graphs=auto captures the readings' piece solves on CUDA (same numbers, no per-op launches)."""
    if requested and device.type != "cuda":
        raise ConfigError(f"cuda_graphs=true needs a CUDA device, got device={device}")
    return "capture" if device.type == "cuda" and requested is not False else "off"


def _move_trailing_spaces(context: str, continuation: str) -> tuple[str | None, str]:
    """lm-eval's rule for a loglikelihood pair: the context's trailing spaces belong to the continuation. None for
    an empty context (scored after the prefix token)."""
    if context == "":
        return None, continuation
    stripped = context.rstrip()
    return stripped, context[len(stripped):] + continuation


def _task_of(req) -> str:
    return str(getattr(req, "task_name", None) or "request")


def _merge_records(local: dict[int, BudgetRecord], parts: list[dict[int, BudgetRecord]]) -> dict[int, BudgetRecord]:
    merged = {k: BudgetRecord(answers=r.answers) for k, r in local.items()}
    for records in parts:
        for k, record in records.items():
            merged[k].extend(record)
    return merged


def _merge_tasks(parts: list[dict[str, TaskRecord]]) -> dict[str, TaskRecord]:
    merged: dict[str, TaskRecord] = {}
    for tasks in parts:
        for task, record in tasks.items():
            merged.setdefault(task, TaskRecord()).extend(record)
    return merged


def _answer(logprobs: torch.Tensor, cont_toks: list[int]) -> Answer:
    """logprobs (positions, vocab): the trailing len(cont_toks) positions score the continuation."""
    logprobs = logprobs[-len(cont_toks):]
    target = torch.tensor(cont_toks, device=logprobs.device)
    greedy = bool((logprobs.argmax(-1) == target).all())
    return Answer(float(logprobs.gather(1, target[:, None]).sum()), greedy)


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


__all__ = ["ExplicitSSMLM", "ImplicitSSMLM", "NonFiniteError", "SSMLM", "model_fingerprint", "valid_mask"]
