"""Shared fixtures.

The bundled Gemma-3-270M is converted once per test session into a fresh cache, by two processes
at once (which is itself under test in test_models.py): every model test reads that cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from slurm_cluster import local_slurm  # noqa: F401  (the session fixture for the real local cluster)

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"

#: Two Kazakh conversations (one with a system turn and two answers) for the chat-template tests.
KAZAKH_CHATS = [
    [
        {"role": "user", "content": "Қазақстанның астанасы қай қала?"},
        {"role": "assistant", "content": "Қазақстанның астанасы — Астана қаласы."},
    ],
    [
        {"role": "system", "content": "Сен қазақ тілінде жауап бересің."},
        {"role": "user", "content": "Наурыз қашан тойланады?"},
        {"role": "assistant", "content": "Наурыз мейрамы наурыздың жиырма екінші жұлдызы күні тойланады."},
        {"role": "user", "content": "Рахмет!"},
        {"role": "assistant", "content": "Оқасы жоқ, мерекеңіз құтты болсын!"},
    ],
]

# Tests never reach the hub: real loading code runs on local copies only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The CPU's bf16 speed heads the log: the suite runs the bundled model in bf16, and a CPU with
    no native bf16 (measured up to 150x slower) explains a slow run before any test is read."""
    from kazhpc.models import SLOW_BF16, cpu_bf16_slowdown

    ratio = cpu_bf16_slowdown()
    return [f"cpu: {os.cpu_count()} cores, bf16 matmul {ratio:.2g}x the time of float32"
            + (f" (over {SLOW_BF16:.0f}x: no native bf16, model tests will be slow)" if ratio > SLOW_BF16 else "")]


_MATERIALIZE = textwrap.dedent(
    """
    import json, logging, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO)
    records = []
    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())
    logging.getLogger("kazhpc.models").addHandler(Keep())
    from kazhpc.models import materialize
    started = time.time()
    path = materialize("bundled:gemma3-270m", Path(sys.argv[1]))
    print(json.dumps({"path": path, "converted": any("converting" in m for m in records),
                      "seconds": time.time() - started}))
    """
)


def stage_state(stdout: str, stage: str) -> str | None:
    """A stage's state in the summary table that `kazhpc run` prints (kazhpc.summary)."""
    found = re.search(rf"│ {re.escape(stage)}\s+│ ([A-Z]+)", stdout)
    return found.group(1) if found else None


def write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def concurrent_materialization(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two processes materialise the bundled model into one fresh cache at the same moment."""
    cache = tmp_path_factory.mktemp("kazhpc-cache")
    procs = [
        subprocess.Popen([sys.executable, "-c", _MATERIALIZE, str(cache)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=900)
        assert proc.returncode == 0, f"materialisation failed:\n{stderr[-3000:]}"
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return {"cache": cache, "results": results}


@pytest.fixture(scope="session")
def model_cache(concurrent_materialization: dict) -> Path:
    """A cache directory holding the converted bundled Gemma-3-270M."""
    return concurrent_materialization["cache"]


@pytest.fixture(scope="session")
def gemma_tokenizer(model_cache: Path):
    from kazhpc.config import ModelConfig
    from kazhpc.models import load_tokenizer

    return load_tokenizer(ModelConfig(name="gemma3-270m", source="bundled:gemma3-270m"), model_cache)


@pytest.fixture(scope="session")
def gemma_model(model_cache: Path):
    from kazhpc.config import ModelConfig
    from kazhpc.models import load_model

    return load_model(ModelConfig(name="gemma3-270m", source="bundled:gemma3-270m"), model_cache)


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    """`kazhpc run configs/pipelines/smoke.yaml` once per session (every job, on the real model)."""
    runs_root = tmp_path_factory.mktemp("runs")
    kazhpc = str(Path(sys.executable).parent / "kazhpc")
    result = subprocess.run(
        [kazhpc, "run", "configs/pipelines/smoke.yaml", f"runs_root={runs_root}", f"cache_dir={model_cache}"],
        capture_output=True, text=True, cwd=REPO, timeout=1800,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir() and p.name.startswith("smoke-")]
    return {"runs_root": runs_root, "result": result, "run_dir": run_dir}


#: configs/pipelines/kazakh-cpt-sft.yaml at test scale: its stages as shipped, less evaluation work;
#: the extension's K curve asks for more tokens than the corpus supports (test_extend_vocab).
CPT_SFT_SMALL = ["extend_vocab.k_curve=[50, 100000]", "extend_vocab.check_language=false", "evaluate.limit=2",
                 "tokenizers.tokenizers=[gemma3]", "stages.train-sft.with.max_steps=3",
                 "stages.train-cpt.with.max_tokens=1024", "stages.train-cpt.with.save_steps=2",
                 "stages.train-cpt.with.cpt.eval_steps=2",
                 "evaluate.perplexity_texts=null", "evaluate.bootstrap_iters=0"]


@pytest.fixture(scope="session")
def cpt_sft_run(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> dict:
    """`kazhpc run configs/pipelines/kazakh-cpt-sft.yaml` once per session: tokenizers → extend-vocab →
    corpus → train-cpt (4 steps) → preprocess → train-sft → evaluate. The first attempt is preempted
    after CPT step 2 (the in-process drill of kazhpc.train.resume); the second resumes the run."""
    runs_root = tmp_path_factory.mktemp("cpt-sft-runs")
    kazhpc = str(Path(sys.executable).parent / "kazhpc")
    command = [kazhpc, "run", "configs/pipelines/kazakh-cpt-sft.yaml", f"runs_root={runs_root}",
               f"cache_dir={model_cache}", *CPT_SFT_SMALL]
    first = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800,
                           env={**os.environ, "KAZHPC_PREEMPT_AFTER_STEP": "2"})
    assert first.returncode == 75, first.stderr[-4000:]
    (run_dir,) = [p for p in runs_root.iterdir() if p.is_dir() and p.name.startswith("kazakh-cpt-sft-")]
    second = subprocess.run([*command, "--run-dir", str(run_dir)], capture_output=True, text=True, cwd=REPO, timeout=1800)
    assert second.returncode == 0, second.stderr[-4000:]
    manifests = {p.parent.name: json.loads(p.read_text()) for p in run_dir.glob("*/manifest.json")}
    return {"runs_root": runs_root, "run_dir": run_dir, "manifests": manifests, "first": first, "second": second}


@contextlib.contextmanager
def kazhpc_ui(runs_root: Path, config: str = "configs/pipelines/smoke.yaml") -> Iterator[str]:
    """`kazhpc ui` (a real MLflow server) on a run store, once it answers /health; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kazhpc = str(Path(sys.executable).parent / "kazhpc")
    server = subprocess.Popen(
        [kazhpc, "ui", config, f"runs_root={runs_root}", "--port", str(port)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(base + "/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read() if server.stdout else "the MLflow UI exited"
                assert time.time() < deadline, "the MLflow UI did not answer /health in 120 s"
                time.sleep(1)
        # Its first line links the experiment's runs table, not MLflow 3's GenAI landing page.
        printed = server.stdout.readline() if server.stdout else ""
        assert re.search(rf"MLflow UI on {re.escape(base)}/#/experiments/\d+/runs ", printed), printed
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
