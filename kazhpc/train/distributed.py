"""Training on several devices: DeepSpeed ZeRO configs, the rules QLoRA imposes on them, and the
checks that catch the known silent failures.

* ``train.distributed.deepspeed`` names a JSON in ``configs/deepspeed/`` (zero2, zero2-offload,
  zero3, zero3-offload) or gives a path. The JSON uses ``"auto"`` values, which the HF Trainer
  fills in from the train section (batch sizes, lr, clipping, bf16), so the two never disagree.
* QLoRA under ZeRO-3 only shards the 4-bit weights if bitsandbytes packs them in the compute
  dtype (``bnb_4bit_quant_storage``) and the model is loaded in that dtype with no ``device_map``
  (ZeRO-3 places the parameters itself); see PEFT's "QLoRA and DeepSpeed with ZeRO3" guide.
* A peft adapter saved under ZeRO-3 is empty (shape-0 tensors) unless the sharded LoRA weights
  are gathered first; the Trainer's ``save_model`` does that (``stage3_gather_16bit_weights_on_model_save``),
  and :func:`check_adapter` verifies the saved tensors themselves, not the file size.
* Several processes without DeepSpeed train with DDP; each loads its own copy on its own device.

Everything here except :func:`cpu_deepspeed_state` needs no GPU and no model, so the checks run
in ``kazhpc validate``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import ConfigError, KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import TrainConfig

#: Keys the Trainer fills in from the train section; a number in a custom JSON must agree with it.
_BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


def deepspeed_dir() -> Path:
    from kazhpc.config import find_configs_root

    root = find_configs_root()
    return (root / "deepspeed") if root is not None else Path("configs/deepspeed").absolute()


def deepspeed_names() -> list[str]:
    """The DeepSpeed configs shipped in configs/deepspeed/, by name."""
    folder = deepspeed_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def is_path(spec: str) -> bool:
    return spec.endswith(".json") or "/" in spec or spec.startswith(("~", "."))


def deepspeed_path(spec: str) -> Path:
    """The JSON file for a name or a path; ValueError (one line, naming the key) if there is none."""
    if is_path(spec):
        path = Path(spec).expanduser().absolute()
        if not path.is_file():
            raise ConfigError(f"train.distributed.deepspeed: {path}: file not found")
        return path
    names = deepspeed_names()
    if spec not in names:
        from kazhpc.config import suggest

        raise ConfigError(
            f"train.distributed.deepspeed: unknown DeepSpeed config '{spec}'{suggest(spec, names)}; "
            f"known: {', '.join(names) or '(none found)'} in {deepspeed_dir()}, or a JSON path"
        )
    return deepspeed_dir() / f"{spec}.json"


def load_deepspeed(spec: str) -> dict[str, Any]:
    path = deepspeed_path(spec)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"train.distributed.deepspeed: {path}:{exc.lineno}: malformed JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"train.distributed.deepspeed: {path}: expected a JSON object")
    return data


def zero_stage(ds: dict[str, Any]) -> int:
    return int(ds.get("zero_optimization", {}).get("stage", 0))


def offloads(ds: dict[str, Any]) -> dict[str, str]:
    """What a config offloads: {'optimizer': 'cpu', 'param': 'nvme'}, devices 'none' left out."""
    zero = ds.get("zero_optimization", {})
    found = {}
    for what in ("optimizer", "param"):
        device = (zero.get(f"offload_{what}") or {}).get("device", "none")
        if device != "none":
            found[what] = device
    return found


def check(train: TrainConfig) -> None:
    """Refuse impossible combinations (the train job's preflight: it reads the DeepSpeed JSON, so
    it belongs to `kazhpc validate`, not to the config schema, which sees no files)."""
    t = train
    dist = t.distributed
    if dist.deepspeed is None:
        return
    ds = load_deepspeed(dist.deepspeed)
    stage = zero_stage(ds)
    where = f"train.distributed.deepspeed={dist.deepspeed}"
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"{where}: zero_optimization.stage must be 0-3 (got {stage})")
    if "param" in offloads(ds) and stage != 3:
        raise ConfigError(f"{where}: zero_optimization.offload_param needs ZeRO stage 3 (the config has stage {stage})")
    q = t.quantization
    if stage == 3 and q is not None and q.quant_storage != q.compute_dtype:
        raise ConfigError(
            f"train.quantization.quant_storage: QLoRA under ZeRO-3 ({where}) needs quant_storage equal to "
            f"compute_dtype ({q.compute_dtype}), else the 4-bit weights cannot be sharded (got {q.quant_storage})"
        )
    expected = {
        "train_micro_batch_size_per_gpu": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train_batch_size": t.per_device_batch_size * t.gradient_accumulation_steps * dist.world_size,
    }
    for key in _BATCH_KEYS:
        value = ds.get(key, "auto")
        if value != "auto" and value != expected[key]:
            raise ConfigError(
                f"{where}: {key} is {value} but the train section gives {expected[key]}; use \"auto\" in the JSON"
            )


def warnings(train: TrainConfig) -> list[str]:
    """Combinations that run but waste resources (preflight warnings, not errors)."""
    dist = train.distributed
    if dist.deepspeed is None:
        return []
    ds = load_deepspeed(dist.deepspeed)
    if dist.world_size == 1 and zero_stage(ds) > 0 and not offloads(ds):
        return [
            f"train.distributed.deepspeed={dist.deepspeed} on a single process shards nothing; "
            "it only saves memory with CPU offload (zero2-offload, zero3-offload) or more GPUs"
        ]
    return []


def is_zero3(train: TrainConfig) -> bool:
    dist = train.distributed
    return dist.deepspeed is not None and zero_stage(load_deepspeed(dist.deepspeed)) == 3


def local_device(device: str) -> Any:
    """This process's device: under torchrun/accelerate each rank takes the GPU of its LOCAL_RANK."""
    return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}" if device == "cuda" else device


def quantized_placement(train: TrainConfig, device: str) -> dict[str, Any]:
    """from_pretrained kwargs that place a 4-bit model: ZeRO-3 shards it itself (no device_map, the
    model dtype equal to the quant storage dtype); otherwise every rank loads it on its own device."""
    import torch

    q = train.quantization
    if is_zero3(train):
        assert q is not None and q.quant_storage is not None  # config.check guarantees it
        return {"dtype": getattr(torch, q.quant_storage)}
    return {"device_map": {"": local_device(device)}}


def trainer_kwargs(train: TrainConfig, device: str) -> dict[str, Any]:
    """SFTConfig arguments for DeepSpeed (none without it)."""
    dist = train.distributed
    if dist.deepspeed is None:
        return {}
    kwargs: dict[str, Any] = {"deepspeed": str(deepspeed_path(dist.deepspeed))}
    if device == "cpu":
        if "LOCAL_RANK" not in os.environ:
            raise KazhpcError(
                f"train.distributed.deepspeed={dist.deepspeed} on CPU needs a launcher that starts the ranks: "
                "slurm/train.sbatch, or the accelerate command of kazhpc.launch.multinode"
            )
        kwargs["accelerator_config"] = {"use_configured_state": cpu_deepspeed_state()}
    return kwargs


def cpu_deepspeed_state() -> bool:
    """DeepSpeed on CPU ranks (tests, laptops): the Trainer only enables DeepSpeed when it is not
    told `use_cpu`, and then accelerate finds no GPU backend and counts one process. So we set up
    accelerate's state ourselves with gloo before the Trainer does; it then reuses it."""
    from accelerate import PartialState

    os.environ.setdefault("ACCELERATE_USE_DEEPSPEED", "true")
    PartialState(backend="gloo")
    return True


def forget_deepspeed() -> None:
    """After training: later from_pretrained calls (the loss check) must not enter zero.Init,
    which would wait for ranks that have already left."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


def check_adapter(adapter_dir: Path) -> dict[str, int]:
    """The saved adapter holds real LoRA tensors (ZeRO-3 can write shape-0 ones): every tensor has
    elements, both LoRA matrices are there, and training moved lora_B away from its zero start."""
    from safetensors import safe_open

    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise KazhpcError(f"{weights}: no adapter weights were saved")
    empty, lora_a, lora_b, trained, total = [], 0, 0, 0, 0
    with safe_open(str(weights), framework="pt") as f:
        for key in f.keys():
            tensor = f.get_tensor(key)
            total += tensor.numel()
            if tensor.numel() == 0:
                empty.append(key)
            lora_a += "lora_A" in key
            if "lora_B" in key:
                lora_b += 1
                trained += bool(tensor.numel() and tensor.float().abs().sum() > 0)
    if empty:
        raise KazhpcError(
            f"{weights}: {len(empty)} empty tensors (e.g. {empty[0]}): under ZeRO-3 the LoRA weights were saved "
            "without being gathered (stage3_gather_16bit_weights_on_model_save)"
        )
    if not lora_a or lora_a != lora_b:
        raise KazhpcError(f"{weights}: expected pairs of lora_A/lora_B tensors, found {lora_a} A and {lora_b} B")
    if not trained:
        raise KazhpcError(f"{weights}: every lora_B is still zero: training did not change the adapter")
    return {"tensors": lora_a + lora_b, "parameters": total}


def check_saved_model(model_dir: Path) -> dict[str, int]:
    """A fully trained model's saved weights are real (ZeRO-3 writes shape-0 tensors when the shards
    are not gathered on save): every tensor of every safetensors file has elements."""
    from safetensors import safe_open

    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise KazhpcError(f"{model_dir}: no model weights (*.safetensors) were saved")
    empty, tensors, total = [], 0, 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                n = f.get_slice(key).get_shape()
                count = 1
                for size in n:
                    count *= size
                tensors += 1
                total += count
                if count == 0:
                    empty.append(key)
    if empty:
        raise KazhpcError(f"{model_dir}: {len(empty)} empty tensors (e.g. {empty[0]}): under ZeRO-3 the model was saved "
                          "without gathering its shards (stage3_gather_16bit_weights_on_model_save)")
    return {"tensors": tensors, "parameters": total}
