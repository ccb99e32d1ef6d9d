"""The exported model's card (README.md): what it is, the data it was trained on from the raw
sources on, the training config, its evaluation table, and the reload check, so that a model
that leaves the cluster carries its own lineage."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def model_card(*, name: str, base: str, revision: str | None, train: dict[str, Any], train_section: dict[str, Any],
               datasets: list[dict[str, Any]], scores: list[tuple[str, ...]], evaluated_in: str | None,
               check: dict[str, Any], gguf: dict[str, Any] | None, config_hash: str, new_tokens: int) -> str:
    """The README.md of an export (Hugging Face model card: YAML front matter, then Markdown)."""
    # The hub's base_model is a hub id: not a local folder, not kazhpc's bundled:NAME.
    hub_id = base.count("/") == 1 and not base.startswith(("/", ".", "~", "bundled:"))
    front = {**({"base_model": base} if hub_id else {}), "language": ["kk"], "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["kazhpc", "kazakh", "merged-lora" if train.get("adapter") else "full-fine-tune"],
             "datasets": sorted({r["name"] for r in datasets if r["context"] == "source"})}
    adapter = f"the LoRA adapter of stage `{train['stage']}` merged into the unquantized base" if train.get("adapter") \
        else f"every weight trained in stage `{train['stage']}`"
    parts = [
        "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---",
        f"# {name}",
        f"A Kazakh adaptation of `{base}`{f' (revision {revision})' if revision else ''}, made by kazhpc "
        f"(config hash {config_hash}): {adapter}"
        + (f", with {new_tokens} Kazakh tokens added to the vocabulary." if new_tokens else "."),
        "## Data lineage",
        _table(["data set", "role", "rows", "digest", "source"],
               [[r["name"], r["context"], _rows(r), r["digest"][:16], r["source"]] for r in datasets])
        if datasets else "No data set records.",
        "## Training",
        f"{train.get('steps')} steps, final train loss {train.get('train_loss'):.4f}." if isinstance(train.get("train_loss"), float) else "",
        "```yaml\n" + yaml.safe_dump({"train": train_section}, sort_keys=False, allow_unicode=True) + "```",
        "## Evaluation",
        (f"Scores of the adapter (before merging) from stage `{evaluated_in}`, each beside chance and the baseline:\n\n"
         + _table(["model", "task", "metric", "score ± stderr", "n", "chance", "baseline", "paired difference"], [list(r) for r in scores]))
        if scores else "No evaluate stage scored this model before the export.",
        "## Reload check",
        _check_text(check, gguf),
        "## Use",
        "```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "tokenizer = AutoTokenizer.from_pretrained(PATH)\nmodel = AutoModelForCausalLM.from_pretrained(PATH, dtype=\"auto\")\n"
        "ids = tokenizer.apply_chat_template([{\"role\": \"user\", \"content\": \"Сәлем!\"}], add_generation_prompt=True, "
        "return_tensors=\"pt\", return_dict=True)\nprint(tokenizer.decode(model.generate(**ids, max_new_tokens=64)[0]))\n```",
    ]
    if gguf:
        parts.append(f"llama.cpp: `llama-cli -m {Path(gguf['path']).name} -cnv` (GGUF, {gguf['outtype']}).")
    return "\n\n".join(p for p in parts if p) + "\n"


def _rows(record: dict[str, Any]) -> Any:
    rows = json.loads(record["profile"]).get("num_rows") if record.get("profile") else None
    return "-" if rows is None else rows


def _check_text(check: dict[str, Any], gguf: dict[str, Any] | None) -> str:
    rows = [["adapter on the unquantized base (this process)", f"{check['reference_bits_per_char']:.4f}", "-"],
            ["this folder, plain transformers, fresh process", f"{check['export_bits_per_char']:.4f}",
             f"{check['export_bits_per_char'] - check['reference_bits_per_char']:+.4f}"]]
    if gguf and "gguf_bits_per_char" in check:
        rows.append([f"the GGUF file ({gguf['outtype']}), read by transformers", f"{check['gguf_bits_per_char']:.4f}",
                     f"{check['gguf_bits_per_char'] - check['reference_bits_per_char']:+.4f}"])
    return (f"Bits per character on {check['passages']} Kazakh passages ({check['texts']}); the export must match "
            f"the adapter within {check['tolerance']} bits/char:\n\n" + _table(["model", "bits/char", "difference"], rows)
            + f"\n\nA greedy chat answer of the reloaded folder: {json.dumps(check['answer']['text'], ensure_ascii=False)}")
