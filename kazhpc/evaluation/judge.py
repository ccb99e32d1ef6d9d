"""``kind: judge``: a judge model compares each model's answer with the baseline's, pairwise.

The shards generate every model's answers, as for ``kind: open``: the same prompts (held-out
split or ``path``), the chat template and greedy decoding. Then the merge loads the judge, which
is typically larger than the models under test (Gemma-3-27B on a cluster node; any model kazhpc
loads). For each prompt the judge reads the Kazakh rubric (``rubric:``, default :data:`RUBRIC`),
the prompt and two answers, and answers ``A``, ``B`` or ``T`` (a tie). It is asked twice, once
with the model's answer first and once with the baseline's first, so that its preference for a
position cancels:

* **win**: both orders prefer the model; **loss**: both prefer the baseline;
* **tie**: both say T, or the two orders disagree;
* **unparsed**: either verdict is none of A / B / T. It is counted in ``extra.unparsed`` and
  left out of the rates. No verdict is guessed.

The score is ``preference = win + tie / 2``; an indifferent judge gives 0.5, which the report shows
as its chance. Win, tie and loss rates and the preference have bootstrap intervals over prompts
(1000 resamples, seed 12345). ``judge/<model>/<task>.jsonl`` keeps, per prompt, both answers,
the two judge prompts, the raw verdicts and the outcome.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

RUBRIC = (
    "Сіз екі жауапты салыстыратын әділ төрешісіз. Пайдаланушының сұрағына қай жауап дәлірек, "
    "пайдалырақ және сауатты қазақ тілінде жазылған? Ұзындығына емес, сапасына қараңыз. "
    "Тек бір әріппен жауап беріңіз: A (бірінші жауап жақсы), B (екінші жауап жақсы) немесе T (екеуі тең)."
)
TEMPLATE = "{rubric}\n\nСұрақ:\n{prompt}\n\nA жауабы:\n{a}\n\nB жауабы:\n{b}\n\nШешіміңіз (A, B немесе T):"
OUTCOMES = ("win", "tie", "loss")
_VERDICT = re.compile(r"^\W*(?:шешім\w*\W*)?([ABTАВТ])(?![^\W\d_])", re.IGNORECASE)
_CYRILLIC = {"А": "A", "В": "B", "Т": "T"}  # look-alike letters a Kazakh keyboard types


def parse_verdict(text: str) -> str | None:
    """``A``, ``B`` or ``T`` when the verdict starts with one of them (Cyrillic look-alikes read as
    Latin, an optional leading "Шешім:"), else None: a verdict is never guessed from its words."""
    found = _VERDICT.match(text.strip())
    if not found:
        return None
    letter = found.group(1).upper()
    return _CYRILLIC.get(letter, letter)


def outcome(model_first: str | None, baseline_first: str | None) -> str:
    """The model's result from the two orders' verdicts (the module docstring's rules)."""
    if model_first is None or baseline_first is None:
        return "unparsed"
    if (model_first, baseline_first) == ("A", "B"):
        return "win"
    if (model_first, baseline_first) == ("B", "A"):
        return "loss"
    return "tie"


def judge_pairs(
    generate: Callable[[list[str]], list[str]], items: list[dict[str, Any]], rubric: str
) -> list[dict[str, Any]]:
    """Per item {doc_id, prompt, answer, baseline}: both judge prompts, raw verdicts, outcome."""
    asks = []
    for item in items:
        for a, b in ((item["answer"], item["baseline"]), (item["baseline"], item["answer"])):
            asks.append(TEMPLATE.format(rubric=rubric, prompt=item["prompt"], a=a or "(бос)", b=b or "(бос)"))
    verdicts = generate(asks)
    out = []
    for i, item in enumerate(items):
        raw = verdicts[2 * i : 2 * i + 2]
        parsed = [parse_verdict(v) for v in raw]
        out.append({**item, "judge_prompts": asks[2 * i : 2 * i + 2], "verdicts": raw, "parsed": parsed,
                    "outcome": outcome(*parsed)})  # fmt: skip
    return out


def judged_entry(records: list[dict[str, Any]], judge: str, baseline: str, bootstrap: int = 1000,
                 seed: int = 12345) -> dict[str, Any]:  # fmt: skip
    """The report's entry: preference (win + tie/2) beside 0.5, rates with bootstrap intervals."""
    import numpy as np

    decided = [r["outcome"] for r in records if r["outcome"] != "unparsed"]
    extra: dict[str, Any] = {"judge": judge, "judged_against": baseline, "unparsed": len(records) - len(decided),
                             "proportion": True, "chance_is": "an indifferent judge"}  # fmt: skip
    if not decided:
        extra.update({f"{o}_rate": None for o in OUTCOMES})
        return {"metric": "preference", "score": 0.5, "stderr": None, "n": 0, "chance": 0.5,
                "higher_is_better": True, "extra": {**extra, "no_verdict": True}}  # fmt: skip
    table = np.array([[o == name for name in OUTCOMES] for o in decided], dtype="float64")
    preference = table[:, 0] + table[:, 1] / 2
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(decided), size=(max(bootstrap, 2), len(decided)))
    for j, name in enumerate(OUTCOMES):
        extra[f"{name}_rate"] = float(table[:, j].mean())
        resampled = table[draws, j].mean(axis=1)
        extra[f"{name}_rate_ci95"] = [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]
    resampled = preference[draws].mean(axis=1)
    extra["preference_ci95"] = [float(np.percentile(resampled, 2.5)), float(np.percentile(resampled, 97.5))]
    return {"metric": "preference", "score": float(preference.mean()), "stderr": float(np.std(resampled, ddof=1)),
            "n": len(decided), "chance": 0.5, "higher_is_better": True, "extra": extra}  # fmt: skip


def write_records(job_dir: Path, label: str, task: str, records: list[dict[str, Any]]) -> Path:
    path = job_dir / "judge" / label / f"{task}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_judges(
    specs: list[Any], tasks: dict[str, Any], rows: dict[str, dict[str, list[dict[str, Any]]]], baseline: str | None,
    job_dir: Path, cache_root: Path, default_model: Any, batch_size: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """label → task → judged entry, for every judge task and every model but the baseline.

    ``specs``: the suite's judge tasks; ``rows``: label → task → per-document rows of the merge.
    With one model (nothing to compare) there is no judged entry."""
    from kazhpc.evaluation.generations import greedy_generator
    from kazhpc.evaluation.models import eval_tokenizer
    from kazhpc.models import load_model

    if baseline is None or len(rows) < 2 or not specs:
        return {}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for spec in specs:
        cfg = spec.builder
        judge_cfg = cfg.judge or default_model
        model = load_model(judge_cfg, cache_root).eval()
        generate = greedy_generator(model, eval_tokenizer(judge_cfg, cache_root), cfg.judge_max_tokens,
                                    batch_size=batch_size, special_tokens="neutralise")  # fmt: skip
        docs = tasks[spec.name].eval_docs
        theirs = {r["doc_id"]: r["prediction"] for r in rows[baseline][spec.name]}
        for label, by_task in rows.items():
            if label == baseline:
                continue
            items = [{"doc_id": r["doc_id"], "prompt": tasks[spec.name].doc_to_text(docs[r["doc_id"]]),
                      "answer": r["prediction"], "baseline": theirs[r["doc_id"]]}
                     for r in by_task[spec.name] if r["doc_id"] in theirs]  # fmt: skip
            records = judge_pairs(generate, items, cfg.rubric or RUBRIC)
            write_records(job_dir, label, spec.name, records)
            out.setdefault(label, {})[spec.name] = judged_entry(records, judge_cfg.source, baseline)
        del model
    return out
