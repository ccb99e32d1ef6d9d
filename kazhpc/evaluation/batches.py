"""Lists of token ids to one padded batch: right padding to score texts, left padding to generate
(every prompt then ends where generation starts)."""

from __future__ import annotations

from typing import Any


def padded_batch(batch: list[list[int]], pad: int, left: bool = False) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)`` as long tensors of the batch's longest length."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, ids in enumerate(batch):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        attention[row, span] = 1
    return input_ids, attention
