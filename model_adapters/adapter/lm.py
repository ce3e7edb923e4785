"""lm-evaluation-harness models `implicit_ssm` and `explicit_ssm`: lm-eval's contract (requests in, scores out).

The class keeps the contract of lm-eval's TemplateLM and hands every job to a part of its own:

    args.py           model_args parsed and validated once
    requests.py       lm-eval's requests as Items (lm-eval's own tokenisation: _encode_pair, rolling windows)
    task_records.py   what the requests say about their tasks; the unknown-token policy
    scoring.py        items -> one forward per distinct sequence, batched; Answers at every scored budget
    shared_context.py multiple choice: a context shared by several continuations read once (share_context)
    batching.py       the batch size (fixed, or auto: probing GPU memory)
    greedy_log.py     record_greedy: greedy tokens and iterations per position
    ranks.py          data parallelism and records merged over ranks
    info.py           what the results JSON says (config.ssm_model), the fingerprint
    anytime.py        the metrics of every anytime budget through lm-eval's own evaluation
    hook.py           the registration with lm-eval and its few patches

Generation (generate_until) decodes greedily through the recurrent state (runtime/generation.py).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from tqdm import tqdm

from ..backends import resolve_backend
from ..config import cost_notice, resolve_budget
from ..convergence import ConvergenceLog
from ..errors import ConfigError
from ..exits import Point
from ..formats import load_checkpoint
from ..readings import reading_unit
from ..runtime import Runtime
from ..runtime.generation import greedy_generate
from ..summaries import unconverged_tasks
from .args import DEFAULT_MAX_LENGTH, parse_model_args
from .batching import BatchSizer, widest_activation
from .info import RunView, check_checkpoint, model_fingerprint, model_info
from .ranks import Ranks
from .records import BudgetRecord, Compute
from .requests import before_eot, cut_at_stops, loglikelihood_items, parse_gen_kwargs, rolling_items
from .scoring import Scorer
from .shared_context import share_context_setting
from .task_records import check_readable, observe

logger = logging.getLogger(__name__)


class SSMLM(TemplateLM):
    KIND = ""  # "implicit" | "explicit"

    def __init__(self, **kwargs):
        super().__init__()
        self.args = args = parse_model_args(self.KIND, kwargs)
        self.ranks = Ranks(args.device)
        self._device = self.ranks.device  # lm-eval's LM.device
        self.ckpt = load_checkpoint(args.pretrained, tokenizer=args.tokenizer, dtype=args.dtype,
                                    device=self.ranks.device, eos_token=args.eos_token, prefix_token=args.prefix_token)
        check_checkpoint(self.ckpt, self.KIND, args.pretrained)
        self.model, self.tokenizer = self.ckpt.model, self.ckpt.tokenizer
        self.model.set_state_dtype(args.state_dtype)
        implicit = self.KIND == "implicit"
        self.budget = resolve_budget(self.ckpt.default_budget, args.budget_overrides) if implicit else None
        if implicit and (notice := cost_notice(self.budget, self.ckpt.default_budget.max_iter)):
            logger.warning(notice)
        self.kernels = resolve_backend(args.backend, self.ranks.device)  # not `backend`: TemplateLM's means "causal"
        self.runtime = Runtime(self.model, self.kernels, _graph_mode(args.cuda_graphs, self.ranks.device),
                               lanes=args.lanes)
        self.max_length = args.max_length or DEFAULT_MAX_LENGTH
        # Budgets scored per request: the run's own first, then anytime budgets read off the same trajectory.
        extra = args.anytime + args.anytime_exits
        self.anytime = self.budget.anytime_budgets(extra) if implicit and extra else ()
        self.budgets_scored = (self.budget.max_iter if implicit else 0, *[k for k in self.anytime
                                                                           if k != self.budget.max_iter])
        self.local = RunView({k: BudgetRecord() for k in self.budgets_scored}, {}, ConvergenceLog())
        self.view = self.local  # merged over ranks after each request type
        self.scorer = self._scorer()
        self._requests, self._disable_tqdm = None, False  # loglikelihood's requests, while TemplateLM tokenises them

    def _scorer(self) -> Scorer:
        sizer = BatchSizer(self.args.batch_size, self.args.max_batch_size, self.ranks.device, self._probe,
                           widest_activation(self.model))
        return Scorer(self.runtime, self.budget, self.anytime, self.budgets_scored, self.max_length,
                      self.ckpt.config.vocab_size, sizer.size, self.local.records, self.args.record_greedy,
                      f"{self.KIND}_ssm", share_context=share_context_setting(self.args.share_context, self.budget,
                                                           bool(self.args.anytime_exits)))

    def _probe(self, size: int, length: int) -> None:
        """batch_size=auto tries a batch as scoring runs it: every scored budget's hidden states kept (anytime),
        then one row's log-probabilities over its whole length (the longest continuation span scoring reads)."""
        ids = torch.zeros(size, length, dtype=torch.long, device=self.ranks.device)
        out = self.runtime(ids, self.budget, anytime=self.anytime, want_state=False)
        self.runtime.logits(out.hidden[0]).log_softmax(-1)

    # -- tokenisation ---------------------------------------------------------------------------------
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

    # -- distributed (lm-eval shards requests by rank) ------------------------------------------------
    @property
    def rank(self) -> int:
        return self.ranks.rank

    @property
    def world_size(self) -> int:
        return self.ranks.world_size

    def all_gather(self, tensor):
        return self.ranks.all_gather(tensor)

    def gather_object(self, obj, dst=0):
        return self.ranks.gather_object(obj, dst)

    def barrier(self) -> None:
        self.ranks.barrier()

    # -- the three request types ----------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """lm-eval's own TemplateLM.loglikelihood tokenises the requests (its _encode_pair) and hands them, in order,
        to _loglikelihood_tokens; this keeps them to name each item's task and document."""
        started = time.perf_counter()
        self._observe(requests)
        self._requests, self._disable_tqdm = requests, disable_tqdm
        try:
            results = super().loglikelihood(requests, disable_tqdm=True)  # no bar for the tokenisation
        finally:
            self._requests, self._disable_tqdm = None, False
        return self._finish_call(results, started)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """TemplateLM's entry point: ((context, continuation), context_enc, continuation_enc) triples."""
        items = loglikelihood_items(self._requests, requests)
        answers = self._score(items, "loglikelihood", disable_tqdm or self._disable_tqdm, share=True)
        for item, by_budget in zip(items, answers):
            if item.key is None:
                continue
            for k, scored in by_budget.items():
                self.local.records[k].answers[item.key] = scored
                if scored.compute is not None:
                    self.local.records[k].compute[item.key] = scored.compute
            self.cache_hook.add_partial("loglikelihood", item.key[1], by_budget[self.budgets_scored[0]].as_lm_eval())
        return [a[self.budgets_scored[0]].as_lm_eval() for a in answers]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        started = time.perf_counter()
        encoded = self._observe(requests)  # each request's text, args[0]
        items, owners = rolling_items(requests, encoded, self.prefix_token_id, self.max_length)
        answers = self._score(items, "loglikelihood_rolling", disable_tqdm)
        totals = {k: [0.0] * len(requests) for k in self.budgets_scored}
        windows: dict = {k: [[] for _ in requests] for k in self.budgets_scored}
        for owner, by_budget in zip(owners, answers):
            for k, scored in by_budget.items():
                totals[k][owner] += scored.logprob
                windows[k][owner].append(scored.compute)
        for k, values in totals.items():
            record = self.local.records[k]
            record.answers.update({("loglikelihood_rolling", r.args): v for r, v in zip(requests, values)})
            if self.budget is not None:
                record.compute.update({("loglikelihood_rolling", r.args): Compute.joined(parts)
                                       for r, parts in zip(requests, windows[k])})
        main = totals[self.budgets_scored[0]]
        for req, total in zip(requests, main):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return self._finish_call(main, started)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        started = time.perf_counter()
        if self.anytime:
            raise ConfigError("anytime budgets score loglikelihood requests only; evaluate generation tasks with "
                              "one budget per run")
        encoded = self._observe(requests)  # each request's context, args[0]
        results: list[str | None] = [None] * len(requests)
        bar = self._progress(len(requests), "generate_until", disable_tqdm)
        for chunk in self._generation_batches(requests, encoded):
            for i, text in zip(chunk, self._generate([requests[i].args[0] for i in chunk], requests[chunk[0]].args[1])):
                results[i] = text
                self.cache_hook.add_partial("generate_until", requests[i].args, text)
            bar.update(len(chunk))
        bar.close()
        return self._finish_call(results, started)

    # -- the parts behind them ------------------------------------------------------------------------
    def _observe(self, requests) -> list[list[int]]:
        """Task records and the unknown-token policy, before anything is scored; each request's text encoded."""
        encoded = observe(self.local.tasks, requests, self.tokenizer)
        check_readable(self.local.tasks, self.args.unknown_tokens, str(self.ckpt.path))
        return encoded

    def _score(self, items, desc: str, disable_tqdm: bool, share: bool = False):
        bar = self._progress(len(items), desc, disable_tqdm)
        try:
            return self.scorer.score(items, bar, share)
        finally:
            bar.close()

    def _generation_batches(self, requests, encoded) -> list[list[int]]:
        """Request indices longest first, grouped by their generation settings, in batches."""
        order = sorted(range(len(requests)), key=lambda i: (-len(encoded[i]), requests[i].args[0]))
        by_kwargs: dict[str, list[int]] = {}
        for i in order:
            by_kwargs.setdefault(json.dumps(requests[i].args[1], sort_keys=True, default=str), []).append(i)
        size = self.scorer.batch_size(self.max_length)
        return [indices[s: s + size] for indices in by_kwargs.values() for s in range(0, len(indices), size)]

    def _generate(self, contexts: list[str], gen_kwargs: dict) -> list[str]:
        until, max_new = parse_gen_kwargs(gen_kwargs, self.tok_decode([self.eot_token_id]))
        budget_ctx = max(1, self.max_length - max_new)
        prompts = []
        for context in contexts:
            tokens = self.tok_encode(context) or [self.prefix_token_id]
            self.scorer.truncated += len(tokens) > budget_ctx
            prompts.append(tokens[-budget_ctx:])

        def is_done(row: int, tokens: list[int]) -> bool:
            return self.eot_token_id in tokens or any(s in self.tok_decode(tokens) for s in until)

        generated = greedy_generate(self.runtime, prompts, max_new, self.budget, is_done, self.ckpt.config.vocab_size,
                                    log=self.local.generation, cuda_graphs=self.args.cuda_graphs)
        return [cut_at_stops(self.tok_decode(before_eot(toks, self.eot_token_id)), until) for toks in generated]

    def _progress(self, total: int, desc: str, disable: bool):
        """A progress bar on rank 0 (unless progress=false: a sweep shows its own); otherwise tqdm's own defaults
        apply (TQDM_DISABLE=1 silences it)."""
        off = disable or self.rank != 0 or not self.args.progress
        options: dict[str, Any] = {"disable": True} if off else {}
        return tqdm(total=total, desc=desc, **options)

    def _finish_call(self, results: list, started: float) -> list:
        """After each request type: merge records across ranks, report truncation and unconverged tasks."""
        self.local.request_seconds += time.perf_counter() - started
        self.local.truncated = self.scorer.truncated
        self.view = self.ranks.merge(self.local)
        if self.view.truncated:
            logger.warning("%d request(s) longer than max_length=%d were truncated from the left", self.view.truncated,
                           self.max_length)
        for task, share in unconverged_tasks(self.model_info()).items():
            logger.warning("%s: %.0f%% of its %ss hit max_iter=%d unconverged: its score is that of an unconverged "
                           "model (raise max_iter or tol)", task, 100 * share, reading_unit(self.budget.mode),
                           self.budget.max_iter)
        return results

    # -- results --------------------------------------------------------------------------------------
    def fingerprint(self, k: Point | None = None) -> str:
        budget = self.budget.at(k) if self.budget and k else self.budget
        return model_fingerprint(self.ckpt.content_hash, budget, self.args.precision, self.kernels, self.max_length)

    def model_info(self, k: Point | None = None) -> dict:
        """What results must say about this run at budget k (default: the run's own budget)."""
        return model_info(self, self.view, k)

    def get_model_info(self) -> dict:
        return {"ssm_model": self.model_info()}

    def at_budget(self, k: Point):
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
        """A model_args string (a key given twice is refused); lm-eval's --batch_size/--device flags join it."""
        from .args import split_model_args

        return cls.create_from_arg_obj(split_model_args(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
        """lm-eval's --batch_size/--device flags join model_args; the same key in model_args wins (the README
        documents device= and batch_size= there), instead of the TypeError of a key given twice. lm-eval's own
        command line parses --model_args into a dict before it reaches here: a key given twice there is found in
        its command line (args.cli_duplicates)."""
        from .args import cli_duplicates

        cli_duplicates()
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)


class ImplicitSSMLM(SSMLM):
    """lm-eval model `implicit_ssm`: a Mamba2 stack iterated to a fixed point at a budget."""

    KIND = "implicit"


class ExplicitSSMLM(SSMLM):
    """lm-eval model `explicit_ssm`: a plain Mamba2 LM (any checkpoint format the loader knows)."""

    KIND = "explicit"


def _graph_mode(requested: bool | None, device: torch.device) -> str:
    """cuda_graphs=auto captures the readings' piece solves on CUDA (same numbers, no per-op launches)."""
    if requested and device.type != "cuda":
        raise ConfigError(f"cuda_graphs=true needs a CUDA device, got device={device}")
    return "capture" if device.type == "cuda" and requested is not False else "off"
