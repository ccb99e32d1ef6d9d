"""Write a Gemma-3 text checkpoint of a given size with random weights, for memory and speed measurements.

Why: peak memory and tokens/s depend on the architecture, not on the weight values, and a GPU machine
without the hub (or a 64 MiB transfer limit) cannot get the real 4B/12B/27B weights. The architecture
comes from kazhpc.train.planner.GEMMA3 (the planner's own table, so a measured peak is compared with
a prediction for the same shapes); everything else (tokenizer, chat template, rope, activation) from a
real Gemma-3 checkpoint directory, by default the bundled Gemma-3-270M. The 4B+ hub checkpoints are
multimodal; what kazhpc trains of them is this text decoder (kazhpc.models.load_model).

    python benchmarks/random_gemma3.py gemma3-4b /tmp/gemma3-4b-random [--like DIR]

Never use the result for anything but measurements: its outputs are noise.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "tokenizer.model", "generation_config.json")


def gemma3_text_config(name: str, template: dict) -> dict:
    """The template's config.json with the shapes of ``name`` (Gemma-3's 5 local : 1 global layers)."""
    from kazhpc.train.planner import GEMMA3

    arch = GEMMA3[name]
    config = dict(template)
    config.update(
        hidden_size=arch.hidden_size, num_hidden_layers=arch.num_layers, num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads, head_dim=arch.head_dim, intermediate_size=arch.intermediate_size,
        vocab_size=arch.vocab_size, tie_word_embeddings=arch.tied_embeddings,
        layer_types=["full_attention" if (i + 1) % 6 == 0 else "sliding_attention" for i in range(arch.num_layers)],
        # Published values: a 1024-token window from 1B up (512 in 270M); 27B scales queries by
        # hidden/heads (168), the others by head_dim (256).
        sliding_window=512 if name == "gemma3-270m" else 1024,
        query_pre_attn_scalar=168 if name == "gemma3-27b" else 256,
        max_position_embeddings=32768 if name in ("gemma3-270m", "gemma3-1b") else 131072,
        architectures=["Gemma3ForCausalLM"], model_type="gemma3_text",
    )
    config.pop("_model_name_or_path", None)
    return config


def write(name: str, out: Path, like: Path) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(gemma3_text_config(name, json.loads((like / "config.json").read_text())), indent=2))
    config = AutoConfig.from_pretrained(out)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(device):  # initialising 27B weights on a GPU takes seconds, on a CPU minutes
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(out, max_shard_size="5GB")
    for f in TOKENIZER_FILES:
        if (like / f).is_file():
            shutil.copy2(like / f, out / f)
    (out / "RANDOM_WEIGHTS.txt").write_text(f"{name} shapes with random weights (benchmarks/random_gemma3.py): measurements only\n")
    return out


def main() -> None:
    from kazhpc.config import default_cache_root
    from kazhpc.models import bundled_checkpoint_dir
    from kazhpc.train.planner import GEMMA3

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(GEMMA3))
    parser.add_argument("out", type=Path)
    parser.add_argument("--like", type=Path, help="a real Gemma-3 checkpoint dir (tokenizer, template); default: the bundled 270M")
    args = parser.parse_args()
    like = args.like or bundled_checkpoint_dir("gemma3-270m", default_cache_root())
    print(write(args.name, args.out, like))


if __name__ == "__main__":
    main()
