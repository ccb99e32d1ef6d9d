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
