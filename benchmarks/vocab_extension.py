"""Gemma-3's vocabulary extended with Kazakh tokens learnt on KazNERD: fertility vs K, English
fertility, round trip, bits per character before / after initialisation / after adaptation.

Data (real Kazakh news, ../shared/data/kaznerd, CC BY 4.0; sentences = tokens joined by spaces):
the BPE learns on ``IOB2_valid`` plus the first 80% of ``IOB2_test``; the last 20% of
``IOB2_test`` (whole articles, never trained on) is the held-out text. English: the GPL-3 text
that Debian ships (``/usr/share/common-licenses/GPL-3``), one line per passage.

    .venv/bin/python benchmarks/vocab_extension.py [--new-tokens 16000] [--adapt-steps 32] [--init-scale 0.7]

Everything is measured by the extend-vocab job itself (``kazhpc.tokenization.extend_job``), run
through the pipeline runner; this script only prepares the text files and prints the job's
``extension.md``. Base and extended figures come from the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAZNERD = REPO.parent / "shared" / "data" / "kaznerd"
ENGLISH = Path("/usr/share/common-licenses/GPL-3")


def write_texts(out: Path) -> tuple[Path, Path, Path]:
    from kazhpc.tokenization import CorpusSpec, read_corpus

    valid = read_corpus(CorpusSpec(KAZNERD / "IOB2_valid.txt")).texts("kk")
    test = read_corpus(CorpusSpec(KAZNERD / "IOB2_test.txt")).texts("kk")
    cut = int(len(test) * 0.8)
    out.mkdir(parents=True, exist_ok=True)
    train, heldout, english = out / "kk_train.txt", out / "kk_heldout.txt", out / "en.txt"
    train.write_text("\n".join(valid + test[:cut]) + "\n", encoding="utf-8")
    heldout.write_text("\n".join(test[cut:]) + "\n", encoding="utf-8")
    lines = [line.strip() for line in ENGLISH.read_text(encoding="utf-8").splitlines() if len(line.split()) >= 4]
    english.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return train, heldout, english


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=16000)
    parser.add_argument("--k-curve", default="4000,8000,16000,32000")
    parser.add_argument("--bpc-texts", type=int, default=32)
    parser.add_argument("--adapt-steps", type=int, default=32)
    parser.add_argument("--adapt-batch-size", type=int, default=8)
    parser.add_argument("--adapt-max-length", type=int, default=128)
    parser.add_argument("--init-scale", type=float, default=0.7)
    parser.add_argument("--out", type=Path, default=REPO / "runs" / "bench-vocab")
    args = parser.parse_args()
    if not (KAZNERD / "IOB2_test.txt").is_file():
        print(f"KazNERD not found in {KAZNERD}", file=sys.stderr)
        return 2

    from kazhpc.config import load_config
    from kazhpc.runner import run_pipeline

    train, heldout, english = write_texts(args.out / "data")
    cfg = load_config(
        REPO / "configs" / "pipelines" / "smoke.yaml",
        [
            f"runs_root={args.out}",
            "jobs=[extend-vocab]",
            f"extend_vocab.corpus={{path: {train}, format: text}}",
            f"extend_vocab.heldout={{path: {heldout}, format: text}}",
            f"extend_vocab.english={{path: {english}, format: text, language: en}}",
            f"extend_vocab.new_tokens={args.new_tokens}",
            f"extend_vocab.k_curve=[{args.k_curve}]",
            f"extend_vocab.bpc_texts={args.bpc_texts}",
            f"extend_vocab.adapt_steps={args.adapt_steps}",
            f"extend_vocab.adapt_batch_size={args.adapt_batch_size}",
            f"extend_vocab.adapt_max_length={args.adapt_max_length}",
            f"extend_vocab.init_scale={args.init_scale}",
        ],
    )
    started = time.time()
    run_dir = run_pipeline(cfg)
    job = run_dir / "extend-vocab"
    print((job / "extension.md").read_text(encoding="utf-8"))
    manifest = json.loads((job / "manifest.json").read_text())
    print(f"job seconds: {manifest['seconds']}, wall: {time.time() - started:.0f} s; run dir: {run_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
