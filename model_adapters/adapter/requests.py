"""lm-eval's requests as the adapter scores them: one Item per continuation, from lm-eval's own tokenisation rules.

    loglikelihood            (context, continuation) -> TemplateLM._encode_pair's split, lm-eval's helper itself
    loglikelihood_rolling    a document -> lm-eval's rolling windows (utils.get_rolling_token_windows)
    generate_until           (context, gen_kwargs) -> greedy decoding settings (parse_gen_kwargs)

What the model reads for an item is its context and continuation minus the continuation's last token, cut from the
left to max_length (model_input).
"""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval import utils as lm_utils

from ..errors import ConfigError

RequestKey = tuple[str, tuple]  # (lm-eval request type, the request's args)
GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_p", "top_k")
DEFAULT_MAX_GEN_TOKS = 256


@dataclass
class Item:
    """One continuation to score: its request key, task and doc (for records), and its tokens."""

    key: RequestKey | None
    task: str
    doc_id: object
    context: list[int]
    continuation: list[int]


def task_of(req) -> str:
    return str(getattr(req, "task_name", None) or "request")


def loglikelihood_items(requests, tokenized) -> list[Item]:
    """Items of loglikelihood requests from lm-eval's own tokenisation of them: TemplateLM.loglikelihood's
    ((context, continuation), context_enc, continuation_enc) triples, in the requests' order (its _encode_pair moves
    a context's trailing spaces to the continuation; an empty context becomes the prefix token). requests None:
    token-level requests without task or document."""
    items = []
    for i, (_, context_enc, continuation_enc) in enumerate(tokenized):
        req = requests[i] if requests is not None else None
        key = ("loglikelihood", req.args) if req is not None else None
        items.append(Item(key, task_of(req), getattr(req, "doc_id", None), list(context_enc),
                          list(continuation_enc)))
    return items


def rolling_items(requests, encoded: list[list[int]], prefix_token: int, max_length: int
                  ) -> tuple[list[Item], list[int]]:
    """Every rolling window of every document (lm-eval's windows of max_length tokens, each predicting its own
    tokens), and for each window the index of the request it belongs to."""
    items, owners = [], []
    for index, (req, tokens) in enumerate(zip(requests, encoded)):
        windows = lm_utils.get_rolling_token_windows(token_list=tokens, prefix_token=prefix_token,
                                                     max_seq_len=max_length, context_len=1)
        for context, continuation in map(lm_utils.make_disjoint_window, windows):
            items.append(Item(("window", (index,)), task_of(req), getattr(req, "doc_id", None), context,
                              continuation))
            owners.append(index)
    return items, owners


def model_input(item: Item, max_length: int) -> tuple[tuple[int, ...], bool]:
    """The tokens the model reads for an item: context + continuation minus its last token, cut from the left to
    max_length (so the continuation is predicted from at most max_length tokens); and whether it was cut."""
    if not item.continuation:
        raise ConfigError(f"{item.task}: a request with an empty continuation cannot be scored")
    if len(item.continuation) > max_length:
        raise ConfigError(f"{item.task}: a continuation of {len(item.continuation)} tokens exceeds "
                          f"max_length={max_length}")
    full = item.context + item.continuation
    return tuple(full[-(max_length + 1):][:-1]), len(full) - 1 > max_length


def parse_gen_kwargs(kwargs: dict, eot_text: str) -> tuple[list[str], int]:
    """(stop strings, max new tokens) of a generate_until request; greedy decoding only."""
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


def before_eot(tokens: list[int], eot: int) -> list[int]:
    return tokens[: tokens.index(eot)] if eot in tokens else tokens


def cut_at_stops(text: str, until: list[str]) -> str:
    for stop in until:
        if stop:
            text = text.split(stop)[0]
    return text
