"""extend-vocab: Kazakh tokens added to the model's BPE, embeddings grown and initialised, effect measured.

    python jobs/extend_vocab.py configs/pipelines/smoke.yaml jobs=[extend-vocab] [key=value ...]
    python jobs/extend_vocab.py --run-dir runs/smoke-...
"""

from kazhpc.runner import job_entry

if __name__ == "__main__":
    raise SystemExit(job_entry("extend-vocab"))
