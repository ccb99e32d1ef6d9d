"""The one list of job types. Everything else derives from it: the `kazhpc <job>` commands, the
``jobs/`` entry points a SLURM step runs, the step plan (arrays, multi-node launch, preemption),
and the checks that the config schema's job names and sections agree (tests/test_registry.py).

An entry is plain data (like torchtune's recipe registry): the job adapter's module is imported
only when the job runs or is checked, so ``kazhpc --help`` needs no torch. An adapter module
defines ``preflight(cfg) -> warnings`` (checks that need no GPU), ``run(ctx) -> manifest``, and,
when the job splits into parts, ``run_part(cfg, job_dir, index, count, upstream) -> part folder``
(``upstream``: job type -> the folder of the earlier stage it reads); when it runs as consecutive
arrays of tasks, ``phase_tasks(cfg) -> {phase: tasks}`` and ``run_phase(cfg, job_dir, phase,
index, upstream, inputs)``; it may define ``extra_inputs(cfg) -> files`` (inputs its config
section does not name). The entry says
what the job's command prints when it ends (``table``, ``result``).

Adding a job type: a library module (the work), an adapter module (the glue above), a config
section in kazhpc.config (its schema module and its field on PipelineConfig, named as the job with
'_' for '-'), a ``jobs/<name>.py`` entry point, and one line below. The config's job names come
from here (this module sits at the bottom, with the core: it is data, and imports adapters only
by name, when a job runs).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

from kazhpc.errors import KazhpcError, suggest


@dataclass(frozen=True)
class JobType:
    """A job type and how to launch it."""

    name: str
    module: str  # the job adapter
    summary: str  # one line: the command's help
    #: Job types whose outputs a stage of this type reads from an earlier stage (the stage its
    #: ``uses:`` names, else the latest earlier one of that type; kazhpc.config.stages). Their
    #: fingerprints are part of this stage's inputs, so redoing one of them redoes this one.
    needs: tuple[str, ...] = ()
    splits: bool = False  # into parts (SLURM array tasks) and a merge: the adapter's run_part
    #: Into phases when its section's ``tasks`` > 1: each phase an array of tasks that waits for the
    #: one before, then the stage's own job (datatrove's stages); the adapter's phase_tasks and run_phase.
    phased: bool = False
    #: Runs as several processes per node and across nodes when train.distributed asks for it.
    distributed: bool = False
    #: Saves a checkpoint on SLURM's warning signal and asks to be requeued (exit 75).
    preemptible: bool = False
    #: Its runs log system metrics (CPU, memory, GPU; per node): the jobs that hold accelerators.
    system_metrics: bool = False
    #: The jobs/ entry point's file stem, where the job's name would shadow an installed module
    #: (jobs/tokenizers.py would hide the tokenizers library from every job script, and
    #: jobs/evaluate.py Hugging Face's evaluate).
    script_stem: str | None = None
    #: ``kazhpc <job> RUN`` adds a stage of it to a finished run (its upstream: the run's latest stages).
    appendable: bool = False
    #: A Markdown file in its folder that `kazhpc <job>` prints when the job ends.
    table: str | None = None
    #: A file in its folder whose path `kazhpc <job>` prints when the job ends.
    result: str | None = None

    @property
    def section(self) -> str:
        """Its section of the pipeline config (kazhpc.config.PipelineConfig)."""
        return self.name.replace("-", "_")

    @property
    def script(self) -> str:
        """Its entry point, relative to the repository (what a SLURM step runs)."""
        return f"jobs/{self.script_stem or self.section}.py"

    def adapter(self) -> ModuleType:
        return importlib.import_module(self.module)


JOB_TYPES: tuple[JobType, ...] = (
    JobType("prepare-model", "kazhpc.prepare_model",
            "Materialise the model, check its chat template (one <bos>, the answer mask), score Kazakh perplexity."),
    JobType("tokenizers", "kazhpc.tokenization.job",
            "Measure the Kazakh tokenizer tax of the configured tokenizers; print the table.",
            script_stem="tokenizer_report", table="tokenizers.md"),
    JobType("extend-vocab", "kazhpc.tokenization.extend_job",
            "Add Kazakh tokens to the model's BPE, grow its embeddings, measure the effect; print the table.",
            table="extension.md"),
    JobType("preprocess", "kazhpc.preprocess",
            "Clean, deduplicate and format the configured Kazakh sources into Parquet shards.", splits=True),
    JobType("corpus", "kazhpc.corpus_job",
            "Clean, filter, deduplicate (MinHash) and tokenize raw Kazakh text into packed blocks for continued pretraining (datatrove).",
            needs=("extend-vocab",), phased=True, table="corpus.md"),
    JobType("train", "kazhpc.train.job",
            "QLoRA-train an adapter: SFT on a preprocess stage's conversations, or CPT on a corpus stage's blocks; "
            "or go on training an earlier stage's (resumes after preemption).",
            needs=("extend-vocab", "corpus", "preprocess", "train"), distributed=True, preemptible=True, system_metrics=True),
    JobType("evaluate", "kazhpc.evaluation.job",
            "Evaluate the models on the Kazakh suite (or one shard of it); merge the shards exactly.",
            needs=("extend-vocab", "preprocess", "train"), splits=True, result="results.json", script_stem="evaluate_models",
            system_metrics=True),
    JobType("export", "kazhpc.export.job",
            "Merge a train stage's adapter into the unquantized base and save a deployable model (tokenizer, chat template, "
            "generation config, model card; GGUF if asked); check it reloads and scores as the adapter; register it, push it.",
            needs=("train", "evaluate"), appendable=True, table="export.md"),
)


def job_type(name: str) -> JobType:
    for job in JOB_TYPES:
        if job.name == name:
            return job
    names = [j.name for j in JOB_TYPES]
    raise KazhpcError(f"unknown job '{name}'{suggest(name, names)}; known: {', '.join(names)}")
