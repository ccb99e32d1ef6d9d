"""The evaluate job's suite, checks and shard plan (no model): task YAMLs, builders, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO

FIX = REPO / "tests" / "fixtures" / "eval"


def eval_cfg(**kwargs):
    from kazhpc.config import EvaluateConfig

    return EvaluateConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# The leaderboard protocol.


def test_prompt_letters_options_and_answer_in_every_schema() -> None:
    from kazhpc.evaluation import prompts

    unt = json.loads((FIX / "unt_biology.jsonl").read_text(encoding="utf-8").splitlines()[3])
    text = prompts.doc_to_text(unt)
    assert text.startswith(prompts.INSTRUCTION) and text.endswith("\nЖауап:")
    assert "H. Көбелек" in text  # an 8-option UNT item keeps all its letters
    assert prompts.doc_to_choice(unt) == list("ABCDEFGH") and prompts.doc_to_target(unt) == 1

    five = json.loads((FIX / "unt_biology.jsonl").read_text(encoding="utf-8").splitlines()[1])
    assert prompts.doc_to_choice(five) == list("ABCDE")  # "" and null options are left out

    mmlu = {"Question": "Сұрақ?", "Option A": "бір", "Option B": "екі", "Option C": "үш", "Option D": "төрт",
            "Correct Answer": "С"}  # a Cyrillic С in the answer key
    assert prompts.doc_to_target(mmlu) == 2
    custom = {"question": "Сұрақ?", "choices": ["а", "ә", "б"], "answer": 2}
    assert prompts.doc_to_target(custom) == 2 and prompts.doc_to_choice(custom) == ["A", "B", "C"]
    with pytest.raises(prompts.BadItem, match="not one of the choices A, B, C"):
        prompts.doc_to_target({**custom, "answer": "D"})


def test_leaderboard_suite_is_eleven_columns_on_the_hub_data_sets() -> None:
    from kazhpc.evaluation.suite import resolve

    suite = resolve(eval_cfg(tasks=["kk-leaderboard"]))
    columns = suite.names + list(suite.composites)
    assert len(columns) == 11 and len(set(columns)) == 11
    datasets = {s.name: (s.config["dataset_path"], s.config["test_split"]) for s in suite.tasks}
    assert datasets["mmlu_translated_kk"] == ("kz-transformers/mmlu-translated-kk", "validation")
    assert datasets["kk_dastur_mc"] == ("kz-transformers/kazakh-dastur-mc", "test")
    assert datasets["kk_constitution_mc"] == ("kz-transformers/kazakh-constitution-mc", "test")
    assert datasets["kk_world_history_unt_mc"] == ("kz-transformers/kazakh-unified-national-testing-mc", "world_history")
    assert suite.composites["kk_unified_national_testing_mc"] == tuple(n for n in suite.names if n.endswith("_unt_mc"))
    for spec in suite.tasks:
        assert spec.config["output_type"] == "multiple_choice" and spec.config["num_fewshot"] == 0
        assert callable(spec.config["doc_to_text"])  # the YAML's !function resolved to kazhpc's prompts


def test_shipped_yamls_load_in_lm_eval_task_manager() -> None:
    """lm_eval --include_path kazhpc/evaluation/tasks sees the tasks and the UNT group."""
    from lm_eval.tasks import TaskManager

    from kazhpc.evaluation.suite import TASKS_DIR

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    assert "kk_dastur_mc" in manager.all_subtasks and "kk_unified_national_testing_mc" in manager.all_groups


# --------------------------------------------------------------------------------------------
# Local copies and builders.


def local_suite():
    from kazhpc.config import EvalTaskConfig

    return eval_cfg(
        tasks=["kk_dastur_mc", "kk_biology_unt_mc", "belebele_kaz_Cyrl",
               EvalTaskConfig(name="kk_en", kind="translation", path=str(FIX / "kk_en.jsonl")),
               EvalTaskConfig(name="custom", kind="mc", path=str(FIX / "custom_mc.jsonl"))],
        data_overrides={"kk_dastur_mc": str(FIX / "dastur_mc.jsonl"), "kk_biology_unt_mc": str(FIX / "unt_biology.jsonl"),
                        "belebele_kaz_Cyrl": str(FIX / "belebele_kaz.jsonl")},
    )


def test_local_copies_and_builders_render_every_document() -> None:
    from kazhpc.evaluation.suite import load_tasks, preflight

    suite = preflight(local_suite())
    tasks = load_tasks(suite.tasks)
    assert {n: len(t.eval_docs) for n, t in tasks.items()} == {
        "kk_dastur_mc": 8, "kk_biology_unt_mc": 6, "belebele_kaz_Cyrl": 6, "kk_en": 6, "custom": 5}
    belebele = tasks["belebele_kaz_Cyrl"]  # lm-eval's own task definition, on the local copy
    assert belebele.doc_to_text(belebele.eval_docs[1]).startswith("P: Домбыра")
    assert belebele.doc_to_target(belebele.eval_docs[1]) == 1
    translation = tasks["kk_en"]
    assert translation.doc_to_text(translation.eval_docs[0]).endswith("Қазақша: Мен кітап оқығанды ұнатамын.\nАғылшынша:")
    assert translation.doc_to_target(translation.eval_docs[0]) == "I like reading books."
    custom = tasks["custom"]
    assert [custom.doc_to_target(d) for d in custom.eval_docs] == [0, 1, 2, 1, 2]  # index or letter, any case


def test_chance_baseline_is_the_mean_of_one_over_choices() -> None:
    from kazhpc.evaluation.suite import chance_of, load_tasks, resolve
    from kazhpc.evaluation.sharding import doc_requests

    cfg = eval_cfg(tasks=["kk_biology_unt_mc"], data_overrides={"kk_biology_unt_mc": str(FIX / "unt_biology.jsonl")})
    task = load_tasks(resolve(cfg).tasks)["kk_biology_unt_mc"]
    choices = doc_requests(task, None)
    assert choices == [4, 5, 6, 8, 4, 5]
    assert chance_of(task, choices) == pytest.approx((1 / 4 + 1 / 5 + 1 / 6 + 1 / 8 + 1 / 4 + 1 / 5) / 6)


# --------------------------------------------------------------------------------------------
# Bad input: one line naming what and where, before any model loads.


def test_unknown_task_lists_the_closest_names() -> None:
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import resolve

    with pytest.raises(KazhpcError, match=r"unknown task 'kk_dastr_mc'; closest: kk_dastur_mc") as caught:
        resolve(eval_cfg(tasks=["kk_dastr_mc"]))
    assert str(caught.value).count("kk_dastur_mc") == 1  # each name once
    with pytest.raises(KazhpcError, match="belebele_kaz_Cyrl"):
        resolve(eval_cfg(tasks=["belebele_kaz_cyr"]))


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("bad_mc.jsonl", r"bad_mc.jsonl: row 3: task mine: answer 'D' is not one of the choices A, B, C"),
        ("empty.jsonl", r"empty.jsonl: empty file \(no rows\)"),
        ("no_such_file.jsonl", r"evaluate.tasks\[mine\].path: .*no_such_file.jsonl: file not found"),
    ],
)
def test_bad_mc_file_is_named_with_its_row(path: str, message: str) -> None:
    from kazhpc.config import EvalTaskConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    with pytest.raises(KazhpcError, match=message):
        preflight(eval_cfg(tasks=[EvalTaskConfig(name="mine", kind="mc", path=str(FIX / path))]))


def test_override_for_a_task_not_in_the_suite_and_missing_copy(tmp_path: Path) -> None:
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    with pytest.raises(KazhpcError, match=r"data_overrides.kk_dastur: not a task of this suite \(did you mean 'kk_dastur_mc'\?\)"):
        preflight(eval_cfg(tasks=["kk_dastur_mc"], data_overrides={"kk_dastur": str(FIX / "dastur_mc.jsonl")}))
    with pytest.raises(KazhpcError, match=r"data_overrides.kk_dastur_mc: .*gone.jsonl: file not found"):
        preflight(eval_cfg(tasks=["kk_dastur_mc"], data_overrides={"kk_dastur_mc": str(tmp_path / "gone.jsonl")}))


def test_a_hub_data_set_that_is_not_there_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import load_tasks, resolve

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(KazhpcError, match=r"kk_constitution_mc.*evaluate.data_overrides.kk_constitution_mc"):
        load_tasks(resolve(eval_cfg(tasks=["kk_constitution_mc"])).tasks)


def test_adapter_models_need_a_train_job_or_a_path() -> None:
    from kazhpc.config import load_config
    from kazhpc.errors import ConfigError

    with pytest.raises(ConfigError, match=r"evaluate.models\[tuned\]: no adapter given and no train job"):
        load_config(REPO / "configs/pipelines/smoke.yaml", ["jobs=[evaluate]", "evaluate.models=[{label: base}, {label: tuned, kind: adapter}]"])


# --------------------------------------------------------------------------------------------
# Shard plan and merge bookkeeping.


@pytest.mark.parametrize("count", [1, 2, 3, 7])
def test_plan_covers_every_document_once_in_balanced_contiguous_ranges(count: int) -> None:
    from kazhpc.evaluation.sharding import make_plan

    weights = {"a": [4] * 10, "b": [5, 8, 4, 6, 7] * 3, "c": [1] * 9}
    plan = make_plan(weights, count)
    assert len(plan) == count
    seen = {t: [] for t in weights}
    for units in plan:
        for u in units:
            assert u.requests == sum(weights[u.task][u.start : u.end])
            seen[u.task] += list(range(u.start, u.end))
    assert seen == {t: list(range(len(w))) for t, w in weights.items()}  # each doc once, in order
    loads = [sum(u.requests for u in units) for units in plan]
    assert max(loads) - min(loads) <= 2 * max(max(w) for w in weights.values())


def test_a_missing_shard_is_named_with_the_command_that_reruns_it(tmp_path: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.sharding import DONE, merge, part_dir

    cfg = load_config(REPO / "configs/pipelines/smoke.yaml", ["jobs=[evaluate]", "evaluate.models=[{label: base}]", "evaluate.shards=3"])
    job_dir = tmp_path / "run" / "evaluate"
    folder = part_dir(job_dir, 1, 3)
    folder.mkdir(parents=True)
    (folder / DONE).write_text("{}")
    with pytest.raises(KazhpcError, match=r"2 of 3 shards missing or failed: 0, 2; rerun one alone with "
                                          r"`kazhpc evaluate --run-dir .*run --shard 0/3`"):
        merge(cfg, job_dir, 3)


def test_the_unt_column_pools_its_subjects_documents() -> None:
    """kk_unified_national_testing_mc = accuracy over all subjects' documents (size-weighted mean)."""
    from lm_eval.api.metrics import mean_stderr

    from kazhpc.evaluation.sharding import composite_entry

    a = [{"filter": "none", "acc": v, "num_choices": 4} for v in (1.0, 0.0, 0.0, 1.0)]
    b = [{"filter": "none", "acc": v, "num_choices": 8} for v in (0.0, 0.0)]
    entry = composite_entry([a, b], ("a", "b"))
    assert entry["score"] == pytest.approx((0.5 * 4 + 0.0 * 2) / 6) and entry["n"] == 6
    assert entry["stderr"] == mean_stderr([1.0, 0.0, 0.0, 1.0, 0.0, 0.0])
    assert entry["chance"] == pytest.approx((4 * 0.25 + 2 * 0.125) / 6)


def test_a_translation_row_without_its_reference_is_named(tmp_path: Path) -> None:
    from kazhpc.config import EvalTaskConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    data = tmp_path / "pairs.jsonl"
    data.write_text('{"kk": "Сәлем.", "en": "Hello."}\n{"kk": "Рахмет."}\n', encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"pairs.jsonl: row 2: task tr: missing field 'en'"):
        preflight(eval_cfg(tasks=[EvalTaskConfig(name="tr", kind="translation", path=str(data))]))
