"""Split the suite into shards, evaluate one shard, merge shards exactly.

* **Plan**: every (task, document) in suite order, weighted by its lm-eval request count (one per
  choice for multiple choice, one per generation), cut into ``n`` contiguous runs of about equal
  weight: a shard is a list of (task, document range) units. The plan depends only on the data and
  ``n``, so every array task computes the same one (each part stores it; the merge compares them).
  A document whose prompt, choices or target spells a special token (``<eos>``, ``<end_of_turn>``)
  is listed in the plan; with ``evaluate.special_tokens: reject`` it weighs 0, no part scores it,
  and the merge counts it per task (``extra.excluded``, beside ``n``) and writes it to ``rejects.jsonl``.
* **Part**: lm-eval's own ``evaluate`` on the shard's documents (``samples=``), per model, with
  ``log_samples``; the per-document metric values, predictions and targets go to JSONL.
* **Merge**: per model and task, the per-document values of all parts in document order go through
  lm-eval's own aggregation and stderr code (kazhpc.evaluation.aggregation), so a merged score and
  stderr are those of an unsharded run, digit for digit.

The part folders, their done markers and JSONL, and the merge's error naming a missing or failed
part with the command that reruns it alone are the parts protocol of every job that splits
(kazhpc.partfiles).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from kazhpc.console import LibraryBar
from kazhpc.errors import KazhpcError
from kazhpc.evaluation.aggregation import composite_entry, task_entry
from kazhpc.evaluation.suite import Suite, check_documents, load_tasks, resolve
from kazhpc.partfiles import (
    check_part_count,
    check_parts_done,
    finish_part,
    part_dir,
    read_jsonl,
    start_part,
    write_jsonl,
)

if TYPE_CHECKING:
    from kazhpc.config import EvaluateConfig, ModelConfig
    from kazhpc.evaluation.models import ModelUnderTest
    from kazhpc.special_text import SpecialTexts

log = logging.getLogger(__name__)

#: The reason a document is left out of scoring or neutralised: its text spells a special token.
SPECIAL_TEXT = "special_token_text"


@dataclass(frozen=True)
class Unit:
    """A contiguous range of one task's documents [start, end) and its request count."""

    task: str
    start: int
    end: int
    requests: int


def doc_requests(task: Any, limit: int | None) -> list[int]:
    """lm-eval requests per document (choices for multiple choice, 1 otherwise), first ``limit`` docs."""
    docs = task.eval_docs
    n = len(docs) if limit is None else min(limit, len(docs))
    if task.OUTPUT_TYPE == "multiple_choice":
        return [len(task.doc_to_choice(docs[i])) for i in range(n)]
    return [1] * n


def make_plan(weights: dict[str, list[int]], count: int) -> list[list[Unit]]:
    """Cut the weighted documents, in suite order, into ``count`` contiguous, balanced shards."""
    total = sum(sum(w) for w in weights.values())
    shards: list[list[Unit]] = [[] for _ in range(count)]
    before = 0
    for task, per_doc in weights.items():
        start = 0
        current = None
        for doc, weight in enumerate(per_doc):
            # A document goes to the shard its weight's midpoint falls in: monotone, so ranges are contiguous.
            shard = min(count - 1, int((before + weight / 2) * count / total)) if total else 0
            if current is not None and shard != current:
                shards[current].append(Unit(task, start, doc, sum(per_doc[start:doc])))
                start = doc
            current = shard
            before += weight
        if current is not None:
            shards[current].append(Unit(task, start, len(per_doc), sum(per_doc[start:])))
    return shards


def plan_dict(
    plan: list[list[Unit]], flagged: Mapping[str, list[dict[str, Any]]] | None = None, handling: str = "reject"
) -> dict[str, Any]:
    """The plan as stored by every part; its sha256 covers the shards and the flagged documents."""
    shards = [[asdict(u) for u in units] for units in plan]
    special = {"handling": handling, "documents": dict(flagged or {})}
    digest = hashlib.sha256(json.dumps({"shards": shards, SPECIAL_TEXT: special}, sort_keys=True).encode()).hexdigest()[:16]
    return {"count": len(plan), "sha256": digest, "requests": [sum(u.requests for u in s) for s in plan],
            "shards": shards, SPECIAL_TEXT: special}


def excluded_documents(info: dict[str, Any]) -> dict[str, set[int]]:
    """Task → the documents a stored plan leaves out of scoring (none when it neutralises)."""
    special = info.get(SPECIAL_TEXT) or {}
    if special.get("handling", "reject") != "reject":
        return {}
    return {task: {hit["doc_id"] for hit in hits} for task, hits in (special.get("documents") or {}).items()}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)] if isinstance(value, (list, tuple)) else []


def special_text_documents(task: Any, n: int, specials: list[SpecialTexts]) -> list[dict[str, Any]]:
    """Of the first ``n`` documents, those whose prompt, choices or target spells a special token
    of any tokenizer under test: ``{"doc_id", "field", "token"}`` each, in document order."""
    docs = task.eval_docs
    found = []
    for doc_id in range(n):
        doc = docs[doc_id]
        fields = [("prompt", task.doc_to_text(doc))]
        if task.OUTPUT_TYPE == "multiple_choice":
            fields.append(("choices", task.doc_to_choice(doc)))
        fields.append(("target", task.doc_to_target(doc)))
        for field, value in fields:
            token = next((t for text in _strings(value) for sp in specials if (t := sp.find(text))), None)
            if token is not None:
                found.append({"doc_id": doc_id, "field": field, "token": token})
                break
    return found


def prepare(
    evaluate: EvaluateConfig, cache_root: Path, models: list[ModelUnderTest], heldout: Path | None = None
) -> tuple[Suite, dict[str, Any], list[list[Unit]], dict[str, list[dict[str, Any]]]]:
    """The suite, its lm-eval tasks (documents checked), the plan for ``evaluate.shards``, and by
    task the documents that spell a special token of any model under test's tokenizer (with
    ``special_tokens: reject`` they weigh 0)."""
    from kazhpc.evaluation.models import distinct_bases, eval_tokenizer
    from kazhpc.special_text import special_texts

    suite = resolve(evaluate, heldout)
    tasks = load_tasks(suite.tasks)
    for spec in suite.tasks:
        check_documents(tasks[spec.name], spec)
    specials = [special_texts(eval_tokenizer(base, cache_root)) for base in distinct_bases(models)]
    weights: dict[str, list[int]] = {}
    flagged: dict[str, list[dict[str, Any]]] = {}
    for spec in suite.tasks:
        per_doc = doc_requests(tasks[spec.name], evaluate.limit)
        found = special_text_documents(tasks[spec.name], len(per_doc), specials)
        if found:
            flagged[spec.name] = found
        if found and evaluate.special_tokens == "reject":
            if len(found) == len(per_doc):
                first = found[0]
                raise KazhpcError(
                    f"evaluate: task {spec.name}: all {len(per_doc)} documents spell a special token (row "
                    f"{first['doc_id'] + 1}: {first['token']!r} in its {first['field']}); fix the data or set "
                    "evaluate.special_tokens=neutralise"
                )
            for hit in found:
                per_doc[hit["doc_id"]] = 0  # in its unit's range, but never scored
        weights[spec.name] = per_doc
    return suite, tasks, make_plan(weights, evaluate.shards), flagged


# --------------------------------------------------------------------------------------------
# One part.


def per_document(task: Any, example: dict[str, Any]) -> dict[str, Any]:
    """One lm-eval logged sample as kazhpc's per-document line (metric values as lm-eval made them)."""
    metrics = {name: example[name] for name in example.get("metrics", []) if name in example}
    row: dict[str, Any] = {"doc_id": int(example["doc_id"]), "filter": example.get("filter", "none"), **metrics}
    if task.OUTPUT_TYPE == "multiple_choice":
        scores = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in example["filtered_resps"]]
        choices = task.doc_to_choice(example["doc"])
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))  # np.argmax: first of equal maxima
        target = example["target"]
        row.update(
            prediction=choices[best],
            target=choices[target] if isinstance(target, int) else target,
            num_choices=len(choices),
            scores=scores,
        )
    else:
        resp = example["filtered_resps"][0]
        prediction = resp if isinstance(resp, str) else json.dumps(resp, ensure_ascii=False)
        row.update(prediction=prediction, target=example["target"])
        if is_chat_task(task):  # the prompt as the model saw it, chat template applied
            row["prompt"] = example["arguments"][0][0]
        if isinstance(example["target"], str):  # what the report's corpus metrics read
            row.update(hypothesis=prediction, reference=example["target"])
    return row


def evaluate_units(
    lm: Any, tasks: dict[str, Any], units: list[Unit], bootstrap: bool = False,
    skip: Mapping[str, Iterable[int]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """lm-eval's evaluate on the units' documents but those in ``skip``; per-document lines by task."""
    from lm_eval.evaluator import evaluate

    skip = {name: set(docs) for name, docs in (skip or {}).items()}
    names = list(dict.fromkeys(u.task for u in units))
    samples = {
        name: [d for u in units if u.task == name for d in range(u.start, u.end) if d not in skip.get(name, ())]
        for name in names
    }
    samples = {name: docs for name, docs in samples.items() if docs}
    out: dict[str, list[dict[str, Any]]] = {}
    # Instruction kinds (ifeval) ask through the chat template; lm-eval applies it per evaluate call.
    for chat in (False, True):
        group = [name for name in samples if is_chat_task(tasks[name]) == chat]
        if not group:
            continue
        lm.chat = chat
        results = evaluate(
            lm,
            {"tasks": {name: tasks[name] for name in group}, "groups": {}},
            samples={name: samples[name] for name in group},
            bootstrap_iters=0,
            log_samples=True,
            apply_chat_template=chat,
        )
        out.update({name: [per_document(tasks[name], ex) for ex in results["samples"][name]] for name in group})
    return {name: out[name] for name in samples}


def is_chat_task(task: Any) -> bool:
    """Whether the task's prompts go through the model's chat template (kazhpc's instruction kinds)."""
    return bool((task.config.metadata or {}).get("chat"))


def run_part(
    evaluate: EvaluateConfig, cache_root: Path, models: list[ModelUnderTest], job_dir: Path, index: int, count: int,
    preprocess_dir: Path | None = None,
) -> Path:
    """Evaluate shard ``index`` of ``count`` for every model under test; part 0 also scores perplexity.
    An ``open`` task without a path reads ``preprocess_dir``'s held-out split (written here first)."""
    from kazhpc.evaluation.models import checked_lm, load_for_eval

    check_part_count("evaluate", index, count, evaluate.shards)
    started = time.time()
    folder = start_part(job_dir, index, count)
    heldout = _heldout(evaluate, preprocess_dir, job_dir)
    suite, tasks, plan, flagged = prepare(evaluate, cache_root, models, heldout)
    info = plan_dict(plan, flagged, evaluate.special_tokens)
    (folder / "plan.json").write_text(json.dumps(info, indent=1))
    units = plan[index]
    skip = excluded_documents(info)
    checked: dict[str, int] = {}
    for model_cfg in models:
        if evaluate.backend == "vllm":  # vLLM loads the weights itself; no perplexity (config-checked)
            from kazhpc.evaluation.models import vllm_lm

            model, lm = None, vllm_lm(model_cfg, cache_root)
        else:
            model, tokenizer = load_for_eval(model_cfg, cache_root)
            lm = checked_lm(model, tokenizer, evaluate.batch_size, evaluate.special_tokens)
        LibraryBar.prefix = f"evaluate {model_cfg.label}"  # lm-eval's request loops say whose requests they are
        for name, rows in evaluate_units(lm, tasks, units, skip=skip).items():
            write_jsonl(folder / "samples" / model_cfg.label / f"{name}.jsonl", rows)
        checked[model_cfg.label] = getattr(lm, "bos_checked", 0)
        if index == 0 and evaluate.perplexity_texts is not None:
            from kazhpc.evaluation.perplexity import score_texts

            texts = perplexity_texts(evaluate.perplexity_texts)
            result = score_texts(model, tokenizer, texts, evaluate.perplexity_max_length, evaluate.batch_size)
            (folder / "perplexity").mkdir(exist_ok=True)
            (folder / "perplexity" / f"{model_cfg.label}.json").write_text(json.dumps(result.to_dict(), indent=1))
        del lm, model
    done = {"index": index, "count": count, "plan_sha256": info["sha256"], "units": [asdict(u) for u in units],
            "requests": info["requests"][index], "bos_checked": checked, "seconds": round(time.time() - started, 2)}
    finish_part(folder, done)  # last: the part is done
    log.info("evaluate part %d/%d: %d requests per model in %.1f s", index, count, done["requests"], done["seconds"])
    return folder


def _heldout(evaluate: EvaluateConfig, preprocess_dir: Path | None, job_dir: Path) -> Path | None:
    from kazhpc.config import EvalTaskConfig
    from kazhpc.evaluation.open_answers import write_heldout

    waiting = [t for t in evaluate.tasks if isinstance(t, EvalTaskConfig) and t.kind in ("open", "judge") and t.path is None]
    return write_heldout(preprocess_dir, job_dir, f"evaluate.tasks[{waiting[0].name}]") if waiting else None


def perplexity_texts(spec: str) -> list[str]:
    from kazhpc.evaluation.perplexity import read_passages

    return read_passages(spec, "evaluate.perplexity_texts")[0]


# --------------------------------------------------------------------------------------------
# Merge.


def merge(
    evaluate: EvaluateConfig, job_dir: Path, count: int, judge_with: tuple[Path, ModelConfig] | None = None
) -> dict[str, Any]:
    """results.json content from the parts' per-document outputs; samples/<label>/<task>.jsonl written.
    ``judge_with``: (cache root, the pipeline's model) where a judge task needs its judge loaded."""
    check_parts_done("evaluate", job_dir, count)
    plans = {json.loads((part_dir(job_dir, i, count) / "plan.json").read_text())["sha256"] for i in range(count)}
    if len(plans) != 1:
        raise KazhpcError(f"evaluate: the {count} parts planned different shards (data changed between them?); rerun them")
    from kazhpc.evaluation.open_answers import HELDOUT_FILE

    suite = resolve(evaluate, job_dir / HELDOUT_FILE if (job_dir / HELDOUT_FILE).is_file() else None)
    tasks = load_tasks(suite.tasks)
    plan = json.loads((part_dir(job_dir, 0, count) / "plan.json").read_text())
    skip = excluded_documents(plan)
    expected: dict[str, list[int]] = {}
    for units in plan["shards"]:
        for u in units:
            expected.setdefault(u["task"], []).extend(d for d in range(u["start"], u["end"]) if d not in skip.get(u["task"], ()))
    special = plan.get(SPECIAL_TEXT) or {"handling": "reject", "documents": {}}
    flagged = {task: len(hits) for task, hits in special["documents"].items()}
    for name, members in suite.composites.items():
        if sum(flagged.get(m, 0) for m in members):
            flagged[name] = sum(flagged.get(m, 0) for m in members)
    # In each entry's extra (the report's schema is strict): how many documents were left out of n
    # ("excluded") or scored neutralised, and why.
    count_key = "excluded" if special["handling"] == "reject" else "neutralised"
    write_jsonl(job_dir / "rejects.jsonl", special_text_rejects(suite, tasks, special))
    models: dict[str, Any] = {}
    rows_by_label: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model_cfg in evaluate.models:
        label = model_cfg.label
        per_task: dict[str, list[dict[str, Any]]] = rows_by_label.setdefault(label, {})
        for spec in suite.tasks:
            rows: list[dict[str, Any]] = []
            for i in range(count):
                path = part_dir(job_dir, i, count) / "samples" / label / f"{spec.name}.jsonl"
                if path.is_file():
                    rows += read_jsonl(path)
            rows.sort(key=lambda r: (r["doc_id"], r["filter"]))
            got = sorted({r["doc_id"] for r in rows})
            if got != sorted(expected.get(spec.name, [])):
                raise KazhpcError(f"evaluate: model {label}, task {spec.name}: the parts hold {len(got)} of "
                                  f"{len(expected.get(spec.name, []))} planned documents; rerun its shards")
            per_task[spec.name] = rows
            write_jsonl(job_dir / "samples" / label / f"{spec.name}.jsonl", rows)
        entries = {spec.name: task_entry(tasks[spec.name], spec, per_task[spec.name], evaluate.bootstrap_iters)
                   for spec in suite.tasks}
        for name, members in suite.composites.items():
            entries[name] = composite_entry([per_task[m] for m in members], members)
        for name, n in flagged.items():
            if name in entries:
                entries[name]["extra"][count_key] = {SPECIAL_TEXT: n}
        ppl_file = part_dir(job_dir, 0, count) / "perplexity" / f"{label}.json"
        models[label] = {
            "tasks": entries,
            "perplexity": json.loads(ppl_file.read_text()) if ppl_file.is_file() else None,
        }
    baseline = evaluate.baseline or (evaluate.models[0].label if len(evaluate.models) > 1 else None)
    judges = [s for s in suite.tasks if s.builder is not None and s.builder.kind == "judge"]
    if judges and baseline is not None and len(models) > 1:
        from kazhpc.evaluation.judge import run_judges

        if judge_with is None:
            raise KazhpcError("evaluate: a judge task needs its judge model: merge(..., judge_with=(cache root, model))")
        judged = run_judges(judges, tasks, rows_by_label, baseline, job_dir, *judge_with, evaluate.batch_size)
        for label, entries in judged.items():
            models[label]["tasks"].update(entries)
    return {"models": models, "baseline": baseline}


def special_text_rejects(suite: Suite, tasks: dict[str, Any], special: dict[str, Any]) -> list[dict[str, Any]]:
    """``rejects.jsonl`` lines for the documents a plan left out (none when it neutralised them)."""
    if special["handling"] != "reject":
        return []
    lines = []
    for spec in suite.tasks:
        hits = special["documents"].get(spec.name, [])
        docs = tasks[spec.name].eval_docs if hits else None
        where = spec.data_file or f"{spec.config.get('dataset_path')} ({spec.config.get('test_split')} split)"
        for hit in hits:
            lines.append({
                "task": spec.name, "doc_id": hit["doc_id"], "origin": f"{where}: row {hit['doc_id'] + 1}",
                "reason": SPECIAL_TEXT, "detail": f"its {hit['field']} contains {hit['token']!r} as text",
                "doc": json.loads(json.dumps(dict(docs[hit["doc_id"]]), ensure_ascii=False, default=str)),
            })  # fmt: skip
    return lines
