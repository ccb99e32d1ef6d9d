"""Record cleaning and chat formatting for the SFT data (the preprocess job's per-record steps).

A :class:`RecordCleaner` takes one canonical record (kazhpc.data.records) through the steps, in
order, each switchable in ``preprocess.cleaning`` and counted: the system prompt, NFC, look-alike
letters, whitespace, special-token text (rejected or neutralised), empty turns, short answers,
language ID, decontamination; then formats a batch with the target model's chat template
(exactly one <bos>, no control token but the template's, a non-empty assistant mask, at most
``max_tokens``). A dropped record is a :class:`~kazhpc.data.records.Reject`; :func:`reject_row`
is its line in ``rejects.jsonl``.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.data.records import Record, Reject
from kazhpc.errors import FormattingError

if TYPE_CHECKING:
    from kazhpc.config import ModelConfig, PreprocessConfig

#: Records formatted per tokenizer call.
FORMAT_BATCH = 128


def reject_row(source: str, origin: str, order: tuple[int, int, int], reason: str, detail: str, row: Any) -> dict[str, Any]:
    """One line of ``rejects.jsonl`` (written with ``default=str``: a raw row may hold any value)."""
    return {"source": source, "origin": origin, "order": list(order), "reason": reason, "detail": detail, "row": row}


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None, chat_template: str, cache_root: Path):
    """One tokenizer load per process (a 262k vocabulary takes seconds), per model."""
    from kazhpc.config import ModelConfig
    from kazhpc.models import load_tokenizer

    cfg = ModelConfig(name="tokenizer", source=source, revision=revision, chat_template=chat_template)
    return load_tokenizer(cfg, cache_root)


class RecordCleaner:
    """The per-record steps, in order; each one switchable and counted.

    ``decontamination_files``: the evaluation items rows are checked against (none: no check)."""

    def __init__(self, pre: PreprocessConfig, model: ModelConfig, cache_root: Path, decontamination_files: list[str]):
        from kazhpc.data.dedup import NearDuplicateIndex
        from kazhpc.data.decontam import Decontaminator
        from kazhpc.data.langid import LanguageIdentifier
        from kazhpc.special_text import special_texts

        self.cfg = pre
        self.cleaning = pre.cleaning
        self.tokenizer = _tokenizer(model.source, model.revision, model.chat_template, cache_root)
        self.special = special_texts(self.tokenizer)
        self.ident = LanguageIdentifier(max_chars=200) if self.cleaning.language_id.enabled else None
        files = list(decontamination_files)
        decontam = self.cleaning.decontamination.model_copy(update={"files": files})
        self.decontam = Decontaminator(decontam) if files else None
        self.near = NearDuplicateIndex(self.cleaning.dedup)
        self.fixes: Counter[str] = Counter()  # characters or texts changed, by step
        self.rows_fixed: Counter[str] = Counter()  # records changed, by step

    def _normalise(self, record: Record) -> None:
        from kazhpc.data.text import fix_lookalikes, nfc, normalize_whitespace

        steps = [
            ("nfc", nfc, self.cleaning.nfc),
            ("lookalikes", fix_lookalikes, self.cleaning.lookalikes),
            ("whitespace", normalize_whitespace, self.cleaning.whitespace),
        ]
        for name, step, enabled in steps:
            if not enabled:
                continue
            changed = 0
            for message in record.messages:
                message["content"], n = step(message["content"])
                changed += n
            if changed:
                self.fixes[name] += changed
                self.rows_fixed[name] += 1

    def _special_text(self, record: Record) -> None:
        """Text that spells a special token (``<end_of_turn>`` in an answer would end the turn and
        forge the next one, in the loss) never reaches the chat template as such: the record is
        rejected, or (``special_tokens: neutralise``) the text is defused and counted as a fix."""
        changed = 0
        for message in record.messages:
            found = self.special.find(message["content"])
            if found is None:
                continue
            if self.cleaning.special_tokens == "reject":
                raise Reject("special_token_text", f"{message['role']} turn contains {found!r} as text")
            message["content"], n = self.special.neutralise(message["content"])
            changed += n
        if changed:
            self.fixes["special_tokens"] += changed
            self.rows_fixed["special_tokens"] += 1

    def check(self, record: Record, min_answer_words: int) -> str:
        """Clean and check one record (everything but formatting); return its dedup-normalised
        text, or raise Reject."""
        from kazhpc.data.langid import check_record
        from kazhpc.data.text import normalize_for_hash, word_count

        if self.cfg.system_prompt and record.messages[0]["role"] != "system":
            record.messages.insert(0, {"role": "system", "content": self.cfg.system_prompt})
        self._normalise(record)
        self._special_text(record)  # after every step that changes text
        for message in record.messages:
            if not message["content"].strip():
                raise Reject("empty_text", f"empty {message['role']} turn after cleaning")
        if min_answer_words:
            shortest = min(word_count(a) for a in record.answers())
            if shortest < min_answer_words:
                raise Reject("short_answer", f"{shortest} words < {min_answer_words}")
        if self.ident is not None:
            check_record(record, self.ident, self.cleaning.language_id)
        normalized = normalize_for_hash(record.text())  # once, for decontamination and both dedups
        if self.decontam is not None:
            self.decontam.check(record, normalized=normalized)
        return normalized

    def format(self, batch: list[tuple[Record, str]]) -> list[dict[str, Any] | Reject]:
        """Format checked records with the chat template, in one tokenizer call; per record a
        candidate (ids counted, dedup key, MinHash signature) or the Reject."""
        from kazhpc.data.dedup import exact_key_of
        from kazhpc.models import check_single_bos, format_chats
        from kazhpc.special_text import template_special_ids

        out: list[dict[str, Any] | Reject] = []
        for (record, normalized), formatted in zip(batch, format_chats(self.tokenizer, [r.messages for r, _ in batch])):
            if isinstance(formatted, Exception):
                out.append(Reject("template_error", f"{type(formatted).__name__}: {formatted}"))
                continue
            try:
                check_single_bos(formatted["input_ids"], self.tokenizer, where=record.origin)
            except FormattingError as exc:
                out.append(Reject("bad_bos", str(exc)))
                continue
            try:  # a guard: check() let no special-token text through, so the template's markers are all
                roles = [m["role"] for m in record.messages]
                self.special.check_ids(formatted["input_ids"], template_special_ids(self.tokenizer, roles), record.origin)
            except FormattingError as exc:
                out.append(Reject("special_token_ids", str(exc)))
                continue
            answer_tokens = sum(formatted["assistant_masks"])
            num_tokens = len(formatted["input_ids"])
            if answer_tokens == 0:
                out.append(Reject("empty_assistant_mask", "no token of the answer carries loss"))
            elif self.cleaning.max_tokens and num_tokens > self.cleaning.max_tokens:
                out.append(Reject("too_long", f"{num_tokens} tokens > {self.cleaning.max_tokens}"))
            else:
                out.append(
                    {
                        "record": record.to_dict(),
                        "num_tokens": num_tokens,
                        "answer_tokens": answer_tokens,
                        "exact_key": exact_key_of(normalized),
                        "signature": self.near.signature(normalized, normalized=True),
                    }
                )
        return out

