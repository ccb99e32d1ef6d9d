"""Pipelines of named stages: a job type may run several times, each stage with its own section and
the earlier stages it reads; the older one-stage-per-type form keeps loading. Config-level and
plan-level cases (milliseconds); the CPU run of configs/pipelines/two-stage.yaml is in
test_two_stage.py."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from conftest import CONFIGS, write_yaml
from faults import assert_one_line_error, cli
from kazhpc.config import load_config
from kazhpc.errors import ConfigError, KazhpcError

TWO_STAGE = CONFIGS / "pipelines" / "two-stage.yaml"
SMOKE = CONFIGS / "pipelines" / "smoke.yaml"


def two_stage_with(tmp_path: Path, old: str, new: str) -> Path:
    """two-stage.yaml with one piece of text replaced, written where its relative paths still resolve."""
    text = TWO_STAGE.read_text(encoding="utf-8")
    assert old in text, old
    return write_yaml(tmp_path / "two-stage.yaml", text.replace(old, new))


def test_the_jobs_form_is_one_stage_per_type_named_as_it() -> None:
    cfg = load_config(SMOKE)
    assert [(s.name, s.job) for s in cfg.stages] == [(j, j) for j in ("prepare-model", "tokenizers", "preprocess", "train", "evaluate")]
    assert cfg.upstream("train") == {"preprocess": "preprocess"} and cfg.upstream("evaluate") == {"preprocess": "preprocess", "train": "train"}
    assert cfg.for_stage("train") is cfg  # no with: keys, the top-level sections as they are
    assert "jobs" not in cfg.resolved_dict() and cfg.resolved_dict()["stages"][3] == {"name": "train", "job": "train", "uses": [], "with": {}}


def test_a_run_directory_config_round_trips(tmp_path: Path) -> None:
    from kazhpc.config import dump_yaml

    cfg = load_config(TWO_STAGE)
    again = load_config(write_yaml(tmp_path / "config.yaml", dump_yaml(cfg)))
    assert again.config_hash() == cfg.config_hash()
    assert again.section_of("train-2") == cfg.section_of("train-2")


def test_each_stage_reads_the_latest_earlier_stage_of_each_type_it_needs_or_the_one_it_names() -> None:
    cfg = load_config(TWO_STAGE)
    assert cfg.upstream("train-1") == {"preprocess": "preprocess-general"}
    assert cfg.upstream("eval-1") == {"preprocess": "preprocess-general", "train": "train-1"}  # preprocess: open tasks' held-out split
    assert cfg.upstream("train-2") == {"train": "train-1", "preprocess": "preprocess-translation"}
    assert cfg.upstream("eval-2") == {"preprocess": "preprocess-translation", "train": "train-2"}


def test_a_stage_section_is_the_top_level_one_with_its_keys_over_it() -> None:
    cfg = load_config(TWO_STAGE)
    own, top = cfg.section_of("train-2"), cfg.train
    assert (own.max_steps, own.learning_rate) == (4, 5.0e-4) and (top.max_steps, top.learning_rate) == (8, 1.0e-3)
    assert own.lora == top.lora and own.max_length == top.max_length  # the rest is shared
    view = cfg.for_stage("train-2")
    assert view.train == own and view.evaluate == cfg.evaluate and view.stages == cfg.stages
    mix = [s.name for s in cfg.section_of("preprocess-translation").sources]
    assert mix == ["kazparc", "muri-kk"] and cfg.section_of("preprocess-translation").cleaning == cfg.preprocess.cleaning
    assert str(cfg.section_of("preprocess-translation").sources[0].path).startswith("/")  # resolved like the top level


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ("with: {max_steps: 4, learning_rate: 5.0e-4}", "with: {max_stepz: 4}", ("stages.train-2.with.max_stepz", "Extra inputs")),
        ("with: {max_steps: 4, learning_rate: 5.0e-4}", "with: {max_steps: 0}", ("stages.train-2.with.max_steps",)),
        ("with: {max_steps: 4, learning_rate: 5.0e-4}", "with: {method: full}",  # a check across keys: no key of its own
         ("stages.train-2.with: train.method: full trains every weight in continued pretraining",)),
        ("uses: [train-1, preprocess-translation]", "uses: [eval-2]", ("stages.train-2.uses: 'eval-2' comes after it",)),
        ("uses: [train-1, preprocess-translation]", "uses: [trian-1]", ("'trian-1' is not a stage", "did you mean 'train-1'")),
        ("uses: [train-1, preprocess-translation]", "uses: [eval-1]", ("'eval-1' is an evaluate stage", "reads extend-vocab, corpus, preprocess, train")),
        ("uses: [train-1, preprocess-translation]", "uses: [preprocess-general, preprocess-translation]", ("two preprocess stages",)),
        ("{name: eval-2, job: evaluate}", "{name: eval-1, job: evaluate}", ("stage listed twice: eval-1",)),
        ("{name: eval-2, job: evaluate}", "{name: eval-2, job: evalute}", ("unknown job 'evalute'", "did you mean 'evaluate'")),
        ("{name: eval-2, job: evaluate}", "{name: tracking, job: evaluate}", ("'tracking' is a folder of every run directory",)),
        ("  - {name: preprocess-general, job: preprocess}\n", "", ("stages: preprocess-translation must come before train-1",)),
        ("  - {name: train-1, job: train}\n  - {name: eval-1, job: evaluate}\n", "  - {name: eval-1, job: evaluate}\n  - {name: train-1, job: train}\n",
         ("stages.eval-1: evaluate.models[adapter]: no adapter given and no train job before eval-1",)),
        ("    with:\n      sources:", "    with:\n      shards: 1\n      sources: []\n      unused:", ("stages.preprocess-translation.with.unused",)),
        ("name: two-stage\n", "name: two-stage\njobs: [preprocess]\n", ("either stages:", "or jobs:", "not both")),
    ],
)
def test_a_bad_stage_is_one_line_naming_it(tmp_path: Path, old: str, new: str, expected: tuple[str, ...]) -> None:
    outcome = cli("validate", str(two_stage_with(tmp_path, old, new)))
    line = assert_one_line_error(outcome, *expected)
    assert "two-stage.yaml" in line


def test_a_job_type_listed_twice_in_the_jobs_form_says_how_to_write_stages(tmp_path: Path) -> None:
    text = SMOKE.read_text(encoding="utf-8").replace("jobs: [prepare-model, tokenizers, preprocess, train, evaluate]",
                                                     "jobs: [preprocess, train, train]")
    with pytest.raises(ConfigError, match=r"job listed twice: train; to run a job type more than once, list named stages"):
        load_config(write_yaml(tmp_path / "twice.yaml", text.replace("../data/", str(CONFIGS / "data") + "/")))


def test_a_job_command_runs_the_one_stage_of_its_type_or_the_one_named() -> None:
    from kazhpc.runner import stage_of_job

    cfg = load_config(TWO_STAGE)
    assert stage_of_job(cfg, "evaluate", "eval-2") == "eval-2"
    with pytest.raises(KazhpcError, match=r"2 stages run train \(train-1, train-2\); name one with --stage"):
        stage_of_job(cfg, "train", None)
    with pytest.raises(KazhpcError, match="--stage eval-1: a evaluate stage, not a train stage"):
        stage_of_job(cfg, "train", "eval-1")
    with pytest.raises(KazhpcError, match="job 'tokenizers' is not in this config's stages"):
        stage_of_job(cfg, "tokenizers", None)
    assert stage_of_job(load_config(SMOKE), "train", None) == "train"


def test_an_upstream_stage_redone_changes_the_inputs_of_the_stages_that_read_it(tmp_path: Path) -> None:
    from kazhpc.fingerprint import changes
    from kazhpc.runner import inputs_of

    cfg = load_config(TWO_STAGE)
    for stage, fingerprint in (("train-1", "a" * 12), ("preprocess-translation", "b" * 12)):
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "manifest.json").write_text(json.dumps({"fingerprint": fingerprint}))
    before = inputs_of(cfg, tmp_path, "train-2")
    assert before["upstream"] == {"train:train-1": "a" * 12, "preprocess:preprocess-translation": "b" * 12}
    # Its own section (the top-level one with its with: keys), not train-1's.
    assert before["config"]["train"] != inputs_of(cfg, tmp_path, "train-1")["config"]["train"]
    (tmp_path / "train-1" / "manifest.json").write_text(json.dumps({"fingerprint": "c" * 12}))
    said = changes(before, inputs_of(cfg, tmp_path, "train-2"))
    assert said and "train-1" in " ".join(said)
    assert inputs_of(cfg, tmp_path, "eval-1")["upstream"] == {"train:train-1": "c" * 12, "preprocess:preprocess-general": "not run"}


def test_render_writes_one_script_per_stage_chained_in_order(tmp_path: Path) -> None:
    outcome = cli("render", str(TWO_STAGE), "--cluster", str(CONFIGS / "clusters" / "a100-example.yaml"), "-o", str(tmp_path))
    assert outcome.code == 0, outcome.stderr
    stages = load_config(TWO_STAGE).stage_names
    scripts = sorted(tmp_path.glob("*.sbatch"))
    assert [p.stem for p in scripts] == [f"{i:02d}-{s}" for i, s in enumerate(stages, start=1)]
    scripts_by_stage = dict(zip(stages, scripts))
    for stage, script in scripts_by_stage.items():
        text = script.read_text(encoding="utf-8")
        assert re.search(rf'python jobs/\w+\.py --run-dir "\$RUN_DIR" --stage {stage}$', text, re.MULTILINE), stage
        assert f"#SBATCH --job-name=kazhpc-{stage}\n" in text
        uses_gpu = load_config(TWO_STAGE).stage(stage).job in ("train", "evaluate")
        assert ("#SBATCH --gpus-per-node=a100:1" in text) == uses_gpu, stage
    submit = (tmp_path / "submit.sh").read_text(encoding="utf-8")
    variables = [f"JOB_{s.upper().replace('-', '_')}" for s in stages]
    for before, after, script in zip(variables, variables[1:], scripts[1:]):
        assert f"{after}=$(sbatch --parsable --dependency=afterok:${before} --kill-on-invalid-dep=yes {script.name})" in submit
    assert f"{variables[0]}=$(sbatch --parsable {scripts[0].name})" in submit


def test_the_step_plan_takes_each_stage_s_own_shards(tmp_path: Path) -> None:
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps

    cfg = load_config(two_stage_with(tmp_path, "{name: eval-2, job: evaluate}", "{name: eval-2, job: evaluate, with: {shards: 2}}"))
    steps = slurm_steps(cfg, load_cluster(CONFIGS / "clusters" / "local.yaml"))
    names = [s.name for s in steps]
    assert names[:2] == ["preprocess-general", "train-1"]
    assert "eval-2-parts" in names and "eval-1-parts" not in names  # only eval-2 asks for 2 shards
    parts = next(s for s in steps if s.name == "eval-2-parts")
    assert parts.array == 2 and parts.stage == "eval-2" and parts.job == "evaluate"
    assert parts.command[-1].endswith('--stage eval-2 --shard "$SLURM_ARRAY_TASK_ID/2"')



def test_the_multi_node_launch_runs_the_train_stage_it_is_given(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """slurm/train.sbatch's launch lines (STAGE=train-2) start that stage on every rank."""
    from kazhpc.launch.multinode import main
    from kazhpc.runner import new_run_dir

    run_dir = new_run_dir(load_config(TWO_STAGE, [f"runs_root={tmp_path}"]))
    assert main(["--run-dir", str(run_dir), "--stage", "train-2", "--no-check"]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"jobs/train.py --run-dir {run_dir} --stage train-2'")
    with pytest.raises(SystemExit) as exit_info:  # two train stages: which one must be said
        main(["--run-dir", str(run_dir), "--no-check"])
    assert exit_info.value.code == 2 and "name one with --stage" in capsys.readouterr().err


def test_a_stage_view_carries_the_run_s_config_hash() -> None:
    """What a stage writes (its model card, its manifest) names the run's config, not its view's."""
    cfg = load_config(TWO_STAGE)
    assert cfg.for_stage("train-2").config_hash() == cfg.config_hash()
    assert cfg.for_stage("train-2").resolved_dict()["train"]["max_steps"] == 4  # while its params are its own


def test_a_stage_s_paths_are_stored_absolute_and_must_be_visible_in_the_container() -> None:
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps

    stored = load_config(TWO_STAGE).resolved_dict()["stages"][3]["with"]["sources"][0]["path"]
    assert stored == str(CONFIGS.parent / "tests" / "fixtures" / "data" / "kazparc_raw.csv")  # what a SLURM step reopens
    cfg = load_config(TWO_STAGE, ["stages.preprocess-translation.with.sources=[{name: far, kind: muri-it, path: /data/elsewhere/muri.jsonl}]"])
    with pytest.raises(ConfigError, match=r"container.binds: stages\[3\].with.sources\[0\].path=/data/elsewhere/muri.jsonl "
                                          r"is not visible inside the container"):
        slurm_steps(cfg, load_cluster(CONFIGS / "clusters" / "a100-example.yaml"))
