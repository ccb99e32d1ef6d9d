"""The train job's adapter: one job type, two objectives (``train.objective``).

* ``sft`` (kazhpc.train.qlora): QLoRA supervised fine-tuning on a preprocess stage's
  conversations, loss on the answers only;
* ``cpt`` (kazhpc.train.cpt): continued pretraining on a corpus stage's packed blocks, loss on
  every token, with a token budget and held-out bits per character.

Both continue an earlier train stage's adapter when the stage reads one (CPT, then SFT), resume
after preemption, and write ``adapter/`` and a manifest of the same shape for what reads them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kazhpc.config import PipelineConfig
    from kazhpc.jobspec import JobContext


def preflight(cfg: PipelineConfig) -> list[str]:
    from kazhpc.train import qlora

    warnings = qlora.preflight(cfg)
    if cfg.train.objective == "cpt":
        from kazhpc.evaluation.perplexity import read_passages

        read_passages(cfg.train.cpt.heldout_english, "train.cpt.heldout_english")
        for name, spec in cfg.train.cpt.heldout_extra.items():
            read_passages(spec, f"train.cpt.heldout_extra.{name}")
        if cfg.train.packing:
            warnings.append("train.packing is for SFT conversations; CPT blocks are packed by the corpus stage")
    return warnings


def run(ctx: JobContext) -> dict[str, Any]:
    if ctx.cfg.train.objective == "cpt":
        from kazhpc.train.cpt import run as run_cpt

        return run_cpt(ctx)
    from kazhpc.train.qlora import run as run_sft

    return run_sft(ctx)
