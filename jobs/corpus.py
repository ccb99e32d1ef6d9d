"""corpus: raw Kazakh text → cleaned, filtered, MinHash-deduplicated documents → packed token blocks.

    python jobs/corpus.py configs/pipelines/kazakh-cpt-sft.yaml [key=value ...]
    python jobs/corpus.py --run-dir runs/kazakh-cpt-sft-...      # inside a pipeline's run
"""

from kazhpc.runner import job_entry

if __name__ == "__main__":
    raise SystemExit(job_entry("corpus"))
