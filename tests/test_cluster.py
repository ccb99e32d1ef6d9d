"""Cluster profiles, the SLURM plan, and rendered sbatch scripts: no SLURM needed, nothing mocked.

The rendered scripts are checked with `bash -n` and against the sbatch file submitit itself writes
for the same parameters, so `kazhpc render` and `kazhpc submit` cannot drift apart."""

from __future__ import annotations

import re
import shlex
import textwrap
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO, write_yaml
from kazhpc.config import load_config
from kazhpc.errors import ConfigError, KazhpcError
from kazhpc.launch.cluster import format_time, load_cluster, parse_time
from kazhpc.launch.steps import sbatch_flag, slurm_steps

SMOKE = CONFIGS / "pipelines" / "smoke.yaml"
A100 = CONFIGS / "clusters" / "a100-example.yaml"
LOCAL = CONFIGS / "clusters" / "local.yaml"
KAZHPC = str(Path(sys.executable).parent / "kazhpc")


def profile(tmp_path: Path, text: str) -> Path:
    return write_yaml(tmp_path / "cluster.yaml", text)


BASE = """
    name: test
    partition: gpu
    max_time: "1-00:00:00"
    node: {gpus: 2, gpu_type: a100, cpus: 16, memory_gb: 100}
    jobs:
      prepare-model: {time: "00:30:00", gpus: 1}
      tokenizers: {time: 30}
      preprocess: {time: "01:00:00", cpus: 4, mem_gb: 8}
      train: {time: "12:00:00", gpus: 2, cpus: 8, mem_gb: 64}
      evaluate: {time: "02:00:00", gpus: 1}
"""


@pytest.mark.parametrize("path", sorted((CONFIGS / "clusters").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_profiles_load_and_cover_the_smoke_pipeline(path: Path) -> None:
    cluster = load_cluster(path)
    steps = slurm_steps(load_config(SMOKE, ["preprocess.shards=2"]), cluster)
    names = [s.name for s in steps]
    assert names[names.index("preprocess-parts") + 1] == "preprocess"
    assert set(load_config(SMOKE).stage_names) <= set(names)


def test_bare_profile_name_resolves() -> None:
    assert load_cluster("a100-example").name == "a100-example"


@pytest.mark.parametrize(
    ("value", "minutes"), [("30", 30), (45, 45), ("02:00:00", 120), ("1-12:00:00", 2160), ("00:00:30", 1), ("2-0", 2880)]
)
def test_time_limits_parse_as_slurm_does(value: str | int, minutes: int) -> None:
    assert parse_time(value) == minutes


def test_time_limit_round_trip() -> None:
    assert format_time(parse_time("1-02:30:00")) == "1-02:30:00"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("train: {time: \"12:00:00\", gpus: 2", "train: {time: \"12:00:00\", gpus: 4"),
         r"cluster.yaml:9: jobs.train.gpus: 4 GPUs per node asked, a node has 2"),
        (("{time: \"12:00:00\"", "{time: \"2-00:00:00\""),
         r"cluster.yaml:9: jobs.train.time: 2-00:00:00 is above the partition's max_time 1-00:00:00"),
        (("mem_gb: 64", "mem_gb: 640"), r"cluster.yaml:9: jobs.train.mem_gb: 640.0 GB asked, a node has 100.0"),
        (("tokenizers: {time: 30}", "tokenizers: {cpus: 2}"), r"cluster.yaml:7: jobs.tokenizers.time: required key is missing"),
        (("tokenizers: {time: 30}", "tokeniser: {time: 30}"), r"cluster.yaml:\d+: jobs: unknown job 'tokeniser' \(did you mean 'tokenizers'\?\)"),
        (("partition: gpu", "partiton: gpu"), r"cluster.yaml:2: partiton: unknown key \(did you mean 'partition'\?\)"),
        (("time: 30}", "time: \"1:61:61:61\"}"), r"cluster.yaml:7: jobs.tokenizers.time: time limit '1:61:61:61'"),
        (("name: test", "name: test\ncontainer: {runtime: apptainer}"), r"container: runtime apptainer needs an image"),
    ],
    ids=["gpus", "max-time", "memory", "no-time", "unknown-job", "unknown-key", "bad-time", "no-image"],
)
def test_impossible_profiles_are_one_line_errors(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = textwrap.dedent(BASE).lstrip()
    assert change[0] in text, change
    path = profile(tmp_path, text.replace(change[0], change[1]))
    with pytest.raises(ConfigError) as caught:
        load_cluster(path)
    assert re.search(message, str(caught.value)), str(caught.value)
    assert "\n" not in str(caught.value)


def test_job_without_resources_is_refused_before_submission(tmp_path: Path) -> None:
    text = textwrap.dedent(BASE).lstrip().replace("  tokenizers: {time: 30}\n", "")
    cluster = load_cluster(profile(tmp_path, text))
    with pytest.raises(ConfigError, match=r"cluster.yaml:5: jobs.tokenizers: the pipeline runs 'tokenizers' but this "
                                          r"profile gives it no resources"):
        slurm_steps(load_config(SMOKE), cluster)


def test_distributed_training_beyond_a_node_is_refused(tmp_path: Path) -> None:
    cluster = load_cluster(profile(tmp_path, BASE))
    cfg = load_config(SMOKE, ["train.distributed.gpus_per_node=8", "train.distributed.nodes=2"])
    with pytest.raises(KazhpcError, match=r"train.distributed.gpus_per_node=8 but a node of 'test' has 2 GPUs"):
        slurm_steps(cfg, cluster)


def test_container_must_see_every_path_the_config_names(tmp_path: Path) -> None:
    cluster = load_cluster(A100)
    cfg = load_config(SMOKE, ["prepare_model.perplexity_texts=/data/elsewhere/kk.txt"])
    with pytest.raises(ConfigError, match=r"a100-example.yaml:\d+: container.binds: prepare_model.perplexity_texts="
                                          r"/data/elsewhere/kk.txt is not visible inside the container"):
        slurm_steps(cfg, cluster)


def test_preprocess_shards_become_an_array_then_a_merge() -> None:
    steps = {s.name: s for s in slurm_steps(load_config(SMOKE, ["preprocess.shards=3"]), load_cluster(LOCAL))}
    parts, merge = steps["preprocess-parts"], steps["preprocess"]
    assert parts.array == 3 and merge.array is None
    assert merge.after == ("preprocess-parts",) and parts.after == ("tokenizers",)
    assert '--shard "$SLURM_ARRAY_TASK_ID/3"' in parts.command[-1]
    assert "--shard" not in merge.command[-1]
    unsharded = {s.name for s in slurm_steps(load_config(SMOKE), load_cluster(LOCAL))}
    assert "preprocess-parts" not in unsharded  # one shard: one plain job


CPT = CONFIGS / "pipelines" / "kazakh-cpt-sft.yaml"


def test_every_job_with_phases_becomes_one_step_per_phase_then_its_own() -> None:
    """Generic over the registry (corpus: datatrove's stages). Arrays of one-process tasks asking
    for one CPU and the profile's memory per CPU; the one-task phase and the stage's own job get
    the profile's entry (a100-example: corpus 32 CPUs, 128 GB)."""
    from kazhpc.registry import JOB_TYPES

    assert [job.name for job in JOB_TYPES if job.phased] == ["corpus"]
    steps = [s for s in slurm_steps(load_config(CPT, ["corpus.tasks=3", "corpus.minhash.buckets=5"]), load_cluster(A100))
             if s.stage == "corpus"]
    assert [(s.name, s.array) for s in steps] == [("corpus-filter", 3), ("corpus-buckets", 5), ("corpus-clusters", None),
                                                  ("corpus-blocks", 3), ("corpus", None)]
    assert [s.after for s in steps] == [("extend-vocab",), *[(s.name,) for s in steps[:-1]]]
    assert [(s.params["cpus_per_task"], s.params["mem"]) for s in steps] == [(1, "4GB"), (1, "4GB"), (32, "128GB"),
                                                                             (1, "4GB"), (32, "128GB")]
    assert '--phase filter --shard "$SLURM_ARRAY_TASK_ID/3"' in steps[0].command[-1]
    assert "--phase clusters --shard 0/1" in steps[2].command[-1] and "--phase" not in steps[-1].command[-1]
    assert all(s.command[-1].split()[:2] == ["apptainer", "exec"] for s in steps)  # inside the profile's container
    no_dedup = load_config(CPT, ["corpus.tasks=3", "corpus.minhash.enabled=false"])
    assert [s.name for s in slurm_steps(no_dedup, load_cluster(A100)) if s.stage == "corpus"] == ["corpus-filter", "corpus-blocks", "corpus"]
    one_task = load_config(CPT, ["corpus.tasks=1"])
    assert [s.name for s in slurm_steps(one_task, load_cluster(A100)) if s.stage == "corpus"] == ["corpus"]


@pytest.mark.parametrize(("job", "shard", "phase", "message"), [
    ("preprocess", "0/2", "filter", "job 'preprocess' has no phases; drop --phase"),
    ("corpus", "0/2", "sort", "--phase sort: corpus has the phases filter, buckets, clusters, blocks"),
    ("corpus", "0/3", "buckets", "--shard 0/3: corpus's phase buckets has 4 tasks, not 3"),
])
def test_a_phase_task_that_does_not_exist_is_a_one_line_error(tmp_path: Path, job: str, shard: str, phase: str,
                                                             message: str) -> None:
    from kazhpc.runner import new_run_dir, run_single

    run_dir = new_run_dir(load_config(CPT, [f"runs_root={tmp_path}"]))
    with pytest.raises(KazhpcError, match=re.escape(message)):
        run_single(job, None, [], run_dir, shard, None, phase)


def test_local_profile_runs_this_checkout_without_container() -> None:
    steps = slurm_steps(load_config(SMOKE), load_cluster(LOCAL))
    train = next(s for s in steps if s.name == "train")
    assert train.command[0] == f"cd {REPO}"
    assert train.command[1] == f'{sys.executable} jobs/train.py --run-dir "$RUN_DIR"'
    assert train.params == {"job_name": "kazhpc-train", "time": 60, "nodes": 1, "ntasks_per_node": 1,
                            "cpus_per_task": 2, "mem": "8GB", "partition": "debug"}
    assert 'export HF_HUB_OFFLINE="1"' in train.setup


def test_docker_runtime_wraps_the_command(tmp_path: Path) -> None:
    text = textwrap.dedent(BASE).lstrip() + "container: {runtime: docker, image: 'kazhpc:0.1.0', binds: [/scratch]}\n"
    cfg = load_config(SMOKE, [f"runs_root={tmp_path / 'runs'}"])
    steps = {s.name: s for s in slurm_steps(cfg, load_cluster(profile(tmp_path, text)))}
    command = steps["train"].command[-1]
    assert command.startswith("docker run --rm --gpus all -w /opt/kazhpc ")
    assert f"-v {tmp_path / 'runs'}:{tmp_path / 'runs'}" in command and "-e RUN_DIR" in command
    assert command.endswith(" --entrypoint '' kazhpc:0.1.0 python jobs/train.py --run-dir \"$RUN_DIR\"")
    assert "--gpus" not in steps["tokenizers"].command[-1]  # a CPU job asks for no GPU


def test_rendered_a100_scripts(tmp_path: Path) -> None:
    """What the issue asks of `kazhpc render`: valid bash, the right #SBATCH lines, the container command,
    no shell variables in #SBATCH lines, and submit.sh chaining the jobs with afterok."""
    out = tmp_path / "sbatch"
    result = subprocess.run(
        [KAZHPC, "render", str(SMOKE), "preprocess.shards=4", "--cluster", str(A100), "-o", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    scripts = sorted(out.glob("*.sbatch"))
    assert [p.name for p in scripts][:5] == ["01-prepare-model.sbatch", "02-tokenizers.sbatch",
                                             "03-preprocess-parts.sbatch", "04-preprocess.sbatch", "05-train.sbatch"]
    for script in [*scripts, out / "submit.sh"]:
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"
        for line in script.read_text().splitlines():
            if line.startswith("#SBATCH"):
                assert "$" not in line, line
    train = (out / "05-train.sbatch").read_text()
    for line in ["#SBATCH --partition=gpu", "#SBATCH --account=kazllm", "#SBATCH --qos=normal",
                 "#SBATCH --constraint=a100", "#SBATCH --gpus-per-node=a100:1", "#SBATCH --time=1440",
                 "#SBATCH --mem=120GB", "#SBATCH --cpus-per-task=16", "module load apptainer",
                 'export HF_HUB_OFFLINE="1"', "#SBATCH --signal=USR2@90", "#SBATCH --requeue",
                 "#SBATCH --open-mode=append"]:
        assert line in train.splitlines(), line
    # A job step, as submitit runs it: SLURM's warning signal goes to steps (the batch shell would die of it).
    container = re.search(r"^srun --unbuffered apptainer exec --nv --bind (\S+) --pwd /opt/kazhpc /scratch/kazhpc/kazhpc-0.1.0.sif "
                          r"python jobs/train.py --run-dir \"\$RUN_DIR\"$", train, re.MULTILINE)
    assert container, train
    assert "/scratch" in container.group(1).split(",")
    # The host shell stands in the submit directory (bound), never in the image's /opt/kazhpc.
    assert f"cd {REPO}" in train.splitlines() and "cd /opt/kazhpc" not in train
    parts = (out / "03-preprocess-parts.sbatch").read_text()
    assert "#SBATCH --array=0-3" in parts.splitlines()
    assert "--nv" not in parts and "#SBATCH --gpus-per-node" not in parts  # CPU job on the GPU cluster
    assert '--shard "$SLURM_ARRAY_TASK_ID/4"' in parts
    submit = (out / "submit.sh").read_text()
    assert "JOB_PREPARE_MODEL=$(sbatch --parsable 01-prepare-model.sbatch)" in submit
    assert ("JOB_PREPROCESS=$(sbatch --parsable --dependency=afterok:$JOB_PREPROCESS_PARTS --kill-on-invalid-dep=yes "
            "04-preprocess.sbatch)") in submit
    assert "--dependency=afterok:$JOB_PREPROCESS " in submit.split("JOB_TRAIN=")[1]


def test_rendered_lines_are_the_ones_submitit_writes(tmp_path: Path) -> None:
    """The #SBATCH lines of `kazhpc render` appear verbatim in the sbatch file submitit makes from the
    same step parameters (the two paths share kazhpc.launch.steps)."""
    from submitit.slurm.slurm import _make_sbatch_string

    for step in slurm_steps(load_config(SMOKE, ["preprocess.shards=2"]), load_cluster(A100)):
        theirs = _make_sbatch_string(command="true", folder=tmp_path, setup=step.setup,
                                     additional_parameters=step.extra, **step.params).splitlines()
        ours = [sbatch_flag(k, v) for k, v in step.sbatch_options().items()]
        assert set(ours) <= set(theirs), (step.name, set(ours) - set(theirs))
        assert ("#SBATCH --requeue" in ours) == (step.job == "train")
        assert all(line in theirs for line in step.setup)


def test_multi_gpu_training_uses_the_distributed_launch() -> None:
    """train.distributed beyond one GPU: the step runs kazhpc.launch.multinode's srun + accelerate
    launch inside the container, on the nodes it asks for, without submitit's own srun."""
    cfg = load_config(SMOKE, ["train.distributed.nodes=2", "train.distributed.gpus_per_node=4"])
    (train,) = [s for s in slurm_steps(cfg, load_cluster(A100)) if s.name == "train"]
    assert train.use_srun is False
    assert train.params["nodes"] == 2 and train.params["ntasks_per_node"] == 1
    assert train.params["gpus_per_node"] == "a100:4" and train.params["cpus_per_task"] == 16  # the profile's
    script = "\n".join(train.command)
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in script
    assert "apptainer exec --nv --bind" in script and "accelerate.commands.launch" in script
    assert "--num_processes 8" in script and '--run-dir "$RUN_DIR"' in script
    check = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_every_job_that_splits_becomes_an_array_and_a_merge() -> None:
    """Generic over the registry: each job with parts (preprocess, evaluate) and shards=2 in its config."""
    from kazhpc.config import JOB_NAMES
    from kazhpc.registry import JOB_TYPES

    split = [job.name for job in JOB_TYPES if job.splits]
    assert "preprocess" in split
    jobs = "[" + ",".join(JOB_NAMES) + "]"
    cfg = load_config(SMOKE, [f"jobs={jobs}", *[f"{job.replace('-', '_')}.shards=2" for job in split]])
    steps = slurm_steps(cfg, load_cluster(LOCAL))
    names = [s.name for s in steps]
    assert names == [n for job in JOB_NAMES for n in ([f"{job}-parts", job] if job in split else [job])]
    for step in steps:
        assert (step.array == 2) == step.name.endswith("-parts")
        assert step.after == ((names[names.index(step.name) - 1],) if step.name != names[0] else ())


def test_missing_profile_names_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: cluster profile not found; shipped profiles: .*a100-example.*local"):
        load_cluster(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------
# ShellStep under a preemption signal: the submitit job process waits for the checkpoint first.

_SUBMITIT_JOB = """
import signal, sys
from pathlib import Path
from kazhpc.launch.submit import ShellStep
marker = Path(sys.argv[1])
def requeue(signum, frame):  # stands for submitit's checkpoint_and_try_requeue: note what is on disk
    print("REQUEUE saved=" + str(marker.is_file()), flush=True)
    sys.exit(3)
signal.signal(signal.SIGUSR2, requeue)
command = [sys.argv[2]]
step = ShellStep("train", command, str(marker.parent), "train", sys.argv[3] or None)
print("RETURNED", step(), flush=True)
"""

# A job that saves on USR2: 1 s of "saving" after the signal, then exit 75 (or 0: it had finished).
_SAVING_JOB = (
    "python -c 'import signal, sys, time, pathlib\n"
    "got = []\nsignal.signal(signal.SIGUSR2, lambda s, f: got.append(s))\n"
    "print(\"ready\", flush=True)\n"
    "while not got: time.sleep(0.05)\n"
    "time.sleep(1); pathlib.Path(sys.argv[1]).write_text(\"ckpt\")\n"
    "sys.exit(int(sys.argv[2]))' \"$RUN_DIR/ckpt\" {code}"
)


def _preempt(tmp_path: Path, command: str, signal_name: str) -> subprocess.CompletedProcess:
    import signal

    marker = tmp_path / "ckpt"
    proc = subprocess.Popen([sys.executable, "-c", _SUBMITIT_JOB, str(marker), command, signal_name],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGUSR2)  # to the job process alone: it must pass the signal on itself
    out, err = proc.communicate(timeout=60)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_preempted_step_is_requeued_only_after_its_checkpoint_is_saved(tmp_path: Path) -> None:
    done = _preempt(tmp_path, _SAVING_JOB.format(code=75), "USR2")
    assert done.returncode == 3 and "REQUEUE saved=True" in done.stdout, done.stdout + done.stderr
    assert "preempted (exit 75); requeueing it through submitit" in done.stderr


def test_step_that_finished_despite_the_signal_is_not_requeued(tmp_path: Path) -> None:
    done = _preempt(tmp_path, _SAVING_JOB.format(code=0), "USR2")
    assert done.returncode == 0 and "RETURNED 0" in done.stdout and "REQUEUE" not in done.stdout, done.stdout + done.stderr


def test_step_without_a_checkpoint_is_stopped_and_requeued(tmp_path: Path) -> None:
    import time

    started = time.time()
    done = _preempt(tmp_path, "echo ready; sleep 120", "")
    assert done.returncode == 3 and "REQUEUE saved=False" in done.stdout, done.stdout + done.stderr
    assert time.time() - started < 30  # stopped, not waited for


@pytest.mark.parametrize("recorded_before_start", [False, True])
def test_ranks_preempted_under_torchrun_are_requeued_from_run_json(tmp_path: Path, recorded_before_start: bool) -> None:
    """Several ranks each exit 75 but torchrun reports 1: the runner's PREEMPTED in run.json, written
    by this attempt, is what says the job saved and wants its requeue; one left by an earlier
    attempt is not (a job that now fails before it starts must not be requeued for ever)."""
    from kazhpc.runner import set_job_state

    if recorded_before_start:
        set_job_state(tmp_path, "train", status="PREEMPTED", finished=1.0)
        command = "exit 1"
    else:
        record = ("import os, time; from pathlib import Path; from kazhpc.runner import set_job_state; "
                  "set_job_state(Path(os.environ['RUN_DIR']), 'train', status='PREEMPTED', finished=time.time())")
        command = f"{shlex.quote(sys.executable)} -c {shlex.quote(record)}; exit 1"  # what rank 0's runner does
    code = textwrap.dedent(f"""
        import signal, sys
        from kazhpc.launch.submit import ShellStep, StepFailed
        signal.signal(signal.SIGUSR2, lambda s, f: (print("REQUEUE", flush=True), sys.exit(3)))
        try:
            ShellStep("train", [{command!r}], {str(tmp_path)!r}, "train", "USR2")()
        except StepFailed as exc:
            print("FAILED", exc)
        """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    if recorded_before_start:
        assert done.returncode == 0 and "FAILED step train exited with 1" in done.stdout, done.stdout + done.stderr
    else:
        assert done.returncode == 3 and "REQUEUE" in done.stdout, done.stdout + done.stderr


def test_status_reads_each_step_s_tasks_under_the_keys_the_runner_writes() -> None:
    """A phase's tasks, a split job's parts and a plain stage, in run.json (kazhpc.runner.task_key)."""
    from kazhpc.launch.status import state_keys

    assert state_keys({"stage": "corpus", "phase": "filter", "array": 2}) == ["corpus:filter[0/2]", "corpus:filter[1/2]"]
    assert state_keys({"stage": "corpus", "phase": "clusters", "array": None}) == ["corpus:clusters[0/1]"]
    assert state_keys({"stage": "pre", "job": "preprocess", "array": 2}) == ["pre[0/2]", "pre[1/2]"]
    assert state_keys({"job": "train", "array": None}) == ["train"]  # a record from before named stages


def test_an_evaluation_merge_gets_the_gpus_only_when_it_loads_a_judge() -> None:
    """The merge of sharded parts reads files, so it asks for no GPU; a judge task's merge loads the
    judge model, so it gets the evaluate job's GPUs (and --nv in the container)."""
    cluster = load_cluster(A100)
    plain = {s.name: s for s in slurm_steps(load_config(SMOKE, ["evaluate.shards=2", "evaluate.tasks=[kk_dastur_mc]"]), cluster)}
    judged = {s.name: s for s in slurm_steps(load_config(SMOKE, ["evaluate.shards=2"]), cluster)}  # smoke has kk_judge
    assert plain["evaluate-parts"].params.get("gpus_per_node") and judged["evaluate-parts"].params.get("gpus_per_node")
    assert not plain["evaluate"].params.get("gpus_per_node") and "--nv" not in "\n".join(plain["evaluate"].command)
    assert judged["evaluate"].params["gpus_per_node"] == plain["evaluate-parts"].params["gpus_per_node"]
    assert "--nv" in "\n".join(judged["evaluate"].command)


def test_more_corpus_workers_than_the_profile_s_cpus_is_a_warning() -> None:
    """corpus.workers processes run in the stage's one job: more than its CPUs oversubscribe them."""
    from kazhpc.launch.steps import step_warnings

    fits = slurm_steps(load_config(CPT, ["corpus.workers=2"]), load_cluster(LOCAL))
    assert not [w for w in step_warnings(fits) if "workers" in w]
    (warning,) = [w for w in step_warnings(slurm_steps(load_config(CPT, ["corpus.workers=4"]), load_cluster(LOCAL))) if "workers" in w]
    assert re.search(r"corpus: corpus\.workers is 4, but .*local\.yaml:\d+ \(jobs\.corpus\) gives the corpus job 2 CPUs", warning), warning
