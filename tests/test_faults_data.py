"""Fault cases for data inputs: bad files, bad columns, bad paths, as validate and preprocess see them.

Each case feeds kazhpc one bad input and checks what a person at the terminal gets: the exit
status, one line that names what is wrong and where (file, line or row, config key), no traceback;
for the preprocess job, that no row is lost (every row read is kept or a reject). Most cases are
``kazhpc validate`` in this process (no model: the configs list only the jobs they need); one case
runs the preprocess job for real (it loads the Gemma-3 tokenizer). The reliability issue's numbers
are in the test names (defects 6, 8, 9, 10, 12, 16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from faults import REPO, assert_one_line_error, cli, kazhpc

DATA = REPO / "tests" / "fixtures" / "data"
EVAL = REPO / "tests" / "fixtures" / "eval"
PARALLEL = REPO / "tests" / "fixtures" / "parallel" / "kazakh_english.jsonl"
COPA = {"question": "premise", "choices": ["choice1", "choice2"], "answer": "label"}
MURI_ROW = {"input": "Домбыра туралы айтып беріңіз.", "output": "Домбыра — қазақтың екі ішекті ұлттық музыкалық аспабы."}


def pipeline(tmp: Path, **sections: Any) -> Path:
    """A config with only the jobs its sections name (no prepare-model, no train: no model)."""
    jobs = [job for job in ("preprocess", "evaluate") if job in sections]
    data: dict[str, Any] = {
        "name": "faults",
        "jobs": jobs,
        "model": {"name": "tiny", "source": "bundled:gemma3-270m"},
        "runs_root": str(tmp / "runs"),
        "tracking": {"enabled": False},
    }
    if "preprocess" in sections:
        data["preprocess"] = {"cleaning": {"decontamination": {"files": []}}, **sections["preprocess"]}
    if "evaluate" in sections:
        data["evaluate"] = {"perplexity_texts": None, **sections["evaluate"]}
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "faults.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def sources(tmp: Path, *entries: dict[str, Any]) -> Path:
    return pipeline(tmp, preprocess={"sources": list(entries)})


def tasks(tmp: Path, *entries: Any, overrides: dict[str, str] | None = None) -> Path:
    return pipeline(tmp, evaluate={"tasks": list(entries), "data_overrides": overrides or {}})


def jsonl(path: Path, *rows: Any) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in rows),
                    encoding="utf-8")
    return path


def refused(config: Path, *must_contain: str, key: str | None = None, overrides: tuple[str, ...] = ()) -> str:
    """`kazhpc validate` exits 2 with one line naming each of ``must_contain`` and ``key``."""
    line = assert_one_line_error(cli("validate", str(config), *overrides), *must_contain)
    if key is not None:
        assert_names_key(line, key)
    return line


def assert_names_key(line: str, key: str) -> None:
    """``key`` is in ``line`` verbatim, '[name]' parts included (the console prints no markup)."""
    assert key in line, f"{key!r} not in the error line: {line}"


# -- 6: a bad first row is named like any other row ------------------------------------------------


def test_6_a_bad_first_row_of_an_mc_file_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "mine.jsonl", {"question": "", "choices": ["а", "ә"], "answer": 0},
                 {"question": "Сұрақ?", "choices": ["а", "ә"], "answer": 1})
    line = refused(tasks(tmp_path, {"name": "mine", "kind": "mc", "path": str(data)}))
    assert line.endswith(f"{data}:1: task mine: the question is empty")


def test_6_a_bad_first_row_of_a_translation_file(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "pairs.jsonl", {"kk": " ", "en": "Hello."}, {"kk": "Сәлем.", "en": "Hello."})
    line = refused(tasks(tmp_path, {"name": "tr", "kind": "translation", "path": str(data)}))
    assert line.endswith(f"{data}:1: task tr: field 'kk' is empty")


def test_6_a_bad_first_row_of_a_data_override(tmp_path: Path) -> None:
    rows = (EVAL / "dastur_mc.jsonl").read_text(encoding="utf-8").splitlines()
    data = jsonl(tmp_path / "dastur.jsonl", {**json.loads(rows[0]), "Question": None}, *rows[1:])
    line = refused(tasks(tmp_path, "kk_dastur_mc", overrides={"kk_dastur_mc": str(data)}))
    assert line.endswith(f"{data}:1: task kk_dastur_mc: the question is empty")


# -- 8: max_steps ----------------------------------------------------------------------------------


def test_8_a_negative_max_steps_is_refused_with_the_allowed_values(tmp_path: Path) -> None:
    config = sources(tmp_path, {"name": "muri", "kind": "muri-it", "path": str(DATA / "muri_kk.jsonl")})
    refused(config, "train.max_steps", "-1 to train for `epochs`", "positive", "(got -5)", overrides=("train.max_steps=-5",))


# -- 9: validate reads each input's header and first rows ------------------------------------------


def test_9_an_empty_source_file_fails_validate(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    refused(sources(tmp_path, {"name": "nothing", "kind": "muri-it", "path": str(empty)}), str(empty), "empty input", "'nothing'")


def test_9_a_header_only_csv_is_empty(tmp_path: Path) -> None:
    header = tmp_path / "header.csv"
    header.write_text("id,kk,en,ru,tr,domain\n", encoding="utf-8")
    refused(sources(tmp_path, {"name": "kp", "kind": "kazparc", "path": str(header)}), str(header), "empty input")


def test_9_wrong_columns_name_the_missing_one_and_the_closest_present(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "muri.jsonl", {"input": MURI_ROW["input"], "outputs": MURI_ROW["output"]})
    refused(sources(tmp_path, {"name": "muri", "kind": "muri-it", "path": str(data)}),
            str(data), "source 'muri' (muri-it)", "missing column 'output' (did you mean 'outputs'?)", "(columns: input, outputs)")


def test_9_wrong_columns_of_an_evaluation_file_and_an_override(tmp_path: Path) -> None:
    unt = jsonl(tmp_path / "unt.jsonl", {"question": "Сұрақ?", "A": "а", "B": "ә", "answer": "A"})
    refused(tasks(tmp_path, "kk_biology_unt_mc", overrides={"kk_biology_unt_mc": str(unt)}),
            str(unt), "evaluate.data_overrides.kk_biology_unt_mc", "missing column 'correct_answer'")
    data = jsonl(tmp_path / "mc.jsonl", {"question": "Сұрақ?", "options": ["а", "ә"], "answer": 0})
    refused(tasks(tmp_path, {"name": "mine", "kind": "mc", "path": str(data)}),
            str(data), "missing column 'choices'", key="evaluate.tasks[mine]")  # last: see assert_names_key


# -- 10: a missing override is named by its own key ------------------------------------------------


def test_10_a_missing_data_override_is_named_under_evaluate_data_overrides(tmp_path: Path) -> None:
    gone = tmp_path / "gone.jsonl"
    config = pipeline(tmp_path, preprocess={"sources": [{"name": "muri", "kind": "muri-it", "path": str(DATA / "muri_kk.jsonl")}],
                                            "cleaning": {}},  # decontaminated against the evaluate files
                      evaluate={"tasks": ["kk_dastur_mc"], "data_overrides": {"kk_dastur_mc": str(gone)}})
    line = refused(config, f"evaluate.data_overrides.kk_dastur_mc: {gone}: file not found")
    assert "preprocess.cleaning" not in line


# -- 12: ~ and $VARS are expanded once, by kazhpc ----------------------------------------------------


def test_12_a_literal_dollar_home_folder_is_not_what_the_path_means(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    literal = tmp_path / "$HOME"
    literal.mkdir()
    jsonl(literal / "muri.jsonl", MURI_ROW)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    config = sources(tmp_path, {"name": "lit", "kind": "muri-it", "path": f"{tmp_path}/$HOME/muri.jsonl"})
    # Where the variable does lead to the file, validate passes and the resolved config holds that path.
    home.mkdir()
    jsonl(home / "muri.jsonl", MURI_ROW)
    ok = cli("validate", str(sources(tmp_path / "ok", {"name": "lit", "kind": "muri-it", "path": "$HOME/muri.jsonl"})))
    assert ok.code == 0, ok.stderr
    assert f"path: {home}/muri.jsonl" in ok.stdout
    expanded = f"{tmp_path}{home}/muri.jsonl"  # the path checked is the path the job (and datasets) would open
    refused(config, f"{expanded}: file not found", key="preprocess.sources[lit].path")


def test_12_an_unset_variable_in_a_path_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAZHPC_NO_SUCH_DIR", raising=False)
    config = sources(tmp_path, {"name": "v", "kind": "muri-it", "path": "$KAZHPC_NO_SUCH_DIR/muri.jsonl"})
    refused(config, str(config), "preprocess.sources.0.path", "environment variable $KAZHPC_NO_SUCH_DIR is not set",
            "write the path out")


# -- 16: bring your own schema, by config alone ------------------------------------------------------


def test_16_copa_style_and_kazakh_english_files_validate_by_column_mapping(tmp_path: Path) -> None:
    config = pipeline(
        tmp_path,
        preprocess={"sources": [{"name": "ke", "kind": "kazparc", "path": str(PARALLEL), "directions": ["kk-en", "en-kk"],
                                 "columns": {"kk": "Kazakh", "en": "English"}}]},
        evaluate={"tasks": [
            {"name": "copa_kk", "kind": "mc", "path": str(EVAL / "copa_kk.jsonl"), "columns": COPA, "answer_format": "index"},
            {"name": "kk_en_own", "kind": "translation", "path": str(PARALLEL), "columns": {"kk": "Kazakh", "en": "English"}},
        ]},
    )
    outcome = cli("validate", str(config))
    assert outcome.code == 0, outcome.stderr
    assert outcome.error_lines == [] or all(line.startswith("warning:") for line in outcome.error_lines), outcome.stderr


def test_16_a_mapped_column_the_file_lacks_is_named_with_the_closest(tmp_path: Path) -> None:
    config = tasks(tmp_path, {"name": "copa_kk", "kind": "mc", "path": str(EVAL / "copa_kk.jsonl"),
                              "columns": {**COPA, "answer": "lable"}, "answer_format": "index"})
    parallel = sources(tmp_path / "p", {"name": "ke", "kind": "kazparc", "path": str(PARALLEL), "directions": ["kk-en"],
                                        "columns": {"kk": "kazakh", "en": "English"}})
    refused(parallel, str(PARALLEL), "source 'ke' (kazparc)", "missing column 'kazakh' (did you mean 'Kazakh'?)")
    refused(config, str(EVAL / "copa_kk.jsonl"), "missing column 'lable' (did you mean 'label'?)",
            key="evaluate.tasks[copa_kk].columns")


def test_16_an_answer_out_of_range_is_named_by_file_and_line(tmp_path: Path) -> None:
    lines = (EVAL / "copa_kk.jsonl").read_text(encoding="utf-8").splitlines()
    data = jsonl(tmp_path / "copa.jsonl", *lines[:3], {**json.loads(lines[3]), "label": 2}, *lines[4:])
    config = tasks(tmp_path, {"name": "copa_kk", "kind": "mc", "path": str(data), "columns": COPA, "answer_format": "number"})
    line = refused(config)  # 1-based: 0 is out of range as well
    assert line.endswith(f"{data}:1: task copa_kk: answer 0 is not among the 2 choices (1–2)")


def test_16_a_mapping_key_that_is_not_a_field_is_refused_at_load(tmp_path: Path) -> None:
    config = tasks(tmp_path, {"name": "copa_kk", "kind": "mc", "path": str(EVAL / "copa_kk.jsonl"),
                              "columns": {"premise": "premise"}})
    refused(config, str(config), "evaluate.tasks.0", "columns.premise: unknown field", "mc maps question, choices, answer")


# -- more bad inputs -----------------------------------------------------------------------------


def test_a_csv_with_another_delimiter_is_named_as_such(tmp_path: Path) -> None:
    data = tmp_path / "mc.csv"
    data.write_text("Question;Option A;Option B;Correct Answer\nСұрақ?;а;ә;A\n", encoding="utf-8")
    refused(sources(tmp_path, {"name": "mc", "kind": "mc", "path": str(data)}), str(data), "missing columns", "';'-separated")


def test_a_malformed_line_3_of_an_evaluation_file_stops_validate(tmp_path: Path) -> None:
    """lm-eval reads a task file whole, so an evaluation file has no rejects: line 3 is the error."""
    data = jsonl(tmp_path / "pairs.jsonl", {"kk": "Сәлем.", "en": "Hello."}, {"kk": "Рахмет.", "en": "Thank you."},
                 '{"kk": "Сау болыңыз.", "en": "Goodbye.}')
    refused(tasks(tmp_path, {"name": "tr", "kind": "translation", "path": str(data)}), f"{data}:3: malformed JSON",
            key="(evaluate.tasks[tr].path)")


def test_a_non_utf8_file_names_its_line(tmp_path: Path) -> None:
    data = tmp_path / "cp1251.jsonl"
    first = {**MURI_ROW, "kk": "Сәлем.", "en": "Hello."}
    russian = {"input": "Расскажите о домбре.", "output": "Домбра — казахский инструмент.", "kk": "Привет.", "en": "Hello."}
    data.write_bytes((json.dumps(first, ensure_ascii=False) + "\n").encode()  # line 2 in cp1251 (Russian: it has no Kazakh letters)
                     + json.dumps(russian, ensure_ascii=False).encode("cp1251") + b"\n")
    refused(sources(tmp_path, {"name": "cp", "kind": "muri-it", "path": str(data)}), f"{data}:2: not UTF-8 text")
    refused(tasks(tmp_path, {"name": "tr", "kind": "translation", "path": str(data)}), f"{data}:2: not UTF-8 text")


def test_a_parquet_file_that_is_really_text(tmp_path: Path) -> None:
    data = tmp_path / "dastur.parquet"
    data.write_text((DATA / "dastur_mc.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
    refused(sources(tmp_path, {"name": "dastur", "kind": "mc", "path": str(data)}), str(data), "not a readable Parquet file")
    refused(tasks(tmp_path, "kk_dastur_mc", overrides={"kk_dastur_mc": str(data)}), str(data), "not a readable Parquet file")


def test_a_truncated_json_array_names_its_line(tmp_path: Path) -> None:
    data = tmp_path / "alpaca.json"
    text = (DATA / "alpaca_kk.json").read_text(encoding="utf-8")
    starts = [i for i in range(len(text)) if text.startswith('"instruction"', i)]
    data.write_text(text[: starts[2] + 20], encoding="utf-8")  # cut inside element #2
    config = sources(tmp_path, {"name": "al", "kind": "alpaca", "path": str(data)})
    line = text[: starts[2]].count("\n") + 1
    refused(config, f"{data}:{line}: malformed JSON")
    # Cut after the rows validate reads (the first 5): the job names the line where the file breaks.
    data.write_text(text[: starts[7] + 20], encoding="utf-8")
    assert cli("validate", str(config)).code == 0
    line = text[: starts[7]].count("\n") + 1
    assert_one_line_error(kazhpc("preprocess", str(config), env={"KAZHPC_LOG_LEVEL": "ERROR"}), f"{data}:{line}: malformed JSON")


def test_a_source_that_is_a_folder_or_of_an_unknown_type(tmp_path: Path) -> None:
    folder = tmp_path / "muri"
    folder.mkdir()
    refused(sources(tmp_path, {"name": "f", "kind": "muri-it", "path": str(folder)}), str(folder), "is a directory", "hub:")
    sheet = tmp_path / "muri.xlsx"
    sheet.write_bytes(b"PK\x03\x04")
    refused(sources(tmp_path, {"name": "x", "kind": "muri-it", "path": str(sheet)}), str(sheet), "unsupported file type '.xlsx'")


def test_mc_answers_out_of_range_and_choices_that_are_not_a_list(tmp_path: Path) -> None:
    data = jsonl(tmp_path / "mc.jsonl", {"question": "Апта неше күн?", "choices": ["5", "6", "7"], "answer": "C"},
                 {"question": "Жыл неше ай?", "choices": ["10", "11", "12"], "answer": "D"})
    refused(tasks(tmp_path, {"name": "mine", "kind": "mc", "path": str(data)}),
            f"{data}:2: task mine: answer 'D' is not one of the choices A, B, C")
    data = jsonl(tmp_path / "mc.jsonl", {"question": "Апта неше күн?", "choices": ["5", "6", "7"], "answer": 2},
                 {"question": "Жыл неше ай?", "choices": "10, 11, 12", "answer": 2})
    refused(tasks(tmp_path, {"name": "mine", "kind": "mc", "path": str(data)}),
            f"{data}:2: task mine: 'choices' must be a list of options")


def test_overrides_with_unknown_keys_and_tasks(tmp_path: Path) -> None:
    config = tasks(tmp_path, "kk_dastur_mc", overrides={"kk_dastur_mc": str(EVAL / "dastur_mc.jsonl")})
    refused(config, "override 'evaluate.data_overridez.kk_dastur_mc=x.jsonl'",
            "evaluate.data_overridez: unknown key (did you mean 'data_overrides'?)",
            overrides=("evaluate.data_overridez.kk_dastur_mc=x.jsonl",))
    refused(config, "evaluate.data_overrides.kk_dastr_mc: not a task of this suite (did you mean 'kk_dastur_mc'?)",
            overrides=(f"evaluate.data_overrides.kk_dastr_mc={EVAL / 'dastur_mc.jsonl'}",))


def test_an_include_of_a_missing_file_names_the_including_line(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("name: t\njobs: [preprocess]\nmodel: {name: tiny, source: bundled:gemma3-270m}\n"
                      "preprocess:\n  include: sources-gone.yaml\n", encoding="utf-8")
    refused(config, f"{config}:5: preprocess.include: {tmp_path / 'sources-gone.yaml'}: config file not found")


# -- the preprocess job: rows that are rejects are kept count of ------------------------------------


def test_preprocess_rejects_bad_rows_by_file_and_line_and_loses_none(tmp_path: Path) -> None:
    """Validate warns about the rejects among the first rows; the job turns every bad row into a
    reject naming its file:line; per source, rows (records) read = kept + rejected."""
    bad_mc = jsonl(tmp_path / "mc.jsonl", *(DATA / "dastur_mc.jsonl").read_text(encoding="utf-8").splitlines()[:2],
                   {**json.loads((DATA / "dastur_mc.jsonl").read_text(encoding="utf-8").splitlines()[2]), "Correct Answer": "F"})
    entries = [
        {"name": "bad", "kind": "muri-it", "path": str(DATA / "bad_rows.jsonl")},  # line 3: malformed JSON
        {"name": "mc", "kind": "mc", "path": str(bad_mc)},  # line 3: answer letter F of A-D
        {"name": "ke", "kind": "kazparc", "path": str(PARALLEL), "directions": ["kk-en", "en-kk"],
         "columns": {"kk": "Kazakh", "en": "English"}},
    ]
    config = pipeline(tmp_path, preprocess={"sources": entries, "validation_fraction": 0.0})
    checked = cli("validate", str(config))
    assert checked.code == 0, checked.stderr
    warnings = [line for line in checked.error_lines if line.startswith("warning:")]
    assert any(f"{DATA / 'bad_rows.jsonl'}:3: malformed_json" in w for w in warnings), checked.stderr
    assert any(f"{bad_mc}:3: answer_not_in_choices" in w for w in warnings), checked.stderr

    ran = kazhpc("preprocess", str(config), env={"KAZHPC_LOG_LEVEL": "WARNING"})
    assert ran.code == 0, ran.stderr[-3000:]
    (run_dir,) = [p for p in (tmp_path / "runs").iterdir() if p.is_dir()]
    out = run_dir / "preprocess"
    manifest = json.loads((out / "manifest.json").read_text())
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert {(r["origin"], r["reason"]) for r in rejects} >= {
        (f"{DATA / 'bad_rows.jsonl'}:3", "malformed_json"), (f"{bad_mc}:3", "answer_not_in_choices")}
    for name, per in manifest["per_source"].items():
        records = 2 if name == "ke" else 1  # two directions per parallel row
        dropped = sum(1 for r in rejects if r["source"] == name)
        assert per["records_kept"] + dropped == per["rows_read"] * records, (name, per, dropped)
    assert manifest["per_source"]["ke"]["rows_read"] == 6 and manifest["per_source"]["ke"]["records_kept"] > 0
