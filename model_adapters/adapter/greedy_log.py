"""record_greedy=PATH: one JSON line per scored sequence with the greedy next token at every position and the
iterations of every piece, per budget (the raw material of agreement-between-readings and iteration reports)."""

from __future__ import annotations

import json

import torch

from ..errors import OutputError
from ..exits import Point, point_name
from ..reading import ReadStats


def greedy_records(sequences, members, hidden: dict[Point, torch.Tensor], stats: dict[Point, ReadStats | None], logits,
                   vocab_size: int) -> list[dict]:
    """One record per scored sequence: its task and doc, tokens, and per budget the greedy tokens and iterations."""
    records = []
    for i, (seq, group) in enumerate(zip(sequences, members)):
        n = len(seq)
        record = {"task": group[0].task, "doc_id": group[0].doc_id, "input": list(seq), "greedy": {},
                  "iterations": {}, "piece_tokens": {}}
        for k, h in hidden.items():
            name = point_name(k)  # "4", or "kl=0.001" for an exit point read off the trajectory
            record["greedy"][name] = logits(h[i, :n])[:, :vocab_size].argmax(-1).tolist()
            if (s := stats.get(k)) is not None:
                present = s.present[i]
                record["iterations"][name] = s.iterations[i][present].tolist()
                record["piece_tokens"][name] = s.tokens[i][present].tolist()
        records.append(record)
    return records


def append_records(path: str, records: list[dict]) -> None:
    """Whole lines, written together: a crash leaves the log's earlier lines intact."""
    text = "".join(json.dumps(r, default=str) + "\n" for r in records)
    try:
        with open(path, "a") as fh:
            fh.write(text)
    except OSError as exc:  # a full disk mid-run: one line naming the log, not a traceback through lm-eval
        raise OutputError(f"record_greedy: cannot write {path}: {exc.strerror or exc}") from exc
