"""The tokenization study at a small budget: Gemma-3's own tokenizer against extended ones, each
given the same continued pretraining text, on real Kazakh news (KazNERD).

Data (../shared/data/kaznerd, CC BY 4.0; sentences = tokens joined by spaces): the first
``--sentences`` sentences of ``IOB2_valid``, five to a document, are the CPT corpus; the extension
is learnt on the same sentences. Held out: the corpus stage's hash-chosen documents (in domain),
the 52 out-of-domain passages of ``kazhpc/resources/kk-ood.txt`` and English
(``kazhpc/resources/en-heldout.txt``).

    .venv/bin/python benchmarks/tokenization_study.py [--sentences 600] [--k 500,1000] [--passes 2]

Every variant runs extend-vocab (if any) → corpus → train-cpt through ``kazhpc sweep``, with no
token budget: each reads all of its blocks ``--passes`` times, so every variant sees the same
characters. The comparison (``compare.md``) and the winner come from the sweep itself.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
KAZNERD = REPO.parent / "shared" / "data" / "kaznerd"


def write_corpus(out: Path, sentences: int) -> tuple[Path, Path]:
    from kazhpc.tokenization import CorpusSpec, read_corpus

    texts = read_corpus(CorpusSpec(KAZNERD / "IOB2_valid.txt")).texts("kk")[:sentences]
    out.mkdir(parents=True, exist_ok=True)
    corpus, plain = out / "kaznerd-docs.jsonl", out / "kaznerd-sentences.txt"
    with corpus.open("w", encoding="utf-8") as f:
        for i in range(0, len(texts), 5):
            f.write(json.dumps({"id": f"kaznerd-{i // 5}", "text": " ".join(texts[i:i + 5])}, ensure_ascii=False) + "\n")
    plain.write_text("\n".join(texts) + "\n", encoding="utf-8")
    return corpus, plain


def sweep_file(out: Path, ks: list[int], passes: int, block: int) -> Path:
    cpt = {"name": "train-cpt", "job": "train", "with": {
        "objective": "cpt", "max_tokens": None, "max_steps": -1, "epochs": passes, "quantization": None,
        "learning_rate": 1.0e-3, "save_steps": 1000, "loss_check_rows": 8,
        "cpt": {"eval_steps": 0, "heldout_texts": 32, "heldout_max_length": 128}}}
    base = {"stages": [{"name": "corpus", "job": "corpus"}, cpt]}
    extended = [{"name": "extend-vocab", "job": "extend-vocab"}, {"name": "corpus", "job": "corpus"}, cpt]
    variants = [{"name": "base", "overrides": base}]
    for k in ks:
        variants.append({"name": f"k{k}-mean07", "overrides": {"stages": extended, "extend_vocab.new_tokens": k}})
    variants.append({"name": f"k{ks[0]}-mean10", "overrides": {"stages": extended, "extend_vocab.new_tokens": ks[0],
                                                                 "extend_vocab.init_scale": 1.0}})
    spec = {
        "name": "tokenization-kaznerd",
        "config": str(REPO / "configs" / "pipelines" / "kazakh-cpt-sft.yaml"),
        "variants": variants,
        "compare": {
            "metrics": [f"train-cpt.heldout.after.heldout_{s}_bits_per_char" for s in ("kk", "kk_ood", "en")]
            + [f"train-cpt.heldout.before.heldout_{s}_bits_per_char" for s in ("kk", "kk_ood", "en")]
            + ["corpus.counts.tokens_per_char", "train-cpt.tokens_seen", "train-cpt.chars_seen",
               "train-cpt.tokens_per_s", "train-cpt.chars_per_s", "train-cpt.train_seconds",
               "train-cpt.flops.total", "train-cpt.flops.per_char"],
            "winner": {"lowest": "train-cpt.heldout.after.heldout_kk_bits_per_char",
                       "within": {"metric": "train-cpt.heldout.after.heldout_en_bits_per_char", "percent": 2, "of": "base"}},
        },
    }
    path = out / "tokenization-kaznerd.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=600)
    parser.add_argument("--k", default="500,1000", help="extension sizes (new tokens), comma-separated")
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--block", type=int, default=128)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-tokenization")
    args = parser.parse_args()
    if not (KAZNERD / "IOB2_valid.txt").is_file():
        print(f"KazNERD not found in {KAZNERD}", file=sys.stderr)
        return 2
    corpus, plain = write_corpus(args.out, args.sentences)
    path = sweep_file(args.out, [int(k) for k in args.k.split(",")], args.passes, args.block)
    command = [str(Path(sys.executable).parent / "kazhpc"), "sweep", str(path), f"runs_root={args.out / 'runs'}",
               f"corpus.sources=[{{name: kaznerd, path: {corpus}}}]", f"corpus.blocks.length={args.block}",
               "corpus.heldout_fraction=0.15", "corpus.decontamination.files=[]",
               f"extend_vocab.corpus={{path: {plain}}}", "extend_vocab.k_curve=[]", "extend_vocab.adapt_steps=0"]
    return subprocess.run(command, cwd=REPO).returncode


if __name__ == "__main__":
    raise SystemExit(main())
