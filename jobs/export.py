"""export: a train stage's model merged into deployable weights, checked in a fresh process.

    python jobs/export.py configs/pipelines/smoke.yaml [key=value ...]
    python jobs/export.py --run-dir runs/smoke-...      # as a step of an existing run
"""

from kazhpc.runner import job_entry

if __name__ == "__main__":
    raise SystemExit(job_entry("export"))
