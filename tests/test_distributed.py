"""Training on several processes: the DeepSpeed configs, the combinations validate refuses, the
rendered SLURM launch for 1x1, 1x4 and 4x8, and real 2-rank DeepSpeed runs of the train job: ZeRO-2
through the rendered per-node command, QLoRA under ZeRO-3 under the local SLURM (slurm/train.sbatch)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import CONFIGS, REPO, write_yaml
from kazhpc.config import load_config
from kazhpc.errors import ConfigError, KazhpcError
from kazhpc.launch.multinode import check_allocation, train_launch_script, train_sbatch_resources
from kazhpc.train import distributed

SMOKE = CONFIGS / "pipelines" / "smoke.yaml"
ZERO3_QLORA = ["train.distributed.deepspeed=zero3", "train.quantization.quant_storage=bfloat16"]


def smoke(*overrides: str):
    """The smoke config with ``overrides``, through the train job's preflight (what `kazhpc
    validate` runs: the DeepSpeed checks read its JSON file)."""
    from kazhpc.train.qlora import preflight

    cfg = load_config(SMOKE, list(overrides))
    preflight(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# The DeepSpeed configs.


def test_shipped_deepspeed_configs() -> None:
    assert distributed.deepspeed_names() == ["zero2", "zero2-offload", "zero3", "zero3-offload"]
    expected = {"zero2": (2, {}), "zero2-offload": (2, {"optimizer": "cpu"}),
                "zero3": (3, {}), "zero3-offload": (3, {"optimizer": "cpu", "param": "cpu"})}
    for name, (stage, offload) in expected.items():
        ds = distributed.load_deepspeed(name)
        assert (distributed.zero_stage(ds), distributed.offloads(ds)) == (stage, offload), name
        # The HF Trainer fills these from the train section, so the two cannot disagree.
        for key in ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping"):
            assert ds[key] == "auto", (name, key)
        assert ds["bf16"]["enabled"] == "auto"
        if stage == 3:  # else a peft adapter saved under ZeRO-3 has empty tensors
            assert ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True


def test_deepspeed_names_and_paths_validate(tmp_path: Path) -> None:
    assert smoke("train.distributed.deepspeed=zero2").train.distributed.deepspeed == "zero2"
    with pytest.raises(ConfigError, match=r"train\.distributed\.deepspeed: unknown DeepSpeed config 'zero-3' "
                       r"\(did you mean 'zero3'\?\); known: zero2, zero2-offload, zero3, zero3-offload"):
        smoke("train.distributed.deepspeed=zero-3")
    with pytest.raises(ConfigError, match=r"train\.distributed\.deepspeed: .*missing\.json: file not found"):
        smoke(f"train.distributed.deepspeed={tmp_path / 'missing.json'}")
    bad = tmp_path / "bad.json"
    bad.write_text('{\n  "zero_optimization": {"stage": 2,}\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:2: malformed JSON"):
        smoke(f"train.distributed.deepspeed={bad}")
    # A relative JSON path is stored absolute (it means the same on a compute node).
    custom = tmp_path / "custom.json"
    custom.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    os.chdir(tmp_path)
    try:
        assert smoke("train.distributed.deepspeed=./custom.json").train.distributed.deepspeed == str(custom)
    finally:
        os.chdir(REPO)


def test_validate_refuses_impossible_combinations(tmp_path: Path) -> None:
    # QLoRA under ZeRO-3 needs the 4-bit weights packed in the compute dtype.
    with pytest.raises(ConfigError, match=r"train\.quantization\.quant_storage: QLoRA under ZeRO-3 .*compute_dtype \(bfloat16\)"):
        smoke("train.distributed.deepspeed=zero3")
    with pytest.raises(ConfigError, match="quant_storage"):
        smoke("train.distributed.deepspeed=zero3-offload", "train.quantization.quant_storage=float16")
    assert smoke(*ZERO3_QLORA).train.quantization.quant_storage == "bfloat16"
    assert smoke("train.distributed.deepspeed=zero3", "train.quantization=null")  # plain LoRA: no constraint
    assert smoke("train.distributed.deepspeed=zero2")  # ZeRO-2 leaves the weights whole: any storage
    # A custom JSON: parameter offload is a stage-3 feature; fixed batch sizes must match the train section.
    z2_param = tmp_path / "z2-param.json"
    z2_param.write_text(json.dumps({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}))
    with pytest.raises(ConfigError, match="offload_param needs ZeRO stage 3"):
        smoke(f"train.distributed.deepspeed={z2_param}")
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps({"train_micro_batch_size_per_gpu": 8, "zero_optimization": {"stage": 2}}))
    with pytest.raises(ConfigError, match=r"train_micro_batch_size_per_gpu is 8 but the train section gives 4"):
        smoke(f"train.distributed.deepspeed={fixed}")
    total = tmp_path / "total.json"
    total.write_text(json.dumps({"train_batch_size": 32, "zero_optimization": {"stage": 2}}))
    assert smoke(f"train.distributed.deepspeed={total}", "train.distributed.gpus_per_node=8")  # 4 x 1 x 8
    with pytest.raises(ConfigError, match=r"train_batch_size is 32 but the train section gives 16"):
        smoke(f"train.distributed.deepspeed={total}", "train.distributed.gpus_per_node=4")
    with pytest.raises(ConfigError, match=r"train\.distributed\.nodes"):
        smoke("train.distributed.nodes=0")


def test_single_process_zero_without_offload_is_a_warning() -> None:
    from kazhpc.train.qlora import preflight

    (warning,) = [w for w in preflight(smoke("train.distributed.deepspeed=zero2")) if "shards nothing" in w]
    assert "zero2-offload" in warning
    assert not [w for w in preflight(smoke("train.distributed.deepspeed=zero2-offload")) if "shards nothing" in w]
    assert not [w for w in preflight(smoke("train.distributed.deepspeed=zero2", "train.distributed.gpus_per_node=2"))
                if "shards nothing" in w]


def test_qlora_loading_under_zero3_has_no_device_map(monkeypatch: pytest.MonkeyPatch) -> None:
    """What load_for_training passes to from_pretrained: ZeRO-3 places the 4-bit weights itself
    (no device_map, dtype = quant storage); otherwise each rank loads onto its own device."""
    from kazhpc.train import qlora

    captured = {}

    def fake_load_model(model_cfg, cache_root, **kwargs):
        captured.clear()
        captured.update(kwargs)
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr("kazhpc.models.load_model", fake_load_model)
    qlora.load_for_training(smoke(*ZERO3_QLORA))
    assert "device_map" not in captured and captured["dtype"] == torch.bfloat16
    bnb = captured["quantization_config"]
    assert bnb.load_in_4bit and bnb.bnb_4bit_quant_storage == bnb.bnb_4bit_compute_dtype == torch.bfloat16

    qlora.load_for_training(smoke("train.distributed.deepspeed=zero2", "train.distributed.gpus_per_node=2"))
    assert captured["device_map"] == {"": "cpu"} and "dtype" not in captured
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setattr(qlora, "_device", lambda: "cuda")
    qlora.load_for_training(smoke("train.distributed.gpus_per_node=4"))  # DDP: rank 3 takes GPU 3
    assert captured["device_map"] == {"": "cuda:3"}


def test_check_adapter_reads_the_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    def adapter(**tensors: torch.Tensor) -> Path:
        folder = tmp_path / str(len(list(tmp_path.iterdir())))
        folder.mkdir()
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        return folder

    a, b = "base_model.model.layers.0.q_proj.lora_A.weight", "base_model.model.layers.0.q_proj.lora_B.weight"
    good = adapter(**{a: torch.randn(4, 8), b: torch.randn(8, 4)})
    assert distributed.check_adapter(good) == {"tensors": 2, "parameters": 64}
    # What ZeRO-3 writes when nobody gathers the shards: a real file with shape-0 tensors.
    empty = adapter(**{a: torch.empty(0), b: torch.empty(0)})
    assert (empty / "adapter_model.safetensors").stat().st_size > 0
    with pytest.raises(KazhpcError, match="2 empty tensors .*stage3_gather_16bit_weights_on_model_save"):
        distributed.check_adapter(empty)
    with pytest.raises(KazhpcError, match="every lora_B is still zero"):
        distributed.check_adapter(adapter(**{a: torch.randn(4, 8), b: torch.zeros(8, 4)}))
    with pytest.raises(KazhpcError, match="pairs of lora_A/lora_B"):
        distributed.check_adapter(adapter(**{a: torch.randn(4, 8)}))
    with pytest.raises(KazhpcError, match="no adapter weights"):
        distributed.check_adapter(tmp_path)


def test_runner_lets_only_rank_0_record(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every rank runs the job; only rank 0 writes run.json, the manifest, job.log and MLflow."""
    from types import SimpleNamespace

    from kazhpc import runner

    ran = []
    adapter = SimpleNamespace(run=lambda ctx: ran.append(ctx.tracking.active) or {"rows": 3}, preflight=lambda cfg: [])
    fake = SimpleNamespace(name="train", section="train", needs=(), splits=False, system_metrics=False, adapter=lambda: adapter)
    cfg = smoke(f"runs_root={tmp_path}")
    monkeypatch.setattr(runner, "job_type", lambda name: fake)
    run_dir = runner.new_run_dir(cfg)
    tracker_cfg = cfg.tracking.model_copy(update={"enabled": False})

    monkeypatch.setenv("RANK", "1")
    assert runner.run_job(cfg, run_dir, runner.Tracker(tracker_cfg, tmp_path, run_dir), "train", {}) == {"rows": 3}
    assert ran == [False] and "train" not in runner.read_state(run_dir)["jobs"]
    assert not (run_dir / "train" / "manifest.json").exists() and not (run_dir / "train" / "job.log").exists()
    monkeypatch.setenv("RANK", "0")
    runner.run_job(cfg, run_dir, runner.Tracker(tracker_cfg, tmp_path, run_dir), "train", {})
    assert runner.read_state(run_dir)["jobs"]["train"]["status"] == "COMPLETED"
    assert json.loads((run_dir / "train" / "manifest.json").read_text())["rows"] == 3

    monkeypatch.setenv("WORLD_SIZE", "2")  # ranks that each made their own run directory would never meet
    with pytest.raises(KazhpcError, match="needs --run-dir"):
        runner.run_pipeline(cfg, only=["train"])


# --------------------------------------------------------------------------------------------
# The rendered launch.


def _srun_and_accelerate(script: str) -> tuple[list[str], list[str]]:
    """The srun part of the launch line, and the per-node command it runs (split into words)."""
    srun, per_node = _srun_line(script)
    return srun, shlex.split(per_node.split("; exec ", 1)[1])


def _srun_line(script: str) -> tuple[list[str], str]:
    """(srun and its flags, the bash -c text each node runs)."""
    (srun_line,) = [line for line in script.splitlines() if line.startswith("srun ")]
    words = shlex.split(srun_line)
    # The launcher ignores the preemption signal (it would die of it, taking the ranks with it).
    assert words[-3:-1] == ["bash", "-c"] and words[-1].startswith("trap '' USR2; exec ")
    return words[: words.index("bash")], words[-1]


def _flags(argv: list[str]) -> dict[str, str | None]:
    flags, i = {}, 0
    while i < len(argv):
        if argv[i].startswith("--"):
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else None
            flags[argv[i]] = value
            i += 2 if value is not None else 1
        else:
            i += 1
    return flags


@pytest.mark.parametrize(
    "layout, overrides",
    [
        ("1x1", []),
        ("1x4", ["train.distributed.gpus_per_node=4", "train.distributed.deepspeed=zero2"]),
        ("4x8", ["train.distributed.nodes=4", "train.distributed.gpus_per_node=8", *ZERO3_QLORA]),
    ],
)
def test_rendered_launch(layout: str, overrides: list[str], tmp_path: Path) -> None:
    nodes, gpus = (int(x) for x in layout.split("x"))
    cfg = smoke(*overrides)
    script = train_launch_script(cfg, "/scratch/runs/smoke 1", python="/opt/venv/bin/python")
    srun, accelerate = _srun_and_accelerate(script)
    assert srun == ["srun", f"--nodes={nodes}", f"--ntasks={nodes}", "--ntasks-per-node=1", "--kill-on-bad-exit=1"]
    assert accelerate[:3] == ["/opt/venv/bin/python", "-m", "accelerate.commands.launch"]
    assert accelerate[-3:] == ["jobs/train.py", "--run-dir", "/scratch/runs/smoke 1"]
    flags = _flags(accelerate[3:-3])
    assert flags["--num_machines"] == str(nodes) and flags["--num_processes"] == str(nodes * gpus)
    # Expanded by each node's shell (the srun command is single-quoted): rank, head node, port.
    assert (flags["--machine_rank"], flags["--main_process_ip"], flags["--main_process_port"]) == (
        "$SLURM_NODEID", "$KAZHPC_HEAD_NODE", "$KAZHPC_MAIN_PORT")
    assert flags["--max_restarts"] == "0"
    if nodes > 1:
        assert flags["--rdzv_backend"] == "c10d" and flags["--rdzv_conf"] == "join_timeout=900"
        assert "--same_network" not in flags  # it would make torchrun drop the c10d endpoint
        assert flags["--deepspeed_multinode_launcher"] == "standard"
    else:
        assert flags["--rdzv_backend"] == "static" and "--same_network" in flags
    if cfg.train.distributed.deepspeed:
        assert "--use_deepspeed" in flags and "--multi_gpu" not in flags
        assert flags["--deepspeed_config_file"] == str(CONFIGS / "deepspeed" / f"{cfg.train.distributed.deepspeed}.json")
        assert ("--zero3_init_flag" in flags) == (layout == "4x8")
    else:
        assert "--use_deepspeed" not in flags and "--multi_gpu" not in flags
    assert 'KAZHPC_HEAD_NODE="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)"' in script
    assert train_sbatch_resources(cfg) == {"nodes": nodes, "ntasks-per-node": 1, "gpus-per-node": gpus, "cpus-per-task": 8 * gpus}

    # As an sbatch file (no shell variables in #SBATCH lines): valid bash, and the port is the
    # job id's, evaluated by bash itself.
    header = "#!/bin/bash\n" + "".join(f"#SBATCH --{k}={v}\n" for k, v in train_sbatch_resources(cfg).items())
    sbatch = tmp_path / "train.sbatch"
    sbatch.write_text(header + script)
    assert subprocess.run(["bash", "-n", str(sbatch)], capture_output=True).returncode == 0
    assert not [line for line in header.splitlines() if line.startswith("#SBATCH") and "$" in line]
    port_line = next(line for line in script.splitlines() if "KAZHPC_MAIN_PORT=" in line)
    port = subprocess.run(["bash", "-c", f"SLURM_JOB_ID=123456; {port_line}; echo $KAZHPC_MAIN_PORT"],
                          capture_output=True, text=True).stdout.strip()
    assert port == str(20000 + 123456 % 20000)


def test_launch_wrap_and_allocation_check() -> None:
    cfg = smoke("train.distributed.nodes=2", "train.distributed.gpus_per_node=8", "train.distributed.deepspeed=zero2")
    script = train_launch_script(cfg, "/r", wrap=lambda argv: ["apptainer", "exec", "--nv", "k.sif", *argv])
    _, accelerate = _srun_and_accelerate(script)
    assert accelerate[:6] == ["apptainer", "exec", "--nv", "k.sif", "python", "-m"]
    assert "--multi_gpu" not in accelerate and "--zero3_init_flag" not in accelerate
    ddp = train_launch_script(smoke("train.distributed.gpus_per_node=2"), "/r")
    assert "--multi_gpu" in _srun_and_accelerate(ddp)[1]
    check_allocation(cfg, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2"})
    with pytest.raises(KazhpcError, match=r"train\.distributed\.nodes is 2 but this job has 1 node\(s\); submit with sbatch --nodes=2"):
        check_allocation(cfg, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "1"})
    with pytest.raises(KazhpcError, match=r"gpus_per_node is 8 but this job has 4 GPU\(s\) per node; submit with sbatch --gpus-per-node=8"):
        check_allocation(cfg, {"SLURM_JOB_ID": "7", "SLURM_JOB_NUM_NODES": "2", "SLURM_GPUS_ON_NODE": "4"})
    with pytest.raises(KazhpcError, match="inside a SLURM allocation"):
        check_allocation(cfg, {})


def test_train_sbatch_is_valid_bash_without_variables_in_sbatch_lines() -> None:
    text = (REPO / "slurm" / "train.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(REPO / "slurm" / "train.sbatch")]).returncode == 0
    sbatch_lines = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sbatch_lines and not [line for line in sbatch_lines if "$" in line]
    assert "--ntasks-per-node=1" in text and "kazhpc.launch.multinode" in text


# --------------------------------------------------------------------------------------------
# For real: 2 CPU ranks (gloo), DeepSpeed ZeRO-2 and QLoRA + ZeRO-3, under the local SLURM.


@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory: pytest.TempPathFactory, gemma_tokenizer) -> Path:
    """A random-weight two-layer Gemma-3 text model with Gemma-3's real tokenizer: the code path of
    the real model at a size where two ranks train in seconds on a shared 2-core machine."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    folder = tmp_path_factory.mktemp("tiny-gemma3")
    config = Gemma3TextConfig(
        vocab_size=len(gemma_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
        sliding_window=64, layer_types=["sliding_attention", "full_attention"],
        bos_token_id=gemma_tokenizer.bos_token_id, eos_token_id=gemma_tokenizer.eos_token_id,
        pad_token_id=gemma_tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).to(torch.bfloat16).save_pretrained(folder)
    gemma_tokenizer.save_pretrained(folder)
    return folder


def _pipeline(tmp: Path, model: Path, deepspeed: str, dtype: str, quantization: str) -> Path:
    # Two small sources and no language-id / near-dup models: preprocess is not what is under test.
    return write_yaml(tmp / "pipeline.yaml", f"""
        name: dist-{deepspeed}
        jobs: [preprocess, train]
        model: {{name: tiny-gemma3, source: {model}, dtype: {dtype}}}
        runs_root: {tmp / 'runs'}
        cache_dir: {tmp / 'cache'}
        tracking: {{experiment: kazhpc-dist}}
        preprocess:
          sources:
            - {{name: alpaca-kz, kind: alpaca, path: {REPO / 'tests/fixtures/data/alpaca_kk.json'}}}
            - {{name: muri-kk, kind: muri-it, path: {REPO / 'tests/fixtures/data/muri_kk.jsonl'}}}
          cleaning: {{language_id: {{enabled: false}}, dedup: {{near: false}}}}
          validation_fraction: 0.0
        train:
          quantization: {quantization}
          max_steps: 4
          per_device_batch_size: 1
          learning_rate: 1.0e-2
          warmup_ratio: 0.0
          lora: {{r: 4, alpha: 8, dropout: 0.0}}
          max_length: 128
          save_steps: 100
          loss_check_rows: 4
          distributed: {{nodes: 1, gpus_per_node: 2, deepspeed: {deepspeed}}}
        """)


def _check_two_rank_run(cfg, run_dir: Path, model: Path, log: str, tmp_path: Path) -> None:
    """The adapter was gathered (non-empty, loads with peft, and the job found it lowers the loss);
    rank 0 alone wrote the manifest and run.json; MLflow has one train run, loss logged once per step."""
    from mlflow import MlflowClient
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from kazhpc.runner import read_state

    deepspeed = cfg.train.distributed.deepspeed
    assert re.search(r"--num_processes 2 .*--use_deepspeed --deepspeed_config_file \S+/" + deepspeed + r"\.json", log)
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["distributed"] == {"world_size": 2, "deepspeed": deepspeed}
    assert manifest["steps"] == 4 and manifest["loss_check"]["adapter"] < manifest["loss_check"]["base"]
    assert manifest["adapter_tensors"]["tensors"] > 0 and manifest["adapter_tensors"]["parameters"] > 0
    assert read_state(run_dir)["jobs"]["train"]["status"] == "COMPLETED"

    adapter_dir = run_dir / "train" / "adapter"
    assert distributed.check_adapter(adapter_dir)["tensors"] == manifest["adapter_tensors"]["tensors"]
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32), str(adapter_dir))
    lora = {n: p for n, p in adapted.named_parameters() if "lora_B" in n}
    assert len(lora) * 2 == manifest["adapter_tensors"]["tensors"] and any(p.abs().sum() > 0 for p in lora.values())

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kazhpc-dist").experiment_id])
    (train,) = [r for r in runs if r.info.run_name == "train"]
    assert train.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(train.info.run_id, "loss")]
    assert sorted(steps) == [1, 2, 3, 4]  # once per step: rank 1 logged nothing
    assert len([r for r in runs if r.info.run_name == cfg.name]) == 1  # one pipeline run


def _env(**extra: str) -> dict[str, str]:
    cache = Path.home() / ".cache" / "kazhpc" / "torch_extensions"  # DeepSpeed's comm op, compiled once
    return {**os.environ, "TORCH_EXTENSIONS_DIR": str(cache), "OMP_NUM_THREADS": "1", **extra}


@pytest.mark.slow
def test_zero2_two_ranks_through_the_rendered_launch(tmp_path: Path, tiny_gemma3: Path) -> None:
    """ZeRO-2, plain LoRA: the per-node command of the rendered launch, run as SLURM would run it on
    node 0 (SLURM_NODEID, head node and port set by hand): accelerate starts 2 gloo ranks of
    jobs/train.py --run-dir, DeepSpeed on its CPU accelerator."""
    from kazhpc.runner import run_pipeline

    cfg = load_config(_pipeline(tmp_path, tiny_gemma3, "zero2", "float32", "null"))
    run_dir = run_pipeline(cfg, only=["preprocess"])
    _, per_node = _srun_line(train_launch_script(cfg, str(run_dir), python=sys.executable))
    env = _env(SLURM_NODEID="0", KAZHPC_HEAD_NODE="127.0.0.1", KAZHPC_MAIN_PORT=str(20000 + os.getpid() % 20000))
    done = subprocess.run(["bash", "-c", per_node], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    _check_two_rank_run(cfg, run_dir, tiny_gemma3, per_node, tmp_path)


@pytest.mark.slow
@pytest.mark.slurm
def test_zero3_qlora_two_ranks_under_slurm(tmp_path: Path, tiny_gemma3: Path, local_slurm) -> None:
    """QLoRA (bitsandbytes NF4, bf16 storage) under ZeRO-3, submitted for real: sbatch
    slurm/train.sbatch → python -m kazhpc.launch.multinode → srun → accelerate launch → 2 ranks."""
    from kazhpc.runner import read_state, run_pipeline

    cfg = load_config(_pipeline(tmp_path, tiny_gemma3, "zero3", "bfloat16", "{compute_dtype: bfloat16, quant_storage: bfloat16}"))
    run_dir = run_pipeline(cfg, only=["preprocess"])
    out = tmp_path / "slurm-%j.out"
    submitted = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--nodes=1", "--cpus-per-task=2", "--mem=8G", "--time=10",
         f"--chdir={REPO}", f"--output={out}", "--job-name=kazhpc-test-zero3", str(REPO / "slurm" / "train.sbatch")],
        capture_output=True, text=True, env=_env(RUN_DIR=str(run_dir), KAZHPC_PYTHON=sys.executable), timeout=600,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    log = Path(str(out).replace("%j", job_id)).read_text() if job_id else submitted.stderr
    assert submitted.returncode == 0, log[-6000:]
    assert read_state(run_dir)["jobs"]["train"]["slurm_job_id"] == job_id
    _check_two_rank_run(cfg, run_dir, tiny_gemma3, log, tmp_path)


@pytest.mark.slow
@pytest.mark.slurm
def test_two_ranks_preempted_under_slurm_save_requeue_and_resume(tmp_path: Path, tiny_gemma3: Path, local_slurm) -> None:
    """SLURM's warning signal on a 2-rank ZeRO-2 job of slurm/train.sbatch: it reaches both ranks
    through srun (the launcher ignores it and lives), they save one checkpoint together, rank 0
    requeues the job, and the requeued job resumes from the checkpoint and completes."""
    from mlflow import MlflowClient

    from kazhpc.runner import read_state, run_pipeline
    from kazhpc.train.resume import WAIT_FOR_SIGNAL_AT_STEP_ENV

    cfg = load_config(_pipeline(tmp_path, tiny_gemma3, "zero2", "float32", "null"))
    run_dir = run_pipeline(cfg, only=["preprocess"])
    out = tmp_path / "slurm.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", "--nodes=1", "--cpus-per-task=2", "--mem=8G", "--time=10", f"--chdir={REPO}",
         f"--output={out}", "--job-name=kazhpc-test-preempt", str(REPO / "slurm" / "train.sbatch")],
        capture_output=True, text=True, timeout=60,
        env=_env(RUN_DIR=str(run_dir), KAZHPC_PYTHON=sys.executable, **{WAIT_FOR_SIGNAL_AT_STEP_ENV: "2"}),
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip().split(";")[0]
    try:
        deadline = time.time() + 420
        while not (out.is_file() and out.read_text().count("waiting for the preemption signal at step 2") == 2):
            assert time.time() < deadline, out.read_text()[-6000:] if out.is_file() else "no log"
            time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True)  # what SLURM sends at --signal time
        job = ""
        while "JobState=COMPLETED" not in job:
            job = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
            assert time.time() < deadline + 300 and not re.search(r"JobState=(FAILED|CANCELLED|TIMEOUT)", job), (
                job + out.read_text()[-6000:])
            time.sleep(1)
    finally:
        subprocess.run(["scancel", job_id], capture_output=True)
    log = out.read_text()
    assert "Restarts=1" in job, job
    assert "rank 0 got the signal" in log and "rank 1 got the signal" in log, log[-6000:]
    assert log.count("waiting for the preemption signal at step 2") == 2  # not again after the resume
    assert "requeued SLURM job " + job_id in log, log[-6000:]  # by rank 0, once the preemption was recorded
    job_log = (run_dir / "train" / "job.log").read_text()
    assert re.search(r"resuming from \S+checkpoint-2 ", job_log), job_log[-4000:]
    manifest = json.loads((run_dir / "train" / "manifest.json").read_text())
    assert manifest["steps"] == 4 and manifest["adapter_tensors"]["tensors"] > 0
    assert read_state(run_dir)["jobs"]["train"]["status"] == "COMPLETED"
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("kazhpc-dist").experiment_id])
    train = sorted((r.info.status, r.info.run_id) for r in runs if r.info.run_name == "train")
    assert [status for status, _ in train] == ["FINISHED", "KILLED"], train
    steps = sorted(m.step for _, run_id in train for m in client.get_metric_history(run_id, "loss"))
    assert steps == [1, 2, 3, 4]  # steps 1-2 before, 3-4 after the requeue; each logged once (rank 0)


@pytest.mark.slow
def test_full_cpt_under_zero3_on_two_ranks_then_lora_on_the_trained_model(tmp_path: Path, tiny_gemma3: Path) -> None:
    """``train.method: full``: continued pretraining of every weight under ZeRO-3 on 2 gloo ranks,
    through the rendered per-node launch. The saved model was gathered (no empty tensor) and lowers
    the loss on its blocks; FLOPs count every weight as trained; the next train stage trains a LoRA
    adapter on that model (its base), not on the configured one."""
    from kazhpc.runner import run_pipeline

    path = write_yaml(tmp_path / "cpt.yaml", f"""
        name: dist-cpt-full
        model: {{name: tiny-gemma3, source: {tiny_gemma3}, dtype: float32}}
        runs_root: {tmp_path / 'runs'}
        cache_dir: {tmp_path / 'cache'}
        tracking: {{experiment: kazhpc-dist}}
        stages:
          - {{name: corpus, job: corpus}}
          - name: cpt-full
            job: train
            with: {{method: full, distributed: {{nodes: 1, gpus_per_node: 2, deepspeed: zero3}}}}
          - {{name: cpt-lora, job: train, with: {{max_steps: 3, per_device_batch_size: 2, learning_rate: 1.0e-2,
                                                  trainable_embeddings: all}}}}
        corpus:
          sources: [{{name: fixture, path: {REPO / 'tests' / 'fixtures' / 'corpus'}}}]
          blocks: {{length: 32}}
          minhash: {{buckets: 2}}
          heldout_fraction: 0.1
        train:
          objective: cpt
          quantization: null
          max_steps: 3
          per_device_batch_size: 1
          learning_rate: 1.0e-3
          warmup_ratio: 0.0
          save_steps: 100
          loss_check_rows: 4
          cpt: {{eval_steps: 0, heldout_texts: 4, heldout_max_length: 64}}
        """)
    cfg = load_config(path)
    run_dir = run_pipeline(cfg, only=["corpus"])
    script = train_launch_script(cfg.for_stage("cpt-full"), str(run_dir), python=sys.executable, stage="cpt-full")
    _, per_node = _srun_line(script)
    env = _env(SLURM_NODEID="0", KAZHPC_HEAD_NODE="127.0.0.1", KAZHPC_MAIN_PORT=str(20000 + (os.getpid() + 7) % 20000))
    done = subprocess.run(["bash", "-c", per_node], capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-6000:]
    full = json.loads((run_dir / "cpt-full" / "manifest.json").read_text())
    assert full["method"] == "full" and full["adapter"] is None and full["distributed"] == {"world_size": 2, "deepspeed": "zero3"}
    assert full["loss_check"]["adapter"] < full["loss_check"]["base"]
    assert full["flops"]["trainable"] == full["flops"]["parameters"]  # every weight: 6 N per token
    assert full["flops"]["per_token"] == 6 * full["flops"]["parameters"]
    saved = distributed.check_saved_model(Path(full["model"]))
    assert saved == full["model_tensors"] and saved["parameters"] == full["flops"]["parameters"]
    run_pipeline(cfg, run_dir=run_dir, only=["cpt-lora"])
    lora = json.loads((run_dir / "cpt-lora" / "manifest.json").read_text())
    assert lora["method"] == "lora" and lora["base_model"] == full["model"] and lora["continued_from"] is None
    assert lora["loss_check"]["adapter"] < lora["loss_check"]["base"]
    # The LoRA stage starts where full CPT ended: its "before" is the trained model's "after".
    assert lora["heldout"]["before"]["heldout_kk_bits_per_char"] == pytest.approx(full["heldout"]["after"]["heldout_kk_bits_per_char"], rel=1e-4)
