"""Uploading a checked export to the Hugging Face Hub (``export.push_to_hub: owner/name``).

Only after the fresh-process check passed: a broken folder never leaves the cluster. Compute
nodes are usually offline (HF_HUB_OFFLINE=1 in the cluster profiles), so the stage says so before
the model loads rather than after an hour of merging; run ``kazhpc export`` on a login node then.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from kazhpc.errors import KazhpcError

log = logging.getLogger(__name__)


def offline_reason() -> str | None:
    """Why an upload cannot work from here, or None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{name}={os.environ[name]} here (compute nodes are offline); run kazhpc export on a node with network"
    return None


def push(folder: Path, repo: str, private: bool, message: str) -> dict[str, Any]:
    """Create ``repo`` (if needed) and upload ``folder``; the commit's url and revision."""
    from huggingface_hub import HfApi

    reason = offline_reason()
    if reason:
        raise KazhpcError(f"export.push_to_hub: {repo}: {reason}")
    api = HfApi()
    try:
        api.create_repo(repo_id=repo, private=private, exist_ok=True, repo_type="model")
        commit = api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model", commit_message=message)
    except Exception as exc:  # HTTP, auth, network: one line that names the repository
        raise KazhpcError(f"export.push_to_hub: {repo}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    log.info("uploaded %s to https://huggingface.co/%s", folder, repo)
    return {"repo": repo, "url": str(getattr(commit, "commit_url", "")), "revision": str(getattr(commit, "oid", ""))}
