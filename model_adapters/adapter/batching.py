"""How many sequences a forward takes: a fixed batch size, or batch_size=auto probing the GPU's memory once."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class BatchSizer:
    """size(longest) -> sequences per forward. "auto" halves max_batch_size until a forward at the longest length of
    the first call fits (once per run; on the CPU there is nothing to probe: max_batch_size)."""

    def __init__(self, batch_size: int | str, max_batch_size: int, device: torch.device, probe, width: int = 1):
        self.batch_size, self.max_batch_size, self.device = batch_size, max_batch_size, device
        self.probe = probe  # probe(size, length): one scoring forward of that shape
        self.width = width  # the widest activation per token (indexed_rows)
        self.auto: int | None = None

    def size(self, longest: int) -> int:
        if self.batch_size != "auto":
            return int(self.batch_size)
        if self.auto is None:
            self.auto = self._detect(longest)
        return self.auto

    @torch.inference_mode()
    def _detect(self, length: int) -> int:
        size = self.max_batch_size
        if self.device.type != "cuda":
            logger.info("batch_size=auto on %s: no memory probe, using max_batch_size=%d", self.device, size)
            return size
        cap = indexed_rows(length, self.width)
        if cap < size:
            logger.info("batch_size=auto: at most %d sequences of %d tokens keep every activation under 2**31 "
                        "elements", cap, length)
            size = cap
        while size > 1:
            try:
                self.probe(size, length)
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                size //= 2
        logger.info("batch_size=auto: %d sequences of %d tokens fit", size, length)
        return size


def indexed_rows(length: int, width: int) -> int:
    """The most sequences of `length` tokens whose activations of `width` per token stay under 2**31 elements.
    Beyond that, kernels that index in int32 (cuBLAS, Triton scans) fail with an illegal memory access instead of
    running out of memory, which leaves the CUDA context unusable: no probe can try such a batch."""
    return max(1, (2**31 - 1) // max(1, length * width))


def widest_activation(model: torch.nn.Module) -> int:
    """The widest per-token output of the model's projections, the LM head aside (scoring takes logits of a few
    positions per row; the probe of one whole row)."""
    head = getattr(model, "lm_head", None)
    return max((m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head),
               default=1)
