"""kazhpc.export.gguf: a Gemma-3 text checkpoint written as GGUF and read back by transformers
(``from_pretrained(folder, gguf_file=name)``, as kazhpc.models and the export check load GGUF
files) gives the checkpoint's logits and token ids; what the file cannot carry is refused.

Cost: any transformers read of a GGUF file with Gemma's 262,144 tokens takes 15-25 s here (gguf's
reader parses the token arrays one element at a time; AutoTokenizer reads the whole file once to
pick the class, a model load twice). So the logits are compared on a tiny random Gemma-3 whose
vocabulary is a part of the real one (copy_tokenizer), read back by the Auto classes, and the
full real vocabulary is read back once by GemmaTokenizer, the class AutoTokenizer picks for it.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from kazhpc.errors import KazhpcError
from kazhpc.export.gguf import GGUF_TYPES, unsupported_reason, write_gguf

KAZAKH = "Қазақстан Республикасы — Орталық Азиядағы мемлекет. Алматы қаласы әдемі."
ENGLISH = "The quick brown fox jumps over 13 lazy dogs (3.5% of them)."
MIXED = "  Балаларымызға ана тілін үйрету\tбіздің міндетіміз.\n\n<start_of_turn>user\nСәлем!<end_of_turn>\n 😀 "
#: How far the GGUF model's logits may be from the checkpoint's, as a fraction of the largest
#: logit (the checkpoint is bf16, so f32 and bf16 files hold the very same weights and give the
#: same logits; f16 rounds a few tiny weights; q8_0 rounds each block of 32 to 8 bits: 4% here).
TOLERANCE = {"f32": 1e-6, "bf16": 1e-6, "f16": 1e-4, "q8_0": 0.1}


def tiny_gemma3(folder: Path, vocab_size: int, **overrides) -> Path:
    """A random Gemma-3 text model, saved in bf16: 6 layers (5 sliding, 1 full) and a sliding
    window of 4, so both attention kinds and both RoPE bases matter on 30 tokens or more. The
    norms are random (HF initialises them to 0), so a missing ``w + 1`` would show.

    head_dim is 256, as in every Gemma-3 but the 27B: a GGUF file has no query_pre_attn_scalar
    (llama.cpp scales by 1/sqrt(head_dim)) and transformers reads such a file back with its
    default of 256, so a smaller head_dim would not round-trip in transformers."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    settings = dict(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=6,
        num_attention_heads=2, num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
        sliding_window=4, max_position_embeddings=512, initializer_range=0.1,
        bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(Gemma3TextConfig(**{**settings, **overrides}))
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if name.endswith("norm.weight"):
                weight.normal_(0.0, 0.5)
    model.to(torch.bfloat16).save_pretrained(str(folder))
    return folder


def copy_tokenizer(source: Path, folder: Path, small: bool = False) -> int:
    """The real tokenizer's files into ``folder``; ``small``: only its first 2,048 ids and the
    single letters, digits and signs of Kazakh and English text and '▁' (which come late in Gemma's
    vocabulary), renumbered in their order, with the merges among them (so, still the merges a
    GGUF vocabulary of those tokens implies). Returns the vocabulary size."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(source / name, folder / name)
    if not small:
        shutil.copy(source / "tokenizer.json", folder / "tokenizer.json")
        return 262_144
    spec = json.loads((source / "tokenizer.json").read_text(encoding="utf-8"))
    if small:
        model = spec["model"]
        letters = set(KAZAKH + ENGLISH + "abcdefghijklmnopqrstuvwxyz▁")
        kept = sorted(i for t, i in model["vocab"].items() if i < 2048 or (len(t) == 1 and t in letters))
        renumber = {old: new for new, old in enumerate(kept)}
        model["vocab"] = vocab = {t: renumber[i] for t, i in model["vocab"].items() if i in renumber}
        model["merges"] = [[a, b] for a, b in model["merges"] if a in vocab and b in vocab and a + b in vocab]
        spec["added_tokens"] = [{**t, "id": renumber[t["id"]]} for t in spec["added_tokens"] if t["id"] in renumber]
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return len(spec["model"]["vocab"])


def logits(folder: Path, ids, gguf_file: str | None = None):
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, **kwargs).eval()
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(scope="module")
def real_tokenizer(model_cache: Path) -> Path:
    from kazhpc.models import bundled_checkpoint_dir

    return bundled_checkpoint_dir("gemma3-270m", model_cache)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory, real_tokenizer: Path) -> Path:
    folder = tmp_path_factory.mktemp("small") / "model"
    return tiny_gemma3(folder, copy_tokenizer(real_tokenizer, folder, small=True))


@pytest.fixture(scope="module")
def reference(small: Path) -> tuple:
    """The checkpoint's input ids (past the sliding window of 4) and float32 logits."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(str(small))(KAZAKH + " " + ENGLISH, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 30
    return ids, logits(small, ids)


def vocab_size(folder: Path) -> int:
    return json.loads((folder / "config.json").read_text())["vocab_size"]


# -- the round trips -------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("outtype", ["f32", "bf16", "f16", "q8_0"])
def test_logits_round_trip(small: Path, reference: tuple, outtype: str) -> None:
    import gguf

    out = small.parent / f"tiny.{outtype}.gguf"
    result = write_gguf(small, out, outtype)
    assert result["path"] == str(out) and result["outtype"] == outtype and result["vocab_size"] == vocab_size(small)
    assert result["bytes"] == out.stat().st_size and len(result["sha256"]) == 64
    assert not out.with_name(out.name + ".partial").exists()

    reader = gguf.GGUFReader(out)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert len(types) == result["tensors"] == 2 + 6 * 13  # embeddings, final norm, 13 per layer; no output (tied)
    assert {t for n, t in types.items() if n.endswith("norm.weight")} == {"F32"}
    assert types["token_embd.weight"] == types["blk.5.ffn_down.weight"] == outtype.upper()
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "gemma3" and field("tokenizer.ggml.model") == "llama"
    assert (field("gemma3.block_count"), field("gemma3.attention.sliding_window"), field("gemma3.attention.key_length")) == (6, 4, 256)

    ids, expected = reference
    got = logits(out.parent, ids, out.name)
    gap = (expected - got).abs().max().item()
    assert gap <= TOLERANCE[outtype] * expected.abs().max().item(), (outtype, gap)
    if outtype == "q8_0":
        assert (expected.argmax(-1) == got.argmax(-1)).float().mean() > 0.9


@pytest.mark.slow
def test_real_tokenizer_round_trips(tmp_path: Path, real_tokenizer: Path, gemma_tokenizer) -> None:
    """Kazakh, English and chat markup get the bundled tokenizer's ids from the GGUF file's
    tokenizer, with the same special tokens and chat template (the vocabulary, token types and
    score order are those of llama.cpp's own Gemma-3 file, the bundled model's source)."""
    from transformers import GemmaTokenizer

    folder = tmp_path / "model"
    copy_tokenizer(real_tokenizer, folder)
    tiny_gemma3(folder, 262_144)
    result = write_gguf(folder, tmp_path / "tiny.gguf", "bf16")
    assert result["vocab_size"] == 262_144

    back = GemmaTokenizer.from_pretrained(str(tmp_path), gguf_file="tiny.gguf")
    for text in (KAZAKH, ENGLISH, MIXED):
        ids = gemma_tokenizer(text)["input_ids"]
        assert back(text)["input_ids"] == ids, text
        assert back.decode(ids) == gemma_tokenizer.decode(ids) == "<bos>" + text
    assert gemma_tokenizer(KAZAKH)["input_ids"].count(2) == 1  # one <bos>, added by the tokenizer
    special = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")
    assert [getattr(back, k) for k in special] == [getattr(gemma_tokenizer, k) for k in special] == [2, 1, 0, 3]
    assert back.chat_template == (folder / "chat_template.jinja").read_text(encoding="utf-8")


# -- what is refused -------------------------------------------------------------------------------


def write_config(folder: Path, **config) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    base = {"model_type": "gemma3_text", "architectures": ["Gemma3ForCausalLM"], "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 6, "num_attention_heads": 2, "num_key_value_heads": 1,
            "head_dim": 256, "query_pre_attn_scalar": 256, "sliding_window": 4}
    (folder / "config.json").write_text(json.dumps({**base, **config}))
    return folder


@pytest.mark.parametrize("config, message", [
    ({"model_type": "llama", "architectures": ["LlamaForCausalLM"]},
     r"config.json: model_type 'llama' — kazhpc writes GGUF for Gemma-3 text models only \(use llama.cpp's convert_hf_to_gguf.py\)"),
    ({"model_type": "gemma3", "architectures": ["Gemma3ForConditionalGeneration"]}, r"config.json: model_type 'gemma3' \(the multimodal"),
    ({"head_dim": 32}, r"config.json: query_pre_attn_scalar 256 — llama.cpp's Gemma-3 scales attention by 1/sqrt\(32\)"),
    ({"layer_types": ["full_attention"] * 6}, r"config.json: layer_types other than one full-attention layer in six"),
    ({"rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e6},
                          "sliding_attention": {"rope_type": "default", "rope_theta": 5e4}}}, r"config.json: sliding-attention RoPE"),
])
def test_what_llama_cpp_would_run_differently_is_refused(tmp_path: Path, config: dict, message: str) -> None:
    folder = write_config(tmp_path / "model", **config)
    reason = unsupported_reason(folder)
    assert reason is not None and "\n" not in reason
    assert re.search(message, reason), reason
    with pytest.raises(KazhpcError, match=message):
        write_gguf(folder, tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()


def test_unknown_tensor_type_and_missing_checkpoint(tmp_path: Path) -> None:
    assert GGUF_TYPES == ("f32", "f16", "bf16", "q8_0")
    with pytest.raises(KazhpcError, match=r"export.gguf: unknown tensor type 'q4_k'; one of f32, f16, bf16, q8_0"):
        write_gguf(write_config(tmp_path / "model"), tmp_path / "x.gguf", "q4_k")
    assert unsupported_reason(tmp_path / "nothing").endswith("config.json: not found (a GGUF file is written from a saved transformers checkpoint)")
    assert "tokenizer.json: not found" in unsupported_reason(tmp_path / "model")


@pytest.mark.slow
def test_an_extended_vocabulary_round_trips_only_with_the_merges_a_gguf_implies(small: Path) -> None:
    """A GGUF file carries no merges: llama.cpp and transformers take every split of each token
    into two, the lower token id first (transformers' generate_merges). A new token round-trips
    when the merges are just those (its own splits, and those of base tokens it is part of);
    a learnt merge appended after the base ones, as kazhpc's extend-vocab appends its, is
    refused, naming tokenizer.json."""
    from transformers import AutoTokenizer
    from transformers.tokenization_utils_base import generate_merges

    spec = json.loads((small / "tokenizer.json").read_text(encoding="utf-8"))
    vocab, size = spec["model"]["vocab"], vocab_size(small)
    words = [t for t, i in sorted(vocab.items(), key=lambda item: item[1]) if i >= 494 and t.lstrip("▁").isalpha()]
    def splits(token: str) -> list[tuple[str, str]]:
        return [(token[:k], token[k:]) for k in range(1, len(token)) if token[:k] in vocab and token[k:] in vocab]

    # a new word that splits into two tokens of the vocabulary in more than one way ("▁a" "bc", "▁ab" "c")
    new = next(a + b for a in words if a.startswith("▁") for b in words
               if not b.startswith("▁") and a + b not in vocab and len(splits(a + b)) > 1)

    def extended(folder: Path, merges: list) -> Path:
        changed = json.loads(json.dumps(spec))
        changed["model"]["vocab"][new] = size
        changed["model"]["merges"] = [list(m) for m in merges]
        folder.mkdir()
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            shutil.copy(small / name, folder / name)
        (folder / "tokenizer.json").write_text(json.dumps(changed, ensure_ascii=False), encoding="utf-8")
        return tiny_gemma3(folder, size + 1)

    grown = {**vocab, new: size}
    implied = extended(small.parent / "implied", generate_merges(grown, {t: -i for t, i in grown.items()}))
    write_gguf(implied, implied.parent / "implied.gguf", "f32")
    hf = AutoTokenizer.from_pretrained(str(implied))
    back = AutoTokenizer.from_pretrained(str(implied.parent), gguf_file="implied.gguf")
    assert type(back).__name__ == "GemmaTokenizer"
    text = f"The{new.replace('▁', ' ')} and{new.replace('▁', ' ')}s, {KAZAKH}"
    assert size in hf(text)["input_ids"]
    assert back(text)["input_ids"] == hf(text)["input_ids"]

    learnt = extended(small.parent / "learnt", [*spec["model"]["merges"], splits(new)[0]])  # one, appended as extend_spec does
    reason = unsupported_reason(learnt)
    assert reason is not None and reason.startswith(f"{learnt / 'tokenizer.json'}: its merges are not the ones a GGUF file implies")
    assert "extend-vocab" in reason and "\n" not in reason
    with pytest.raises(KazhpcError, match="cannot be written to GGUF exactly"):
        write_gguf(learnt, learnt.parent / "learnt.gguf")
