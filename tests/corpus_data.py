"""A small raw Kazakh corpus for the corpus job, built from the extend-vocab fixture's sentences
(tests/fixtures/vocab/kk_corpus.txt, written for this project) with known faults planted in it."""

from __future__ import annotations

import json
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures"
SENTENCES = FIXTURES / "vocab" / "kk_corpus.txt"
#: An evaluation file of the smoke pipeline; its first passage is planted in one document.
BELEBELE = FIXTURES / "eval" / "belebele_kaz.jsonl"


def kazakh_documents(per_document: int = 5) -> list[str]:
    lines = [line.strip() for line in SENTENCES.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [" ".join(lines[i : i + per_document]) for i in range(0, len(lines), per_document)]


def write_corpus(folder: Path, files: int = 4) -> dict:
    """JSONL files of documents plus, planted: an exact and a near duplicate, a Russian document, a
    too-short one, a line that is not JSON, a row without ``text``, and a document holding an
    evaluation passage. Returns what was planted (counts and ids)."""
    folder.mkdir(parents=True, exist_ok=True)
    docs = kazakh_documents()
    rows: list[list[dict]] = [[] for _ in range(files)]
    for i, text in enumerate(docs):
        rows[i * files // len(docs)].append({"id": f"d{i}", "text": text})
    # Duplicates of documents that pass the quality filters (else those would drop both copies).
    from kazhpc.config.corpus import KAZAKH_STOP_WORDS

    good = [d for d in docs if set(d.replace(".", " ").split()) & set(KAZAKH_STOP_WORDS)]
    words = good[1].split(" ")
    near = " ".join([*words[:10], "әлдебір", *words[11:]])  # one word of ~50 changed
    rows[-1].append({"id": "exact-dup", "text": good[0]})
    rows[-1].append({"id": "near-dup", "text": near})
    rows[1].append({"id": "russian", "text": "Сегодня в Алматы прошёл дождь, и горожане гуляли в парках до позднего вечера, "
                                            "потому что после дождя воздух стал чистым и свежим."})
    rows[2].append({"id": "short", "text": "Сәлем."})
    rows[2].append({"id": "no-text", "content": docs[0]})
    passage = json.loads(BELEBELE.read_text(encoding="utf-8").splitlines()[0])["flores_passage"]
    rows[0].append({"id": "contaminated", "text": f"{docs[5]} {passage}"})
    for k, file_rows in enumerate(rows):
        with (folder / f"part{k}.jsonl").open("w", encoding="utf-8") as out:
            for row in file_rows:
                out.write(json.dumps(row, ensure_ascii=False) + "\n")
            if k == 0:
                out.write("{not json\n")
    return {"documents": len(docs), "rows": sum(len(r) for r in rows) + 1, "duplicates": {"exact-dup", "near-dup"}}


if __name__ == "__main__":  # regenerate the committed fixture: python tests/corpus_data.py
    print(write_corpus(FIXTURES / "corpus"))


def _card(configs: list[tuple[str, dict[str, str]]]) -> str:
    """A dataset card whose YAML lists configs and their data files, as the hub's cards do."""
    lines = ["---", "configs:"]
    for name, splits in configs:
        lines += [f"- config_name: {name}", "  data_files:"]
        lines += [f"  - split: {split}\n    path: {pattern}" for split, pattern in splits.items()]
    return "\n".join([*lines, "---", "# a local copy, written by tests/corpus_data.py", ""])


def write_hub_copies(root: Path) -> dict[str, tuple[dict, list[str]]]:
    """Local copies of four Kazakh web corpora in their repositories' layouts and schemas, a few
    fixture documents each: name → (the corpus source naming it, the texts its train split holds
    in order). Other subsets and splits hold other texts, which must not be read."""
    import csv

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    docs = kazakh_documents()
    copies: dict[str, tuple[dict, list[str]]] = {}

    fineweb = root / "fineweb-2"  # HuggingFaceFW/fineweb-2: data/<lang>/<split>/*.parquet
    for lang, split, texts in (("kaz_Cyrl", "train", docs[0:3]), ("kaz_Cyrl", "train", docs[3:5]),
                               ("kaz_Cyrl", "test", docs[5:6]), ("rus_Cyrl", "train", ["Другой язык."])):
        folder = fineweb / "data" / lang / split
        folder.mkdir(parents=True, exist_ok=True)
        index = len(list(folder.glob("*.parquet")))
        pq.write_table(pa.table({"text": texts, "id": [f"<urn:uuid:{lang}-{i}>" for i in range(len(texts))],
                                 "dump": ["CC-MAIN-2024-10"] * len(texts), "url": ["https://example.kz/"] * len(texts),
                                 "language": [lang.split("_")[0]] * len(texts), "language_score": [0.99] * len(texts),
                                 "language_script": [lang.split("_")[1]] * len(texts)}),
                       folder / f"000_{index:05d}.parquet")
    (fineweb / "README.md").write_text(_card([("kaz_Cyrl", {"train": "data/kaz_Cyrl/train/*", "test": "data/kaz_Cyrl/test/*"}),
                                              ("rus_Cyrl", {"train": "data/rus_Cyrl/train/*"})]), encoding="utf-8")
    copies["fineweb-2"] = ({"name": "fineweb2", "dataset": str(fineweb), "subset": "kaz_Cyrl"}, docs[0:5])

    culturax = root / "CulturaX"  # uonlp/CulturaX: <lang>/<lang>_part_*.parquet, fields text, timestamp, url, source
    (culturax / "kk").mkdir(parents=True)
    pq.write_table(pa.table({"text": docs[6:9], "timestamp": ["2021/03/01 10:00:00"] * 3, "url": ["https://example.kz/"] * 3,
                             "source": ["mC4"] * 3}), culturax / "kk" / "kk_part_00000.parquet")
    (culturax / "README.md").write_text(_card([("kk", {"train": "kk/*.parquet"})]), encoding="utf-8")
    copies["CulturaX"] = ({"name": "culturax", "dataset": str(culturax), "subset": "kk"}, docs[6:9])

    hplt = root / "HPLT2.0_cleaned"  # HPLT/HPLT2.0_cleaned: <lang>/*.jsonl.zst, field text
    (hplt / "kaz_Cyrl").mkdir(parents=True)
    lines = "".join(json.dumps({"id": i, "text": t, "lang": ["kaz_Cyrl"]}, ensure_ascii=False) + "\n" for i, t in enumerate(docs[9:11]))
    (hplt / "kaz_Cyrl" / "1.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines.encode("utf-8")))
    (hplt / "README.md").write_text(_card([("kaz_Cyrl", {"train": "kaz_Cyrl/*.jsonl.zst"})]), encoding="utf-8")
    copies["HPLT2.0_cleaned"] = ({"name": "hplt", "dataset": str(hplt), "subset": "kaz_Cyrl"}, docs[9:11])

    multidomain = root / "multidomain-kazakh-dataset"  # kz-transformers/...: top-level CSVs, no configs
    multidomain.mkdir()
    texts = [docs[11], f'{docs[12]}\n"{docs[13][:40]}", деді ол.']  # a quoted, multi-line, comma-holding field
    with (multidomain / "leipzig.csv").open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "predicted_language", "contains_kaz_symbols"])
        writer.writerows([[i, t, "kaz", 1] for i, t in enumerate(texts)])
    (multidomain / "README.md").write_text("# a local copy, written by tests/corpus_data.py\n", encoding="utf-8")
    copies["multidomain-kazakh-dataset"] = ({"name": "multidomain", "dataset": str(multidomain)}, texts)
    return copies
