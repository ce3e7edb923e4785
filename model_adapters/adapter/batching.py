"""How many sequences a forward takes: a fixed batch size, or batch_size=auto probing the GPU's memory once."""

from __future__ import annotations

import logging

import torch

logger = logging.getLogger(__name__)


class BatchSizer:
    """size(longest) -> sequences per forward. "auto" halves max_batch_size until a forward at the longest length of
    the first call fits (once per run; on the CPU there is nothing to probe: max_batch_size)."""

    def __init__(self, batch_size: int | str, max_batch_size: int, device: torch.device, probe):
        self.batch_size, self.max_batch_size, self.device = batch_size, max_batch_size, device
        self.probe = probe  # probe(size, length): one scoring forward of that shape
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
        while size > 1:
            try:
                self.probe(size, length)
                break
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                size //= 2
        logger.info("batch_size=auto: %d sequences of %d tokens fit", size, length)
        return size
