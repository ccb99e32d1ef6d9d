"""Fault cases on the cluster path: rendered and submitted container jobs that must start, GPU
requests that must match what a job uses, and bad profiles, run directories and output paths that
must each end in one line naming what and where.

No SLURM and no container runtime: the rendered scripts run under bash with stub ``srun``,
``apptainer``, ``docker``, ``module`` and ``scontrol`` first on PATH, which record their arguments
and the directory they were started in (srun then runs the rest of its command line, as it would).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import textwrap
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO, write_yaml
from faults import assert_one_line_error, cli, kazhpc

SMOKE = CONFIGS / "pipelines" / "smoke.yaml"
A100 = CONFIGS / "clusters" / "a100-example.yaml"
#: A container workdir that exists in the image only: the host must never cd there.
IMAGE_WORKDIR = "/nonexistent-kazhpc-workdir"

_RECORD = """#!/bin/bash
{ printf '%s\\t%s\\t' "$(basename "$0")" "$PWD"; printf '%q ' "$@"; printf '\\n'; } >> "$STUB_LOG"
"""
STUBS = {
    "srun": _RECORD + 'while [[ "${1:-}" == -* ]]; do shift; done\nexec "$@"\n',  # srun's options, then the task
    "apptainer": _RECORD,
    "docker": _RECORD,
    "module": _RECORD,
    "scontrol": _RECORD + "echo node-a\n",
    "sbatch": _RECORD + "echo 4242\n",
}


def profile_text(runtime: str, train_gpus: int = 4, extra: str = "") -> str:
    image = {"apptainer": "/images/kazhpc.sif", "docker": "kazhpc:0.1.0"}[runtime]
    return textwrap.dedent(f"""\
        name: stub-{runtime}
        partition: gpu
        max_time: "1-00:00:00"
        node: {{gpus: 4, gpu_type: a100, cpus: 32, memory_gb: 200}}
        modules: [apptainer]
        container: {{runtime: {runtime}, image: '{image}', workdir: {IMAGE_WORKDIR}}}
        jobs:
          prepare-model: {{time: "00:30:00", gpus: 1}}
          tokenizers: {{time: 30}}
          preprocess: {{time: "01:00:00", cpus: 2}}
          train: {{time: "12:00:00", gpus: {train_gpus}, cpus: 8, mem_gb: 64}}
          evaluate: {{time: "02:00:00", gpus: 1}}
        """) + extra


def stub_bin(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """PATH with the stubs first, and the log they write."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(parents=True)
    for name, text in STUBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "stub.log"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "STUB_LOG": str(log),
           "RUN_DIR": str(tmp_path / "run"), "SLURM_JOB_ID": "4242", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_JOB_NODELIST": "node-a", "SLURM_NODEID": "0", "SLURM_PROCID": "0"}
    return env, log


def calls(log: Path) -> list[tuple[str, str, list[str]]]:
    """(tool, cwd, argv) of every stub call, in order."""
    result = []
    for line in log.read_text().splitlines():
        tool, cwd, args = line.split("\t", 2)
        result.append((tool, cwd, shlex.split(args)))
    return result


def render(tmp_path: Path, profile: Path, *overrides: str) -> Path:
    out = tmp_path / "sbatch"
    outcome = cli("render", str(SMOKE), f"runs_root={tmp_path / 'runs'}", *overrides,
                  "--cluster", str(profile), "-o", str(out))
    assert outcome.code == 0, outcome.stderr + outcome.stdout
    return out


def run_step(script: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(script)], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def assert_ran_in_container(runtime: str, log: Path, entry: str) -> list[str]:
    """srun started the runtime from an existing host directory (the submit directory, which the
    container binds), and the runtime was told the image's workdir; returns the runtime's argv."""
    recorded = calls(log)
    tools = [tool for tool, _, _ in recorded]
    assert "srun" in tools and runtime in tools, recorded
    assert tools.index("srun") < tools.index(runtime), recorded
    (cwd, argv), = [(cwd, argv) for tool, cwd, argv in recorded if tool == runtime]
    assert Path(cwd).is_dir() and cwd != IMAGE_WORKDIR, cwd
    assert cwd == str(REPO)  # kazhpc render ran here: relative config paths were resolved here
    flag = {"apptainer": "--pwd", "docker": "-w"}[runtime]
    assert argv[argv.index(flag) + 1] == IMAGE_WORKDIR, argv
    assert entry in argv, argv  # relative to the workdir the container starts in
    return argv


# --------------------------------------------------------------------------------------------
# Defect: the host cd'd into the container's workdir, so every rendered container step died.


@pytest.mark.parametrize("runtime", ["apptainer", "docker"])
def test_rendered_container_steps_start_from_a_host_directory(tmp_path: Path, runtime: str) -> None:
    out = render(tmp_path, write_yaml(tmp_path / "cluster.yaml", profile_text(runtime, train_gpus=1)),
                 "preprocess.shards=2")
    elsewhere = tmp_path / "slurm-start"  # where sbatch starts the batch shell: not where kazhpc ran
    elsewhere.mkdir()
    entries = {"prepare-model": "jobs/prepare_model.py", "preprocess-parts": "jobs/preprocess.py",
               "train": "jobs/train.py"}
    for step, entry in entries.items():
        (script,) = out.glob(f"*-{step}.sbatch")
        assert f"cd {IMAGE_WORKDIR}" not in script.read_text()
        env, log = stub_bin(tmp_path / step)
        result = run_step(script, env, elsewhere)
        assert result.returncode == 0, f"{script.name}: {result.stderr}"
        assert_ran_in_container(runtime, log, entry)


@pytest.mark.parametrize("runtime", ["apptainer", "docker"])
def test_rendered_multi_node_train_starts_from_a_host_directory(tmp_path: Path, runtime: str) -> None:
    out = render(tmp_path, write_yaml(tmp_path / "cluster.yaml", profile_text(runtime)),
                 "train.distributed.nodes=2", "train.distributed.gpus_per_node=4")
    (script,) = out.glob("*-train.sbatch")
    env, log = stub_bin(tmp_path)
    result = run_step(script, env, tmp_path)
    assert result.returncode == 0, result.stderr
    srun = [argv for tool, _, argv in calls(log) if tool == "srun"]
    assert srun and "--nodes=2" in srun[0], srun
    argv = assert_ran_in_container(runtime, log, "jobs/train.py")
    assert "accelerate.commands.launch" in argv and "--num_processes" in argv


@pytest.mark.parametrize("runtime", ["apptainer", "docker"])
def test_submitted_container_step_runs_the_same_lines(tmp_path: Path, runtime: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What `kazhpc submit` hands submitit (ShellStep, run under submitit's own srun) starts too."""
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps
    from kazhpc.launch.submit import ShellStep

    cluster = load_cluster(write_yaml(tmp_path / "cluster.yaml", profile_text(runtime, train_gpus=1)))
    monkeypatch.chdir(REPO)
    steps = {s.name: s for s in slurm_steps(load_config(SMOKE, [f"runs_root={tmp_path / 'runs'}"]), cluster)}
    env, log = stub_bin(tmp_path)
    for key in ("PATH", "STUB_LOG"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.chdir(tmp_path)  # the job's own directory, not the submit directory
    step = steps["train"]
    assert ShellStep(step.name, step.command, str(tmp_path / "run"), step.job, step.preemption_signal)() == 0
    # Under submitit the srun is submitit's; here the runtime is the first call.
    (tool, cwd, argv), = calls(log)
    assert tool == runtime and cwd == str(REPO), (tool, cwd)
    assert argv[argv.index({"apptainer": "--pwd", "docker": "-w"}[runtime]) + 1] == IMAGE_WORKDIR


# --------------------------------------------------------------------------------------------
# Defect: a profile asked 4 GPUs for a train job that uses 1, without a word.


def test_train_requests_the_gpus_it_uses_and_says_so(tmp_path: Path) -> None:
    profile = write_yaml(tmp_path / "cluster.yaml", profile_text("apptainer", train_gpus=4))
    out = tmp_path / "sbatch"
    outcome = cli("render", str(SMOKE), f"runs_root={tmp_path / 'runs'}", "--cluster", str(profile), "-o", str(out))
    assert outcome.code == 0, outcome.stderr
    warnings = [line for line in outcome.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1, outcome.stderr
    assert f"{profile}:11: jobs.train.gpus: 4 GPUs per node asked" in warnings[0]
    assert "requesting 1, not 4" in warnings[0] and "train.distributed.gpus_per_node=4" in warnings[0]
    train = next(out.glob("*-train.sbatch")).read_text().splitlines()
    assert "#SBATCH --gpus-per-node=a100:1" in train  # not 4, three of them idle for a day
    assert any(line.startswith("# warning: ") and "jobs.train.gpus" in line for line in train)


def test_other_jobs_request_at_most_one_gpu(tmp_path: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps, step_warnings

    text = profile_text("apptainer", train_gpus=1).replace('evaluate: {time: "02:00:00", gpus: 1}',
                                                            'evaluate: {time: "02:00:00", gpus: 2}')
    cluster = load_cluster(write_yaml(tmp_path / "cluster.yaml", text))
    steps = slurm_steps(load_config(SMOKE, [f"runs_root={tmp_path / 'runs'}", "evaluate.shards=2"]), cluster)
    by_name = {s.name: s for s in steps}
    assert by_name["evaluate-parts"].params["gpus_per_node"] == "a100:1"
    (warning,) = step_warnings(steps)
    assert warning.startswith(f"{tmp_path / 'cluster.yaml'}:12: jobs.evaluate.gpus: 2 GPUs per node asked")


def test_multi_gpu_train_requests_what_train_distributed_asks(tmp_path: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.launch.cluster import load_cluster
    from kazhpc.launch.steps import slurm_steps, step_warnings

    cfg = load_config(SMOKE, [f"runs_root={tmp_path / 'runs'}", "train.distributed.gpus_per_node=4"])
    steps = slurm_steps(cfg, load_cluster(A100))
    assert next(s for s in steps if s.name == "train").params["gpus_per_node"] == "a100:4"
    (warning,) = step_warnings(steps)
    assert "a100-example.yaml:" in warning and "jobs.train.gpus: 1 GPU per node asked" in warning
    same = slurm_steps(cfg, load_cluster(write_yaml(tmp_path / "c.yaml", profile_text("apptainer", train_gpus=4))))
    assert step_warnings(same) == []


def test_shipped_example_profile_wastes_no_gpu_on_the_smoke_pipeline(tmp_path: Path) -> None:
    outcome = cli("render", str(SMOKE), f"runs_root={tmp_path / 'runs'}", "--cluster", str(A100),
                  "-o", str(tmp_path / "sbatch"))
    assert outcome.code == 0 and "warning" not in outcome.stderr, outcome.stderr


# --------------------------------------------------------------------------------------------
# Bad input on the cluster path: exit 2 and one line naming what and where.


@pytest.mark.parametrize(
    ("change", "must_contain"),
    [
        (("partition: gpu", "partiton: gpu"), ("cluster.yaml:2:", "partiton: unknown key", "'partition'")),
        (("gpus: 4, gpu_type", "gpus: 2, gpu_type"), ("cluster.yaml:11:", "jobs.train.gpus: 4 GPUs per node asked, a node has 2")),
        (('train: {time: "12:00:00"', 'train: {time: "2-00:00:00"'), ("cluster.yaml:11:", "jobs.train.time", "max_time 1-00:00:00")),
        (("image: '/images/kazhpc.sif', ", ""), ("cluster.yaml:6:", "container", "needs an image")),
        (("tokenizers: {time: 30}", "tokenizers: {time: soon}"), ("cluster.yaml:9:", "jobs.tokenizers.time", "'soon'")),
        (("evaluate: {time", "evaluat: {time"), ("cluster.yaml:", "unknown job 'evaluat'", "'evaluate'")),
    ],
    ids=["unknown-key", "gpus-above-node", "time-above-max", "apptainer-without-image", "bad-time", "unknown-job"],
)
def test_bad_profile_is_one_line(tmp_path: Path, change: tuple[str, str], must_contain: tuple[str, ...]) -> None:
    text = profile_text("apptainer")
    assert change[0] in text, change
    profile = write_yaml(tmp_path / "cluster.yaml", text.replace(change[0], change[1]))
    outcome = cli("render", str(SMOKE), "--cluster", str(profile), "-o", str(tmp_path / "out"))
    assert_one_line_error(outcome, *must_contain)
    assert not (tmp_path / "out").exists()


def test_missing_profile_is_one_line(tmp_path: Path) -> None:
    outcome = cli("render", str(SMOKE), "--cluster", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "out"))
    assert_one_line_error(outcome, "nope.yaml", "cluster profile not found", "a100-example")


def test_job_the_profile_gives_no_resources_is_one_line(tmp_path: Path) -> None:
    text = profile_text("apptainer").replace('  evaluate: {time: "02:00:00", gpus: 1}\n', "")
    profile = write_yaml(tmp_path / "cluster.yaml", text)
    outcome = cli("render", str(SMOKE), "--cluster", str(profile), "-o", str(tmp_path / "out"))
    assert_one_line_error(outcome, "cluster.yaml:7:", "jobs.evaluate", "no resources")


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_render_to_a_file_is_one_line(tmp_path: Path, where: str) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder\n")
    out = taken if where == "file" else taken / "sbatch"
    outcome = cli("render", str(SMOKE), f"runs_root={tmp_path / 'runs'}", "--cluster", str(A100), "-o", str(out))
    assert_one_line_error(outcome, str(out), "sbatch scripts")
    assert taken.read_text() == "not a folder\n"


def new_run(tmp_path: Path) -> Path:
    """A run directory as `kazhpc init` makes it (config.yaml, run.json), never submitted."""
    made = cli("init", str(SMOKE), f"runs_root={tmp_path / 'runs'}")
    assert made.code == 0, made.stderr
    run_dir = Path(made.stdout.strip().splitlines()[-1])
    assert (run_dir / "config.yaml").is_file()
    return run_dir


def test_status_of_a_directory_that_is_not_a_run_is_one_line(tmp_path: Path) -> None:
    assert_one_line_error(cli("status", str(tmp_path)), str(tmp_path), "not a kazhpc run directory")
    assert_one_line_error(cli("status", str(tmp_path / "gone")), str(tmp_path / "gone"), "not a kazhpc run directory")
    assert_one_line_error(cli("cancel", str(tmp_path)), str(tmp_path), "no submission.json")


@pytest.mark.parametrize("record", ["{not json", '["a list"]', '{"attempts": []}', "\udcff"])
def test_status_of_a_broken_submission_record_is_one_line(tmp_path: Path, record: str) -> None:
    run_dir = new_run(tmp_path)
    (run_dir / "submission.json").write_bytes(record.encode("utf-8", "surrogateescape"))
    assert_one_line_error(cli("status", str(run_dir)), str(run_dir / "submission.json"))
    assert_one_line_error(cli("cancel", str(run_dir)), str(run_dir / "submission.json"))


def test_resume_of_a_run_never_submitted_is_one_line(tmp_path: Path) -> None:
    run_dir = new_run(tmp_path)
    outcome = kazhpc("submit", "--resume", str(run_dir))
    assert_one_line_error(outcome, str(run_dir), "no submission.json", "not submitted with kazhpc submit")
    assert_one_line_error(kazhpc("submit", "--resume", str(tmp_path / "nothing-here")), "nothing-here",
                          "not a kazhpc run directory")


def test_submit_with_a_missing_apptainer_image_is_one_line(tmp_path: Path) -> None:
    """Refused before sbatch is called and before a run directory exists: the image is not there."""
    env, log = stub_bin(tmp_path)
    profile = write_yaml(tmp_path / "cluster.yaml", profile_text("apptainer", train_gpus=1))
    outcome = kazhpc("submit", str(SMOKE), f"runs_root={tmp_path / 'runs'}", "--cluster", str(profile),
                     env={"PATH": env["PATH"], "STUB_LOG": env["STUB_LOG"]})
    assert_one_line_error(outcome, "cluster.yaml:6:", "container.image", "/images/kazhpc.sif", "does not exist")
    assert not log.exists()  # no sbatch
    assert not (tmp_path / "runs").exists() or not any(p.is_dir() and p.name.startswith("smoke-")
                                                       for p in (tmp_path / "runs").iterdir())
