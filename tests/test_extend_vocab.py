"""The Kazakh vocabulary extension on the real Gemma-3 tokenizer and model (no mocks): new BPE
merges (not added tokens), exact round trips, lower held-out fertility, new rows initialised from
their pieces, the train job fine-tuning the extended model, and one-line errors for bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kazhpc.config import load_config
from kazhpc.errors import ConfigError, KazhpcError
from kazhpc.tokenization import CorpusSpec, measure, read_corpus

FIXTURES = Path(__file__).parent / "fixtures" / "vocab"
KK = FIXTURES / "kk_corpus.txt"
EN = FIXTURES / "english.txt"
KAZNERD = Path(__file__).resolve().parents[2] / "shared" / "data" / "kaznerd"
SMOKE = Path(__file__).resolve().parents[1] / "configs" / "pipelines" / "smoke.yaml"

ROUND_TRIP = [
    "Қазақстанның астанасы — Астана. Әріптестеріміздің ұсыныстарын 2024 жылы қарастырдық!",
    "  Балаларымызға ана тілін үйрету\tбіздің міндетіміз.\n\nҚҰРМЕТТІ оқырмандар: «жаңалықтар» 😀 ",
    "Москва — столица России; ёлка, щётка и №5. Всё хорошо, спасибо!",
    "The quick brown fox jumps over 13 lazy dogs (3.5% of them).",
    "<bos> <start_of_turn>user are plain text here; 𝔘 ℃ ǅ",
]


def kk_split() -> tuple[list[str], list[str]]:
    texts = read_corpus(CorpusSpec(KK)).texts("kk")
    cut = len(texts) - round(len(texts) * 0.1)  # as the job does by default
    return texts[:cut], texts[cut:]


def config(tmp_path: Path, model_cache: Path, *overrides: str):
    return load_config(SMOKE, [f"runs_root={tmp_path / 'runs'}", f"cache_dir={model_cache}", *overrides])


# -- config and preflight: no model ------------------------------------------------------------


def test_config_needs_a_corpus_and_extend_vocab_before_train(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="extend_vocab.corpus: the extend-vocab job needs a Kazakh corpus"):
        load_config(SMOKE, ["jobs=[extend-vocab]", "extend_vocab.corpus=null"])
    with pytest.raises(ConfigError, match="extend-vocab must come before train"):
        load_config(SMOKE, ["jobs=[preprocess, train, extend-vocab]", f"extend_vocab.corpus.path={KK}"])


def test_preflight_errors_are_one_line(tmp_path: Path) -> None:
    from kazhpc.runner import preflight

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    no_config, no_tokenizer = tmp_path / "no-config", tmp_path / "no-tokenizer"
    no_config.mkdir()
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text("{}")
    cases = [
        ([f"extend_vocab.corpus.path={tmp_path / 'missing.txt'}"], "extend_vocab.corpus.path: .*missing.txt: file not found"),
        ([f"extend_vocab.corpus.path={empty}"], "no text to measure"),
        ([f"extend_vocab.corpus.path={KK}", f"extend_vocab.heldout.path={KK}"], "every held-out passage also occurs"),
        ([f"extend_vocab.corpus.path={KK}", f"model.source={no_config}"], "directory has no config.json"),
        ([f"extend_vocab.corpus.path={KK}", f"model.source={no_tokenizer}"], "no tokenizer.json"),
    ]
    for overrides, message in cases:
        cfg = load_config(SMOKE, ["jobs=[extend-vocab]", *overrides])
        with pytest.raises(KazhpcError, match=message) as info:
            preflight(cfg)
        assert "\n" not in str(info.value)


def test_tokenizers_that_cannot_be_extended_are_refused() -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from kazhpc.tokenization.extend import check_surface_form

    byte_level = Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[]))
    byte_level.pre_tokenizer = pre_tokenizers.ByteLevel()
    byte_level.decoder = decoders.ByteLevel()
    with pytest.raises(KazhpcError, match="does not write spaces as '▁'"):
        check_surface_form(json.loads(byte_level.to_str()), "llama-like")
    unigram = Tokenizer(models.Unigram([("a", -1.0), ("▁", -2.0)], 0, byte_fallback=True))
    with pytest.raises(KazhpcError, match="model is Unigram, not BPE"):
        check_surface_form(json.loads(unigram.to_str()), "t5-like")
    no_fallback = Tokenizer(models.BPE(vocab={"▁": 0, "a": 1}, merges=[]))
    no_fallback.pre_tokenizer = pre_tokenizers.Metaspace()
    with pytest.raises(KazhpcError, match="no byte fallback"):
        check_surface_form(json.loads(no_fallback.to_str()), "old-sentencepiece")


# -- the tokenizer side, on Gemma-3's real tokenizer ------------------------------------------------


@pytest.fixture(scope="module")
def extended(gemma_tokenizer, tmp_path_factory: pytest.TempPathFactory):
    from kazhpc.tokenization.extend import learn_extension, save_extended_tokenizer

    train, _ = kk_split()
    ext = learn_extension(gemma_tokenizer, train, 150)
    out = tmp_path_factory.mktemp("extended-tokenizer")
    return ext, save_extended_tokenizer(gemma_tokenizer, ext, out), out


@pytest.mark.slow
def test_new_tokens_are_bpe_merges_not_added_tokens(gemma_tokenizer, extended) -> None:
    ext, tokenizer, out = extended
    spec = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    base = json.loads(gemma_tokenizer.backend_tokenizer.to_str())
    assert len(ext.tokens) == 150 and ext.supported >= 150
    assert len(spec["added_tokens"]) == len(base["added_tokens"])  # no add_tokens
    assert len(spec["model"]["vocab"]) == len(base["model"]["vocab"]) + 150 == len(tokenizer)
    assert spec["model"]["merges"][: len(base["model"]["merges"])] == base["model"]["merges"]
    assert len(spec["model"]["merges"]) == len(base["model"]["merges"]) + len(ext.merges)
    assert spec["normalizer"] == base["normalizer"] and spec["decoder"] == base["decoder"]
    for i, token in enumerate(ext.tokens):
        assert spec["model"]["vocab"][token] == ext.base_size + i
        assert gemma_tokenizer.convert_ids_to_tokens(ext.pieces[i]) and "".join(
            gemma_tokenizer.convert_ids_to_tokens(ext.pieces[i])
        ) == token  # each new token is the concatenation of its base pieces
        assert not any(c.isdigit() for c in token) and any(c.isalpha() for c in token)


@pytest.mark.slow
def test_round_trip_is_exact_for_kazakh_russian_english(extended) -> None:
    _, tokenizer, _ = extended
    texts = ROUND_TRIP + kk_split()[1] + read_corpus(CorpusSpec(EN, language="en")).texts("en")
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        assert tokenizer.decode(ids, clean_up_tokenization_spaces=False) == text
    kazakh = tokenizer(ROUND_TRIP[0], add_special_tokens=False)["input_ids"]
    assert any(i >= len(tokenizer) - 150 for i in kazakh), "the probe uses no new token"


@pytest.mark.slow
def test_every_new_token_is_reachable_and_fertility_drops(gemma_tokenizer, extended) -> None:
    from kazhpc.tokenization.offline import hf_adapter

    ext, tokenizer, _ = extended
    train, heldout = kk_split()
    used = {i for ids in tokenizer(train, add_special_tokens=False)["input_ids"] for i in ids}
    # Reachable: in the output, or a side of the merge that made a reachable new token (BPE's
    # intermediate pieces, e.g. 'лттық' on the way to '▁ұлттық', are formed, then merged on).
    vocab = tokenizer.get_vocab()
    reachable = {tokenizer.convert_ids_to_tokens(i) for i in used if i >= ext.base_size}
    for left, right in reversed(ext.merges):
        if left + right in reachable:
            reachable |= {left, right}
    assert reachable >= set(ext.tokens), set(ext.tokens) - reachable
    assert all(vocab[t] >= ext.base_size for t in ext.tokens)
    base = measure(hf_adapter("base", gemma_tokenizer, "base"), heldout).fertility
    after = measure(hf_adapter("extended", tokenizer, "extended"), heldout).fertility
    assert after < base * 0.95, (base, after)
    english = read_corpus(CorpusSpec(EN, language="en")).texts("en")
    assert measure(hf_adapter("e", tokenizer, "e"), english).tokens == measure(hf_adapter("b", gemma_tokenizer, "b"), english).tokens
    # An extended count is never above the base count (merges only join base tokens).
    for text in heldout:
        assert len(tokenizer(text)["input_ids"]) <= len(gemma_tokenizer(text)["input_ids"])


@pytest.mark.slow
def test_smaller_k_is_a_prefix(extended, gemma_tokenizer) -> None:
    from kazhpc.tokenization.extend import backend_from_spec, base_tokenizer_spec, extend_spec

    ext, _, _ = extended
    small = ext.prefix(40)
    assert small.tokens == ext.tokens[:40] and len(small.merges) >= 40
    backend = backend_from_spec(extend_spec(base_tokenizer_spec(gemma_tokenizer), small))
    assert backend.get_vocab_size() == ext.base_size + 40
    text = kk_split()[1][0]
    assert backend.decode(backend.encode(text, add_special_tokens=False).ids) == text


@pytest.mark.slow
def test_kazakh_corpus_checks(tmp_path: Path, model_cache: Path) -> None:
    """Wrong language (lingua's shares in the message) and K above what the corpus supports."""
    from kazhpc.runner import run_pipeline

    cfg = config(tmp_path, model_cache, "jobs=[extend-vocab]", f"extend_vocab.corpus={{path: {EN}}}")
    with pytest.raises(KazhpcError, match=r"only 0% of the kk texts are Kazakh \(en 100%\)"):
        run_pipeline(cfg)
    cfg = config(tmp_path, model_cache, "jobs=[extend-vocab]", f"extend_vocab.corpus={{path: {KK}}}", "extend_vocab.new_tokens=100000",
                 "extend_vocab.check_language=false")
    with pytest.raises(KazhpcError, match=r"100000 new tokens asked, but the corpus supports only \d+ ") as info:
        run_pipeline(cfg)
    assert "\n" not in str(info.value)


# -- the whole job, then the train job on the extended model -------------------------------------


@pytest.fixture(scope="module")
def pipeline(cpt_sft_run: dict) -> Path:
    """The session's run of configs/pipelines/kazakh-cpt-sft.yaml (conftest.cpt_sft_run): extend-vocab
    (K=150, a 1-step adaptation) → corpus → train-cpt (the new rows trainable) → preprocess →
    train-sft (QLoRA, going on from train-cpt's adapter) → evaluate."""
    return cpt_sft_run["run_dir"]


@pytest.mark.slow
def test_the_job_measures_its_effect(pipeline: Path) -> None:
    job = pipeline / "extend-vocab"
    manifest = json.loads((job / "manifest.json").read_text())
    fert = manifest["fertility"]
    assert fert["kk_heldout"]["extended"]["fertility"] < fert["kk_heldout"]["base"]["fertility"]
    assert fert["en"]["extended"]["fertility"] == pytest.approx(fert["en"]["base"]["fertility"], rel=0.02)
    assert manifest["round_trip"]["failures"] == 0 and manifest["round_trip"]["texts"] > 20
    assert manifest["split"]["train_texts"] + manifest["split"]["heldout_texts"] == len(read_corpus(CorpusSpec(KK)).texts("kk"))
    bpc = manifest["bits_per_char"]
    for stage in ("base", "initialised", "adapted"):
        assert 0.5 < bpc[stage]["bits_per_char"] < 8, (stage, bpc[stage])
    # The same characters are scored by both tokenizers, in fewer tokens after the extension.
    assert bpc["initialised"]["chars"] == bpc["base"]["chars"]
    assert bpc["initialised"]["tokens"] < bpc["base"]["tokens"]
    assert manifest["adaptation"]["steps"] == 1 and math.isfinite(manifest["adaptation"]["train_loss"])
    curve = {p["k"]: p for p in manifest["k_curve"]}
    assert curve[50]["supported"] and fert["kk_heldout"]["extended"]["fertility"] < curve[50]["kk_heldout"]
    assert not curve[100000]["supported"]
    table = (job / "extension.md").read_text(encoding="utf-8")
    assert "| Kazakh, held out |" in table and "corpus supports only" in table
    assert len((job / "new_tokens.txt").read_text(encoding="utf-8").splitlines()) == 150


@pytest.mark.slow
def test_new_rows_are_the_scaled_mean_of_their_pieces(pipeline: Path, model_cache: Path, gemma_tokenizer) -> None:
    import torch
    from safetensors import safe_open

    from kazhpc.models import bundled_checkpoint_dir

    manifest = json.loads((pipeline / "extend-vocab" / "manifest.json").read_text())
    first = manifest["tokenizer"]["first_new_id"]
    rows = [line.split("\t") for line in (pipeline / "extend-vocab" / "new_tokens.txt").read_text(encoding="utf-8").splitlines()]

    def embeddings(folder: Path) -> torch.Tensor:
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            (key,) = [k for k in f.keys() if k.endswith("embed_tokens.weight")]
            return f.get_tensor(key)

    base, new = embeddings(bundled_checkpoint_dir("gemma3-270m", model_cache)), embeddings(pipeline / "extend-vocab" / "model")
    base_tok = gemma_tokenizer
    assert new.shape == (first + 150, base.shape[1]) and torch.equal(new[:first], base)
    for token_id, token, pieces in (rows[0], rows[77], rows[-1]):
        ids = base_tok.convert_tokens_to_ids(pieces.split(" "))
        assert "".join(pieces.split(" ")) == token and len(ids) >= 2
        scale = manifest["model"]["scale"]
        assert scale == 0.7  # the default init_scale
        expected = (scale * base[ids].float().mean(0)).to(new.dtype)
        assert torch.equal(new[int(token_id)], expected)


@pytest.mark.slow
def test_the_train_job_fine_tunes_the_extended_model(pipeline: Path) -> None:
    from safetensors import safe_open

    train = json.loads((pipeline / "train-sft" / "manifest.json").read_text())
    assert train["base_model"] == str(pipeline / "extend-vocab" / "model")
    assert train["new_token_rows_trained"] == 150
    card = (pipeline / "train-sft" / "adapter" / "README.md").read_text(encoding="utf-8")
    assert f"(config hash {train['config_hash']})" in card  # the run's, not the swapped model config's
    assert train["loss_check"]["adapter"] < train["loss_check"]["base"]
    with safe_open(str(pipeline / "train-sft" / "adapter" / "adapter_model.safetensors"), "pt") as f:
        token_keys = [k for k in f.keys() if "trainable_tokens" in k]
        assert token_keys, list(f.keys())[:5]
        assert f.get_tensor(token_keys[0]).shape[0] == 150
    saved = json.loads((pipeline / "train-sft" / "adapter" / "tokenizer.json").read_text(encoding="utf-8"))
    assert len(saved["model"]["vocab"]) == json.loads((pipeline / "extend-vocab" / "manifest.json").read_text())["model"]["rows"]


# -- opt-in: real Kazakh news ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not (KAZNERD / "IOB2_valid.txt").is_file(), reason=f"KazNERD not found in {KAZNERD}")
def test_kaznerd_heldout_fertility(gemma_tokenizer) -> None:
    """4,000 tokens learnt on KazNERD validation; measured on test sentences never trained on."""
    from kazhpc.tokenization.extend import backend_from_spec, base_tokenizer_spec, extend_spec, learn_extension
    from kazhpc.tokenization.extend_job import backend_adapter
    from kazhpc.tokenization.offline import hf_adapter

    train = read_corpus(CorpusSpec(KAZNERD / "IOB2_valid.txt")).texts("kk")
    heldout = read_corpus(CorpusSpec(KAZNERD / "IOB2_test.txt", max_texts=1000)).texts("kk")
    ext = learn_extension(gemma_tokenizer, train, 4000)
    backend = backend_from_spec(extend_spec(base_tokenizer_spec(gemma_tokenizer), ext))
    after = measure(backend_adapter("k4000", backend, 2, 3), heldout).fertility
    base = measure(hf_adapter("base", gemma_tokenizer, "base"), heldout).fertility
    assert base > 3.0 and after < 0.7 * base, (base, after)
    for text in heldout[:200]:
        assert backend.decode(backend.encode(text, add_special_tokens=False).ids) == text
