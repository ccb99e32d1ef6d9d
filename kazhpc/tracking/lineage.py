"""Datasets and models as MLflow knows them: what a run's page shows as its lineage.

A stage logs every data set it reads or writes (``mlflow.log_input``: name, digest, source, schema,
rows, and its context: ``source``, ``training``, ``validation``, ``evaluation``). The same file
gets the same name and digest in the stage that writes it and in the one that reads it, so MLflow
links preprocess's training split to the train run that used it. A train stage's adapter is an
MLflow model (the transformers flavor, the base model referenced by its local folder, so nothing
is copied or downloaded) and a version of the registered model named after the pipeline; the
evaluate stage tags that version with its scores.

Each is a plain dict first (journaled as it is, so ``sync`` can send it later) and becomes MLflow
entities only when sent; the functions here are the one place that does both, for live logging and
for ``sync``.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

from kazhpc.fingerprint import file_digest as fingerprint_digest

#: Tag that names a model in the journal; the store's logged model and model version carry it.
MODEL_ID_TAG = "kazhpc.model_uid"
CONTEXTS = ("source", "training", "validation", "evaluation", "output")


def file_digest(path: Path) -> str:
    """The first 16 hex digits of a file's sha256 (of a folder: of its files' names and digests)."""
    if path.is_dir():
        inner = "".join(f"{f.relative_to(path)}:{file_digest(f)}" for f in sorted(path.rglob("*")) if f.is_file())
        return hashlib.sha256(inner.encode()).hexdigest()[:16]
    return fingerprint_digest(path)[:16]


def _record(dataset: Any, context: str, rows: int | None) -> dict[str, Any]:
    if context not in CONTEXTS:
        raise ValueError(f"dataset context {context!r}: expected one of {CONTEXTS}")
    entity = dataset._to_mlflow_entity()
    return {
        "name": entity.name, "digest": entity.digest, "source_type": entity.source_type, "source": entity.source,
        "schema": entity.schema, "profile": json.dumps({"num_rows": rows}) if rows is not None else None,
        "context": context,
    }


def _schema(columns: dict[str, str] | None) -> Any:
    from mlflow.types import ColSpec, Schema

    return Schema([ColSpec(kind, name) for name, kind in columns.items()]) if columns else None


def file_dataset(path: Path, context: str, *, name: str | None = None, rows: int | None = None,
                 columns: dict[str, str] | None = None, digest: str | None = None) -> dict[str, Any]:
    """A local file or folder as an MLflow dataset record (``digest``: a sha256 known already)."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset

    with warnings.catch_warnings():  # "can be interpreted in multiple ways": two registered local sources, both fine
        warnings.simplefilter("ignore", UserWarning)
        source = resolve_dataset_source(str(Path(path).absolute()))
    dataset = MetaDataset(source, name=name or Path(path).name, digest=(digest or file_digest(Path(path)))[:16],
                          schema=_schema(columns))
    return _record(dataset, context, rows)


def hub_dataset(hub: str, context: str, *, split: str | None = None, config: str | None = None,
                revision: str | None = None, name: str | None = None, rows: int | None = None) -> dict[str, Any]:
    """A Hugging Face hub data set (by id; nothing is fetched) as an MLflow dataset record."""
    from mlflow.data.huggingface_dataset_source import HuggingFaceDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    source = HuggingFaceDatasetSource(hub, config_name=config, split=split, revision=revision)
    key = f"{hub}|{config}|{split}|{revision}"
    dataset = MetaDataset(source, name=name or hub, digest=hashlib.sha256(key.encode()).hexdigest()[:16])
    return _record(dataset, context, rows)


def http_dataset(url: str, context: str, *, name: str, digest: str) -> dict[str, Any]:
    """A remote file (a hub file's URL, pinned to its commit) as an MLflow dataset record."""
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.meta_dataset import MetaDataset

    return _record(MetaDataset(HTTPDatasetSource(url), name=name, digest=digest[:16]), context, None)


def parquet_columns(path: Path) -> dict[str, str]:
    """A Parquet file's columns with MLflow's type names (nested columns as 'string')."""
    import pyarrow.parquet as pq

    kinds = {"int64": "long", "int32": "integer", "double": "double", "float": "float", "bool": "boolean", "string": "string"}
    return {field.name: kinds.get(str(field.type), "string") for field in pq.read_schema(path)}


def dataset_key(record: dict[str, Any]) -> tuple[str, str, str]:
    return record["name"], record["digest"], record["context"]


def dataset_input(record: dict[str, Any]) -> Any:
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(record["name"], record["digest"], record["source_type"], record["source"],
                      record.get("schema"), record.get("profile"))
    return DatasetInput(dataset, [InputTag("mlflow.data.context", record["context"])])


def stored_datasets(run: Any) -> set[tuple[str, str, str]]:
    """(name, digest, context) of every dataset a run in the store has as input."""
    found = set()
    for item in run.inputs.dataset_inputs if run.inputs else []:
        context = next((t.value for t in item.tags if t.key == "mlflow.data.context"), "")
        found.add((item.dataset.name, item.dataset.digest, context))
    return found


# -- models ------------------------------------------------------------------------------------
def save_transformers_model(model: Any, tokenizer: Any, weights_dir: str, out_dir: Path) -> Path:
    """A model as an MLflow transformers model in ``out_dir``: the tokenizer and chat template, the
    weights referenced by their local folder (not copied, nothing fetched): ``weights_dir`` is the
    base of a PEFT adapter (whose own weights MLflow saves) or the exported model itself."""
    import shutil

    import mlflow.transformers

    shutil.rmtree(out_dir, ignore_errors=True)
    mlflow.transformers.save_model(
        {"model": model, "tokenizer": tokenizer}, str(out_dir), task="text-generation", base_model_path=weights_dir,
        save_pretrained=False,
        # Named, not inferred: inference loads the model again in a subprocess.
        pip_requirements=["torch", "transformers", "peft", "accelerate"],
    )
    return out_dir


def save_merged_model(model: Any, tokenizer: Any, out_dir: Path, card: str) -> Path:
    """A merged model (an export) as an MLflow transformers model in ``out_dir``, weights included:
    MLflow references the weights by folder for adapters only, and its local-checkpoint path fails
    on transformers 5 (task metadata as a string); ``export.register_model: false`` spares the copy.
    ``card``: the export's model card (given, MLflow does not ask the hub for one)."""
    import shutil

    import mlflow.transformers
    from huggingface_hub import ModelCard

    shutil.rmtree(out_dir, ignore_errors=True)
    mlflow.transformers.save_model({"model": model, "tokenizer": tokenizer}, str(out_dir), task="text-generation",
                                   model_card=ModelCard(card), pip_requirements=["torch", "transformers", "accelerate"])
    return out_dir


def find_model(client: Any, experiment_id: str, uid: str) -> Any | None:
    found = client.search_logged_models([experiment_id], filter_string=f"tags.`{MODEL_ID_TAG}` = '{uid}'", max_results=1)
    return found[0] if found else None


def find_version(client: Any, name: str, uid: str) -> Any | None:
    found = client.search_model_versions(f"name = '{name}' and tags.`{MODEL_ID_TAG}` = '{uid}'")
    return found[0] if found else None


def register_model(client: Any, experiment_id: str, run_id: str, record: dict[str, Any]) -> tuple[str, bool]:
    """Log the model folder of a journal ``model`` event as an MLflow logged model of ``run_id`` and
    register it as a version of ``record['name']``, each once (found by its uid otherwise); return
    the version and whether anything was sent."""
    from mlflow.entities import LoggedModelOutput
    from mlflow.exceptions import MlflowException

    uid, tags = record["uid"], {**record["tags"], MODEL_ID_TAG: record["uid"]}
    model, sent = find_model(client, experiment_id, uid), False
    if model is None or str(model.status) != "READY":
        sent = True
        if model is None:
            model = client.create_logged_model(experiment_id, name=record["stage"], source_run_id=run_id, tags=tags,
                                               model_type=record.get("model_type", "peft-adapter"))
        client.log_model_artifacts(model.model_id, record["path"])
        client.finalize_logged_model(model.model_id, "READY")
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, 0)])
    version = find_version(client, record["name"], uid)
    if version is None:
        sent = True
        try:
            client.create_registered_model(record["name"], description="kazhpc models of this pipeline: train stages' adapters, export stages' merged models")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        version = client.create_model_version(record["name"], source=model.artifact_location, run_id=run_id,
                                              tags=tags, model_id=model.model_id)
    return str(version.version), sent


def tag_model(client: Any, name: str, uid: str, tags: dict[str, str]) -> int | None:
    """Set the ``tags`` that the registered version with this uid lacks; return how many (None:
    no such version yet)."""
    version = find_version(client, name, uid)
    if version is None:
        return None
    missing = {k: str(v) for k, v in tags.items() if version.tags.get(k) != str(v)}
    for key, value in missing.items():
        client.set_model_version_tag(name, version.version, key, value)
    return len(missing)
