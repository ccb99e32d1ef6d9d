"""``kind: open``: answers against references. The held-out split of preprocess becomes the task's
file, multi-turn rows counted; per-item scores and the corpus score are sacrebleu's; bad rows and a
missing split are one line each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"


def _split(folder: Path, records: list[list[dict]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"r{i}", "source": "alpaca-kz", "messages": m} for i, m in enumerate(records)]
    pq.write_table(pa.Table.from_pylist(rows), folder / "validation-00000.parquet")
    return folder


def turn(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def test_the_heldout_split_becomes_prompt_reference_rows_and_multi_turn_rows_are_counted(tmp_path: Path) -> None:
    from kazhpc.evaluation.open_answers import write_heldout

    pre = _split(tmp_path / "preprocess", [
        [turn("user", "Сәлем, қалайсың?"), turn("assistant", "Жақсы, рахмет.")],
        [turn("system", "Қысқа жауап бер."), turn("user", "Астана қайда?"), turn("assistant", "Есіл өзенінің бойында.")],
        [turn("user", "Бір"), turn("assistant", "Екі"), turn("user", "Үш"), turn("assistant", "Төрт")],
    ])  # fmt: skip
    path = write_heldout(pre, tmp_path / "evaluate", "evaluate.tasks[kk_heldout]")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["prompt"], r["reference"]) for r in rows] == [
        ("r0", "Сәлем, қалайсың?", "Жақсы, рахмет."),
        ("r1", "Қысқа жауап бер.\n\nАстана қайда?", "Есіл өзенінің бойында."),
    ]
    info = json.loads((tmp_path / "evaluate" / "heldout.json").read_text())
    assert info == {"from": str(pre), "rows": 2, "left_out": {"multi_turn": 1}}
    first = path.read_bytes()
    write_heldout(pre, tmp_path / "evaluate", "evaluate.tasks[kk_heldout]")  # a second shard: the same bytes
    assert path.read_bytes() == first


def test_no_preprocess_stage_or_an_empty_split_says_what_to_do(tmp_path: Path) -> None:
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.open_answers import write_heldout

    with pytest.raises(KazhpcError, match=r"evaluate.tasks\[x\]: no path, and no preprocess stage before this evaluation"):
        write_heldout(None, tmp_path, "evaluate.tasks[x]")
    (tmp_path / "pre").mkdir()
    with pytest.raises(KazhpcError, match="wrote no validation split"):
        write_heldout(tmp_path / "pre", tmp_path, "evaluate.tasks[x]")
    only_multi = _split(tmp_path / "multi", [[turn("user", "а"), turn("assistant", "б"), turn("user", "в"), turn("assistant", "г")]])
    with pytest.raises(KazhpcError, match=r"no single-turn conversation \(1 multi-turn\); give evaluate.tasks\[x\] a path"):
        write_heldout(only_multi, tmp_path, "evaluate.tasks[x]")


def test_per_item_scores_are_sacrebleus_and_the_answer_language_is_linguas() -> None:
    from sacrebleu.metrics import CHRF

    from kazhpc.evaluation.open_answers import process_results

    doc = {"prompt": "Домбыраның неше ішегі бар?", "reference": "Домбыраның екі ішегі бар."}
    kk = process_results(doc, ["  Домбыраның екі ішегі бар.  "], reference="reference")
    assert kk == {"chrf_item": 100.0, "bleu_item": pytest.approx(100.0), "kazakh": True, "answer_words": 4}
    ru = process_results(doc, ["У домбры две струны, это известно всем."], reference="reference")
    assert ru["kazakh"] is False and ru["answer_words"] == 7
    assert ru["chrf_item"] == CHRF(word_order=2).sentence_score("У домбры две струны, это известно всем.",
                                                               [doc["reference"]]).score  # fmt: skip


def test_a_user_file_row_without_its_reference_is_named_and_columns_map_fields(tmp_path: Path) -> None:
    from kazhpc.config import EvalTaskConfig, EvaluateConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import load_tasks, preflight

    data = tmp_path / "qa.jsonl"
    data.write_text('{"q": "Сәлем?", "a": "Сәлем!"}\n{"q": "Қалайсың?", "a": " "}\n', encoding="utf-8")
    task = EvalTaskConfig(name="qa", kind="open", path=str(data), columns={"prompt": "q", "reference": "a"})
    with pytest.raises(KazhpcError, match=r"qa.jsonl:2: task qa: field 'a' is empty"):
        preflight(EvaluateConfig(tasks=[task]))
    with pytest.raises(KazhpcError, match=r"qa.jsonl: evaluate.tasks\[qa\]: .*'prompt'"):
        preflight(EvaluateConfig(tasks=[EvalTaskConfig(name="qa", kind="open", path=str(data))]))
    suite = preflight(EvaluateConfig(tasks=[EvalTaskConfig(name="kk_open", kind="open", path=str(FIX / "open_kk.jsonl"))]))
    (loaded,) = load_tasks(suite.tasks).values()
    assert loaded.doc_to_text(loaded.eval_docs[0]) == "Қазақстанның астанасы қай қала?"


def test_an_open_task_without_a_path_waits_for_the_run_and_refuses_columns() -> None:
    from pydantic import ValidationError

    from kazhpc.config import EvalTaskConfig, EvaluateConfig
    from kazhpc.evaluation.suite import preflight, resolve

    cfg = EvaluateConfig(tasks=[EvalTaskConfig(name="kk_heldout", kind="open")])
    (spec,) = preflight(cfg).tasks  # nothing to read yet: the preprocess stage writes it
    assert spec.data_file is None and cfg.local_files() == []
    (spec,) = resolve(cfg, Path("/runs/r/evaluate/heldout.jsonl")).tasks
    assert spec.data_file == "/runs/r/evaluate/heldout.jsonl"
    assert spec.config["dataset_kwargs"]["data_files"]["test"] == spec.data_file
    with pytest.raises(ValidationError, match="the held-out split .* has its own fields"):
        EvalTaskConfig(name="x", kind="open", columns={"prompt": "q"})


def test_a_task_waiting_for_the_heldout_split_is_not_called_a_hub_data_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import write_yaml
    from kazhpc.config import load_config
    from kazhpc.evaluation.job import preflight

    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    path = write_yaml(tmp_path / "c.yaml", f"""
        name: heldout
        jobs: [preprocess, evaluate]
        model: gemma3-270m
        runs_root: {tmp_path / 'runs'}
        tracking: {{enabled: false}}
        preprocess: {{sources: [{{name: qa, kind: custom, path: {REPO / 'tests/fixtures/data/custom_qa.csv'}, columns: {{prompt: suraq, response: zhauap}}}}]}}
        evaluate:
          tasks: [{{name: kk_heldout, kind: open}}, belebele_kaz_Cyrl]
          perplexity_texts: null
        """)
    said = " ".join(preflight(load_config(path)))
    assert "belebele_kaz_Cyrl" in said and "kk_heldout" not in said
