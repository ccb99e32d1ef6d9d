"""``kind: open``: free answers to prompts, scored against reference answers.

Each prompt goes through the model's chat template and is answered greedily. The task's score is
sacrebleu's corpus chrF++ with its signature and a bootstrap interval, computed exactly as a
translation's score is (kazhpc.evaluation.translation), and BLEU is beside it. Per item it keeps
the sentence chrF++ and BLEU (effective order, for short answers), whether lingua calls the answer Kazakh, and the answer's length in kazhpc
words. The report shows the Kazakh share and the mean length next to the score, because an
answer in Russian or an empty answer would otherwise read as a low chrF++ and nothing more. The
*chance* of the task is the chrF++ of echoing each prompt back as its answer.

With no ``path`` the task reads the held-out split (``validation``) of the preprocess stage this
evaluation follows. Those rows were kept out of training by the hash split, so every SFT run gets
a held-out generation score without extra data. :func:`write_heldout` turns that split into
``<evaluate dir>/heldout.jsonl`` (``id, source, prompt, reference``). A single-turn conversation
becomes its user turn, with any system turn before it, against the assistant's answer. The model
would not see the earlier turns of a multi-turn conversation, so such rows are left out and
counted in ``heldout.json``.
"""

from __future__ import annotations

import functools
import json
import os
import socket
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.data.text import word_count
from kazhpc.errors import KazhpcError
from kazhpc.evaluation.builders import chat_generation
from kazhpc.evaluation.ifeval import in_language
from kazhpc.evaluation.prompts import BadItem

if TYPE_CHECKING:
    from kazhpc.config import EvalTaskConfig

HELDOUT_FILE = "heldout.jsonl"
#: Per-item metrics (means over items, in the task's extra) beside the corpus chrF++ headline.
ITEM_METRICS = ("chrf_item", "bleu_item", "kazakh", "answer_words")


def _text(doc: dict[str, Any], *, name: str) -> str:
    value = doc.get(name)
    if value is None or not str(value).strip():
        raise BadItem(f"missing field '{name}'" if value is None else f"field '{name}' is empty")
    return str(value).strip()


def process_results(doc: dict[str, Any], results: list[str], *, reference: str) -> dict[str, Any]:
    """Per item: sentence chrF++ (sacrebleu), whether the answer is Kazakh, its length in words."""
    from sacrebleu.metrics import BLEU, CHRF

    from kazhpc.evaluation.translation import BLEU_TOKENIZE, CHRF_WORD_ORDER

    answer, ref = results[0].strip(), [_text(doc, name=reference)]
    chrf = CHRF(word_order=CHRF_WORD_ORDER).sentence_score(answer, ref).score
    bleu = BLEU(tokenize=BLEU_TOKENIZE, effective_order=True).sentence_score(answer, ref).score
    return {"chrf_item": chrf, "bleu_item": bleu, "kazakh": in_language(answer, "kk"), "answer_words": word_count(answer)}


def answer_stats(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    """A judge task's per-item facts (it has no reference): Kazakh or not, length in words."""
    answer = results[0].strip()
    return {"kazakh": in_language(answer, "kk"), "answer_words": word_count(answer)}


def open_config(task: EvalTaskConfig, data_file: str) -> dict[str, Any]:
    """An lm-eval generate_until task over prompt / reference rows, asked through the chat template.
    A ``judge`` task is the same generation without references (kazhpc.evaluation.judge scores it)."""
    prompt, reference = str(task.column("prompt")), str(task.column("reference"))
    judge = task.kind == "judge"
    metrics = ("kazakh", "answer_words") if judge else ITEM_METRICS
    return chat_generation(
        task.name, data_file, task.max_gen_toks or 256, task.kind, {"prompt_field": prompt},
        doc_to_text=functools.partial(_text, name=prompt),
        doc_to_target=functools.partial(_text, name=prompt if judge else reference),  # judge: unused
        process_results=answer_stats if judge else functools.partial(process_results, reference=reference),
        metric_list=[{"metric": m, "aggregation": "mean", "higher_is_better": m != "answer_words"} for m in metrics],
    )


def check_row(task: EvalTaskConfig, row: dict[str, Any]) -> None:
    _text(row, name=str(task.column("prompt")))
    if task.kind == "open":
        _text(row, name=str(task.column("reference")))


def open_entry(rows: list[dict[str, Any]], task: Any, prompt_field: str) -> dict[str, Any]:
    """Corpus chrF++ (BLEU in extra) of the answers, the per-item means, and the echo floor."""
    from kazhpc.evaluation.translation import score_translations, translation_task_entry

    entry = translation_task_entry(score_translations([r["hypothesis"] for r in rows], [r["reference"] for r in rows]))
    for metric in ITEM_METRICS:
        entry["extra"][metric] = sum(float(r[metric]) for r in rows) / len(rows)
    docs = task.eval_docs
    echoes = [_text(docs[r["doc_id"]], name=prompt_field) for r in rows]
    entry["chance"] = score_translations(echoes, [r["reference"] for r in rows], bootstrap=0)["chrf"]
    entry["extra"]["chance_is"] = "the prompt echoed back as the answer"
    return entry


# --------------------------------------------------------------------------------------------
# The held-out split of the preprocess stage.


def heldout_rows(preprocess_dir: Path) -> tuple[list[dict[str, Any]], int]:
    """(single-turn rows as {id, source, prompt, reference}, multi-turn rows left out)."""
    import pyarrow.parquet as pq

    files = sorted(preprocess_dir.glob("validation-*.parquet"))
    if not files:
        raise KazhpcError(
            f"{preprocess_dir}: the preprocess stage wrote no validation split (preprocess.validation_fraction "
            "is 0, or too few rows); give the open task a path, or hold rows out"
        )
    rows, multi = [], 0
    for path in files:
        for rec in pq.read_table(path, columns=["id", "source", "messages"]).to_pylist():
            turns = rec["messages"]
            system = [t["content"] for t in turns if t["role"] == "system"]
            dialog = [t for t in turns if t["role"] != "system"]
            if [t["role"] for t in dialog] != ["user", "assistant"]:
                multi += 1
                continue
            prompt = "\n\n".join([*system, dialog[0]["content"]])
            rows.append({"id": rec["id"], "source": rec["source"], "prompt": prompt, "reference": dialog[1]["content"]})
    return rows, multi


def write_heldout(preprocess_dir: Path | None, job_dir: Path, owner: str) -> Path:
    """``<job_dir>/heldout.jsonl`` from the upstream preprocess stage's validation split; every
    shard writes the same bytes (atomically), so parallel array tasks agree."""
    if preprocess_dir is None:
        raise KazhpcError(f"{owner}: no path, and no preprocess stage before this evaluation to take the held-out split from")
    rows, multi = heldout_rows(preprocess_dir)
    if not rows:
        raise KazhpcError(f"{preprocess_dir}: the validation split holds no single-turn conversation ({multi} multi-turn); give {owner} a path")
    job_dir.mkdir(parents=True, exist_ok=True)
    path = job_dir / HELDOUT_FILE
    for name, text in ((HELDOUT_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)),
                       ("heldout.json", json.dumps({"from": str(preprocess_dir), "rows": len(rows), "left_out": {"multi_turn": multi}}, indent=1))):  # fmt: skip
        tmp = job_dir / f".{name}.{socket.gethostname()}.{os.getpid()}"  # array tasks on several nodes
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, job_dir / name)
    return path
