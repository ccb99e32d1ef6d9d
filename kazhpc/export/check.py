"""Does the exported model work without kazhpc's loader? Scored in a fresh process.

``python -m kazhpc.export.check REQUEST.json RESULT.json`` loads the export with nothing but
``transformers`` (``AutoModelForCausalLM`` / ``AutoTokenizer`` on the folder, as a user would; the
GGUF file through transformers' own GGUF reader), checks its chat template, scores the passages
(bits per character, kazhpc.evaluation.perplexity) and greedily answers one chat prompt with the
saved generation config. A fresh process means nothing of the export stage's own objects (the peft
model, a patched tokenizer) can make a broken folder look whole.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from kazhpc.errors import KazhpcError

PROMPT = [{"role": "user", "content": "Қазақстанның астанасы қай қала?"}]


def _score(model: Any, tokenizer: Any, texts: list[str], max_length: int) -> dict[str, Any]:
    from kazhpc.evaluation.perplexity import score_texts

    return score_texts(model, tokenizer, texts, max_length=max_length).to_dict()


def _answer(model: Any, tokenizer: Any, max_new_tokens: int = 16) -> dict[str, Any]:
    """One greedy chat answer: the template renders, and generation stops where the config says."""
    import torch

    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, ids["input_ids"].shape[1]:].tolist()
    return {"text": tokenizer.decode(new, skip_special_tokens=True), "tokens": len(new),
            "stopped": bool(new) and new[-1] in (model.generation_config.eos_token_id or [])}


def check_folder(folder: Path, texts: list[str], max_length: int) -> dict[str, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from kazhpc.models import verify_chat_template

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype="auto").eval()
    return {"dtype": str(model.dtype).removeprefix("torch."), "chat_template": verify_chat_template(tokenizer),
            "score": _score(model, tokenizer, texts, max_length), "answer": _answer(model, tokenizer)}


def check_gguf(file: Path, folder: Path, texts: list[str], max_length: int) -> dict[str, Any]:
    """The GGUF file's weights and tokenizer, read by transformers' own GGUF reader, with the
    folder's model config: that reader drops what llama.cpp reads from the file (RoPE scaling,
    final soft-capping: kazhpc.export.gguf), which would make a correct file of Gemma-3 4B and
    larger score otherwise."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(file.parent), gguf_file=file.name)
    config = AutoConfig.from_pretrained(str(folder))  # dequantized into the export's dtype
    model = AutoModelForCausalLM.from_pretrained(str(file.parent), gguf_file=file.name, config=config,
                                                 dtype=getattr(config, "dtype", None) or torch.float32).eval()
    return {"score": _score(model, tokenizer, texts, max_length), "vocab_size": len(tokenizer)}


def run_check(folder: Path, gguf: Path | None, texts: list[str], max_length: int, work: Path) -> dict[str, Any]:
    """Run this module in a fresh Python process on the export; its result, or KazhpcError with its error."""
    request = {"folder": str(folder), "gguf": str(gguf) if gguf else None, "texts": texts, "max_length": max_length}
    work.mkdir(parents=True, exist_ok=True)
    (work / "check-request.json").write_text(json.dumps(request, ensure_ascii=False), encoding="utf-8")
    result = work / "check-result.json"
    result.unlink(missing_ok=True)
    done = subprocess.run([sys.executable, "-m", "kazhpc.export.check", str(work / "check-request.json"), str(result)],
                          capture_output=True, text=True)
    (work / "check.log").write_text(done.stdout + done.stderr, encoding="utf-8")
    if done.returncode != 0 or not result.is_file():
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise KazhpcError(f"export check: the exported model does not load in a fresh process: {last} (log: {work / 'check.log'})")
    return json.loads(result.read_text(encoding="utf-8"))


def main(argv: list[str]) -> int:
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    texts, max_length = request["texts"], request["max_length"]
    result = {"folder": check_folder(Path(request["folder"]), texts, max_length)}
    if request.get("gguf"):
        result["gguf"] = check_gguf(Path(request["gguf"]), Path(request["folder"]), texts, max_length)
    Path(argv[1]).write_text(json.dumps(result, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
