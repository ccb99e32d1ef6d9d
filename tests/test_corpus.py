"""The corpus job: raw Kazakh text → filtered, deduplicated documents → packed token blocks (datatrove)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

from corpus_data import BELEBELE, FIXTURES
from kazhpc.config import load_config
from kazhpc.errors import KazhpcError

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "pipelines" / "smoke.yaml"
CORPUS = FIXTURES / "corpus"  # tests/corpus_data.py wrote it, with faults planted


def corpus_config(tmp_path: Path, source: Path, *overrides: str, **kw):
    return load_config(SMOKE, [f"runs_root={tmp_path / 'runs'}", "jobs=[corpus]",
                               f"corpus.sources=[{{name: kk, path: {source}}}]", "corpus.blocks.length=64",
                               "corpus.minhash.buckets=4", *overrides], **kw)


def preflight_error(cfg) -> str:
    from kazhpc.corpus_job import preflight

    with pytest.raises(KazhpcError) as caught:
        preflight(cfg)
    message = str(caught.value)
    assert "\n" not in message
    return message


# -- config and preflight: one line each, before any model loads -------------------------------


def test_config_errors_are_one_line(tmp_path: Path) -> None:
    cases = [
        (["jobs=[corpus]", "corpus.sources=[]"], "corpus.sources: the corpus job needs at least one source"),
        (["jobs=[corpus]", "corpus.sources=[{name: a, path: x}, {name: a, path: y}]"], "listed twice: a"),
        (["jobs=[corpus]", "corpus.sources=[{name: a, path: x}]", "corpus.language=de"], "must be one of languages"),
        (["jobs=[preprocess, train]", "train.objective=cpt"], "trains on a corpus stage's blocks; list corpus before it"),
    ]
    for overrides, message in cases:
        with pytest.raises(KazhpcError) as caught:
            load_config(SMOKE, [f"runs_root={tmp_path}", *overrides])
        assert message in str(caught.value) and "\n" not in str(caught.value), (overrides, str(caught.value))


def test_bad_sources_are_refused_before_anything_runs(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("", encoding="utf-8")
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"content": "Қазақ тілі түркі тілдерінің бірі.", "url": "x"}, ensure_ascii=False) + "\n", encoding="utf-8")
    russian = tmp_path / "ru.jsonl"
    russian.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in [
        "Сегодня в Алматы прошёл сильный дождь, и улицы были пустыми весь день.",
        "Мы поехали на поезде в Астану и вернулись домой только поздно вечером.",
    ]), encoding="utf-8")
    assert "corpus.sources[kk].path: " in preflight_error(corpus_config(tmp_path, tmp_path / "missing"))
    assert "holds no documents (empty)" in preflight_error(corpus_config(tmp_path, empty))
    message = preflight_error(corpus_config(tmp_path, wrong))
    assert f"{wrong}:1: no field 'text' (its fields: content, url); set text_key" in message
    message = preflight_error(corpus_config(tmp_path, russian))
    assert "none of its first 2 documents is in 'kk' (lingua: ru 2)" in message
    folder = tmp_path / "nothing"
    folder.mkdir()
    assert "no files in" in preflight_error(corpus_config(tmp_path, folder))


def test_blocks_longer_than_the_model_context_are_refused(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "max_position_embeddings": 128}))
    cfg = corpus_config(tmp_path, CORPUS, f"model.source={model}", "corpus.blocks.length=256")
    assert "corpus.blocks.length: 256 tokens is above the model's context (128 tokens" in preflight_error(cfg)


def test_a_hub_model_s_context_comes_from_the_local_hub_cache(tmp_path: Path) -> None:
    """A hub id's config.json is read from the hub cache (HF_HUB_CACHE), never fetched: cached, its
    context refuses longer blocks; not cached, the check is skipped with a warning."""
    import os
    import subprocess
    import sys
    import textwrap

    snapshot = tmp_path / "hub" / "models--kazhpc-test--tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "max_position_embeddings": 128}))
    (tmp_path / "hub" / "models--kazhpc-test--tiny" / "refs").mkdir()
    (tmp_path / "hub" / "models--kazhpc-test--tiny" / "refs" / "main").write_text("0" * 40)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from kazhpc.config import load_config
        from kazhpc.corpus_job import model_context, preflight
        base = [f"runs_root={tmp_path / 'runs'}", "jobs=[corpus]", "corpus.sources=[{{name: kk, path: {CORPUS}}}]",
                "corpus.minhash.buckets=4", "corpus.blocks.length=256"]
        print(model_context(load_config("{SMOKE}", [*base, "model.source=kazhpc-test/tiny"])))
        print(preflight(load_config("{SMOKE}", [*base, "model.source=kazhpc-test/absent"]))[-1])
    """)
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    context, warning = done.stdout.strip().splitlines()[-2:]
    assert context == "128"
    assert warning == "corpus.blocks.length not checked: kazhpc-test/absent is not materialized yet"


def test_a_task_whose_earlier_stage_is_not_done_is_refused(tmp_path: Path) -> None:
    """An array task run by hand out of order (buckets before every filter task completed) would read
    half the signatures; it is refused, naming the stage and its completion markers."""
    from kazhpc.data.corpus.flow import CorpusLayout, run_task

    out = CorpusLayout(tmp_path)
    (tmp_path / "logs" / "filter" / "completions").mkdir(parents=True)
    (tmp_path / "logs" / "filter" / "completions" / "00000").touch()
    with pytest.raises(KazhpcError, match=r"corpus stage buckets: stage filter has 1 of 2 tasks not completed \(first: 1;"):
        run_task({"filter": ([], 2), "buckets": ([], 4)}, "buckets", 0, out)
    with pytest.raises(KazhpcError, match=r"task 4 does not exist; it has 4 tasks \(0..3\)"):
        run_task({"filter": ([], 2), "buckets": ([], 4)}, "buckets", 4, out)


def test_punctuation_is_not_a_word_for_gophers_rules() -> None:
    """News text with its punctuation space-separated (as in tokenized corpora) passes Gopher's
    "80% of words hold a letter" rule; a document of numbers does not."""
    from datatrove.data import Document
    from datatrove.pipeline.filters import GopherQualityFilter

    from kazhpc.config.corpus import KAZAKH_STOP_WORDS
    from kazhpc.data.corpus.steps import KazakhWords

    words = KazakhWords()
    assert words.word_tokenize("« Абай » , 1845 жылы туған ақын-жазушы .") == ["Абай", "1845", "жылы", "туған", "ақын-жазушы"]
    sentence = "« Жаңа кітап » , « Дала әуені » және « Көктем » атты шығармалар көрмеде , оқырмандар үшін ашық ."
    gopher = GopherQualityFilter(min_doc_words=20, stop_words=list(KAZAKH_STOP_WORDS), language=words)
    assert gopher.filter(Document(text=" ".join([sentence] * 3), id="news")) is True
    numbers = " ".join(f"{i * 1013} , {i * 7919} ; {i * 104729} ." for i in range(1, 31)) + " және"
    assert gopher.filter(Document(text=numbers, id="table")) == (False, "gopher_below_alpha_threshold")


# -- Hugging Face data sets as sources: local copies in their layouts, read as the hub's would be --


@pytest.fixture(scope="module")
def hub_copies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[dict, list[str]]]:
    from corpus_data import write_hub_copies

    return write_hub_copies(tmp_path_factory.mktemp("hub"))


@pytest.mark.parametrize("layout", ["fineweb-2", "CulturaX", "HPLT2.0_cleaned", "multidomain-kazakh-dataset"])
def test_a_data_set_source_reads_its_subsets_split_in_order(hub_copies: dict, layout: str) -> None:
    """`datasets` resolves the subset's files (the card's configs, or the default layout for the CSV
    copy); other subsets and splits are not read; parquet, .jsonl.zst and CSV (a quoted multi-line
    field) by their names."""
    from kazhpc.config.corpus import TextSourceConfig
    from kazhpc.data.corpus.sources import CorpusSources

    source, texts = hub_copies[layout]
    docs = list(CorpusSources([TextSourceConfig(**source)]).run())
    assert [d.text for d in docs] == texts
    assert all(d.metadata["source"] == source["name"] and d.metadata["file"].startswith(source["dataset"]) for d in docs)


def test_data_set_sources_pass_preflight_and_their_errors_are_one_line(tmp_path: Path, hub_copies: dict) -> None:
    fineweb, _ = hub_copies["fineweb-2"]
    sources = ",".join("{" + ", ".join(f"{k}: '{v}'" for k, v in source.items()) + "}" for source, _ in hub_copies.values())
    from kazhpc.corpus_job import preflight

    assert preflight(corpus_config(tmp_path, CORPUS, f"corpus.sources=[{sources}]")) == []
    folder = fineweb["dataset"]
    wrong = {
        "subset: kaz_Latn": "corpus.sources[kk].dataset: " + folder + ": BuilderConfig 'kaz_Latn' not found. Available: ['kaz_Cyrl', 'rus_Cyrl']",
        "subset: kaz_Cyrl, split: validation": "corpus.sources[kk].dataset: " + folder + " (kaz_Cyrl) has no split 'validation'; its splits: train, test",
        "subset: kaz_Cyrl, text_key: content": "no field 'content' (its fields: text, id, dump, url, language, language_score, language_script); set text_key",
    }
    for change, message in wrong.items():
        cfg = corpus_config(tmp_path, CORPUS, f"corpus.sources=[{{name: kk, dataset: {folder}, {change}}}]")
        assert message in preflight_error(cfg), change


def test_a_hub_data_set_offline_is_a_one_line_error_naming_the_way_out(tmp_path: Path) -> None:
    """The hub id path is the real one (datasets resolves the files); with the hub unreachable, as
    on most compute nodes, the message says to name a local copy. Run in a fresh process, since
    datasets reads HF_HUB_OFFLINE when it is imported."""
    import os
    import subprocess
    import sys

    code = ("from kazhpc.data.corpus.sources import dataset_files\n"
            "from kazhpc.errors import KazhpcError\n"
            "try:\n    dataset_files('HuggingFaceFW/fineweb-2', 'kaz_Cyrl', 'train', None, 'web')\n"
            "except KazhpcError as exc:\n    print(exc)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120).stdout.strip()
    assert out.startswith("corpus.sources[web].dataset: HuggingFaceFW/fineweb-2: ") and "\n" not in out
    assert out.endswith("(offline: on a node without the hub, name a local copy of the data set)")


@pytest.mark.parametrize(("source", "message"), [
    ("{name: kk}", "give either path (files) or dataset (a Hugging Face data set)"),
    ("{name: kk, path: x.jsonl, dataset: a/b}", "give either path (files) or dataset"),
    ("{name: kk, dataset: 'not a hub id'}", "is neither a folder nor a hub id 'owner/name'"),
])
def test_a_source_with_neither_or_both_origins_is_refused(tmp_path: Path, source: str, message: str) -> None:
    with pytest.raises(KazhpcError, match=re.escape(message)) as caught:
        corpus_config(tmp_path, CORPUS, f"corpus.sources=[{source}]")
    assert "\n" not in str(caught.value)


# -- the job, for real: 1 task and 3 tasks give the same corpus -----------------------------------


def _lines(folder: Path) -> list[dict]:
    rows = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            rows += [json.loads(line) for line in f]
    return rows


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict[int, Path]:
    """The library's stages on the fixture corpus with the base Gemma-3 tokenizer, with 1 task and
    with 3 tasks on 2 worker processes (the job itself runs in conftest.cpt_sft_run)."""
    from kazhpc.config import DecontaminationConfig
    from kazhpc.config.corpus import TextCorpusConfig
    from kazhpc.data.corpus.build import build_corpus
    from kazhpc.models import bundled_checkpoint_dir

    tmp = tmp_path_factory.mktemp("corpus")
    tokenizer = bundled_checkpoint_dir("gemma3-270m", model_cache)
    runs = {}
    for tasks, workers in ((1, 1), (3, 2)):
        section = TextCorpusConfig(sources=[{"name": "kk", "path": str(CORPUS)}], tasks=tasks, workers=workers,
                                   minhash={"buckets": 4}, blocks={"length": 64}, heldout_fraction=0.1)
        folder = tmp / f"tasks-{tasks}"
        manifest = build_corpus(section, DecontaminationConfig(files=[str(BELEBELE)]), folder, tokenizer)
        (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")  # as the runner would
        runs[tasks] = folder
    return runs


@pytest.mark.slow
def test_every_planted_fault_is_dropped_counted_and_kept(cpt_sft_run: dict) -> None:
    job = cpt_sft_run["run_dir"] / "corpus"  # the job, in configs/pipelines/kazakh-cpt-sft.yaml
    manifest = json.loads((job / "manifest.json").read_text())
    counts, dropped = manifest["counts"], manifest["dropped_by_reason"]
    assert counts["unaccounted"] == 0
    assert {"bad_json": 1, "no_text_field": 1, "too_short": 1, "language_ru": 1, "contaminated": 1, "near_duplicate": 2}.items() <= dropped.items()
    rejects = Path(manifest["rejects_dir"])  # under the stage's work/<fingerprint>/
    assert rejects.parent.parent == job / "work"
    rejected = {reason: {r["id"] for r in _lines(rejects / step)}
                for reason, step in (("near_duplicate", "near_duplicate"), ("language", "language"), ("contaminated", "contaminated"))}
    assert rejected["near_duplicate"] == {f"fixture/part3.jsonl/{i}" for i in _positions(job, {"exact-dup", "near-dup"})}
    assert len(rejected["language"]) == 1 and len(rejected["contaminated"]) == 1
    assert counts["documents_kept"] + counts["documents_heldout"] + counts["documents_dropped"] == counts["documents_read"]
    assert counts["blocks"] == counts["tokens"] // 64 and counts["blocks"] > 10
    assert sum(f["bytes"] for f in manifest["source_files"]) == sum(p.stat().st_size for p in CORPUS.glob("*.jsonl"))
    table = (job / "corpus.md").read_text(encoding="utf-8")
    assert "| dropped: near duplicate | 2 |" in table


def _positions(job: Path, ids: set[str]) -> list[int]:
    source = Path(json.loads((job / "manifest.json").read_text())["source_files"][-1]["path"])
    return [i for i, line in enumerate(source.read_text(encoding="utf-8").splitlines()) if json.loads(line).get("id") in ids]


@pytest.mark.slow
def test_one_task_and_three_tasks_keep_the_same_documents_and_blocks(corpus_runs: dict[int, Path]) -> None:
    one, three = (json.loads((corpus_runs[n] / "manifest.json").read_text()) for n in (1, 3))
    assert one["blocks"]["sha256"] == three["blocks"]["sha256"]
    assert one["counts"] == three["counts"] and one["dropped_by_reason"] == three["dropped_by_reason"]
    kept = [[r["id"] for r in _lines(corpus_runs[n] / "kept")] for n in (1, 3)]
    assert kept[0] == kept[1] and len(kept[0]) == one["counts"]["documents_kept"]
    assert len(list((corpus_runs[3] / "tokens").glob("*.ds"))) == 3


@pytest.mark.slow
def test_blocks_are_the_kept_documents_tokenized_with_bos_and_eos(corpus_runs: dict[int, Path], gemma_tokenizer) -> None:
    from kazhpc.data.corpus.blocks import PackedBlocks, token_files

    job = corpus_runs[3]
    manifest = json.loads((job / "manifest.json").read_text())
    blocks = PackedBlocks(token_files(job / "tokens"), 64, manifest["blocks"]["token_bytes"])
    stream = [int(t) for i in range(len(blocks)) for t in blocks[i]["input_ids"]]
    assert len(stream) == manifest["counts"]["block_tokens"]
    first = stream[: stream.index(gemma_tokenizer.eos_token_id) + 1]
    assert first[0] == gemma_tokenizer.bos_token_id and first.count(gemma_tokenizer.bos_token_id) == 1
    text = gemma_tokenizer.decode(first[1:-1])
    kept = _lines(job / "kept")
    assert len(text) == kept[0]["metadata"]["chars"]
    assert stream.count(gemma_tokenizer.bos_token_id) <= len(kept)


@pytest.mark.slow
@pytest.mark.slurm
def test_on_slurm_each_datatrove_stage_is_an_array_and_the_corpus_is_the_one_task_one(
    local_slurm: str, tmp_path: Path, model_cache: Path, corpus_runs: dict[int, Path]
) -> None:
    """`kazhpc submit` of the CPT pipeline's corpus stage (corpus.tasks=2) on the real local SLURM:
    filter (2 array tasks), buckets (4), clusters (1), blocks (2), each after the one before, then
    the stage's own job; its blocks are byte for byte those of the one-task run in this process."""
    import subprocess
    import sys

    from kazhpc.runner import read_state

    runs_root = tmp_path / "runs"
    kazhpc = [str(Path(sys.executable).parent / "kazhpc")]
    submitted = subprocess.run([*kazhpc, "submit", "configs/pipelines/kazakh-cpt-sft.yaml", f"runs_root={runs_root}",
                                f"cache_dir={model_cache}", "stages=[{name: corpus, job: corpus}]",
                                "--cluster", "configs/clusters/local.yaml"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    (run_dir,) = runs_root.glob("kazakh-cpt-sft-*")
    try:
        done = subprocess.run([*kazhpc, "status", str(run_dir), "--wait", "--timeout", "600"], capture_output=True,
                              text=True, cwd=REPO, timeout=660)
        assert done.returncode == 0 and "all jobs completed" in done.stdout, done.stdout + done.stderr[-3000:]
    finally:
        subprocess.run([*kazhpc, "cancel", str(run_dir)], capture_output=True, cwd=REPO, timeout=120)
    steps = {s["name"]: s for s in json.loads((run_dir / "submission.json").read_text())["attempts"][0]["steps"]}
    assert list(steps) == ["corpus-filter", "corpus-buckets", "corpus-clusters", "corpus-blocks", "corpus"]
    names = list(steps)
    for before, after in zip(names, names[1:]):
        assert steps[after]["dependency"] == f"afterok:{steps[before]['slurm_id']}"
    tasks = {"filter": 2, "buckets": 4, "clusters": 1, "blocks": 2}
    state = read_state(run_dir)["jobs"]
    for phase, n in tasks.items():
        for i in range(n):
            assert state[f"corpus:{phase}[{i}/{n}]"]["status"] == "COMPLETED"
            assert state[f"corpus:{phase}[{i}/{n}]"]["slurm_job_id"]  # each ran as its own SLURM job
    submitted_manifest = json.loads((run_dir / "corpus" / "manifest.json").read_text())
    local = json.loads((corpus_runs[1] / "manifest.json").read_text())
    assert submitted_manifest["blocks"]["sha256"] == local["blocks"]["sha256"]
    assert submitted_manifest["counts"] == local["counts"] and submitted_manifest["dropped_by_reason"] == local["dropped_by_reason"]
    assert len(list(Path(submitted_manifest["rejects_dir"]).parent.joinpath("tokens").glob("*.ds"))) == 2
