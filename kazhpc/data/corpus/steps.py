"""kazhpc's own datatrove steps: the cleaning and checks preprocess does on rows, done on documents.

Each is a datatrove ``PipelineStep`` (or ``BaseFilter``: a dropped document goes to the step's
exclusion writer with its reason, and is counted in datatrove's stats by that reason), defined in
this importable module: datatrove's process pool cannot run classes defined in ``__main__``.
Heavy objects (lingua's models, the n-gram index, a tokenizer) are built on first use, in the
task's own process.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING, Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.utils.word_tokenizers import WordTokenizer

if TYPE_CHECKING:
    from datatrove.pipeline.writers.disk_base import DiskWriter

    from kazhpc.config.preprocess import DecontaminationConfig

#: A word: letters and digits, inner hyphens and apostrophes. Punctuation is not a word: Gopher's
#: rule that 80% of words hold a letter would otherwise count every comma and guillemet against a
#: document (it dropped 32 of 80 KazNERD news documents, whose text has them space-separated).
_WORD = re.compile(r"\w+(?:[-'’]\w+)*", re.UNICODE)
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


class KazakhWords(WordTokenizer):
    """Words and sentences by regular expression: datatrove's Kazakh tokenizer is stanza's, which
    downloads a model at run time. The Gopher and MinHash steps only need word boundaries."""

    def __init__(self) -> None:
        super().__init__("kk")

    def word_tokenize(self, text: str) -> list[str]:
        return _WORD.findall(text)

    def sent_tokenize(self, text: str) -> list[str]:
        return [s for s in _SENTENCE_END.split(text) if s.strip()]

    def span_tokenize(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S.*?(?:[.!?…](?=\s)|$)", text, re.S)]


class CleanText(PipelineStep):
    """NFC, look-alike Latin letters in Cyrillic words, whitespace (kazhpc.data.text), and special-token
    text neutralised or rejected; documents under ``min_chars`` afterwards are dropped."""

    name = "🧽 kazhpc clean"
    type = "FORMAT"

    def __init__(self, tokenizer_dir: str, special_tokens: str, min_chars: int, rejects: DiskWriter | None = None):
        super().__init__()
        self.tokenizer_dir = tokenizer_dir
        self.special_tokens = special_tokens
        self.min_chars = min_chars
        self.rejects = rejects
        self._special: Any = None

    def _specials(self) -> Any:
        if self._special is None:
            from transformers import AutoTokenizer

            from kazhpc.special_text import special_texts

            self._special = special_texts(AutoTokenizer.from_pretrained(self.tokenizer_dir))
        return self._special

    def _drop(self, doc: Document, reason: str, writer: Any, rank: int) -> None:
        self.stat_update("dropped", f"dropped_{reason}")
        if writer:
            doc.metadata["filter_reason"] = reason
            writer.write(doc, rank)

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        import contextlib

        from kazhpc.data.text import fix_lookalikes, nfc, normalize_whitespace

        with self.rejects if self.rejects else contextlib.nullcontext() as writer:
            for doc in data:
                with self.track_time():
                    text = doc.text
                    for step in (nfc, fix_lookalikes, normalize_whitespace):
                        text, changed = step(text)
                        if changed:
                            self.stat_update(f"fixed_{step.__name__}")
                    found = self._specials().find(text)
                    if found is not None and self.special_tokens == "reject":
                        doc.metadata["detail"] = f"contains {found!r} as text"
                        self._drop(doc, "special_token_text", writer, rank)
                        continue
                    if found is not None:
                        text, n = self._specials().neutralise(text)
                        self.stat_update("fixed_special_tokens", value=n)
                    doc.text = text
                    if len(text) < self.min_chars:
                        self._drop(doc, "too_short", writer, rank)
                        continue
                self.stat_update("forwarded")
                yield doc


class LanguageFilter(BaseFilter):
    """Document-level language ID with lingua (offline); keeps ``language`` at ``min_confidence``."""

    name = "🌍 kazhpc language (lingua)"

    def __init__(self, language: str, languages: list[str], min_confidence: float, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.language = language
        self.languages = list(languages)
        self.min_confidence = min_confidence
        self._ident: Any = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._ident is None:
            from kazhpc.data.langid import LanguageIdentifier

            self._ident = LanguageIdentifier(self.languages)
        result = self._ident.detect(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = result.language, round(result.confidence, 4)
        if result.language != self.language:
            return False, f"language_{result.language or 'unknown'}"
        if result.confidence < self.min_confidence:
            return False, "language_low_confidence"
        return True


class DecontaminationFilter(BaseFilter):
    """Drops a document sharing a word n-gram with an evaluation item: preprocess's rule
    (kazhpc.data.decontam), on the whole document."""

    name = "🧪 kazhpc decontamination"

    def __init__(self, cfg: DecontaminationConfig, exclusion_writer: DiskWriter | None = None):
        super().__init__(exclusion_writer)
        self.cfg = cfg
        self._index: Any = None

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        if self._index is None:
            from kazhpc.data.decontam import Decontaminator

            self._index = Decontaminator(self.cfg)
        location = self._index.match(doc.text)
        if location is not None:
            doc.metadata["detail"] = f"{self.cfg.ngram}-gram overlap with {location}"
            return False, "contaminated"
        return True


def heldout(text: str, fraction: float) -> bool:
    """Whether a document is held out: a hash of its text, so the choice depends on nothing else."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


class HeldoutSplit(PipelineStep):
    """Sends ``fraction`` of the documents (by :func:`heldout`) to ``writer`` and the rest on."""

    name = "✂️ kazhpc held-out split"
    type = "SPLIT"

    def __init__(self, fraction: float, writer: DiskWriter):
        super().__init__()
        self.fraction = fraction
        self.writer = writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.writer as writer:
            for doc in data:
                if heldout(doc.text, self.fraction):
                    self.stat_update("heldout")
                    writer.write(doc, rank)
                    continue
                self.stat_update("forwarded")
                yield doc


class KeptLedger(PipelineStep):
    """Writes the id, source and characters of every document that reaches the blocks: the record
    of what CPT was trained on (its text is in the blocks)."""

    name = "📒 kazhpc kept ledger"
    type = "WRITER"

    def __init__(self, writer: DiskWriter):
        super().__init__()
        self.writer = writer

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        with self.writer as writer:
            for doc in data:
                self.stat_update("kept")
                self.stat_update("chars", value=len(doc.text))
                self.stat_update("bytes", value=len(doc.text.encode("utf-8")))
                writer.write(Document(text="", id=doc.id, metadata={"source": doc.metadata.get("source"),
                                                                     "chars": len(doc.text)}), rank)
                yield doc
