"""Special-token text: data that spells a control token.

Text that spells a control token (``<end_of_turn>``, ``<eos>``, ...) is tokenised as that token, so
a data row could forge a turn. :func:`special_texts` finds and neutralises such text; every job
that tokenises data calls it (see :class:`SpecialTexts`).
"""

from __future__ import annotations

import re
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from kazhpc.errors import FormattingError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

#: Inserted after the first character of a special-token text to neutralise it. U+2060 WORD JOINER
#: is invisible and not whitespace (a template's ``trim`` and kazhpc's whitespace cleaning keep it),
#: so "<\u2060eos>" reads as "<eos>" but tokenises as the characters "<", U+2060, "eos>".
NEUTRALISER = "\u2060"
#: Added tokens that some tokenizers leave unmarked although they are control tokens all the same
#: (Gemma-3's multimodal markers: in text they announce an image). Used where the tokenizer has them.
CONTROL_TEXTS = ("<start_of_image>", "<end_of_image>", "<image_soft_token>", "[multimodal]")
#: Tokens that end a model turn besides the tokenizer's eos (Gemma's chat turns end with this one).
END_OF_TURN_TOKENS = ("<end_of_turn>",)
#: Neutralising passes at most: one suffices unless one special text sits inside another's tail.
_NEUTRALISE_PASSES = 8


def _trie_regex(words: Iterable[str]) -> str:
    """One regex for any of ``words``, the longest at a position winning. A prefix tree, not an
    alternation: Python's ``re`` tries alternatives one by one, which with Gemma-3's 6,000+ special
    tokens (``<unused0>`` ... ``<unused6241>``) is ~600x slower."""
    trie: dict[str, dict] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def emit(node: dict[str, dict]) -> str:
        branches = [re.escape(ch) + emit(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body  # greedy: the longer word first

    return emit(trie) if trie else "(?!)"


@dataclass(frozen=True)
class SpecialTexts:
    """A tokenizer's control tokens as text: how to find them in data, defuse them, and check ids.

    ``texts`` are the contents of every added token marked special (Gemma-3: ``<bos>``, ``<eos>``,
    ``<pad>``, ``<unk>``, ``<mask>``, ``<start_of_turn>``, ``<end_of_turn>`` and 6,242 ``<unusedN>``),
    the tokenizer's named special tokens, and :data:`CONTROL_TEXTS` where it has them; texts that are
    only whitespace are no control tokens and are left out. ``ids`` are their ids except ``<unk>``'s:
    a tokenizer without byte fallback writes ``<unk>`` for unknown characters, which forges nothing.

    This is the one place that decides what special-token text is. Preprocess checks every turn
    before the chat template renders it, evaluation every document and generation prompt before
    they are tokenised; a corpus stage (continued pre-training corpora, planned) is to call
    :meth:`find` / :meth:`neutralise` on every passage the same way.
    """

    texts: frozenset[str]
    ids: frozenset[int]
    pattern: re.Pattern[str]
    names: Mapping[int, str]  # id → token text, for messages

    def find(self, text: str) -> str | None:
        """The first special-token text in ``text`` (the longest one at that place), or None."""
        match = self.pattern.search(text)
        return None if match is None else match.group()

    def neutralise(self, text: str) -> tuple[str, int]:
        """``text`` with :data:`NEUTRALISER` after the first character of every special-token text,
        and how many it changed. It reads the same, tokenises as plain characters, and without the
        inserted U+2060 it is ``text`` again."""
        total = 0
        for _ in range(_NEUTRALISE_PASSES):
            text, n = self.pattern.subn(lambda m: m.group()[0] + NEUTRALISER + m.group()[1:], text)
            if not n:
                return text, total
            total += n
        raise FormattingError(f"special-token text still found after {_NEUTRALISE_PASSES} passes: {self.find(text)!r}")

    def check_ids(self, input_ids: Sequence[int], expected: Mapping[int | None, int], where: str = "") -> None:
        """Raise FormattingError unless the special ids in ``input_ids`` are exactly ``expected``
        (id → count: the one ``<bos>``, plus the turn markers a chat template writes itself, see
        :func:`template_special_ids`). A bug guard: data is checked or neutralised before it is
        tokenised, so no valid input reaches the error."""
        found = Counter(i for i in input_ids if i in self.ids)
        want = Counter({i: n for i, n in expected.items() if i is not None and n})
        if found == want:
            return
        prefix = f"{where}: " if where else ""
        extra = ", ".join(f"{self.names.get(i, i)} x{n}" for i, n in sorted((found - want).items()))
        missing = ", ".join(f"{self.names.get(i, i)} x{n}" for i, n in sorted((want - found).items()))
        said = [f"unexpected control tokens (special-token text let through?): {extra}"] if extra else []
        said += [f"expected control tokens missing: {missing}"] if missing else []
        raise FormattingError(prefix + "; ".join(said))


#: Per tokenizer object: its SpecialTexts and the template's ids by (roles, generation prompt).
_SPECIAL: weakref.WeakKeyDictionary[Any, tuple[SpecialTexts, dict]] = weakref.WeakKeyDictionary()


def _special_entry(tokenizer: PreTrainedTokenizerBase) -> tuple[SpecialTexts, dict]:
    entry = _SPECIAL.get(tokenizer)
    if entry is not None:
        return entry
    added = tokenizer.added_tokens_decoder
    by_text = {tok.content: i for i, tok in added.items() if tok.special or tok.content in CONTROL_TEXTS}
    for text in tokenizer.all_special_tokens:
        if text not in by_text:
            by_text[text] = tokenizer.convert_tokens_to_ids(text)
    by_text = {t: i for t, i in by_text.items() if t.strip()}
    unk = tokenizer.unk_token_id
    names = {i: t for t, i in by_text.items() if i is not None and i != unk}
    pattern = re.compile(_trie_regex(by_text))
    entry = (SpecialTexts(frozenset(by_text), frozenset(names), pattern, names), {})
    _SPECIAL[tokenizer] = entry
    return entry


def special_texts(tokenizer: PreTrainedTokenizerBase) -> SpecialTexts:
    """The tokenizer's :class:`SpecialTexts`, built once per tokenizer object (~0.05 s for Gemma-3's
    6,000+ special tokens). Tokens added to that object later are not seen (kazhpc adds none: the
    extend-vocab job writes a new tokenizer, and its tokens are not special)."""
    return _special_entry(tokenizer)[0]


def template_special_ids(
    tokenizer: PreTrainedTokenizerBase, roles: Sequence[str], add_generation_prompt: bool = False
) -> Mapping[int, int]:
    """Special id → count that the chat template itself writes for a conversation with these roles
    (rendered once with a placeholder in every turn, then cached): what :meth:`SpecialTexts.check_ids`
    expects of any conversation with the same roles, since content cannot add control tokens."""
    special, cache = _special_entry(tokenizer)
    key = (tuple(roles), add_generation_prompt)
    if key not in cache:
        encoded = tokenizer.apply_chat_template(
            [{"role": role, "content": "x"} for role in roles],
            add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=True,
        )
        cache[key] = dict(Counter(i for i in encoded["input_ids"] if i in special.ids))
    return cache[key]
