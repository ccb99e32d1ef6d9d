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

    from kazhpc.evaluation.catalog import TASKS_DIR

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
        ("bad_mc.jsonl", r"bad_mc.jsonl:3: task mine: answer 'D' is not one of the choices A, B, C"),
        ("empty.jsonl", r"empty.jsonl: empty input, no rows \(evaluate.tasks\[mine\].path\)"),
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


def test_after_a_stage_that_trained_every_weight_the_adapter_model_is_that_model(tmp_path: Path) -> None:
    """train.method: full leaves a model, not an adapter: the evaluation's trained model is it (no
    adapter on top), and its base model is the configured one; after LoRA, the adapter and its base."""
    from kazhpc.config import load_config
    from kazhpc.evaluation.job import models_under_test

    cfg = load_config(REPO / "configs/pipelines/smoke.yaml")
    train_dir = tmp_path / "train"
    (train_dir / "model").mkdir(parents=True)
    (train_dir / "manifest.json").write_text(json.dumps({"method": "full", "adapter": None, "model": str(train_dir / "model")}))
    base, trained = models_under_test(cfg, train_dir)
    assert (base.base.source, base.adapter) == (cfg.model.source, None)
    assert (trained.label, trained.base.source, trained.adapter) == ("adapter", str(train_dir / "model"), None)
    (train_dir / "manifest.json").write_text(json.dumps({"method": "lora", "adapter": str(train_dir / "adapter"),
                                                         "base_model": cfg.model.source}))
    _, tuned = models_under_test(cfg, train_dir)
    assert (tuned.base.source, tuned.adapter) == (cfg.model.source, train_dir / "adapter")


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
    from kazhpc.evaluation.sharding import merge
    from kazhpc.partfiles import DONE, part_dir

    cfg = load_config(REPO / "configs/pipelines/smoke.yaml", ["jobs=[evaluate]", "evaluate.models=[{label: base}]", "evaluate.shards=3"])
    job_dir = tmp_path / "run" / "evaluate"
    folder = part_dir(job_dir, 1, 3)
    folder.mkdir(parents=True)
    (folder / DONE).write_text("{}")
    with pytest.raises(KazhpcError, match=r"2 of 3 shards missing or failed: 0, 2; rerun one alone with "
                                          r"`kazhpc evaluate --run-dir .*run --shard 0/3`"):
        merge(cfg.evaluate, job_dir, 3)


def test_the_unt_column_pools_its_subjects_documents() -> None:
    """kk_unified_national_testing_mc = accuracy over all subjects' documents (size-weighted mean)."""
    from lm_eval.api.metrics import mean_stderr

    from kazhpc.evaluation.aggregation import composite_entry

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
    with pytest.raises(KazhpcError, match=r"pairs.jsonl:2: task tr: missing field 'en'"):
        preflight(eval_cfg(tasks=[EvalTaskConfig(name="tr", kind="translation", path=str(data))]))


# --------------------------------------------------------------------------------------------
# Bring your own schema: column mapping for the mc and translation builders.

COPA = {"question": "premise", "choices": ["choice1", "choice2"], "answer": "label"}
PARALLEL = REPO / "tests" / "fixtures" / "parallel" / "kazakh_english.jsonl"


def test_mc_item_reads_choices_from_a_list_or_from_columns_and_every_answer_format() -> None:
    from kazhpc.evaluation import prompts
    from kazhpc.evaluation.builders import mc_item

    row = {"q": "Сұрақ?", "opts": ["бір", "екі", "үш"], "a": "1", "o1": "бір", "o2": "екі", "o3": "үш"}

    def target(answer: object, answer_format: str, choices: object = "opts") -> int:
        item = mc_item({**row, "a": answer}, question="q", choices=choices, answer="a", answer_format=answer_format)
        return prompts.doc_to_target(item)

    assert target(1, "index") == 1 and target("1", "index") == 1  # CSV cells are text
    assert target(1, "number") == 0 and target("3", "number", ["o1", "o2", "o3"]) == 2
    assert target("c", "letter") == 2 and target("В", "letter") == 1  # a Cyrillic В
    assert target(2, "auto") == 2 and target("B", "auto") == 1
    for answer, answer_format, message in [
        (3, "index", r"answer 3 is not among the 3 choices \(0–2\)"),
        (0, "number", r"answer 0 is not among the 3 choices \(1–3\)"),
        ("B", "number", r"answer 'B' is not a 1-based number"),
        (1, "letter", r"answer 1 is not a letter"),
        ("D", "letter", r"answer 'D' is not one of the choices A, B, C"),
        (None, "index", r"the answer \(column 'a'\) is empty"),
    ]:
        with pytest.raises(prompts.BadItem, match=message):
            target(answer, answer_format)
    with pytest.raises(prompts.BadItem, match=r"column 'opts' holds str, expected a list of options"):
        mc_item({**row, "opts": "бір, екі"}, question="q", choices="opts", answer="a", answer_format="index")
    with pytest.raises(prompts.BadItem, match=r"option column 'o2' is empty"):
        mc_item({**row, "o2": " "}, question="q", choices=["o1", "o2"], answer="a", answer_format="index")


def test_a_copa_style_set_and_a_kazakh_english_corpus_score_by_config_alone() -> None:
    """The fixtures in their own schemas go through lm-eval's evaluate (a scripted LM, no model)."""
    from lm_eval.api.model import LM
    from lm_eval.evaluator import evaluate

    from kazhpc.config import EvalTaskConfig
    from kazhpc.evaluation.suite import load_tasks, preflight

    copa = EvalTaskConfig(name="copa_kk", kind="mc", path=str(FIX / "copa_kk.jsonl"), columns=COPA, answer_format="index")
    pairs = EvalTaskConfig(name="kk_en_own", kind="translation", path=str(PARALLEL),
                           columns={"kk": "Kazakh", "en": "English"})
    tasks = load_tasks(preflight(eval_cfg(tasks=[copa, pairs])).tasks)
    first = tasks["copa_kk"].eval_docs[0]
    assert tasks["copa_kk"].doc_to_text(first).splitlines()[2:] == [
        "Сұрақ: Ағам саусағын пышаққа кесіп алды.", "A. Ол нан турап отырған еді.", "B. Ол кітап оқып отырған еді.", "Жауап:"]
    assert [tasks["copa_kk"].doc_to_target(d) for d in tasks["copa_kk"].eval_docs] == [0, 0, 1, 0, 1, 1]
    english = {json.loads(line)["Kazakh"]: json.loads(line)["English"] for line in PARALLEL.read_text(encoding="utf-8").splitlines()}

    class Scripted(LM):
        """Always prefers the letter A; translates by looking the sentence up."""

        def loglikelihood(self, requests):
            return [(0.0 if r.args[1].strip() == "A" else -1.0, False) for r in requests]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            return [english[r.args[0].splitlines()[-2].removeprefix("Қазақша: ")] for r in requests]

    results = evaluate(Scripted(), {"tasks": tasks, "groups": {}}, bootstrap_iters=0)["results"]
    assert results["copa_kk"]["acc,none"] == pytest.approx(3 / 6)  # labels 0, 0, 1, 0, 1, 1
    assert results["kk_en_own"]["bleu,none"] == pytest.approx(100.0)
    assert results["kk_en_own"]["chrf++,none"] == pytest.approx(100.0)


def test_mapped_columns_are_checked_against_the_file_with_the_closest_name(tmp_path: Path) -> None:
    from kazhpc.config import EvalTaskConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    def refused(task: EvalTaskConfig) -> str:
        with pytest.raises(KazhpcError) as caught:
            preflight(eval_cfg(tasks=[task]))
        return str(caught.value)

    wrong = EvalTaskConfig(name="copa_kk", kind="mc", path=str(FIX / "copa_kk.jsonl"),
                           columns={**COPA, "choices": ["choice1", "choise2"]}, answer_format="index")
    assert refused(wrong) == (
        f"{FIX / 'copa_kk.jsonl'}: evaluate.tasks[copa_kk].columns: missing column 'choise2' (did you mean 'choice2'?) "
        "(columns: premise, choice1, choice2, question, label)"
    )
    pairs = EvalTaskConfig(name="tr", kind="translation", path=str(PARALLEL), columns={"kk": "kazakh", "en": "English"})
    assert "missing column 'kazakh' (did you mean 'Kazakh'?)" in refused(pairs)
    # An answer out of range is named by file and line, whatever the row.
    lines = (FIX / "copa_kk.jsonl").read_text(encoding="utf-8").splitlines()
    bad = tmp_path / "copa.jsonl"
    bad.write_text("\n".join([lines[0].replace('"label": 0', '"label": 2'), *lines[1:]]) + "\n", encoding="utf-8")
    out_of_range = EvalTaskConfig(name="copa_kk", kind="mc", path=str(bad), columns=COPA, answer_format="index")
    assert refused(out_of_range) == f"{bad}:1: task copa_kk: answer 2 is not among the 2 choices (0–1)"
    # The same set as a CSV, options in columns and the answer a 1-based number.
    csv_file = tmp_path / "copa.csv"
    csv_file.write_text("premise,choice1,choice2,label\nЖаңбыр жауды.,Жер суланды.,Жер құрғады.,1\n"
                        "Шам сөнді.,Бөлме қараңғы болды.,Бөлме жарық болды.,3\n", encoding="utf-8")
    numbered = EvalTaskConfig(name="copa_csv", kind="mc", path=str(csv_file), columns=COPA, answer_format="number")
    assert refused(numbered) == f"{csv_file}:3: task copa_csv: answer 3 is not among the 2 choices (1–2)"


def test_a_bad_first_row_is_named_by_file_and_line_for_builders_and_overrides(tmp_path: Path) -> None:
    """lm-eval renders the first document while it builds a task; that failure is a row like any other."""
    from kazhpc.config import EvalTaskConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    mc = tmp_path / "mc.jsonl"
    mc.write_text('{"question": " ", "choices": ["а", "ә"], "answer": 0}\n{"question": "Сұрақ?", "choices": ["а", "ә"], "answer": 1}\n',
                  encoding="utf-8")
    with pytest.raises(KazhpcError, match=rf"^{mc}:1: task mine: the question is empty$"):
        preflight(eval_cfg(tasks=[EvalTaskConfig(name="mine", kind="mc", path=str(mc))]))
    dastur = tmp_path / "dastur.jsonl"
    rows = (FIX / "dastur_mc.jsonl").read_text(encoding="utf-8").splitlines()
    blank_question = json.dumps({**json.loads(rows[0]), "Question": ""}, ensure_ascii=False)
    dastur.write_text("\n".join(["", blank_question, *rows[1:]]) + "\n", encoding="utf-8")
    with pytest.raises(KazhpcError, match=rf"^{dastur}:2: task kk_dastur_mc: the question is empty$"):  # line 1 is blank
        preflight(eval_cfg(tasks=["kk_dastur_mc"], data_overrides={"kk_dastur_mc": str(dastur)}))
    belebele = tmp_path / "belebele.jsonl"
    belebele.write_text((FIX / "belebele_kaz.jsonl").read_text(encoding="utf-8").replace('"flores_passage"', '"passage"'),
                        encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"belebele.jsonl: evaluate.data_overrides.belebele_kaz_Cyrl: missing column "
                                          r"'flores_passage' \(did you mean 'passage'\?\)"):
        preflight(eval_cfg(tasks=["belebele_kaz_Cyrl"], data_overrides={"belebele_kaz_Cyrl": str(belebele)}))


def test_an_mc_builder_without_columns_still_reads_a_leaderboard_schema_copy() -> None:
    from kazhpc.config import EvalTaskConfig
    from kazhpc.evaluation.suite import load_tasks, preflight

    task = EvalTaskConfig(name="dastur_own", kind="mc", path=str(FIX / "dastur_mc.jsonl"))
    loaded = load_tasks(preflight(eval_cfg(tasks=[task])).tasks)["dastur_own"]
    assert loaded.doc_to_choice(loaded.eval_docs[0]) == ["A", "B", "C", "D"] and loaded.doc_to_target(loaded.eval_docs[1]) == 1
