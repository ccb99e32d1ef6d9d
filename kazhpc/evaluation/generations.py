"""Side-by-side generations: several models answer the same Kazakh prompts, shown in one HTML page.

The reference project judged its adapter partly by reading the base model's and the adapter's
answers next to each other. Scores near chance say little about a 270M model; reading twelve
answers says whether it writes Kazakh at all. The page is self-contained (no scripts, no external
CSS), UTF-8, and every model output is HTML-escaped: generated text is untrusted input. A JSONL
file beside it keeps the same data for diffs and later scoring. A prompt that spells a special token
(``<end_of_turn>``, ``<eos>``) is skipped and counted (``evaluate.special_tokens: reject``) or
neutralised before the chat template renders it (``neutralise``).
"""

from __future__ import annotations

import html
import json
import time
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

from kazhpc.console import progress
from kazhpc.errors import KazhpcError
from kazhpc.evaluation.batches import padded_batch
from kazhpc.models import check_single_bos
from kazhpc.special_text import END_OF_TURN_TOKENS, special_texts, template_special_ids

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Generator = Callable[[list[str]], list[str]]
DEFAULT_TITLE = "Side-by-side generations on Kazakh prompts"
#: The reason a prompt is skipped: it spells a special token (as in the evaluate job's rejects.jsonl).
SPECIAL_TEXT = "special_token_text"


def default_prompts() -> list[str]:
    """The bundled Kazakh prompt set (``kazhpc/resources/kk-prompts.txt``), one prompt per line."""
    text = resources.files("kazhpc").joinpath("resources", "kk-prompts.txt").read_text("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_prompts(path: Path) -> list[str]:
    """Prompts from a user's text file, one per non-empty line."""
    from kazhpc.errors import read_user_text

    prompts = [line.strip() for line in read_user_text(Path(path), "prompt file").splitlines() if line.strip()]
    if not prompts:
        raise KazhpcError(f"{path}: prompt file has no prompts")
    return prompts


def _stop_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab and vocab[t] not in ids]
    return ids


def greedy_generator(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    max_new_tokens: int,
    *,
    batch_size: int = 4,
    special_tokens: Literal["reject", "neutralise"] = "reject",
) -> Generator:
    """A function prompts → answers: chat template, exactly one <bos>, greedy ``generate``.

    Each prompt becomes one user turn formatted by the tokenizer's chat template with the
    generation prompt; before generating, the <bos> count is checked, and that the template's turn
    markers are the only other control tokens. Text in a prompt that spells a special token is
    neutralised first with ``special_tokens="neutralise"``; with ``"reject"`` the function's
    ``screen`` names such prompts so that :func:`side_by_side` skips them (one passed in anyway
    fails the check). Prompts are left-padded into
    batches of ``batch_size``; generation stops at eos or ``<end_of_turn>``; only the new tokens
    are decoded (special tokens dropped). In bf16, padding can change a near-tie between two
    tokens, so an answer may differ in its last words between batch sizes; ``batch_size=1`` makes
    each answer independent of the other prompts.
    """
    if max_new_tokens < 1:
        raise KazhpcError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    if batch_size < 1:
        raise KazhpcError(f"batch_size must be at least 1, got {batch_size}")

    special = special_texts(tokenizer)
    neutralise = special_tokens == "neutralise"

    def screen(prompt: str) -> tuple[str, str] | None:
        """("rejected" or "neutralised", the special token) for a prompt that spells one, else None."""
        found = special.find(prompt)
        return None if found is None else ("neutralised" if neutralise else "rejected", found)

    def generate(prompts: list[str]) -> list[str]:
        import torch

        expected = template_special_ids(tokenizer, ["user"], add_generation_prompt=True)
        encoded: list[list[int]] = []
        for i, prompt in enumerate(prompts):
            content = special.neutralise(prompt)[0] if neutralise else prompt
            ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
            check_single_bos(ids, tokenizer, where=f"generation prompt {i + 1}")
            special.check_ids(ids, expected, where=f"generation prompt {i + 1}")
            encoded.append(list(ids))
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        stop = _stop_ids(tokenizer)
        model.eval()
        answers: list[str] = []
        starts = range(0, len(encoded), batch_size)
        with torch.no_grad():
            for start in progress(starts, len(starts), f"generations: {len(encoded)} prompts, batches"):
                batch = encoded[start : start + batch_size]
                input_ids, attention = padded_batch(batch, pad, left=True)
                out = model.generate(
                    input_ids=input_ids.to(model.device),
                    attention_mask=attention.to(model.device),
                    max_new_tokens=max_new_tokens,
                    do_sample=False,
                    temperature=None,
                    top_p=None,
                    top_k=None,
                    eos_token_id=stop or None,
                    pad_token_id=pad,
                )
                answers += tokenizer.batch_decode(out[:, input_ids.shape[1] :], skip_special_tokens=True)
        return [a.strip() for a in answers]

    # Shown under the title of the side-by-side page, so a reader knows how the answers were made.
    description = f"chat template, one <bos> checked, greedy, at most {max_new_tokens} new tokens"
    generate.description = description  # type: ignore[attr-defined]
    generate.screen = screen  # type: ignore[attr-defined]
    return generate


_CSS = """
body { font-family: system-ui, "Noto Sans", "DejaVu Sans", sans-serif; margin: 2em; color: #1d1d1f; }
h1 { font-size: 1.4em; }
ul.meta { color: #555; font-size: 0.9em; padding-left: 1.2em; }
table { border-collapse: collapse; width: 100%; table-layout: fixed; }
th, td { border: 1px solid #ccc; padding: 0.5em 0.7em; vertical-align: top; text-align: left;
         white-space: pre-wrap; overflow-wrap: anywhere; line-height: 1.4; }
th { background: #f0f0f3; position: sticky; top: 0; }
td.n { width: 2.5em; color: #777; text-align: right; }
td.prompt { background: #fafafa; font-weight: 500; }
tr:nth-child(even) td:not(.prompt) { background: #fcfcff; }
span.empty { color: #999; font-style: italic; }
col.n { width: 3em; }
"""


def _cell(text: str) -> str:
    return html.escape(text, quote=True) if text.strip() else '<span class="empty">(empty answer)</span>'


def render_html(title: str, prompts: list[str], outputs: dict[str, list[str]], meta: list[str] = ()) -> str:
    """The self-contained page: one row per prompt, one column per model; ``meta`` lines under the title."""
    labels = list(outputs)
    head = "".join(f"<th>{html.escape(label)}</th>" for label in labels)
    cols = '<col class="n"><col>' + "<col>" * len(labels)
    rows = []
    for i, prompt in enumerate(prompts):
        answers = "".join(f"<td>{_cell(outputs[label][i])}</td>" for label in labels)
        rows.append(f'<tr><td class="n">{i + 1}</td><td class="prompt">{_cell(prompt)}</td>{answers}</tr>')
    body = "\n".join(rows)
    items = "".join(f"<li>{html.escape(line)}</li>" for line in meta)
    return (
        '<!DOCTYPE html>\n<html lang="kk">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n<ul class=\"meta\">{items}</ul>\n"
        f"<table>\n<colgroup>{cols}</colgroup>\n<thead><tr><th>#</th><th>prompt</th>{head}</tr></thead>\n"
        f"<tbody>\n{body}\n</tbody>\n</table>\n</body>\n</html>\n"
    )


def side_by_side(
    generators: dict[str, Generator], prompts: list[str], out_path: Path, title: str = DEFAULT_TITLE
) -> Path:
    """Run every generator on ``prompts``; write ``out_path`` (HTML) and ``out_path`` .jsonl beside it.

    Each JSONL line is ``{"id", "prompt", "outputs": {label: answer}}``. Returns the HTML path.
    A prompt that a generator's ``screen`` rejects (it spells a special token) is skipped for every
    model, so that the columns stay comparable: its line has ``"skipped"`` (reason and token) and
    no outputs, the page says how many, and it is appended to ``rejects.jsonl`` beside the page
    (the evaluate job's). A prompt screened as neutralised is answered and its line says so.
    """
    if not generators:
        raise KazhpcError("side-by-side generations: no models given")
    if not prompts:
        raise KazhpcError("side-by-side generations: no prompts given")
    blank = [i + 1 for i, p in enumerate(prompts) if not isinstance(p, str) or not p.strip()]
    if blank:
        raise KazhpcError(f"side-by-side generations: prompt {blank[0]} is empty or not a string")
    screened: dict[int, tuple[str, str]] = {}  # prompt index → ("rejected" | "neutralised", token)
    for i, prompt in enumerate(prompts):
        for generate in generators.values():
            verdict = getattr(generate, "screen", lambda _: None)(prompt)
            if verdict is not None and (i not in screened or verdict[0] == "rejected"):
                screened[i] = verdict
    skipped = {i: token for i, (what, token) in screened.items() if what == "rejected"}
    kept = [p for i, p in enumerate(prompts) if i not in skipped]
    outputs: dict[str, list[str]] = {}
    seconds: dict[str, float] = {}
    for label, generate in generators.items():
        started = time.time()
        answers = generate(list(kept)) if kept else []
        seconds[label] = time.time() - started
        if len(answers) != len(kept) or not all(isinstance(a, str) for a in answers):
            raise KazhpcError(
                f"side-by-side generations: model '{label}' returned {len(answers)} answers "
                f"for {len(kept)} prompts (expected one string per prompt)"
            )
        outputs[label] = list(answers)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    meta = [f"{len(kept)} prompts"] + [
        f"{label}: " + (f"{generators[label].description}; " if getattr(generators[label], "description", None) else "")
        + f"{s:.1f} s"
        for label, s in seconds.items()
    ]
    if skipped:
        meta.append(f"{len(skipped)} prompt(s) skipped, they spell a special token: "
                    + ", ".join(f"#{i + 1} {token}" for i, token in skipped.items()))
    neutralised = len(screened) - len(skipped)
    if neutralised:
        meta.append(f"{neutralised} prompt(s) spell a special token, neutralised before tokenisation")
    out_path.write_text(render_html(title, kept, outputs, meta), encoding="utf-8")
    answers_of = iter(range(len(kept)))
    with out_path.with_suffix(".jsonl").open("w", encoding="utf-8") as out:
        for i, prompt in enumerate(prompts):
            row: dict = {"id": i, "prompt": prompt}
            if i in skipped:
                row.update(outputs={}, skipped={"reason": SPECIAL_TEXT, "token": skipped[i]})
            else:
                k = next(answers_of)
                row["outputs"] = {label: outputs[label][k] for label in outputs}
                if i in screened:
                    row["neutralised"] = {"reason": SPECIAL_TEXT, "token": screened[i][1]}
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
    if skipped:
        with out_path.with_name("rejects.jsonl").open("a", encoding="utf-8") as out:
            for i, token in skipped.items():
                line = {"task": "generation_prompts", "doc_id": i, "origin": f"generation prompt {i + 1}",
                        "reason": SPECIAL_TEXT, "detail": f"it contains {token!r} as text", "doc": prompts[i]}
                out.write(json.dumps(line, ensure_ascii=False, sort_keys=True) + "\n")
    return out_path
