"""The export stage: a train stage's adapter merged into a folder plain transformers loads.

The real export is the last stage of the session's CPT → SFT pipeline (conftest.cpt_sft_run): an
extended vocabulary (its trained rows merged), two train stages, an evaluation to put on the card.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kazhpc.config import load_config
from kazhpc.errors import KazhpcError

REPO = Path(__file__).resolve().parent.parent
SMOKE = REPO / "configs" / "pipelines" / "smoke.yaml"


def test_export_reloads_with_plain_transformers_and_carries_the_extended_tokenizer(cpt_sft_run: dict) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    manifest = cpt_sft_run["manifests"]["export"]
    out = Path(manifest["export_dir"])
    assert manifest["train_stage"] == "train-sft" and manifest["new_tokens"] == 150
    check = manifest["check"]
    assert abs(check["export_bits_per_char"] - check["reference_bits_per_char"]) <= check["tolerance"]
    assert check["chat_template"]["probe_assistant_tokens"] > 0 and check["answer"]["tokens"] > 0
    for name in ("model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "chat_template.jinja", "README.md"):
        assert (out / name).is_file(), name

    # Independently of the stage: the folder's tokenizer is the extended one, and the merged
    # weights are the adapter's (its trained new embedding rows included), not the base's.
    extended = Path(cpt_sft_run["manifests"]["train-sft"]["base_model"])
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    trained_with = AutoTokenizer.from_pretrained(str(extended))
    text = "Қазақстан Республикасының астанасы — Астана қаласы."
    assert tokenizer(text)["input_ids"] == trained_with(text)["input_ids"] and len(tokenizer) == len(trained_with)
    generation = json.loads((out / "generation_config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<end_of_turn>") in generation["eos_token_id"]
    exported = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(str(extended), dtype=torch.float32)
    adapted = PeftModel.from_pretrained(base, cpt_sft_run["manifests"]["train-sft"]["adapter"]).eval()
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        want, got = adapted(input_ids=ids).logits, exported(input_ids=ids).logits
        plain = adapted.get_base_model()
        with adapted.disable_adapter():
            untouched = plain(input_ids=ids).logits
    merge_error = (want - got).abs().max().item()
    adapter_effect = (want - untouched).abs().max().item()
    assert merge_error < adapter_effect / 5, (merge_error, adapter_effect)  # bf16 rounding, not a missing adapter


def test_export_card_has_lineage_training_and_evaluation(cpt_sft_run: dict) -> None:
    manifest = cpt_sft_run["manifests"]["export"]
    card = (Path(manifest["export_dir"]) / "README.md").read_text(encoding="utf-8")
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "transformers" and "kk" in front["language"]
    assert "base_model" not in front  # bundled:gemma3-270m is not a hub id
    for name in ("corpus/blocks", "corpus/heldout", "preprocess/train"):
        assert f"| {name} |" in card, name
    assert cpt_sft_run["manifests"]["corpus"]["blocks"]["sha256"][:16] in card
    assert "objective: sft" in card and "150 Kazakh tokens" in card
    assert manifest["evaluated_in"] == "evaluate" and "| adapter | kk_dastur_mc |" in card
    assert f"{manifest['check']['export_bits_per_char']:.4f}" in card


def _own_copy(smoke_run: dict, root: Path) -> Path:
    """The session's smoke run as a run of a store of its own: its folders but the large ones, its
    config's runs_root here, no tracking ids, so the export logs to a fresh MLflow store and the
    session's run stays as the other tests read it."""
    src = smoke_run["run_dir"]
    dst = root / src.name
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "mlflow-model", "tracking", "samples", "parts"))
    data = yaml.safe_load((dst / "config.yaml").read_text(encoding="utf-8"))
    data["runs_root"] = str(root)
    (dst / "config.yaml").write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    state = json.loads((dst / "run.json").read_text())
    state["config_hash"] = load_config(dst / "config.yaml").config_hash()
    (dst / "run.json").write_text(json.dumps(state))
    return dst


def test_kazhpc_export_run_writes_a_gguf_file_that_scores_as_the_export(smoke_run: dict, tmp_path: Path) -> None:
    """`kazhpc export RUN export.gguf=bf16` on a finished smoke run (the bundled model's own
    vocabulary: GGUF can carry it): the folder, the GGUF file, both scored in a fresh process, a
    registered version in MLflow."""
    import gguf
    from mlflow import MlflowClient

    run_dir = _own_copy(smoke_run, tmp_path / "runs")
    done = subprocess.run([str(Path(sys.executable).parent / "kazhpc"), "export", str(run_dir), "export.gguf=bf16"],
                          capture_output=True, text=True, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "job export: completed in" in done.stderr and "export: COMPLETED" in done.stdout
    assert "exported model:" in done.stdout  # export.md, the job's table
    manifest = json.loads((run_dir / "export" / "manifest.json").read_text())
    check, file = manifest["check"], run_dir / "export" / manifest["gguf"]["path"]
    assert file.is_file() and file.name == "smoke-train.bf16.gguf"
    assert abs(check["gguf_bits_per_char"] - check["export_bits_per_char"]) <= 0.05
    reader = gguf.GGUFReader(str(file))
    assert bytes(reader.fields["general.architecture"].parts[-1]).decode() == "gemma3"
    assert len(reader.fields["tokenizer.ggml.tokens"].data) == manifest["gguf"]["vocab_size"] == 262144
    card = (Path(manifest["export_dir"]) / "README.md").read_text(encoding="utf-8")
    assert "llama-cli -m smoke-train.bf16.gguf" in card and "| kk_dastur_mc |" in card.replace("adapter | ", "")

    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (version,) = client.search_model_versions("name = 'kazhpc-smoke'")
    assert version.tags["stage"] == "export" and version.tags["exported_from"] == "train"
    assert version.tags["check.bits_per_char"] == f"{check['export_bits_per_char']:.4f}"
    assert "evaluated.adapter.kk_dastur_mc" in version.tags
    assert version.tags["kazhpc.model_uid"] == manifest["mlflow_model"]["uid"]


def test_kazhpc_export_adds_a_stage_to_a_finished_run(tmp_path: Path) -> None:
    from kazhpc.runner import append_stage, new_run_dir, open_run_dir, read_state

    cfg = load_config(SMOKE, [f"runs_root={tmp_path}"])
    run_dir = new_run_dir(cfg)
    with pytest.raises(KazhpcError, match=r"train.max_steps=3: with a run directory, give export.KEY=VALUE only"):
        append_stage(run_dir, "export", ["train.max_steps=3"])
    with pytest.raises(KazhpcError, match="stages.export.with.gguf"):
        append_stage(run_dir, "export", ["export.gguf=q2_k"])
    assert "export" not in open_run_dir(run_dir).stage_names  # a refused stage leaves config.yaml alone
    grown, name = append_stage(run_dir, "export", ["export.gguf=bf16", "export.check_passages=4"])
    assert name == "export" and grown.stage_names[-1] == "export"
    reread = open_run_dir(run_dir)
    assert reread.section_of("export").gguf == "bf16" and reread.section_of("export").check_passages == 4
    assert reread.upstream("export") == {"train": "train", "evaluate": "evaluate"}
    assert read_state(run_dir)["config_hash"] == reread.config_hash() != cfg.config_hash()
    assert append_stage(run_dir, "export", [])[1] == "export"  # again, no overrides: that stage reruns
    assert append_stage(run_dir, "export", ["export.gguf=f16"])[1] == "export-2"


def test_export_needs_a_train_stage_and_checks_its_settings() -> None:
    from kazhpc.export import job

    with pytest.raises(KazhpcError, match="stages: export exports a train stage's model; list train before it"):
        load_config(SMOKE, ["jobs=[preprocess,export]"])
    extended = load_config(SMOKE, ["jobs=[extend-vocab,preprocess,train,export]", "export.gguf=q8_0"])
    with pytest.raises(KazhpcError, match="export.gguf: q8_0: a GGUF file carries no BPE merges"):
        job.preflight(extended)
    with pytest.raises(KazhpcError, match="'kazakh': a hub repository is 'owner/name'"):
        load_config(SMOKE, ["jobs=[preprocess,train,export]", "export.push_to_hub=kazakh"])


def test_push_to_hub_goes_as_far_as_the_upload_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network here: the hub client is replaced at the call, and offline nodes are refused first."""
    import huggingface_hub

    from kazhpc.export import hub, job

    calls = []

    class Recorder:
        def create_repo(self, **kwargs):
            calls.append(("create_repo", kwargs))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs))
            return huggingface_hub.CommitInfo(commit_url="https://huggingface.co/kaz/m/commit/abc", commit_message="m",
                                              commit_description="", oid="abc")

    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KazhpcError, match="export.push_to_hub: kaz/m: HF_HUB_OFFLINE=1 here"):
        hub.push(tmp_path, "kaz/m", True, "m")
    cfg = load_config(SMOKE, ["jobs=[preprocess,train,export]", "export.push_to_hub=kaz/m"])
    with pytest.raises(KazhpcError, match="HF_HUB_OFFLINE=1 here"):  # before any model loads
        job.preflight(cfg)
    assert not calls
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "HfApi", Recorder)
    said = hub.push(tmp_path, "kaz/m", True, "kazhpc export")
    assert [c[0] for c in calls] == ["create_repo", "upload_folder"]
    assert calls[0][1] == {"repo_id": "kaz/m", "private": True, "exist_ok": True, "repo_type": "model"}
    assert calls[1][1]["folder_path"] == str(tmp_path) and calls[1][1]["commit_message"] == "kazhpc export"
    assert said == {"repo": "kaz/m", "url": "https://huggingface.co/kaz/m/commit/abc", "revision": "abc"}


def test_a_reloaded_export_that_scores_otherwise_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from kazhpc.export import check, job

    cfg = load_config(SMOKE, ["jobs=[preprocess,train,export]"])
    ctx = SimpleNamespace(cfg=cfg, job_dir=tmp_path)
    folder = {"dtype": "bfloat16", "chat_template": {}, "answer": {"text": ""}}
    monkeypatch.setattr(check, "run_check", lambda *a: {"folder": {**folder, "score": {"bits_per_char": 2.60}}})
    with pytest.raises(KazhpcError, match=r"export check: the reloaded model scores 2.6000 bits/char, the adapter 2.5000 \(\+0.1000"):
        job._checked(ctx, tmp_path / "model", None, ["а"], {"bits_per_char": 2.50})
    monkeypatch.setattr(check, "run_check", lambda *a: {"folder": {**folder, "score": {"bits_per_char": 2.505}}})
    assert job._checked(ctx, tmp_path / "model", None, ["а"], {"bits_per_char": 2.50})["export_bits_per_char"] == 2.505
