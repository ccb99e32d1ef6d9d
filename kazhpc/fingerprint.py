"""What a job's output was made from, so that a finished part or job is reused only while all of
it is unchanged.

A job's *inputs* are: its config sections (its own section plus ``model`` and ``seed``), the
sha256 of every local file or folder those sections name (and any extra files the job declares,
e.g. preprocess's decontamination files, which come from the evaluate section), and the
fingerprints of the earlier jobs whose outputs it reads. The *fingerprint* is a hash of all of
that. Part markers and manifests store both, so a mismatch can say which input changed: an
appended row in a source file reruns the parts that read it, and with them every job downstream.

Hub data sets and hub model ids are fingerprinted by their id and revision only (their bytes are
not here to hash).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

#: Top-level config keys every job's output depends on, besides its own section.
SHARED_KEYS = ("model", "seed")

_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """sha256 of a file (cached per process by path, size and mtime: a manifest check hashes a
    big source once, not once per part)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        _digests[key] = digest.hexdigest()
    return _digests[key]


def folder_digest(path: Path) -> str:
    """A folder (a local hub copy, a model directory of many GB): every file's relative path,
    size and modification time. Not its bytes: hashing a 27B checkpoint before each job would
    cost minutes, and a folder's files are replaced, not edited in place."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.relative_to(path)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return "stat:" + digest.hexdigest()


def path_digest(path: str) -> str | None:
    """The digest of a local file or folder, or None when ``path`` names neither."""
    local = Path(path)
    if local.is_file():
        return file_digest(local)
    if local.is_dir():
        return folder_digest(local)
    return None


def named_paths(data: Any) -> list[str]:
    """Absolute paths named anywhere in a config section (strings that start with '/')."""
    found: list[str] = []
    if isinstance(data, dict):
        for value in data.values():
            found += named_paths(value)
    elif isinstance(data, list):
        for value in data:
            found += named_paths(value)
    elif isinstance(data, str) and data.startswith("/"):
        found.append(data)
    return found


def job_inputs(
    resolved: dict[str, Any], section: str, extra_files: Iterable[str] = (), upstream: dict[str, str] | None = None
) -> dict[str, Any]:
    """The inputs of the job whose config section is ``section`` (``resolved``: the resolved
    config as a dict): config section hashes, file digests, upstream fingerprints."""
    config = {key: _hash(resolved.get(key)) for key in (section, *SHARED_KEYS)}
    paths = dict.fromkeys([*named_paths(resolved.get(section)), *named_paths(resolved.get("model")), *extra_files])
    files = {path: digest for path in paths if (digest := path_digest(path)) is not None}
    return {"config": config, "files": files, "upstream": dict(upstream or {})}


def fingerprint(inputs: dict[str, Any]) -> str:
    return _hash(inputs)[:16]


def changes(before: dict[str, Any] | None, now: dict[str, Any]) -> list[str]:
    """What differs between two ``job_inputs`` results, in words ('file X changed', ...)."""
    if not before:
        return ["no record of its inputs (made by an older kazhpc)"]
    said: list[str] = []
    for key, digest in now["config"].items():
        if before.get("config", {}).get(key) != digest:
            said.append(f"config section '{key}' changed")
    old_files = before.get("files", {})
    for path, digest in now["files"].items():
        if path not in old_files:
            said.append(f"{path} is a new input")
        elif old_files[path] != digest:
            said.append(f"{path} changed (sha256 {old_files[path][:12]} -> {digest[:12]})")
    said += [f"{path} is gone" for path in old_files if path not in now["files"]]
    for job, value in now["upstream"].items():
        if before.get("upstream", {}).get(job) != value:
            said.append(f"the '{job}' job it reads was redone with other inputs")
    return said


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
