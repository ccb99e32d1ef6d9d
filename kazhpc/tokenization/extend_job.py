"""The extend-vocab job: add K Kazakh tokens to the model's BPE, grow and initialise the
embeddings, and measure the effect (fertility, bits per character) in the job itself.

Held-out text: ``extend_vocab.heldout`` when given; otherwise the **last** ``heldout_fraction`` of
the corpus's passages (a contiguous tail, so that news sentences of one article mostly stay on one
side). Held-out passages that also occur verbatim in the training part are dropped (counted).
Nothing held out is used to learn merges or in the adaptation run.

Outputs in the job folder: ``model/`` (the extended tokenizer and the resized model, in
``model.dtype``; the train job fine-tunes it when this job is in the same run), ``extension.md``
(the table), ``extension.json`` (all numbers), ``new_tokens.txt`` (id, token, base pieces).

Pipeline position: after ``tokenizers``, before ``preprocess``. Preprocess keeps the base
tokenizer: it only counts tokens (for ``cleaning.max_tokens``) and the extension only merges base
tokens, so an extended count is never larger: the base count is a safe upper bound. The train job
tokenizes with the extended tokenizer (:func:`~kazhpc.train.stage_inputs.extended_model_for_training`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    from kazhpc.config import CorpusConfig, PipelineConfig
    from kazhpc.jobspec import JobContext
    from kazhpc.tokenization.offline import TokenizerAdapter

log = logging.getLogger(__name__)

REPORT_FILES = ("extension.md", "extension.json", "new_tokens.txt")

#: Round-trip probes besides the held-out text: Kazakh, Russian, English, odd whitespace, emoji,
#: characters outside the vocabulary (byte fallback), text that looks like a special token.
ROUND_TRIP_PROBES: tuple[str, ...] = (
    "Қазақстанның астанасы — Астана қаласы. Біз 2024 жылы 15 қыркүйекте кездестік.",
    "  Әріптестеріміздің ұсыныстарын қарастырдық;\tнәтижесі:  «өте жақсы»!\n",
    "Привет! Как дела? Всё хорошо, спасибо: встретимся в 10:30.",
    "The quick brown fox jumps over the lazy dog — twice, in 2025.",
    "Mixed: Қазақ тілі / русский язык / English 😀 ℃ 𝔘 <bos> <start_of_turn>user",
)


def _spec(c: CorpusConfig) -> Any:
    from kazhpc.tokenization import CorpusSpec

    return CorpusSpec(Path(c.path), c.format, c.field, c.name, c.language, c.max_texts)


def _texts(c: CorpusConfig, language: str, where: str) -> list[str]:
    from kazhpc.tokenization import read_corpus

    corpus = read_corpus(_spec(c), [language])
    texts = corpus.texts(language)
    if not texts:
        raise KazhpcError(f"{where}: {c.path}: no {language} text (columns: {', '.join(corpus.columns) or 'none'})")
    return texts


def split_corpus(cfg: PipelineConfig) -> tuple[list[str], list[str], dict[str, Any]]:
    """Training and held-out Kazakh passages (see the module docstring), and how they were split."""
    section = cfg.extend_vocab
    assert section.corpus is not None  # the config refuses the job without one
    texts = _texts(section.corpus, "kk", "extend_vocab.corpus")
    if section.heldout is not None:
        train, heldout = texts, _texts(section.heldout, "kk", "extend_vocab.heldout")
        rule = f"extend_vocab.heldout ({section.heldout.path})"
    else:
        cut = len(texts) - max(1, round(len(texts) * section.heldout_fraction))
        if cut < 1:
            raise KazhpcError(f"extend_vocab.corpus: {section.corpus.path}: {len(texts)} passage(s), too few to hold some out")
        train, heldout = texts[:cut], texts[cut:]
        rule = f"last {section.heldout_fraction:.0%} of the corpus ({len(heldout)} passages)"
    seen = set(train)
    kept = [t for t in heldout if t not in seen]
    if not kept:
        raise KazhpcError("extend_vocab: every held-out passage also occurs in the training text")
    return train, kept, {"rule": rule, "train_texts": len(train), "heldout_texts": len(kept),
                         "heldout_dropped_as_seen": len(heldout) - len(kept)}  # fmt: skip


def preflight(cfg: PipelineConfig) -> list[str]:
    """Files exist and hold text, the model source parses, K is sane; reads no model."""
    from kazhpc.models import parse_source

    section = cfg.extend_vocab
    for key in ("corpus", "heldout", "english"):
        c = getattr(section, key)
        if c is not None and not Path(c.path).is_file():
            raise KazhpcError(f"extend_vocab.{key}.path: {c.path}: file not found")
    split_corpus(cfg)
    if section.english is not None:
        _texts(section.english, "en", "extend_vocab.english")
    source = parse_source(cfg.model.source)
    if source.kind == "local" and not (Path(source.ref) / "tokenizer.json").is_file():
        raise KazhpcError(f"model source '{cfg.model.source}': no tokenizer.json (the extension edits a fast BPE tokenizer)")
    warnings = []
    if section.adapt_steps and not section.bpc_texts:
        warnings.append("adapt_steps is set but bpc_texts is 0: the adaptation run is skipped (nothing to score)")
    return warnings


def _adapter(name: str, tokenizer: Any) -> TokenizerAdapter:
    from kazhpc.tokenization.offline import hf_adapter

    return hf_adapter(name, tokenizer, name)


def backend_adapter(name: str, backend: Any, bos_id: int | None, unk_id: int | None) -> TokenizerAdapter:
    from kazhpc.tokenization.offline import TokenizerAdapter

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]

    return TokenizerAdapter(
        name=name, vocab_size=backend.get_vocab_size(), bos_id=bos_id, unk_id=unk_id,
        special_ids=(bos_id,) if bos_id is not None else (), byte_level=True, source=name,
        _encode=lambda text: encode_batch([text])[0], _decode=lambda ids: backend.decode(ids), _encode_batch=encode_batch,
    )  # fmt: skip


def round_trip(tokenizer: Any, texts: list[str]) -> dict[str, Any]:
    """decode(encode(text)) == text for each text (no special tokens, no clean-up of spaces)."""
    failures = []
    for batch_start in range(0, len(texts), 2000):
        batch = texts[batch_start : batch_start + 2000]
        ids = tokenizer(batch, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        for text, row in zip(batch, ids):
            back = tokenizer.decode(row, skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if back != text:
                failures.append(text)
    return {"texts": len(texts), "failures": len(failures), "first_failure": failures[0] if failures else None}


def _fertility(adapter: TokenizerAdapter, texts: list[str]) -> dict[str, float]:
    from kazhpc.tokenization import measure

    m = measure(adapter, texts)
    return {"fertility": m.fertility, "tokens": m.tokens, "words": m.words, "split3_share": m.split3_share}


def _sample(texts: list[str], n: int) -> list[str]:
    return texts if len(texts) <= n else [texts[(i * len(texts)) // n] for i in range(n)]


def run(ctx: JobContext) -> dict[str, Any]:
    import torch

    from kazhpc.data.langid import LanguageIdentifier
    from kazhpc.models import load_model, load_tokenizer
    from kazhpc.tokenization.extend import (
        backend_from_spec, base_tokenizer_spec, check_surface_form, extend_spec, learn_extension,
        save_extended_tokenizer,
    )  # fmt: skip
    from kazhpc.tokenization.extend_model import MODEL_DIR, adapt, bits_per_char, resize_and_initialise
    from kazhpc.tokenization.corpus import Corpus, check_kazakh, language_shares

    cfg, section = ctx.cfg, ctx.cfg.extend_vocab
    started = time.time()
    train, heldout, split = split_corpus(cfg)
    english = _texts(section.english, "en", "extend_vocab.english") if section.english else []
    shares: dict[str, Any] = {}
    if section.check_language:
        shares = language_shares(train, LanguageIdentifier(("kk", "en", "ru", "tr")))
        assert section.corpus is not None
        check_kazakh(Corpus(section.corpus.name or Path(section.corpus.path).name, section.corpus.path, "kk"),
                     shares, section.min_kk_share)  # fmt: skip

    base_tok = load_tokenizer(cfg.model, cfg.cache_root)
    spec = base_tokenizer_spec(base_tok)
    check_surface_form(spec, f"model source '{cfg.model.source}'")
    largest = max([section.new_tokens, *section.k_curve])
    full = learn_extension(base_tok, train, largest, min_frequency=section.min_frequency)
    if full.supported < section.new_tokens:
        raise KazhpcError(
            f"extend_vocab.new_tokens: {section.new_tokens} new tokens asked, but the corpus supports only "
            f"{full.supported} (pairs seen at least min_frequency={section.min_frequency} times in "
            f"{len(train)} training passages); lower new_tokens or add Kazakh text"
        )
    ext = full.prefix(section.new_tokens)
    learn_seconds = time.time() - started
    log.info("extension: %d new tokens (%d merges; the corpus supports %d)", len(ext.tokens), len(ext.merges), ext.supported)

    model_dir = ctx.job_dir / MODEL_DIR
    tokenizer = save_extended_tokenizer(base_tok, ext, model_dir)
    rt = round_trip(tokenizer, [*ROUND_TRIP_PROBES, *heldout, *english])
    if rt["failures"]:
        raise KazhpcError(f"extension: decode(encode(text)) != text for {rt['failures']} texts, e.g. {rt['first_failure']!r}")

    base_adapter, ext_adapter = _adapter("base", base_tok), _adapter("extended", tokenizer)
    fertility: dict[str, dict[str, Any]] = {"kk_heldout": {}, "en": {}}
    for label, adapter in (("base", base_adapter), ("extended", ext_adapter)):
        fertility["kk_heldout"][label] = _fertility(adapter, heldout)
        if english:
            fertility["en"][label] = _fertility(adapter, english)
    used = {i for ids in tokenizer(train, add_special_tokens=False)["input_ids"] for i in ids if i >= ext.base_size}
    curve = []
    for k in sorted(set(section.k_curve)):
        point: dict[str, Any] = {"k": k, "supported": k <= full.supported}
        if point["supported"]:
            backend = backend_from_spec(extend_spec(spec, full.prefix(k)))
            adapter = backend_adapter(f"k={k}", backend, base_tok.bos_token_id, base_tok.unk_token_id)
            point["kk_heldout"] = _fertility(adapter, heldout)["fertility"]
            point["en"] = _fertility(adapter, english)["fertility"] if english else None
        curve.append(point)

    # The model: score the base, grow + initialise, score, save; then a short adaptation run.
    model = load_model(cfg.model, cfg.cache_root, dtype=getattr(torch, section.dtype))
    probe = _sample(heldout, section.bpc_texts)
    bpc: dict[str, Any] = {"texts": len(probe)}
    if probe:
        bpc["base"] = bits_per_char(model, base_tok, probe, section.max_length)
    init = resize_and_initialise(model, ext, section.init_scale)
    if probe:
        bpc["initialised"] = bits_per_char(model, tokenizer, probe, section.max_length)
    model.to(getattr(torch, cfg.model.dtype)).save_pretrained(str(model_dir))
    del model
    adaptation: dict[str, Any] | None = None
    if probe and section.adapt_steps:
        new_ids = list(range(ext.base_size, ext.base_size + len(ext.tokens)))
        adapted, adaptation = adapt(
            model_dir, tokenizer, train, new_ids, steps=section.adapt_steps, batch_size=section.adapt_batch_size,
            learning_rate=section.adapt_learning_rate, max_length=section.adapt_max_length, lora=section.adapt_lora,
            dtype=section.dtype, seed=cfg.seed, work_dir=ctx.job_dir / "adapt",
        )  # fmt: skip
        bpc["adapted"] = bits_per_char(adapted, tokenizer, probe, section.max_length)
        del adapted

    results: dict[str, Any] = {
        "model_source": cfg.model.source,
        "split": split,
        "langid": shares,
        "tokenizer": {
            "path": MODEL_DIR, "base_size": ext.base_size, "first_new_id": ext.base_size, "new_tokens": len(ext.tokens),
            "merges": len(ext.merges), "merges_to_base_tokens": ext.merges_to_base_tokens, "supported": full.supported,
            "supported_is_lower_bound": full.supported_capped,
            "min_frequency": section.min_frequency, "new_tokens_used_on_train": len(used), "learn_seconds": round(learn_seconds, 2),
        },
        "round_trip": rt,
        "fertility": fertility,
        "k_curve": curve,
        "model": {"path": MODEL_DIR, "dtype": cfg.model.dtype, **init},
        "bits_per_char": bpc,
        "adaptation": adaptation,
    }  # fmt: skip
    _write_reports(ctx.job_dir, results, ext, base_tok)
    ctx.tracking.log_metrics(flat_metrics(results))
    from kazhpc.tracking.lineage import file_dataset

    for corpus, context in ((section.corpus, "training"), (section.english, "evaluation")):
        if corpus is not None:  # the Kazakh text the tokens are learnt from; the English kept from harm
            ctx.tracking.log_dataset(file_dataset(Path(corpus.path), context, name=corpus.name or Path(corpus.path).name))
    for name in REPORT_FILES:
        ctx.tracking.log_artifact(ctx.job_dir / name)
    return {**results, "report": {name: name for name in REPORT_FILES}}


def flat_metrics(results: dict[str, Any]) -> dict[str, float]:
    """MLflow numbers: fertility.<set>.<tokenizer>, bits_per_char.<stage>, k_curve.<k>.<set>, ..."""
    out: dict[str, float] = {"new_tokens": results["tokenizer"]["new_tokens"], "supported": results["tokenizer"]["supported"]}
    for name, by_tok in results["fertility"].items():
        for label, m in by_tok.items():
            out[f"fertility.{name}.{label}"] = float(m["fertility"])
    for stage in ("base", "initialised", "adapted"):
        if stage in results["bits_per_char"]:
            out[f"bits_per_char.{stage}"] = float(results["bits_per_char"][stage]["bits_per_char"])
    for point in results["k_curve"]:
        for key in ("kk_heldout", "en"):
            if point.get(key) is not None:
                out[f"k_curve.{point['k']}.{key}"] = float(point[key])
    return out


def _f(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def _markdown(results: dict[str, Any]) -> str:
    tok, fert, bpc, split = results["tokenizer"], results["fertility"], results["bits_per_char"], results["split"]
    lines = [
        f"# Kazakh vocabulary extension of {results['model_source']}",
        "",
        f"{tok['new_tokens']} new tokens ({tok['merges']} merges appended to the BPE; the corpus supports "
        f"{'at least ' if tok['supported_is_lower_bound'] else ''}{tok['supported']} at min_frequency {tok['min_frequency']}); {split['train_texts']} training passages, "
        f"{split['heldout_texts']} held out: {split['rule']}. Round trip exact on {results['round_trip']['texts']} texts.",
        "",
        "| text | base tokens/word | extended tokens/word | change |",
        "|---|--:|--:|--:|",
    ]
    for name, label in (("kk_heldout", "Kazakh, held out"), ("en", "English")):
        if fert.get(name):
            b, e = fert[name]["base"]["fertility"], fert[name]["extended"]["fertility"]
            lines.append(f"| {label} | {_f(b)} | {_f(e)} | {100 * (e / b - 1):+.1f}% |")
    if "base" in bpc:
        lines += ["", f"Bits per character on {bpc['texts']} held-out Kazakh passages (comparable across tokenizers):",
                  "", "| model | bits/char | loss/token | tokens |", "|---|--:|--:|--:|"]  # fmt: skip
        for stage, label in (("base", "base model, base tokenizer"), ("initialised", "extended, rows initialised"),
                             ("adapted", "extended, after the adaptation run")):  # fmt: skip
            if stage in bpc:
                s = bpc[stage]
                lines.append(f"| {label} | {_f(s['bits_per_char'])} | {_f(s['loss_per_token'])} | {s['tokens']} |")
        if results["adaptation"]:
            a = results["adaptation"]
            lines += ["", f"Adaptation: {a['steps']} steps on the training text, trainable: {a['trainable']} "
                      f"({a['trainable_parameters']:,} parameters)."]  # fmt: skip
    if results["k_curve"]:
        lines += ["", "Fertility vs K:", "", "| K | Kazakh held-out | English |", "|--:|--:|--:|"]
        for p in results["k_curve"]:
            if p["supported"]:
                lines.append(f"| {p['k']} | {_f(p['kk_heldout'])} | {_f(p.get('en'))} |")
            else:
                lines.append(f"| {p['k']} | corpus supports only {tok['supported']} | |")
    lines += ["", "New rows: " + results["model"]["rule"] + (" (tied input/output embeddings)." if results["model"]["tied"] else ".")]
    return "\n".join(lines) + "\n"


def _write_reports(job_dir: Path, results: dict[str, Any], ext: Any, base_tok: Any) -> None:
    (job_dir / "extension.md").write_text(_markdown(results), encoding="utf-8")
    (job_dir / "extension.json").write_text(json.dumps(results, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    rows = [
        f"{ext.base_size + i}\t{token}\t{' '.join(base_tok.convert_ids_to_tokens(pieces))}"
        for i, (token, pieces) in enumerate(zip(ext.tokens, ext.pieces))
    ]
    (job_dir / "new_tokens.txt").write_text("\n".join(rows) + "\n", encoding="utf-8")
