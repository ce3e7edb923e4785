"""Scores of the tiny tasks computed by hand from direct forwards: the adapters' tests compare against these."""

from pathlib import Path

import torch


def direct_logprobs(lm, text: str) -> torch.Tensor:
    """log-softmax of a fresh forward over the whole text (positions, padded vocabulary)."""
    ids = torch.tensor([lm.tok_encode(text)])
    with torch.no_grad():
        return torch.log_softmax(lm.model.logits(lm.model(ids, lm.budget).hidden)[0], -1)


def expected_ll_acc(lm, docs) -> float:
    """tiny_ll by hand: the target is right when it is the greedy next token after the text."""
    hits = [int(direct_logprobs(lm, d["text"])[-1].argmax()) == lm.tok_encode(d["target"])[0] for d in docs]
    return sum(hits) / len(hits)


def expected_mc_acc(lm, docs) -> float:
    """tiny_mc by hand: the choice with the highest log-likelihood is the label."""
    hits = []
    for d in docs:
        lp = direct_logprobs(lm, d["text"])[-1]
        scores = [float(lp[lm.tok_encode(c)[0]]) for c in "abc"]
        hits.append(scores.index(max(scores)) == d["label"])
    return sum(hits) / len(hits)


def tiny_docs() -> list[dict]:
    import sys

    sys.path.insert(0, str(Path(__file__).parent / "tasks"))
    try:
        from tiny_utils import load
    finally:
        sys.path.pop(0)
    return list(load()["test"])
