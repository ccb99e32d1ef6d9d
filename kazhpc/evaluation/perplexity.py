"""Perplexity per token and bits per character.

Per-token perplexity cannot be compared across tokenizers (a tokenizer that splits Kazakh into
more pieces gets an easier task per token); bits per character and per UTF-8 byte can, so every
score reports all three from the same summed negative log-likelihood.
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Sequence

from kazhpc.errors import KazhpcError
from kazhpc.evaluation.batches import padded_batch
from kazhpc.models import check_single_bos

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class PerplexityResult:
    texts: int
    tokens: int  # predicted tokens (every token after <bos>)
    chars: int  # characters of the scored text
    bytes: int  # UTF-8 bytes of the scored text
    nll_nats: float  # summed negative log-likelihood
    truncated: int  # texts cut at max_length

    @property
    def loss(self) -> float:
        return self.nll_nats / self.tokens

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def bits_per_char(self) -> float:
        return self.nll_nats / math.log(2) / self.chars

    @property
    def bits_per_byte(self) -> float:
        return self.nll_nats / math.log(2) / self.bytes

    def metrics(self) -> dict[str, float]:
        return {
            "loss": self.loss,
            "perplexity": self.perplexity,
            "bits_per_char": self.bits_per_char,
            "bits_per_byte": self.bits_per_byte,
            "tokens_per_char": self.tokens / self.chars,
        }

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), **self.metrics()}


def score_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int = 256,
    batch_size: int = 4,
) -> PerplexityResult:
    """Sum the model's negative log-likelihood of each text (one <bos>, no chat template)."""
    import torch

    if not texts:
        raise ValueError("no texts to score")
    encoded: list[list[int]] = []
    chars = nbytes = truncated = 0
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        check_single_bos(ids, tokenizer, where=f"perplexity text {i + 1}")
        if len(ids) > max_length:
            truncated += 1
            ids = ids[:max_length]
            # Count only the characters the kept tokens cover.
            text = tokenizer.decode(ids[1:], skip_special_tokens=True)
        encoded.append(ids)
        chars += len(text)
        nbytes += len(text.encode("utf-8"))

    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    nll = 0.0
    tokens = 0
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            input_ids, attention = padded_batch(encoded[start : start + batch_size], pad)
            logits = model(input_ids=input_ids, attention_mask=attention).logits.float()
            targets = input_ids[:, 1:]
            mask = attention[:, 1:].bool()
            losses = torch.nn.functional.cross_entropy(
                logits[:, :-1].transpose(1, 2), targets, reduction="none"
            )
            nll += losses[mask].sum().item()
            tokens += int(mask.sum().item())
    return PerplexityResult(len(texts), tokens, chars, nbytes, nll, truncated)


BUILTIN_TEXTS = "builtin:kk-sentences"
#: Passage files shipped in kazhpc/resources (``builtin:NAME``): Kazakh sentences, English passages,
#: and Kazakh passages of four genres outside a news or web corpus (out of domain for CPT).
BUILTIN_NAMES = ("kk-sentences", "en-heldout", "kk-ood")


def passages_file(spec: str) -> Path:
    """The file behind a passages spec (``builtin:<name>``: kazhpc's shipped resource)."""
    if spec.startswith("builtin:"):
        return Path(str(resources.files("kazhpc").joinpath("resources", f"{spec.removeprefix('builtin:')}.txt")))
    return Path(spec).expanduser()


def read_passages(spec: str, key: str) -> tuple[list[str], str]:
    """The passages to score (one per non-empty line) of ``spec`` (``builtin:kk-sentences`` or a
    UTF-8 text file; ``key`` names the config key in errors) and the sha256 of their file."""
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTIN_NAMES:
            raise KazhpcError(f"{key}: unknown built-in texts {spec!r}; built in: "
                              + ", ".join(f"builtin:{n}" for n in BUILTIN_NAMES))
        raw = resources.files("kazhpc").joinpath("resources", f"{name}.txt").read_bytes()
        where = spec
    else:
        path = Path(spec).expanduser()
        where = str(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise KazhpcError(f"{key}: {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise KazhpcError(f"{where}: not UTF-8 (byte {exc.start})") from None
    texts = [line.strip() for line in text.splitlines() if line.strip()]
    if not texts:
        raise KazhpcError(f"{where}: no text to score (the file is empty)")
    return texts, hashlib.sha256(raw).hexdigest()
