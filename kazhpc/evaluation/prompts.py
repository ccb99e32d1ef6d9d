"""The leaderboard protocol for Kazakh multiple choice, one implementation for every schema.

kz-transformers' Kazakh leaderboard scores zero-shot: a Kazakh instruction, the question, its options
lettered A, B, ..., then "Жауап:"; the prediction is the letter with the highest next-token logit
among the options' letters (" A" ... " D", up to " H" for UNT subjects). In lm-eval that is a
``multiple_choice`` task whose choices are the letters: each choice's log-likelihood is the log-softmax
of that letter's logit after the same context, so the argmax is the best letter logit.

Three schemas map onto one (question, [(letter, option)], answer letter) form:

* MMLU-style (kazakh-dastur-mc, kazakh-constitution-mc, mmlu-translated-kk):
  ``Question``, ``Option A`` ... ``Option D``, ``Correct Answer``;
* UNT (kazakh-unified-national-testing-mc): ``question``, ``A`` ... ``H``, ``correct_answer``;
  unused options are empty or null and are left out, so an item has 4 to 8 choices;
* a user's JSONL (``kind: mc`` tasks): ``question``, ``choices`` (a list), ``answer`` as a 0-based
  index or a letter.
"""

from __future__ import annotations

from typing import Any

LETTERS = "ABCDEFGH"
INSTRUCTION = "Төмендегі сұрақтың дұрыс жауабын таңдап, тек оның әрпін жазыңыз."
#: Letters sometimes typed in Cyrillic in answer keys.
_CYRILLIC = {"А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H"}


class BadItem(ValueError):
    """A multiple-choice row that cannot be scored (says why; the caller adds file and row)."""


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _letter(raw: Any, present: list[str]) -> str:
    """An answer key ('B', 'b)', 'В' in Cyrillic, 1 as an index) as one of the present letters."""
    if isinstance(raw, bool):
        raise BadItem(f"answer {raw!r} is not an index or a letter")
    if isinstance(raw, int) or (isinstance(raw, str) and raw.strip().isdigit()):
        index = int(raw)
        if not 0 <= index < len(present):
            raise BadItem(f"answer index {index} is not among the {len(present)} choices (0-based)")
        return present[index]
    text = _text(raw)
    if text is None:
        raise BadItem("the answer is empty")
    letter = _CYRILLIC.get(text.upper().rstrip(").").strip(), text.upper().rstrip(").").strip())
    if letter not in present:
        raise BadItem(f"answer {text!r} is not one of the choices {', '.join(present)}")
    return letter


def normalize(doc: dict[str, Any]) -> tuple[str, list[tuple[str, str]], str]:
    """(question, [(letter, option), ...], answer letter) for a row in any of the three schemas."""
    if "choices" in doc:  # a user's JSONL
        question = _text(doc.get("question"))
        choices = doc.get("choices")
        if not isinstance(choices, list):
            raise BadItem("'choices' must be a list of options")
        options = [(LETTERS[i], _text(c)) for i, c in enumerate(choices[: len(LETTERS)])]
        if len(choices) > len(LETTERS):
            raise BadItem(f"{len(choices)} choices; at most {len(LETTERS)} are supported")
        if any(text is None for _, text in options):
            raise BadItem("an option is empty")
        answer = doc.get("answer")
    elif "Question" in doc:  # MMLU-style
        question = _text(doc.get("Question"))
        options = [(k, _text(doc.get(f"Option {k}"))) for k in LETTERS]
        answer = doc.get("Correct Answer")
    else:  # UNT
        question = _text(doc.get("question"))
        options = [(k, _text(doc.get(k))) for k in LETTERS]
        answer = doc.get("correct_answer")
    if question is None:
        raise BadItem("the question is empty")
    kept = [(k, text) for k, text in options if text is not None]
    if len(kept) < 2:
        raise BadItem(f"{len(kept)} non-empty option(s); a question needs at least 2")
    letters = [k for k, _ in kept]
    # Options keep their own letters (UNT rows may skip one); the prompt relabels them A, B, ...
    answer_letter = _letter(answer, letters)
    relabel = dict(zip(letters, LETTERS))
    return question, [(relabel[k], text) for k, text in kept], relabel[answer_letter]


def doc_to_text(doc: dict[str, Any], instruction: str = INSTRUCTION) -> str:
    question, options, _ = normalize(doc)
    lines = [instruction, "", f"Сұрақ: {question}"]
    lines += [f"{letter}. {text}" for letter, text in options]
    lines.append("Жауап:")
    return "\n".join(lines)


def doc_to_choice(doc: dict[str, Any]) -> list[str]:
    """The letters of the item's options (lm-eval prepends its target delimiter, a space)."""
    return [letter for letter, _ in normalize(doc)[1]]


def doc_to_target(doc: dict[str, Any]) -> int:
    _, options, answer = normalize(doc)
    return [letter for letter, _ in options].index(answer)
