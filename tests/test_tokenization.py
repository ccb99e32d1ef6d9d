"""Tokenizer analysis on real tokenizers (no mocks): loading offline, round trips, fertility,
parity, the report files, and one-line errors for bad input."""

from __future__ import annotations

import csv
import json
import socket
import unicodedata
from pathlib import Path

import pytest

from kazhpc.data.text import word_count
from kazhpc.errors import KazhpcError
from kazhpc.models import bundled_checkpoint_dir
from kazhpc.tokenization.offline import OFFLINE_TOKENIZERS, load_tokenizer_by_name
from kazhpc.tokenization.corpus import LANGUAGES, CorpusSpec, read_corpus
from kazhpc.tokenization.measure import measure
from kazhpc.tokenization.report import flat_metrics, tokenizer_report

FIXTURE = Path(__file__).parent / "fixtures" / "parallel" / "kk_en_ru_tr.jsonl"
KAZNERD = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaznerd"
NAMES = list(OFFLINE_TOKENIZERS)

ROUND_TRIP = [
    "Қазақстан Республикасының астанасы — Астана қаласы. Ол 1997 жылдан бері астана!",
    "Әке, ұлым, қызым, үй, өнер, ғылым, һәм, іні, ңғқ: ӘҒҚҢӨҰҮҺІ.",
    "Москва — столица России; ёлка, щётка, «кавычки» и №5.",
    "The quick brown fox jumps over 13 lazy dogs (3.5% of them).",
    "  two spaces,\ttab\nnew line\n\nblank line, emoji 😀 end  ",
    "<bos> <s> <|begin_of_text|> <|endoftext|> [INST] are plain text here",
]


@pytest.fixture(scope="session")
def adapters(model_cache: Path) -> dict:
    """The five offline tokenizers, loaded while any network connection raises."""

    def refuse(*args, **kwargs):
        raise OSError("network access during offline tokenizer loading")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", refuse)
        patch.setattr(socket, "create_connection", refuse)
        return {name: load_tokenizer_by_name(name, model_cache) for name in NAMES}


@pytest.fixture(scope="session")
def report(adapters: dict, model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tokenizer-report")
    return out, tokenizer_report(NAMES, CorpusSpec(FIXTURE, name="fixture"), out, model_cache)


def fixture_rows() -> list[dict]:
    return [json.loads(line) for line in FIXTURE.read_text(encoding="utf-8").splitlines() if line.strip()]


# -- the tokenizers --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.slow
def test_offline_tokenizer_round_trips(adapters: dict, name: str) -> None:
    adapter = adapters[name]
    assert adapter.vocab_size > 100_000
    for text in ROUND_TRIP:
        ids = adapter.encode(text)
        assert ids and all(0 <= i < adapter.vocab_size for i in ids)
        assert adapter.decode(ids) == text, f"{name} does not round-trip {text!r}"
        if adapter.bos_id is not None:
            assert adapter.bos_id not in ids  # encode adds no special token, and makes none from text
    assert adapter.encode_batch(ROUND_TRIP) == [adapter.encode(t) for t in ROUND_TRIP]
    assert len(adapter.pieces("Қазақстанның")) == len(adapter.encode("Қазақстанның"))


@pytest.mark.slow
def test_special_tokens_each_model_adds(adapters: dict) -> None:
    assert adapters["gemma3"].special_ids == (adapters["gemma3"].bos_id,) == (2,)
    assert adapters["llama3"].special_ids == (128000,)
    assert adapters["llama4"].special_ids == (200000,)
    assert adapters["tekken"].special_ids == (1,)
    assert adapters["qwen2.5"].special_ids == () and adapters["qwen2.5"].bos_id is None
    assert adapters["qwen2.5"].vocab_size == 151_665  # Qwen2.5's len(tokenizer)
    assert [adapters[n].unk_id for n in NAMES] == [3, None, None, None, None]


@pytest.mark.slow
def test_a_tokenizer_directory_loads_like_the_named_one(adapters: dict, model_cache: Path, tmp_path: Path) -> None:
    """A directory of tokenizer files only (no config.json) is a valid spec."""
    checkpoint = bundled_checkpoint_dir("gemma3-270m", model_cache)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((checkpoint / name).read_bytes())
    local = load_tokenizer_by_name(str(tmp_path), model_cache)
    assert local.name == str(tmp_path)
    assert local.encode_batch(ROUND_TRIP) == adapters["gemma3"].encode_batch(ROUND_TRIP)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("llama5", r"tokenizer 'llama5': unknown; offline: gemma3, llama3, llama4, qwen2\.5, tekken, or"),
        ("./no/such/dir", r"tokenizer './no/such/dir': no such directory"),
        ("bundled:gemma9", r"tokenizer 'bundled:gemma9': .*unknown bundled model"),
        ("nobody/no-such-tokenizer", r"tokenizer 'nobody/no-such-tokenizer': cannot load .*HF_HUB_OFFLINE"),
    ],
)
def test_unloadable_tokenizers_are_one_line_errors(spec: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(KazhpcError, match=message) as info:
        load_tokenizer_by_name(spec, tmp_path)
    assert "\n" not in str(info.value)


# -- measurements on the parallel fixture ----------------------------------------------------------


@pytest.mark.slow
def test_the_tax_exists_for_every_tokenizer(report: tuple[Path, dict]) -> None:
    _, results = report
    for name in NAMES:
        langs = results["tokenizers"][name]["languages"]
        assert langs["kk"]["fertility"] > 1
        assert langs["kk"]["fertility"] > langs["en"]["fertility"], name
        assert langs["kk"]["split3_share"] > langs["en"]["split3_share"], name
        assert results["tokenizers"][name]["parity"]["en"] > 1, name
        for lang in LANGUAGES:
            assert 0.0 <= langs[lang]["split3_share"] <= 1.0
            assert langs[lang]["chars_per_token"] > 1
            assert langs[lang]["bytes_per_token"] >= langs[lang]["chars_per_token"]


@pytest.mark.slow
def test_word_counts_are_word_counts(report: tuple[Path, dict]) -> None:
    _, results = report
    rows = fixture_rows()
    for lang in LANGUAGES:
        expected_words = sum(word_count(row[lang]) for row in rows)
        for name in NAMES:
            m = results["tokenizers"][name]["languages"][lang]
            assert m["words"] == expected_words
            assert m["texts"] == len(rows)
            assert m["chars"] == sum(len(row[lang]) for row in rows)
    # the parity is a ratio of the same token counts (no special tokens by default)
    for name in NAMES:
        langs = results["tokenizers"][name]["languages"]
        assert results["tokenizers"][name]["parity"]["en"] == pytest.approx(
            langs["kk"]["tokens"] / langs["en"]["tokens"], abs=1e-4
        )


@pytest.mark.slow
def test_gemma3_has_no_unknown_tokens_on_kazakh(report: tuple[Path, dict]) -> None:
    _, results = report
    kk = results["tokenizers"]["gemma3"]["languages"]["kk"]
    assert kk["has_unk"] and kk["unk_tokens"] == 0 and kk["unk_rate"] == 0.0
    for name in ("llama3", "llama4", "qwen2.5", "tekken"):  # byte-level: cannot have one
        assert not results["tokenizers"][name]["languages"]["kk"]["has_unk"]


@pytest.mark.slow
def test_special_tokens_are_counted_on_request(adapters: dict) -> None:
    texts = [row["kk"] for row in fixture_rows()]
    for name in NAMES:
        plain = measure(adapters[name], texts)
        with_special = measure(adapters[name], texts, add_special_tokens=True)
        assert with_special.tokens - plain.tokens == len(texts) * len(adapters[name].special_ids)
        assert with_special.words == plain.words and with_special.words_3plus == plain.words_3plus


# -- the report files ------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_writes_md_csv_png(report: tuple[Path, dict], model_cache: Path, tmp_path: Path) -> None:
    out, results = report
    with (out / "tokenizers.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [(r["tokenizer"], r["language"]) for r in rows] == [(n, lang) for n in NAMES for lang in LANGUAGES]
    assert all(float(r["fertility"]) > 0 for r in rows)
    assert all(r["parity_kk"] == "" if r["language"] == "kk" else float(r["parity_kk"]) > 1 for r in rows)
    md = (out / "tokenizers.md").read_text(encoding="utf-8")
    assert md.count("\n| ") >= len(rows) + 1 and all(f"| {n} | kk |" in md for n in NAMES)
    assert "tokens / words" in md and "Unicode NFC only" in md
    assert (out / "fertility.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "tokenizers.json").read_text(encoding="utf-8"))["rows"] == results["rows"]
    assert results["corpus"]["langid"]["kk"]["kk"] == 1.0
    metrics = flat_metrics(results)
    assert metrics["gemma3.kk.fertility"] == results["tokenizers"]["gemma3"]["languages"]["kk"]["fertility"]
    assert metrics["llama3.parity_kk_en"] > 1
    # deterministic: a second run writes the same bytes
    tokenizer_report(NAMES, CorpusSpec(FIXTURE, name="fixture"), tmp_path, model_cache)
    for name in ("tokenizers.csv", "tokenizers.md", "tokenizers.json", "fertility.png"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes(), name


# -- corpus readers --------------------------------------------------------------------------------


def test_readers_and_nfc(tmp_path: Path) -> None:
    decomposed = unicodedata.normalize("NFD", "Айгүл ойнайды")  # й, ү decomposed
    assert decomposed != "Айгүл ойнайды"
    (tmp_path / "plain.txt").write_text(f"  {decomposed}  \n\n  \nЕкінші жол.\n", encoding="utf-8")
    assert read_corpus(CorpusSpec(tmp_path / "plain.txt")).columns == {"kk": ["Айгүл ойнайды", "Екінші жол."]}

    lines = ['{"text": "Бірінші", "n": 1}', '{"text": null}', "", '{"text": "Екінші"}']
    (tmp_path / "mono.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert read_corpus(CorpusSpec(tmp_path / "mono.jsonl", field="text")).texts("kk") == ["Бірінші", "Екінші"]

    iob = "Әрі O\n« O\nҚара B-ART\n» O\n\n\nОл O\nкелді O\n. O\n"
    (tmp_path / "ner.txt").write_text(iob, encoding="utf-8")
    corpus = read_corpus(CorpusSpec(tmp_path / "ner.txt"))  # auto: recognised as IOB2
    assert corpus.format == "iob2" and corpus.texts("kk") == ["Әрі « Қара »", "Ол келді ."]

    rows = fixture_rows()[:3]
    with (tmp_path / "par.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["ru", "kk", "note"])
        writer.writeheader()
        writer.writerows([{"ru": r["ru"], "kk": r["kk"], "note": "x"} for r in rows])
        writer.writerow({"ru": "", "kk": "Тек қазақша.", "note": ""})
    corpus = read_corpus(CorpusSpec(tmp_path / "par.csv"))
    assert corpus.format == "parallel" and list(corpus.columns) == ["kk", "ru"]  # report order; 'note' ignored
    assert corpus.columns["ru"][-1] == "" and len(corpus.texts("ru")) == 3 and len(corpus.texts("kk")) == 4


# -- bad input -------------------------------------------------------------------------------------


def test_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n  \n\n", encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"corpus empty\.txt \(.*empty\.txt\): no text to measure"):
        tokenizer_report(["llama3"], tmp_path / "empty.txt", tmp_path / "out", tmp_path)
    (tmp_path / "empty.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(KazhpcError, match="no text to measure"):
        read_corpus(CorpusSpec(tmp_path / "empty.jsonl", field="text"))


def test_parallel_file_without_kk_column(tmp_path: Path) -> None:
    path = tmp_path / "no_kk.jsonl"
    path.write_text("".join(json.dumps({"en": r["en"], "ru": r["ru"]}) + "\n" for r in fixture_rows()[:3]))
    with pytest.raises(KazhpcError, match=rf"{path}: no 'kk' column.*\(columns: en, ru\)"):
        tokenizer_report(["llama3"], path, tmp_path / "out", tmp_path)
    (tmp_path / "no_kk.csv").write_text("en,ru\nHello,Привет\n", encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"no_kk\.csv: no 'kk' column"):
        read_corpus(CorpusSpec(tmp_path / "no_kk.csv"))


def test_other_bad_input(tmp_path: Path) -> None:
    with pytest.raises(KazhpcError, match=r"missing\.txt: corpus not found"):
        read_corpus(CorpusSpec(tmp_path / "missing.txt"))
    (tmp_path / "bad.jsonl").write_text('{"kk": "Сәлем"}\n{"kk": \n', encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"bad\.jsonl:2: malformed JSON"):
        read_corpus(CorpusSpec(tmp_path / "bad.jsonl"))
    (tmp_path / "mono.jsonl").write_text('{"text": "Сәлем", "id": 1}\n', encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"no row has the field 'txt' \(fields: id, text\)"):
        read_corpus(CorpusSpec(tmp_path / "mono.jsonl", field="txt"))
    (tmp_path / "mono.jsonl").write_text('{"text": 5}\n', encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"mono\.jsonl:1: field 'text': expected a string, got int"):
        read_corpus(CorpusSpec(tmp_path / "mono.jsonl", field="text"))
    (tmp_path / "bad_iob.txt").write_text("Әрі O\nҚара\n", encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"bad_iob\.txt:2: not IOB2"):
        read_corpus(CorpusSpec(tmp_path / "bad_iob.txt", format="iob2"))
    with pytest.raises(KazhpcError, match="listed twice"):
        tokenizer_report(["llama3", "llama3"], FIXTURE, tmp_path / "out", tmp_path)
    with pytest.raises(KazhpcError, match="unknown language 'de'"):
        tokenizer_report(["llama3"], FIXTURE, tmp_path / "out", tmp_path, languages=("kk", "de"))


def test_unknown_tokenizer_in_a_report(tmp_path: Path) -> None:
    with pytest.raises(KazhpcError, match=r"tokenizer 'llama5': unknown"):
        tokenizer_report(["llama3", "llama5"], FIXTURE, tmp_path / "out", tmp_path)
    assert not (tmp_path / "out").exists()  # nothing written


def test_russian_corpus_given_as_kazakh(tmp_path: Path) -> None:
    path = tmp_path / "ru_as_kk.txt"
    path.write_text("\n".join(r["ru"] for r in fixture_rows()), encoding="utf-8")
    with pytest.raises(KazhpcError, match=r"corpus ru_as_kk\.txt: only 0% of the kk texts are Kazakh \(ru 100%\)"):
        tokenizer_report(["llama3"], path, tmp_path / "out", tmp_path)
    mixed = tmp_path / "mixed.jsonl"  # a parallel file whose kk column holds Russian
    mixed.write_text("".join(json.dumps({"kk": r["ru"], "en": r["en"]}) + "\n" for r in fixture_rows()))
    with pytest.raises(KazhpcError, match=r"only 0% of the kk texts are Kazakh \(ru 100%\)"):
        tokenizer_report(["llama3"], mixed, tmp_path / "out", tmp_path)
    # the check can be switched off
    results = tokenizer_report(["llama3"], path, tmp_path / "out", tmp_path, check_language=False)
    assert results["corpus"]["langid"] == {} and results["rows"][0]["language"] == "kk"


# -- real data (opt-in) ----------------------------------------------------------------------------


@pytest.mark.skipif(
    not (KAZNERD / "IOB2_valid.txt").is_file(),
    reason=f"KazNERD validation split not found at {KAZNERD / 'IOB2_valid.txt'} (the shared data folder)",
)
@pytest.mark.slow
def test_gemma3_reproduces_the_reference_figure_on_kaznerd(adapters: dict) -> None:
    """Counting as the reference did (a <bos> per sentence, IOB2 tokens joined by spaces and counted
    as words, punctuation included): 2.80 tokens per word. Without <bos>: 2.72. With kazhpc's word
    definition (punctuation tokens are not words): 3.39 with <bos>, 3.29 without."""
    corpus = read_corpus(CorpusSpec(KAZNERD / "IOB2_valid.txt"))
    assert corpus.format == "iob2"
    texts = corpus.texts("kk")
    with_bos = measure(adapters["gemma3"], texts, add_special_tokens=True)
    without = measure(adapters["gemma3"], texts)
    assert with_bos.tokens_per_space_token == pytest.approx(2.80, abs=0.05)
    assert with_bos.tokens - without.tokens == len(texts)
    assert without.tokens_per_space_token == pytest.approx(2.72, abs=0.05)
    assert without.fertility == pytest.approx(3.29, abs=0.05)
    assert without.unk_tokens == 0
    print(
        f"KazNERD valid, Gemma-3: {len(texts)} sentences, {with_bos.space_tokens} IOB2 tokens, "
        f"{with_bos.words} words; tokens per IOB2 token {with_bos.tokens_per_space_token:.3f} with <bos>, "
        f"{without.tokens_per_space_token:.3f} without; fertility {with_bos.fertility:.3f} / {without.fertility:.3f}"
    )
