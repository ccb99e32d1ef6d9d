"""Fault suite: run directories. Stale outputs, resuming, broken state files, Ctrl-C, status.

One small preprocess-only pipeline (a 4-row muri-it file, tracking off) stands for every job:
reuse and its fingerprints are the runner's, the same for all of them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from faults import KAZHPC, REPO, assert_one_line_error, cli, kazhpc, one_job_pipeline

pytestmark = pytest.mark.slow  # the real Gemma-3 tokenizer formats every row

ROWS = [
    ("Абай Құнанбайұлы кім болған?", "Абай Құнанбайұлы — қазақтың ұлы ақыны, ойшылы және ағартушысы болған адам."),
    ("Наурыз мейрамы қашан тойланады?", "Наурыз мейрамы Қазақстанда жыл сайын наурыздың жиырма бірі мен жиырма үші аралығында тойланады."),
    ("Киіз үй неден тұрады?", "Киіз үйдің қаңқасы кереге, уық және шаңырақтан тұрады, ал сырты киізбен жабылады."),
    ("Домбыра деген не?", "Домбыра — екі ішекті қазақтың ұлттық музыкалық аспабы, күй мен ән сүйемелдеуге қолданылады."),
]
MORE = [
    ("Алматы қаласы қай жерде орналасқан?", "Алматы қаласы Іле Алатауының етегінде, Қазақстанның оңтүстік-шығысында орналасқан."),
    ("Бәйтерек монументі қайда тұр?", "Бәйтерек монументі Астана қаласының орталығында, Есіл өзенінің сол жағалауында тұр."),
]


def write_rows(path: Path, rows: list[tuple[str, str]], append: bool = False) -> None:
    with path.open("a" if append else "w", encoding="utf-8") as out:
        for q, a in rows:
            out.write(json.dumps({"input": q, "output": a, "dataset_name": "faults"}, ensure_ascii=False) + "\n")


def make_config(tmp: Path, model_cache: Path) -> Path:
    write_rows(tmp / "muri.jsonl", ROWS)
    return one_job_pipeline(tmp / "pipeline.yaml", "faults", "preprocess", tmp, model_cache, f"""
        preprocess:
          sources: [{{name: muri, kind: muri-it, path: {tmp / 'muri.jsonl'}}}]
          cleaning: {{min_answer_words: 3, language_id: {{enabled: false}}, dedup: {{near: false}}}}
          validation_fraction: 0.0
    """)


def rows_kept(run_dir: Path) -> int:
    return sum(pq.read_metadata(p).num_rows for p in (run_dir / "preprocess").glob("train-*.parquet"))


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "preprocess" / "manifest.json").read_text())


@pytest.fixture
def fresh_run(tmp_path: Path, model_cache: Path) -> tuple[Path, Path]:
    """(config, run directory) of a completed preprocess-only run."""
    config = make_config(tmp_path, model_cache)
    outcome = cli("run", str(config))
    assert outcome.code == 0, outcome.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert rows_kept(run_dir) == len(ROWS)
    return config, run_dir


def test_appended_rows_rerun_the_stage_on_resume(fresh_run: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    config, run_dir = fresh_run
    write_rows(config.parent / "muri.jsonl", MORE, append=True)
    outcome = cli("run", "--run-dir", str(run_dir))
    assert outcome.code == 0, outcome.stderr[-3000:]
    assert rows_kept(run_dir) == len(ROWS) + len(MORE)  # the new rows are in, not silently missing
    m = manifest(run_dir)
    assert m["per_source"]["muri"]["rows_read"] == len(ROWS) + len(MORE)
    assert "muri.jsonl changed (sha256" in caplog.text


def test_appended_rows_rerun_a_finished_part(fresh_run: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    config, run_dir = fresh_run
    assert cli("preprocess", "--run-dir", str(run_dir), "--shard", "0/1").code == 0  # an array task's part
    write_rows(config.parent / "muri.jsonl", MORE, append=True)
    assert cli("preprocess", "--run-dir", str(run_dir)).code == 0  # the merge: the part is stale
    assert rows_kept(run_dir) == len(ROWS) + len(MORE)
    assert "preprocess part 0/1: made from other inputs, rerun" in caplog.text


def test_unchanged_stage_is_reused_and_force_redoes_it(fresh_run: tuple[Path, Path], caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO")
    _, run_dir = fresh_run
    first = manifest(run_dir)
    assert cli("run", "--run-dir", str(run_dir)).code == 0
    assert manifest(run_dir) == first  # not rewritten
    assert "job preprocess: completed earlier from the same inputs: reused" in caplog.text
    caplog.clear()
    assert cli("run", "--run-dir", str(run_dir), "--force").code == 0
    assert "preprocess part 0/1: 4 candidates" in caplog.text and ": reused" not in caplog.text  # redone, parts too
    assert manifest(run_dir)["fingerprint"] == first["fingerprint"]


def test_run_dir_alone_needs_no_config_and_takes_no_overrides(fresh_run: tuple[Path, Path]) -> None:
    _, run_dir = fresh_run
    assert_one_line_error(cli("run", "--run-dir", str(run_dir), "seed=7"), "overrides are not allowed")
    assert_one_line_error(cli("run"), "give a pipeline CONFIG, or --run-dir")


def test_other_config_on_a_run_dir_says_what_to_do(fresh_run: tuple[Path, Path]) -> None:
    config, run_dir = fresh_run
    line = assert_one_line_error(cli("run", str(config), "seed=7", "--run-dir", str(run_dir)), str(run_dir))
    assert "--run-dir alone" in line
    assert cli("run", "--run-dir", str(run_dir)).code == 0  # ... and that advice works


@pytest.mark.parametrize("content", ["", '{"jobs": {"preprocess": {"status": "COMPL'])
def test_broken_run_json_is_one_line(fresh_run: tuple[Path, Path], content: str) -> None:
    _, run_dir = fresh_run
    (run_dir / "run.json").write_text(content)
    for args in (("run", "--run-dir", str(run_dir)), ("status", str(run_dir))):
        line = assert_one_line_error(cli(*args), str(run_dir / "run.json"))
        assert ("is empty" in line) if not content else ("not valid JSON" in line)


def test_broken_manifest_is_one_line(fresh_run: tuple[Path, Path]) -> None:
    _, run_dir = fresh_run
    (run_dir / "preprocess" / "manifest.json").write_text('{"job": "prepro')
    assert_one_line_error(cli("run", "--run-dir", str(run_dir)), "manifest.json", "not valid JSON")


def test_status_of_a_local_run(fresh_run: tuple[Path, Path]) -> None:
    _, run_dir = fresh_run
    outcome = cli("status", str(run_dir))
    assert outcome.code == 0, outcome.stderr
    assert "preprocess  COMPLETED" in outcome.stdout and "all jobs completed" in outcome.stdout
    state = json.loads((run_dir / "run.json").read_text())
    state["jobs"]["preprocess"].update(status="RUNNING", pid=2**22 + 12345)  # a process that is gone
    (run_dir / "run.json").write_text(json.dumps(state))
    outcome = cli("status", str(run_dir))
    assert outcome.code == 1 and "LOST" in outcome.stdout
    assert f"resume with: kazhpc run --run-dir {run_dir}" in outcome.stdout


def test_status_of_a_folder_that_is_no_run(tmp_path: Path) -> None:
    assert_one_line_error(cli("status", str(tmp_path)), str(tmp_path), "not a kazhpc run directory")


def test_ctrl_c_names_the_job_and_how_to_resume(tmp_path: Path, model_cache: Path) -> None:
    config = make_config(tmp_path, model_cache)
    proc = subprocess.Popen([KAZHPC, "run", str(config)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "COLUMNS": "80"})
    deadline = time.time() + 120
    run_json = None
    while time.time() < deadline and proc.poll() is None:  # wait until the job is under way
        found = list((tmp_path / "runs").glob("*/run.json")) if (tmp_path / "runs").is_dir() else []
        if found and '"RUNNING"' in found[0].read_text():
            run_json = found[0]
            break
        time.sleep(0.05)
    assert run_json is not None, "the job never started"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    run_dir = run_json.parent
    from faults import Outcome

    line = assert_one_line_error(Outcome(proc.returncode, stdout, stderr), "interrupted: job preprocess of", code=130)
    assert line.endswith(f"resume with: kazhpc run --run-dir {run_dir}")
    assert json.loads(run_json.read_text())["jobs"]["preprocess"]["status"] == "INTERRUPTED"
    assert cli("run", "--run-dir", str(run_dir)).code == 0  # the command it printed resumes the run
    assert rows_kept(run_dir) == len(ROWS)


def test_plan_table_is_never_cut_when_piped() -> None:
    outcome = kazhpc("plan", "configs/pipelines/smoke.yaml", env={"COLUMNS": "40"})
    assert outcome.code == 0, outcome.stderr[-2000:]
    assert "…" not in outcome.stdout
    assert "gemma3-270m" in outcome.stdout and "max batch" in outcome.stdout


def test_long_paths_in_errors_are_not_wrapped(tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-folder-name-" * 6) / "pipeline.yaml"
    line = assert_one_line_error(kazhpc("validate", str(deep)), str(deep))
    assert line.startswith("error:")


def test_upstream_redone_with_other_inputs_reruns_downstream(tmp_path: Path) -> None:
    """The train job's inputs hold preprocess's fingerprint: a preprocess redone from another file
    makes train stale; one redone from the same inputs does not."""
    from kazhpc.config import load_config
    from kazhpc.runner import inputs_of

    cfg = load_config(REPO / "configs" / "pipelines" / "smoke.yaml", [f"runs_root={tmp_path}"])
    run_dir = tmp_path / "run"
    (run_dir / "preprocess").mkdir(parents=True)
    (run_dir / "preprocess" / "manifest.json").write_text(json.dumps({"fingerprint": "aaaa"}))
    before = inputs_of(cfg, run_dir, "train")
    assert inputs_of(cfg, run_dir, "train") == before
    (run_dir / "preprocess" / "manifest.json").write_text(json.dumps({"fingerprint": "bbbb"}))
    from kazhpc.fingerprint import changes

    assert changes(before, inputs_of(cfg, run_dir, "train")) == ["the 'preprocess' job it reads was redone with other inputs"]
    shutil.rmtree(run_dir)
