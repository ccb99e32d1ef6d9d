"""Packed token blocks, read memory-mapped: what continued pretraining trains on.

The corpus job's blocks stage writes one datatrove token file per task (``tokens/*.ds``: the
documents' tokens back to back, uint16 or uint32). Read in task order they are one token stream;
block ``i`` is tokens ``[i * length, (i + 1) * length)`` of it, across file boundaries, and the
last partial block is left out. Nothing is loaded: memory does not grow with the corpus.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np


def token_files(tokens_dir: Path) -> list[Path]:
    return sorted(p for p in Path(tokens_dir).glob("*.ds") if p.stat().st_size > 0)


class PackedBlocks:
    """A torch-style dataset of fixed-length blocks: ``{"input_ids", "labels"}`` (labels = inputs;
    the model shifts them), ``len`` blocks."""

    def __init__(self, files: list[Path], length: int, token_bytes: int):
        self.length = length
        self.dtype = np.uint32 if token_bytes == 4 else np.uint16
        self.files = [Path(f) for f in files]
        sizes = [f.stat().st_size // token_bytes for f in self.files]
        self.starts = np.cumsum([0, *sizes])  # token offset of each file in the stream
        self.tokens = int(self.starts[-1])
        self._maps: list[np.memmap] | None = None

    def __len__(self) -> int:
        return self.tokens // self.length

    def _memmaps(self) -> list[np.memmap]:
        if self._maps is None:  # opened lazily: in each dataloader worker, after pickling
            self._maps = [np.memmap(f, dtype=self.dtype, mode="r") for f in self.files]
        return self._maps

    def block(self, index: int) -> np.ndarray:
        if not 0 <= index < len(self):
            raise IndexError(index)
        start, end = index * self.length, (index + 1) * self.length
        pieces = []
        maps = self._memmaps()
        i = int(np.searchsorted(self.starts, start, side="right")) - 1
        while start < end:
            offset = start - int(self.starts[i])
            take = min(end - start, len(maps[i]) - offset)
            pieces.append(np.asarray(maps[i][offset : offset + take]))
            start += take
            i += 1
        return np.concatenate(pieces).astype(np.int64)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import torch

        ids = torch.from_numpy(self.block(index))
        return {"input_ids": ids, "labels": ids.clone()}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}

    def digest(self) -> str:
        """sha256 of the token stream that the blocks cover (the same for any number of tasks)."""
        h = hashlib.sha256()
        remaining = len(self) * self.length
        for m in self._memmaps():
            take = min(remaining, len(m))
            h.update(np.asarray(m[:take]).astype(np.uint32).tobytes())
            remaining -= take
        return h.hexdigest()
