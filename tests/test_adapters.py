"""Readers and source adapters on real files in the real schemas (tests/fixtures/data/README.md).

The hub path runs ``datasets.load_dataset`` on local dataset folders written here; nothing reaches
the network. ``python tests/test_adapters.py`` regenerates tests/fixtures/data/constitution_mc.parquet.
"""

from __future__ import annotations

import json
import shutil
import sys
import unicodedata
from pathlib import Path

import pytest

from kazhpc.config import SourceConfig
from kazhpc.data.adapters import (
    KAZNERD_LABELS,
    LABEL_NAMES_KEY,
    NER_INSTRUCTION,
    NER_NONE,
    REQUIRED_COLUMNS,
    adapt,
    detokenize,
    required_columns,
)
from kazhpc.data.readers import BadRow, check_columns, iter_rows, label_names_of
from kazhpc.data.records import RawRow, Record, Reject
from kazhpc.errors import KazhpcError

DATA = Path(__file__).resolve().parent / "fixtures" / "data"

CONSTITUTION = [
    ("Қазақстан Республикасының Конституциясы қай жылы қабылданды?", "1991", "1993", "1995", "1998", "C"),
    (
        "Конституция бойынша Қазақстан Республикасында мемлекеттік тіл қай тіл?",
        "Орыс тілі", "Қазақ тілі", "Ағылшын тілі", "Қазақ және орыс тілдері", "B",
    ),
    (
        "Қазақстан Республикасының Парламенті қандай палаталардан тұрады?",
        "Сенат пен Мәжілістен", "Мәжіліс пен Үкіметтен", "Сенат пен Жоғарғы Соттан", "Тек Мәжілістен", "A",
    ),
    (
        "Конституция бойынша мемлекеттің ең қымбат қазынасы не деп танылады?",
        "Жер мен оның қойнауы", "Адам және адамның өмірі, құқықтары мен бостандықтары",
        "Мемлекеттік бюджет", "Ұлттық валюта", "B",
    ),
    (
        "Қазақстан Республикасы Конституциясының күні қашан аталып өтеді?",
        "16 желтоқсанда", "1 мамырда", "30 тамызда", "25 қазанда", "C",
    ),
]  # fmt: skip
MC_COLUMNS = ["Question", "Option A", "Option B", "Option C", "Option D", "Correct Answer"]


def constitution_table():
    """The kazakh-constitution-mc schema (all strings), as the committed fixture holds it."""
    import pyarrow as pa

    columns = list(zip(*CONSTITUTION))
    return pa.table({name: pa.array(list(values), pa.string()) for name, values in zip(MC_COLUMNS, columns)})


def write_constitution_parquet(path: Path) -> None:
    import pyarrow.parquet as pq

    pq.write_table(constitution_table(), path)


@pytest.fixture(autouse=True)
def datasets_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """datasets.load_dataset prepares local copies in a cache: a fresh one per test, not ~/.cache."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-datasets-cache")


def src(kind: str, path: Path | str | None = None, *, name: str | None = None, **kw) -> SourceConfig:
    where = {"path": str(path)} if path is not None else {}
    return SourceConfig(name=name or kind.replace("-", ""), kind=kind, **where, **kw)


def read(source: SourceConfig) -> list[RawRow | BadRow]:
    return list(iter_rows(source))


def adapt_all(source: SourceConfig, index: int = 0) -> tuple[list[Record], list[tuple[str, Reject]]]:
    records, rejects = [], []
    for row in iter_rows(source):
        if isinstance(row, BadRow):
            rejects.append((row.origin, row.to_reject()))
            continue
        try:
            records += adapt(source, index, row)
        except Reject as reject:
            rejects.append((row.origin, reject))
    return records, rejects


def chat(user: str, assistant: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]


# -- muri-it ------------------------------------------------------------------------------------


def test_muri_jsonl_rows_and_messages() -> None:
    path = DATA / "muri_kk.jsonl"
    source = src("muri-it", path, name="muri-kk")
    rows = read(source)
    assert all(isinstance(r, RawRow) for r in rows)
    assert [r.origin for r in rows] == [f"{path}:{n}" for n in range(1, 15)]
    assert [r.index for r in rows] == list(range(14))
    records = adapt(source, 3, rows[4])
    assert len(records) == 1
    rec = records[0]
    assert rec.source == "muri-kk" and rec.origin == f"{path}:5" and rec.order == (3, 4, 0)
    assert rec.messages == chat(
        "Қазақстан Республикасының Конституциясы қашан қабылданды?",
        "Қазақстан Республикасының қазіргі Конституциясы 1995 жылғы 30 тамызда бүкілхалықтық референдумда "
        "қабылданды. Осы күн елімізде Конституция күні ретінде мемлекеттік мереке болып белгіленген. "
        "Конституция адамның құқықтары мен бостандықтарын, мемлекеттік биліктің құрылымын айқындайды.",
    )
    assert rec.answer_language == "kk" and rec.languages == ("kk",) and rec.meta == {}
    # Adapters do not clean: the messy-whitespace row reaches the record untouched.
    messy = adapt(source, 3, rows[13])[0]
    assert messy.messages[0]["content"] == "Домбыра  туралы айтып беріңіз. "
    assert "\t" in messy.messages[1]["content"] and messy.messages[1]["content"].endswith("орындалады.  ")


def test_muri_fixture_special_rows_are_intact() -> None:
    """The rows the cleaning tests rely on (README.md) must not be 'fixed' by an editor."""
    lines = (DATA / "muri_kk.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [json.loads(line) for line in lines]
    assert lines[7] == lines[1]  # exact duplicate
    assert rows[6]["input"] == rows[5]["input"] and rows[6]["output"] != rows[5]["output"]
    assert rows[8]["output"] == "Иә, солай."
    latin = [c for c in rows[11]["output"] if c in "aeoi"]
    assert sorted(latin) == ["a", "e", "i", "o"]
    assert "тәрбиесiн" in rows[11]["output"] and "тәрбиесін" not in rows[11]["output"]
    assert unicodedata.normalize("NFC", rows[12]["output"]) != rows[12]["output"]
    assert rows[12]["output"].count("\u0306") == 2
    assert "\t" in rows[13]["output"] and "  " in rows[13]["input"]


# -- alpaca -------------------------------------------------------------------------------------


def test_alpaca_json_array() -> None:
    path = DATA / "alpaca_kk.json"
    source = src("alpaca", path)
    rows = read(source)
    assert len(rows) == 10 and [r.origin for r in rows[:2]] == [f"{path}#0", f"{path}#1"]
    with_input = adapt(source, 1, rows[0])[0]
    assert with_input.messages == chat(
        "Берілген сөйлемді ресми стильде қайта жазыңыз.\n\nЕртең жиналысқа кешікпей кел.",
        "Ертеңгі жиналысқа уақытында келуіңізді сұраймыз.",
    )
    assert with_input.order == (1, 0, 0)
    without_input = adapt(source, 1, rows[8])[0]
    assert without_input.messages[0] == {"role": "user", "content": "Қазақстанның мемлекеттік рәміздерін атаңыз."}
    assert without_input.messages[1]["content"].startswith("Қазақстан Республикасының мемлекеттік рәміздері")


def test_json_extension_with_json_lines_content(tmp_path: Path) -> None:
    path = tmp_path / "muri.json"
    shutil.copy(DATA / "muri_kk.jsonl", path)
    rows = read(src("muri-it", path))
    assert len(rows) == 14 and rows[2].origin == f"{path}:3"
    assert rows[2].data["input"] == "Көшпелі қазақтардың киіз үйі туралы айтып беріңіз."


def test_json_single_object_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "one.json"
    path.write_text('{\n  "instruction": "Сәлем",\n  "output": "Сәлеметсіз бе"\n}\n', encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"one\.json: a single JSON object at the top"):
        read(src("alpaca", path))


# -- kazparc ------------------------------------------------------------------------------------


def test_kazparc_default_directions() -> None:
    path = DATA / "kazparc_raw.csv"
    source = src("kazparc", path)
    assert source.directions == ["kk-en", "en-kk", "kk-ru", "ru-kk"]
    records, rejects = adapt_all(source, 2)
    assert rejects == []
    # 8 rows x 4 directions, minus the two directions of row 7 whose ru cell is empty.
    assert len(records) == 8 * 4 - 2
    first = [r for r in records if r.order[1] == 0]
    assert [r.meta["direction"] for r in first] == ["kk-en", "en-kk", "kk-ru", "ru-kk"]
    assert [r.order for r in first] == [(2, 0, 0), (2, 0, 1), (2, 0, 2), (2, 0, 3)]
    assert first[0].messages == chat(
        "Төмендегі қазақша сөйлемді ағылшын тіліне аударыңыз:\n\nБүгін ауа райы жылы әрі шуақты.",
        "The weather is warm and sunny today.",
    )
    assert first[0].answer_language == "en" and first[0].languages == ("kk", "en")
    assert first[3].messages == chat(
        "Төмендегі орысша сөйлемді қазақ тіліне аударыңыз:\n\nСегодня погода тёплая и солнечная.",
        "Бүгін ауа райы жылы әрі шуақты.",
    )
    assert first[3].answer_language == "kk" and first[3].languages == ("ru", "kk")
    assert first[0].meta == {"direction": "kk-en", "domain": "General"}
    assert first[0].origin == f"{path}:2"
    row7 = [r.meta["direction"] for r in records if r.order[1] == 6]
    assert row7 == ["kk-en", "en-kk"]  # sub-indices keep the direction's place: (.., 6, 0), (.., 6, 1)
    assert len({r.id for r in records}) == len(records)


def test_kazparc_turkish_directions() -> None:
    source = src("kazparc", DATA / "kazparc_raw.csv", directions=["kk-tr", "tr-kk"])
    records, rejects = adapt_all(source)
    assert len(records) == 8 * 2 - 2  # row 5 has no Turkish: no direction left, so it is a reject
    assert [(origin, r.reason) for origin, r in rejects] == [(f"{DATA / 'kazparc_raw.csv'}:6", "empty_text")]
    tr = next(r for r in records if r.order[1:] == (0, 1))
    assert tr.messages == chat(
        "Төмендегі түрікше сөйлемді қазақ тіліне аударыңыз:\n\nBugün hava sıcak ve güneşli.",
        "Бүгін ауа райы жылы әрі шуақты.",
    )


def test_kazparc_bad_csv_rows() -> None:
    path = DATA / "bad_kazparc.csv"
    source = src("kazparc", path)
    rows = read(source)
    assert [type(r).__name__ for r in rows] == ["RawRow", "BadRow", "RawRow"]
    bad = rows[1]
    assert bad.origin == f"{path}:3" and bad.index == 1 and bad.reason == "malformed_csv"
    assert bad.detail == "8 fields, the header has 6"
    assert bad.raw.startswith("21,Бұл жолда")
    with pytest.raises(Reject) as info:
        adapt(source, 0, rows[2])
    assert info.value.reason == "empty_text" and "kk-en" in info.value.detail
    assert len(adapt(source, 0, rows[0])) == 4


def test_a_parallel_corpus_in_its_own_schema_by_column_mapping() -> None:
    """A Kazakh/English file with fields Kazakh and English is a kazparc-kind source by config alone."""
    path = DATA.parent / "parallel" / "kazakh_english.jsonl"
    source = src("kazparc", path, directions=["kk-en", "en-kk"], columns={"kk": "Kazakh", "en": "English"})
    assert required_columns(source) == {"Kazakh", "English"}
    records, rejects = adapt_all(source)
    assert rejects == [] and len(records) == 6 * 2
    assert records[0].messages == chat(
        "Төмендегі қазақша сөйлемді ағылшын тіліне аударыңыз:\n\nАуылда атам мен әжем тұрады.",
        "My grandparents live in the village.",
    )
    assert records[1].messages[1]["content"] == "Ауылда атам мен әжем тұрады." and records[1].answer_language == "kk"
    # Unmapped directions still need their columns: the default directions ask for Russian.
    with pytest.raises(KazhpcError, match=r"missing column 'ru' \(columns: id, Kazakh, English\)"):
        read(src("kazparc", path, columns={"kk": "Kazakh", "en": "English"}))
    with pytest.raises(ValueError, match=r"unknown field 'kz'; fields: kk, en, ru, tr"):
        src("kazparc", path, columns={"kz": "Kazakh"})
    with pytest.raises(ValueError, match=r"columns is only for kind: custom \(fields\) and kind: kazparc"):
        src("muri-it", path, columns={"prompt": "Kazakh"})


def test_json_arrays_are_decoded_lazily_and_malformed_ones_name_their_line(tmp_path: Path) -> None:
    from kazhpc.data.readers import preview_source

    path = tmp_path / "big.json"
    good = json.dumps({"input": "Сәлем", "output": "Сәлеметсіз бе, қалайсыз?"}, ensure_ascii=False)
    path.write_text("[\n" + ",\n".join([good] * 3) + ",\n" + good[:-5] + "\n]\n", encoding="utf-8")
    rows = iter_rows(src("muri-it", path))
    assert [next(rows).origin for _ in range(3)] == [f"{path}#{i}" for i in range(3)]
    with pytest.raises(KazhpcError, match=rf"^{path}:5: malformed JSON: "):
        next(rows)
    assert preview_source(src("muri-it", path), rows=3) == []  # a preview stops before the broken element
    for text, message in [("[]", "empty input"), ("[" + good + "] x", r":1: malformed JSON: Extra data"),
                          ("[" + good + " " + good + "]", r":1: malformed JSON: Expecting ',' delimiter"), ("[1]", None)]:
        path.write_text(text, encoding="utf-8")
        if message is None:
            assert read(src("muri-it", path))[0].detail == "a JSON number, expected an object"
        else:
            with pytest.raises(KazhpcError, match=message):
                read(src("muri-it", path))


# -- ner ----------------------------------------------------------------------------------------


def test_ner_string_tags() -> None:
    source = src("ner-kazakh", DATA / "ner_kk.jsonl")
    records, rejects = adapt_all(source)
    assert rejects == [] and len(records) == 6
    assert records[0].messages == chat(
        f"{NER_INSTRUCTION}\n\nАбай Құнанбайұлы 1845 жылы Шыңғыстау өңірінде дүниеге келген.",
        "Абай Құнанбайұлы — PERSON\n1845 жылы — DATE\nШыңғыстау — LOCATION",
    )
    assert records[2].messages[1]["content"] == NER_NONE
    assert records[3].messages[0]["content"].endswith(
        "«Қазақстан темір жолы» ұлттық компаниясы жаңа вагондар сатып алды."
    )
    assert records[3].messages[1]["content"] == "Қазақстан темір жолы — ORGANISATION"
    assert records[5].messages[1]["content"] == "Жанар — PERSON\n3 келі — QUANTITY\n2000 теңге — MONEY"


def test_ner_bad_and_repaired_tags() -> None:
    source = src("ner-kazakh", DATA / "bad_ner.jsonl")
    rows = read(source)
    repaired = adapt(source, 0, rows[0])[0]
    assert repaired.messages[1]["content"] == "Ертең — DATE\nШымкентте — GPE"
    assert repaired.meta == {"iob_repairs": 1, "langid_on": "prompt"}
    for row, detail in [(rows[1], "4 tokens but 3 tags"), (rows[2], "'S-PERSON' at 0 is not IOB2")]:
        with pytest.raises(Reject) as info:
            adapt(source, 0, row)
        assert info.value.reason == "bad_tags" and detail in info.value.detail


def test_detokenize() -> None:
    assert detokenize(["(", "Абай", ")", ",", "«", "Қара", "сөздер", "»", "—", "кітап", "."]) == (
        "(Абай), «Қара сөздер» — кітап."
    )


def _ner_dataset(names: list[str]):
    from datasets import ClassLabel, Dataset, Features, List, Value

    features = Features({"id": Value("string"), "tokens": List(Value("string")), "ner_tags": List(ClassLabel(names=names))})
    return Dataset.from_dict(
        {
            "id": ["0", "1"],
            "tokens": [["Мұхтар", "Әуезов", "Семейде", "оқыды", "."], ["Күн", "ашық", "."]],
            "ner_tags": [[1, 2, 3, 0, 0], [0, 0, 0]],
        },
        features=features,
    )


# A label order unlike KazNERD's: with the default map, ids 1, 2, 3 would read ADAGE, ADAGE, ART.
SMALL_LABELS = ["O", "B-PERSON", "I-PERSON", "B-GPE", "I-GPE"]


def test_ner_label_ids_through_hub_folder(tmp_path: Path) -> None:
    folder = tmp_path / "ner-kazakh"
    (folder / "data").mkdir(parents=True)
    _ner_dataset(SMALL_LABELS).to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    _ner_dataset(SMALL_LABELS).select([1]).to_parquet(str(folder / "data" / "test-00000-of-00001.parquet"))
    source = src("ner-kazakh", hub=str(folder), split="train")
    rows = read(source)
    assert [r.origin for r in rows] == [f"hub:{folder}/train#0", f"hub:{folder}/train#1"]
    assert rows[0].data["ner_tags"] == [1, 2, 3, 0, 0]  # ids are kept
    assert label_names_of(rows[0], "ner_tags") == SMALL_LABELS
    assert rows[0].data[LABEL_NAMES_KEY] is rows[1].data[LABEL_NAMES_KEY]  # shared, not copied
    rec = adapt(source, 5, rows[0])[0]
    assert rec.messages == chat(
        f"{NER_INSTRUCTION}\n\nМұхтар Әуезов Семейде оқыды.", "Мұхтар Әуезов — PERSON\nСемейде — GPE"
    )
    assert adapt(source, 5, rows[1])[0].messages[1]["content"] == NER_NONE
    test_rows = read(src("ner-kazakh", hub=str(folder), split="test"))
    assert [r.origin for r in test_rows] == [f"hub:{folder}/test#0"]
    with pytest.raises(KazhpcError, match=r"ner-kazakh/validation: cannot load dataset .*Unknown split"):
        read(src("ner-kazakh", hub=str(folder), split="validation"))


def test_ner_label_names_from_local_parquet_and_save_to_disk(tmp_path: Path) -> None:
    from datasets import DatasetDict

    path = tmp_path / "ner.parquet"
    _ner_dataset(SMALL_LABELS).to_parquet(str(path))
    rows = read(src("ner-kazakh", path))
    assert rows[0].origin == f"{path}#0" and label_names_of(rows[0], "ner_tags") == SMALL_LABELS
    assert adapt(src("ner-kazakh", path), 0, rows[0])[0].messages[1]["content"].endswith("Семейде — GPE")

    saved = tmp_path / "saved"
    DatasetDict({"validation": _ner_dataset(SMALL_LABELS)}).save_to_disk(str(saved))
    rows = read(src("ner-kazakh", hub=str(saved), split="validation"))
    assert len(rows) == 2 and rows[1].origin == f"hub:{saved}/validation#1"
    assert label_names_of(rows[0], "ner_tags") == SMALL_LABELS
    with pytest.raises(KazhpcError, match=r"no split 'train' \(splits: validation\)"):
        read(src("ner-kazakh", hub=str(saved)))


def test_ner_ids_without_names_use_kaznerd_labels(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    row = {"tokens": ["Қасым", "Жомарт", "Тоқаев", "Астанада", "."], "ner_tags": [39, 40, 40, 17, 0]}
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n" + json.dumps({**row, "ner_tags": [51, 0, 0, 0, 0]}) + "\n")
    assert KAZNERD_LABELS[39] == "B-PERSON" and KAZNERD_LABELS[17] == "B-GPE" and len(KAZNERD_LABELS) == 51
    source = src("ner-kazakh", path)
    rows = read(source)
    assert label_names_of(rows[0], "ner_tags") is None
    assert adapt(source, 0, rows[0])[0].messages[1]["content"] == "Қасым Жомарт Тоқаев — PERSON\nАстанада — GPE"
    with pytest.raises(Reject) as info:
        adapt(source, 0, rows[1])
    assert info.value.reason == "bad_tags" and "tag id 51" in info.value.detail


# -- mc -----------------------------------------------------------------------------------------


def test_mc_dastur_jsonl() -> None:
    source = src("mc", DATA / "dastur_mc.jsonl")
    records, rejects = adapt_all(source)
    assert rejects == [] and len(records) == 6
    assert records[1].messages == chat(
        "Тұсаукесер рәсімі кімге арналады?\n"
        "A) Үйленгелі жатқан жастарға\nB) Алғаш қадам басқан сәбиге\n"
        "C) Мектепті бітірген түлекке\nD) Алыстан келген қонаққа",
        "Дұрыс жауап: B) Алғаш қадам басқан сәбиге",
    )
    assert records[5].messages[1]["content"] == "Дұрыс жауап: C) Жеті"


def test_mc_constitution_parquet() -> None:
    import pyarrow.parquet as pq

    path = DATA / "constitution_mc.parquet"
    assert pq.read_table(path).equals(constitution_table()), "regenerate: python tests/test_adapters.py"
    source = src("mc", path)
    rows = read(source)
    assert [r.origin for r in rows] == [f"{path}#{i}" for i in range(5)]
    records = [rec for row in rows for rec in adapt(source, 0, row)]
    assert records[3].messages[1]["content"] == (
        "Дұрыс жауап: B) Адам және адамның өмірі, құқықтары мен бостандықтары"
    )
    assert records[0].messages[0]["content"].splitlines() == [
        "Қазақстан Республикасының Конституциясы қай жылы қабылданды?", "A) 1991", "B) 1993", "C) 1995", "D) 1998",
    ]


def test_mc_unt_schema() -> None:
    source = src("mc", DATA / "unt_mc.jsonl")
    assert required_columns(source, ["question", "A", "B", "correct_answer"]) == {"question", "A", "B", "correct_answer"}
    records, rejects = adapt_all(source)
    assert rejects == []
    assert records[0].messages == chat(
        "Қазақстан Республикасы тәуелсіздігін қай жылы жариялады?\nA) 1986\nB) 1990\nC) 1991\nD) 1993\nE) 1995",
        "Дұрыс жауап: C) 1991",
    )
    assert "E)" not in records[1].messages[0]["content"]


def test_mc_bad_rows() -> None:
    source = src("mc", DATA / "bad_mc.jsonl")
    records, rejects = adapt_all(source)
    assert records == []
    got = [(origin.rsplit(":", 1)[1], r.reason, r.detail) for origin, r in rejects]
    assert got == [
        ("1", "answer_not_in_choices", "answer 'E' is not one of A, B, C, D"),
        ("2", "too_few_choices", "1 non-empty option"),
        ("3", "empty_text", "column 'Question' is empty"),
        ("4", "answer_not_in_choices", "answer 'D' is not one of A, B, C"),
    ]


# -- custom -------------------------------------------------------------------------------------


def test_custom_columns_csv() -> None:
    path = DATA / "custom_qa.csv"
    columns = {"prompt": "suraq", "response": "zhauap", "input": "kontekst", "system": "rol"}
    source = src("custom", path, columns=columns)
    rows = read(source)
    # The second record's kontekst holds a newline, so the third record starts on line 5.
    assert [r.origin for r in rows] == [f"{path}:{n}" for n in (2, 3, 5, 6, 7)]
    records = [adapt(source, 4, row)[0] for row in rows]
    assert records[0].messages == chat("Қазақстанның астанасы қай қала?", "Қазақстанның астанасы — Астана қаласы.")
    assert records[1].messages == [
        {"role": "system", "content": "Сіз мәтінді қысқа әрі нақты түйіндейтін көмекшісіз."},
        *chat(
            "Мына мәтіннің негізгі ойын бір сөйлеммен жеткізіңіз.\n\nАуыл шетіндегі өзенге жаңа көпір салынды.\n"
            "Енді балалар мектепке айналып бармай, тура жолмен жетеді.",
            "Жаңа көпір салынғандықтан, балалардың мектепке баратын жолы қысқарды.",
        ),
    ]
    assert records[4].messages[0]["role"] == "system"


def test_custom_unknown_field_and_missing_column() -> None:
    path = DATA / "custom_qa.csv"
    # An unknown field is refused by the config itself, before any file is read.
    with pytest.raises(ValueError, match=r"unknown field 'answer'; fields: prompt, response, input, system"):
        src("custom", path, columns={"prompt": "suraq", "response": "zhauap", "answer": "zhauap"})
    wrong = src("custom", path, name="qa", columns={"prompt": "savol", "response": "zhauap"})
    with pytest.raises(KazhpcError) as info:
        read(wrong)
    assert str(info.value) == (
        f"{path}: source 'qa' (custom): missing column 'savol' (columns: suraq, kontekst, zhauap, rol)"
    )


# -- bad rows and input errors ------------------------------------------------------------------


def test_bad_rows_jsonl() -> None:
    path = DATA / "bad_rows.jsonl"
    source = src("muri-it", path)
    rows = read(source)
    # line 2 is blank (skipped, not counted); index counts good and bad rows alike.
    assert [(type(r).__name__, r.origin, r.index) for r in rows] == [
        ("RawRow", f"{path}:1", 0),
        ("BadRow", f"{path}:3", 1),
        ("RawRow", f"{path}:4", 2),
        ("RawRow", f"{path}:5", 3),
        ("BadRow", f"{path}:6", 4),
        ("RawRow", f"{path}:7", 5),
    ]
    malformed = rows[1]
    assert malformed.reason == "malformed_json" and malformed.raw.startswith('{"input": "Қазақ тілі туралы')
    assert "Unterminated string" in malformed.detail
    assert rows[4].reason == "malformed_json" and rows[4].detail == "a JSON array, expected an object"
    records, rejects = adapt_all(source)
    assert len(records) == 2
    assert [(o.rsplit(":", 1)[1], r.reason, r.detail) for o, r in rejects] == [
        ("3", "malformed_json", malformed.detail),
        ("4", "empty_text", "column 'output' is empty"),
        ("5", "wrong_type", "column 'output' holds int, expected text"),
        ("6", "malformed_json", "a JSON array, expected an object"),
    ]


def test_empty_input() -> None:
    path = DATA / "empty.jsonl"
    with pytest.raises(KazhpcError) as info:
        read(src("muri-it", path, name="nothing"))
    assert str(info.value) == f"{path}: empty input, no rows (source 'nothing')"


def test_header_only_csv_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "header.csv"
    path.write_text("id,kk,en,ru,tr,domain\n", encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"header\.csv: empty input"):
        read(src("kazparc", path))


def test_missing_file_and_unsupported_extension(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.jsonl"
    with pytest.raises(KazhpcError) as info:
        read(src("muri-it", missing, name="gone"))
    assert str(info.value) == f"{missing}: file not found (source 'gone')"
    readme = DATA / "README.md"
    with pytest.raises(KazhpcError, match=rf"{readme}: unsupported file type '\.md'"):
        read(src("muri-it", readme))
    with pytest.raises(KazhpcError, match=r"no such dataset folder"):
        read(src("muri-it", hub=str(tmp_path / "no-folder")))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "cp1251.jsonl"
    good = json.dumps({"input": "Сәлем", "output": "Сәлеметсіз бе"}, ensure_ascii=False)
    path.write_bytes(good.encode() + b"\n" + '{"input": "Привет", "output": "Здравствуйте"}\n'.encode("cp1251"))
    with pytest.raises(KazhpcError, match=rf"{path}:2: not UTF-8 text"):
        read(src("muri-it", path))
    csv_path = tmp_path / "cp1251.csv"
    csv_path.write_bytes("input,output\nПривет,Здравствуйте\n".encode("cp1251"))
    with pytest.raises(KazhpcError, match=rf"{csv_path}:2: not UTF-8 text"):
        read(src("muri-it", csv_path))


def test_missing_column_names_column_and_file(tmp_path: Path) -> None:
    path = tmp_path / "muri.jsonl"
    path.write_text('{"input": "Сәлем", "foo": 1}\n', encoding="utf-8")
    with pytest.raises(KazhpcError) as info:
        read(src("muri-it", path, name="muri-kk"))
    assert str(info.value) == f"{path}: source 'muri-kk' (muri-it): missing column 'output' (columns: input, foo)"
    # The check runs before any row is yielded, for every reader.
    alpaca_on_muri = iter_rows(src("alpaca", DATA / "muri_kk.jsonl"))
    with pytest.raises(KazhpcError, match=r"muri_kk\.jsonl: source 'alpaca' \(alpaca\): missing column 'instruction'"):
        next(alpaca_on_muri)
    with pytest.raises(KazhpcError, match=r"constitution_mc\.parquet: .*missing columns 'ner_tags', 'tokens' \(columns: Question,"):
        read(src("ner-kazakh", DATA / "constitution_mc.parquet"))
    with pytest.raises(KazhpcError, match=r"kazparc_raw\.csv: source 'mc' \(mc\): missing columns "
                                          r"'Correct Answer', 'Option A', 'Option B', 'Question' \(columns: id, kk,"):
        read(src("mc", DATA / "kazparc_raw.csv"))


def test_check_columns_direct() -> None:
    source = src("muri-it", DATA / "muri_kk.jsonl", name="m")
    check_columns(source, ["input", "output", LABEL_NAMES_KEY], REQUIRED_COLUMNS["muri-it"])
    with pytest.raises(KazhpcError, match=r"missing column 'output' \(columns: input\)$"):
        check_columns(source, ["input", LABEL_NAMES_KEY], REQUIRED_COLUMNS["muri-it"])


def test_hub_folder_of_json_lines(tmp_path: Path) -> None:
    """A local copy of a hub data set laid out as data files goes through datasets.load_dataset."""
    folder = tmp_path / "muri-it-language-split"
    folder.mkdir()
    shutil.copy(DATA / "muri_kk.jsonl", folder / "train.jsonl")
    source = src("muri-it", hub=str(folder))
    records, rejects = adapt_all(source, 1)
    assert rejects == [] and len(records) == 14
    assert records[0].origin == f"hub:{folder}/train#0" and records[0].order == (1, 0, 0)
    assert records[8].messages[1]["content"] == "Иә, солай."
    with pytest.raises(KazhpcError, match=rf"hub:{folder}: source 'alpaca' \(alpaca\): missing column 'instruction'"):
        read(src("alpaca", hub=str(folder)))


if __name__ == "__main__":
    write_constitution_parquet(DATA / "constitution_mc.parquet")
    print("wrote", DATA / "constitution_mc.parquet", file=sys.stderr)
