"""Cleaning steps: text normalisation, language ID, exact/near dedup, decontamination.

Real lingua and real datasketch throughout, no mocks. The Kazakh, Russian, English and Turkish
sentences are written for these tests.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from datasketch import MinHash

from kazhpc.config import DecontaminationConfig, DedupConfig, LanguageIdConfig
from kazhpc.data.decontam import Decontaminator
from kazhpc.data.dedup import MINHASH_SEED, ExactDeduplicator, NearDuplicateIndex, exact_key, exact_key_of
from kazhpc.data.langid import LanguageIdentifier, check_record
from kazhpc.data.records import Record, Reject
from kazhpc.data.text import fix_lookalikes, nfc, normalize_for_hash, normalize_whitespace, word_count
from kazhpc.errors import KazhpcError

KK = "Біздің ауылдың маңында үлкен көл бар, жазда балалар сонда шомылып, ересектер балық аулайды."
KK_2 = "Мұғалім оқушыларға жаңа тақырыпты түсіндіріп, үйге бірнеше жаттығу берді."
RU = "Вчера вечером мы долго гуляли по парку и обсуждали планы на следующее лето."
EN = "The library on the corner closes early on Sundays, so we usually go there on Saturday mornings."
TR = "Yarın sabah erken kalkıp pazara gideceğiz, çünkü taze sebze almak istiyoruz."
KK_RU = (
    "Мен бүгін дүкенге барып, нан мен сүт сатып алдым. "
    "А потом мы вместе пошли в кино и смотрели новый фильм до поздней ночи."
)
# 32 words: the near-duplicate tests change its last word.
GARDENER = (
    "Көктем келгенде біздің ауылдағы қарт бағбан әр таңертең ерте тұрып, алма ағаштарын суарып, "
    "жас көшеттерді күтіп, көршілердің балаларына бау-бақша өсірудің қыр-сырын асықпай түсіндіріп "
    "беретін еді. Ол кісінің бағы бүкіл ауданға белгілі болатын."
)
LIBRARY = (
    "Қала орталығындағы жаңа кітапхана демалыс күндері де ашық, онда балаларға арналған ертегі "
    "кештері жиі өтеді, ал ересектер үшін шетел тілдері курстары ұйымдастырылады."
)


def record(answer: str, *, prompt: str = "Сұраққа жауап беріңіз.", language: str = "kk", row: int = 0) -> Record:
    return Record(
        source="test",
        origin=f"test.jsonl:{row + 1}",
        order=(0, row, 0),
        messages=[{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
        answer_language=language,
        languages=(language,),
    )


# --------------------------------------------------------------------------------------------
# text.py


def test_nfc_composes_decomposed_short_i():
    decomposed = "Аи\u0306гүл"  # "Айгүл" with й written as и + combining breve
    assert len(decomposed) == 6
    text, changes = nfc(decomposed)
    assert (text, changes) == ("Айгүл", 1)
    assert "\u0439" in text and "\u0306" not in text
    assert nfc("Айгүл") == ("Айгүл", 0)


def test_lookalikes_fixed_inside_kazakh_words():
    broken = "Қ\u0061з\u0061қст\u0061н"  # Latin a three times
    assert sum(c.isascii() for c in broken) == 3
    text, changes = fix_lookalikes(broken)
    assert (text, changes) == ("Қазақстан", 3)
    assert not any(c.isascii() for c in text)
    # Latin i in a Kazakh word becomes Kazakh і (U+0456), upper and lower case.
    text, changes = fix_lookalikes("Бiз Iле өзенiнде болдық")
    assert (text, changes) == ("Біз Іле өзенінде болдық", 3)
    assert text.count("\u0456") == 2 and text.count("\u0406") == 1
    # Kazakh-specific stand-ins: Latin schwa / barred o, Y for Ү, ¥ for Ұ.
    assert fix_lookalikes("\u0259ке мен \u0275зен, \u018fлия") == ("әке мен өзен, Әлия", 3)
    assert fix_lookalikes("Yкімет ¥лы ж¥мыс") == ("Үкімет Ұлы жұмыс", 3)
    # Fixing is idempotent.
    assert fix_lookalikes("Қазақстан")[1] == 0


@pytest.mark.parametrize(
    "text",
    [
        "Hello world, this is English.",
        "Python және JavaScript тілдері",  # all-Latin words beside Kazakh ones
        "Сайт: https://example.kz/kazakh/page?id=42 мен www.test.kz",
        "Пошта: aсан@mail.kz",  # e-mail token with a Cyrillic а: left alone
        "2024 жылы 15 000 теңге, XIX ғасыр",
        "IBMнің және BMW-ның кеңсесі",  # acronym + case suffix
        "pаge",  # Cyrillic а beside g, which has no Cyrillic twin
        "x = а + b",  # one-letter Latin words
    ],
)
def test_lookalikes_leave_latin_words_urls_and_numbers_alone(text):
    assert fix_lookalikes(text) == (text, 0)


def test_lookalikes_only_touch_the_mixed_word():
    text, changes = fix_lookalikes("Бiз Python тiлiн үйренемiз, ал Pоссия - көршi ел.")
    assert text == "Біз Python тілін үйренеміз, ал Россия - көрші ел."
    assert changes == 6


@pytest.mark.parametrize(
    ("raw", "expected", "changes"),
    [
        ("  Сәлем,\t\tәлем!  ", "Сәлем, әлем!", 1),
        ("бірінші жол   \n   екінші жол", "бірінші жол\nекінші жол", 1),
        ("бір\n\n\n\n\nекі", "бір\n\nекі", 1),
        ("бір\n\nекі", "бір\n\nекі", 0),  # one blank line (a paragraph) is kept
        ("Жол бір\nЖол екі\nЖол үш", "Жол бір\nЖол екі\nЖол үш", 0),  # poem lines kept
        ("бір\r\nекі\rүш", "бір\nекі\nүш", 1),
        ("100\u00a0теңге\u2009ғана", "100 теңге ғана", 1),
        ("1. Алма\n 2. Алмұрт \n\n\n", "1. Алма\n2. Алмұрт", 1),
        ("", "", 0),
        (" \n\t ", "", 1),
    ],
)
def test_normalize_whitespace(raw, expected, changes):
    assert normalize_whitespace(raw) == (expected, changes)


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("— . ... ! «»", 0),  # punctuation-only tokens are not words
        ("Жаңа-жаңа үйлер 2024 жылы салынды .", 5),  # hyphenated word is one word, "." is none
        ("Бағасы 3,5 млн теңге — 15% арзан.", 6),  # numbers are words, the dash is not
        ("«Иә»", 1),
        ("👍 → _", 0),
        ("т.б. т.с.с.", 2),
        ("бір\nекі\tүш", 3),
        ("", 0),
    ],
)
def test_word_count(text, count):
    assert word_count(text) == count


def test_normalize_for_hash():
    assert normalize_for_hash("  «Қазақстан», ЕЛІ!  — т.б.\n Hello... ") == "қазақстан елі т.б hello"
    assert normalize_for_hash("Сәлем ӘЛЕМ") == normalize_for_hash("сәлем,   әлем!")
    assert normalize_for_hash("— … !") == ""


# --------------------------------------------------------------------------------------------
# langid.py


@pytest.fixture(scope="module")
def ident() -> LanguageIdentifier:
    return LanguageIdentifier()


@pytest.mark.parametrize(("text", "code"), [(KK, "kk"), (KK_2, "kk"), (RU, "ru"), (EN, "en"), (TR, "tr")])
def test_detect_language(ident, text, code):
    result = ident.detect(text)
    assert result.language == code
    assert result.confidence >= 0.9
    assert result.mixed_kk_ru is False
    assert result.short is False


def test_mixed_kazakh_russian_is_flagged(ident):
    result = ident.detect(KK_RU)
    assert result.mixed_kk_ru is True
    assert result.language in ("kk", "ru")
    # Each half alone is not mixed.
    half = KK_RU.index("А потом")
    assert ident.detect(KK_RU[:half]).mixed_kk_ru is False
    assert ident.detect(KK_RU[half:]).mixed_kk_ru is False


def test_detect_many_matches_detect(ident):
    texts = [KK, RU, "Иә.", EN, KK_RU, "这是一个用来测试语言识别的中文句子，没有别的意思。"]
    one_by_one = ident.detect_many(texts)

    def summary(results):  # lingua's confidences may differ in the last bits between calls
        return [(r.language, round(r.confidence, 6), r.mixed_kk_ru, r.short) for r in results]

    assert summary(one_by_one) == summary([ident.detect(t) for t in texts])
    assert summary(ident.detect_many(texts, parallel=True)) == summary(one_by_one)
    assert [r.language for r in one_by_one] == ["kk", "ru", None, "en", one_by_one[4].language, None]
    assert [r.short for r in one_by_one] == [False, False, True, False, False, False]


def test_check_record_accepts_expected_language(ident):
    rec = record(KK)
    check_record(rec, ident, LanguageIdConfig())
    assert rec.meta["lang"] == "kk"
    assert rec.meta["mixed_kk_ru"] is False
    rec = record(RU, language="ru")
    check_record(rec, ident, LanguageIdConfig())
    assert rec.meta["lang"] == "ru"


def test_check_record_rejects_wrong_language(ident):
    rec = record(RU)
    with pytest.raises(Reject) as err:
        check_record(rec, ident, LanguageIdConfig(min_confidence=0.5))
    assert err.value.reason == "wrong_language"
    confidence = ident.detect(RU).confidence
    assert err.value.detail == f"expected kk, got ru ({confidence:.2f})"
    assert re.fullmatch(r"expected kk, got ru \(\d\.\d\d\)", err.value.detail)
    assert rec.meta["lang"] == "ru"  # noted for the manifest even when rejected

    rec = record("这是一个用来测试语言识别的中文句子，没有别的意思。")
    with pytest.raises(Reject, match=r"wrong_language: expected kk, got und \(0\.00\)"):
        check_record(rec, ident, LanguageIdConfig())


def test_check_record_short_answer_is_und_not_rejected(ident):
    for answer in ("Иә, дұрыс.", "Да, верно.", "B"):
        rec = record(answer)
        check_record(rec, ident, LanguageIdConfig(min_confidence=0.9))
        assert rec.meta["lang"] == "und"
        assert rec.meta["mixed_kk_ru"] is False


def test_check_record_joins_answers_and_flags_mixed(ident):
    rec = record(KK_RU[: KK_RU.index("А потом")])
    rec.messages += [
        {"role": "user", "content": "Тағы не істедің?"},
        {"role": "assistant", "content": KK_RU[KK_RU.index("А потом") :]},
    ]
    try:
        check_record(rec, ident, LanguageIdConfig(min_confidence=0.0))
    except Reject:  # pragma: no cover - min_confidence 0 accepts any identified language
        pytest.fail("min_confidence 0 must accept")
    assert rec.meta["mixed_kk_ru"] is True


def test_check_record_disabled_and_unknown_language(ident):
    rec = record(RU)
    check_record(rec, ident, LanguageIdConfig(enabled=False))
    assert "lang" not in rec.meta
    with pytest.raises(KazhpcError, match="'uz'"):
        check_record(record(KK, language="uz"), ident, LanguageIdConfig())


# --------------------------------------------------------------------------------------------
# dedup.py


def test_exact_dedup_ignores_case_whitespace_and_edge_punctuation():
    a = record("Қазақстанның астанасы — Астана.", prompt="Қазақстанның астанасы қай қала?", row=0)
    b = record("қазақстанның  астанасы   Астана", prompt="ҚАЗАҚСТАННЫҢ\tастанасы қай қала ?", row=1)
    c = record("Қазақстанның ең үлкен қаласы — Алматы.", prompt="Қазақстанның астанасы қай қала?", row=2)
    assert exact_key(a) == exact_key(b) != exact_key(c)
    assert exact_key(a) == exact_key_of(normalize_for_hash(a.text()))
    assert re.fullmatch(r"[0-9a-f]{40}", exact_key(a))
    seen = ExactDeduplicator()
    assert seen.seen(exact_key(a), a.id) is None
    assert seen.seen(exact_key(b), b.id) == a.id
    assert seen.seen(exact_key(c), c.id) is None
    assert seen.seen(exact_key(b), "later") == a.id
    assert len(seen) == 2


def _shingles(text: str, k: int = 3) -> set[tuple[str, ...]]:
    words = normalize_for_hash(text).split()
    return {tuple(words[i : i + k]) for i in range(len(words) - k + 1)}


def test_near_dedup_matches_one_changed_word_and_not_unrelated_text():
    variant = GARDENER.replace("белгілі болатын.", "белгілі еді.")
    assert word_count(GARDENER) == 32 and word_count(variant) == 32
    a, b = _shingles(GARDENER), _shingles(variant)
    assert len(a & b) / len(a | b) == 29 / 31  # true Jaccard ≈ 0.94, threshold 0.8

    index = NearDuplicateIndex(DedupConfig())
    assert index.add_or_match("gardener", index.signature(GARDENER)) is None
    assert index.add_or_match("library", index.signature(LIBRARY)) is None
    assert index.add_or_match("variant", index.signature(variant)) == "gardener"
    assert index.add_or_match("unrelated", index.signature(KK)) is None
    assert len(index) == 3  # the variant was not indexed
    assert index.similarity(index.signature(GARDENER), index.signature(variant)) >= 0.8
    assert index.similarity(index.signature(GARDENER), index.signature(LIBRARY)) < 0.2
    with pytest.raises(ValueError, match="already indexed"):
        index.add_or_match("library", index.signature(RU))


def test_near_dedup_short_texts_use_the_whole_text():
    index = NearDuplicateIndex(DedupConfig(shingle_words=3))
    assert index.add_or_match("a", index.signature("Иә, дұрыс")) is None
    assert index.add_or_match("b", index.signature("иә дұрыс!")) == "a"
    assert index.add_or_match("c", index.signature("Жоқ, бұрыс")) is None
    assert index.signature("") == [2**32 - 1] * 64


def test_near_dedup_signature_is_datasketch_minhash():
    cfg = DedupConfig(num_perm=128)
    index = NearDuplicateIndex(cfg)
    signature = index.signature(GARDENER)
    assert len(signature) == 128 and all(isinstance(v, int) and 0 <= v < 2**32 for v in signature)
    reference = MinHash(num_perm=128, seed=MINHASH_SEED, hashfunc=int)
    reference.update_batch(index.shingle_hashes(normalize_for_hash(GARDENER)).tolist())
    assert reference.hashvalues.tolist() == signature
    assert index.minhash(signature).jaccard(reference) == 1.0


def _decisions(signatures: list[list[int]]) -> list[str | None]:
    index = NearDuplicateIndex(DedupConfig())
    return [index.add_or_match(f"row{i}", sig) for i, sig in enumerate(signatures)]


def test_near_dedup_is_deterministic():
    variant = GARDENER.replace("белгілі болатын.", "белгілі еді.")
    texts = [GARDENER, LIBRARY, variant, KK, GARDENER.upper(), LIBRARY + " Кіру тегін."]
    first = _decisions([NearDuplicateIndex(DedupConfig()).signature(t) for t in texts])
    assert first == [None, None, "row0", None, "row0", "row1"]
    # Recomputed signatures, stored as JSON and read back, give the same decisions.
    stored = json.dumps([NearDuplicateIndex(DedupConfig()).signature(t) for t in texts])
    assert _decisions(json.loads(stored)) == first
    # Another process (other string-hash salt) computes the same signatures.
    code = (
        "import json, sys\n"
        "from kazhpc.config import DedupConfig\n"
        "from kazhpc.data.dedup import NearDuplicateIndex\n"
        "index = NearDuplicateIndex(DedupConfig())\n"
        "print(json.dumps([index.signature(t) for t in json.load(sys.stdin)]))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(texts), capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(out.stdout) == json.loads(stored)


# --------------------------------------------------------------------------------------------
# decontam.py

EVAL_ROWS = [
    {
        "id": "hist-1",
        "question": "Абай Құнанбайұлы қай жылы дүниеге келген және ол қандай шығармалар жазған?",
        "choices": ["1845 жылы", "1856 жылы", "1890 жылы", "1905 жылы"],
        "answer": "A",
    },
    {
        "id": "hist-2",
        "question": "Қазақ хандығының негізін қалаған Керей мен Жәнібек хандар туралы қысқаша айтып беріңіз.",
        "choices": ["Керей мен Жәнібек", "Абылай хан", "Тәуке хан", "Қасым хан"],
        "answer": "A",
    },
]


@pytest.fixture
def eval_file(tmp_path):
    path = tmp_path / "kk_history.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in EVAL_ROWS) + "\n", encoding="utf-8")
    return str(path)


def test_decontamination_rejects_an_8_word_run(eval_file):
    decontam = Decontaminator(DecontaminationConfig(files=[eval_file], ngram=8))
    assert (decontam.items, decontam.short_items, decontam.ignored_items) == (2, 8, 4)
    # "Қазақ хандығының негізін қалаған Керей мен Жәнібек хандар": 8 words of row 2's question.
    rec = record("Сабақта мұғалім Қазақ хандығының негізін қалаған Керей мен Жәнібек хандар жайлы әңгімеледі.")
    with pytest.raises(Reject) as err:
        decontam.check(rec)
    assert err.value.reason == "contaminated"
    assert err.value.detail == f"8-gram overlap with {eval_file}:2"
    # Case, punctuation and a Latin lookalike do not hide the overlap; the prompt counts too.
    sneaky = record(
        "Жауап төменде.", prompt="ҚAЗAҚ ХАНДЫҒЫНЫҢ негізін, қалаған «Керей» мен Жәнібек хандар! Кім олар?"
    )
    with pytest.raises(Reject, match=re.escape(f"8-gram overlap with {eval_file}:2")):
        decontam.check(sneaky)
    # The caller may pass the normalised text it already has.
    with pytest.raises(Reject):
        decontam.check(rec, normalized=normalize_for_hash(rec.text()))


def test_decontamination_keeps_a_7_word_run(eval_file):
    decontam = Decontaminator(DecontaminationConfig(files=[eval_file], ngram=8))
    # "хандығының негізін қалаған Керей мен Жәнібек хандар": only 7 consecutive shared words.
    rec = record("Сабақта мұғалім хандығының негізін қалаған Керей мен Жәнібек хандар жайлы әңгімеледі.")
    decontam.check(rec)
    assert decontam.match(rec.text()) is None
    # With 7-grams the same record is contaminated.
    with pytest.raises(Reject, match="7-gram overlap"):
        Decontaminator(DecontaminationConfig(files=[eval_file], ngram=7)).check(rec)


def test_decontamination_plain_text_file(tmp_path):
    path = tmp_path / "items.txt"
    path.write_text("\nБірінші жол қысқа.\nМектеп кітапханасында ертегілер мен өлеңдер жинағы бар екен.\n", encoding="utf-8")
    decontam = Decontaminator(DecontaminationConfig(files=[str(path)], ngram=8))
    assert (decontam.items, decontam.short_items) == (1, 1)
    text = "Біздің мектеп кітапханасында ертегілер мен өлеңдер жинағы бар екен, оны бәрі оқиды."
    assert decontam.match(text) == f"{path}:3"


def test_decontamination_reads_csv_and_parquet_evaluation_files(tmp_path):
    """An evaluate task may read CSV or Parquet: its items are matched cell by cell, not as bytes."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": r["question"], "A": r["choices"][0], "B": r["choices"][1], "answer": r["answer"]} for r in EVAL_ROWS]
    with (tmp_path / "items.csv").open("w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "items.parquet")
    text = "Сабақта мұғалім Қазақ хандығының негізін қалаған Керей мен Жәнібек хандар жайлы әңгімеледі."
    for name in ("items.csv", "items.parquet"):
        decontam = Decontaminator(DecontaminationConfig(files=[str(tmp_path / name)], ngram=8))
        assert decontam.items == 2, name
        where = decontam.match(text)
        assert where is not None and where.startswith(str(tmp_path / name)), (name, where)


def test_decontamination_missing_and_malformed_files(tmp_path):
    missing = tmp_path / "no_such_eval.jsonl"
    with pytest.raises(KazhpcError, match=r"no_such_eval\.jsonl: decontamination file not found"):
        Decontaminator(DecontaminationConfig(files=[str(missing)]))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "ok"}\n{"question": \n', encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"bad\.jsonl:2: malformed JSON"):
        Decontaminator(DecontaminationConfig(files=[str(bad)]))
    assert Decontaminator(DecontaminationConfig()).match(KK) is None  # no files: nothing to match


def test_cyrillic_standins_of_other_turkic_alphabets():
    # Bashkir qa, en with hook, ghe with stroke and hook, Altai u/o with diaeresis.
    text = "Қазаҡстан, таӈ, аӻаш, кӱз, кӧл; Ҡарағанды"
    fixed, changes = fix_lookalikes(text)
    assert fixed == "Қазақстан, таң, ағаш, күз, көл; Қарағанды"
    assert changes == 6
    # Mixed with a Latin look-alike in another word: both kinds counted.
    fixed, changes = fix_lookalikes("aуыл мен Қазаҡстан")
    assert (fixed, changes) == ("ауыл мен Қазақстан", 2)
