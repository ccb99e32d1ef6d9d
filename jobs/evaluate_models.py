"""evaluate: the Kazakh lm-eval suite on the base model and its adapter; sharded, merged exactly.

    python jobs/evaluate_models.py configs/pipelines/smoke.yaml [key=value ...]
    python jobs/evaluate_models.py --run-dir runs/smoke-... --shard 1/4   # one SLURM array task
    python jobs/evaluate_models.py --run-dir runs/smoke-...               # the missing shards, then the merge
"""

from kazhpc.runner import job_entry

if __name__ == "__main__":
    raise SystemExit(job_entry("evaluate"))
