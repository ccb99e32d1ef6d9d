"""The fault suite's two ways to run kazhpc, and its one assertion about errors.

A fault case feeds kazhpc bad input (or breaks something under it) and checks what a person at
the terminal sees: the exit status, one line that says what and where, no traceback, and that
nothing was lost. ``cli`` runs a command in this process (typer's runner: milliseconds, for
validate-level cases); ``kazhpc`` runs the real console script in a subprocess (for signals,
exit codes of jobs and anything that must see a fresh interpreter).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
KAZHPC = str(Path(sys.executable).parent / "kazhpc")


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str

    @property
    def error_lines(self) -> list[str]:
        """The lines of stderr that are not log records (what a person reads as the error)."""
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return [line for line in lines if " WARNING " not in line and " INFO " not in line]


def cli(*args: str, cwd: Path = REPO) -> Outcome:
    """``kazhpc ARGS`` in this process (exceptions that escape are re-raised, as a bug would be)."""
    from typer.testing import CliRunner

    from kazhpc.cli import app

    old = Path.cwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return Outcome(result.exit_code, result.stdout, result.stderr)


def kazhpc(*args: str, cwd: Path = REPO, timeout: float = 600, env: dict[str, str] | None = None) -> Outcome:
    """The real ``kazhpc`` console script in a subprocess."""
    full_env = {**os.environ, "COLUMNS": "80", **(env or {})}
    result = subprocess.run([KAZHPC, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    return Outcome(result.returncode, result.stdout, result.stderr)


def one_job_pipeline(path: Path, name: str, job: str, tmp: Path, model_cache: Path, sections: str) -> Path:
    """A pipeline config of one job on the bundled model, tracking off, runs under ``tmp/runs``;
    ``sections`` is the YAML of the job's own section(s), written at column 0."""
    import textwrap

    path.parent.mkdir(parents=True, exist_ok=True)
    head = (f"name: {name}\njobs: [{job}]\nmodel: gemma3-270m\nruns_root: {tmp / 'runs'}\n"
            f"cache_dir: {model_cache}\ntracking: {{enabled: false}}\n")
    path.write_text(head + textwrap.dedent(sections).lstrip(), encoding="utf-8")
    return path


def assert_one_line_error(outcome: Outcome, *must_contain: str, code: int = 2) -> str:
    """The command failed with ``code`` and one line on stderr, no traceback, naming each of
    ``must_contain`` (file names, keys, row numbers...); returns that line."""
    assert outcome.code == code, f"exit {outcome.code}, expected {code}\nstdout: {outcome.stdout[-2000:]}\nstderr: {outcome.stderr[-4000:]}"
    assert "Traceback" not in outcome.stderr, outcome.stderr[-4000:]
    lines = outcome.error_lines
    assert len(lines) == 1, f"expected one error line, got {len(lines)}:\n" + "\n".join(lines[-20:])
    line = lines[0]
    for text in must_contain:
        assert text in line, f"{text!r} not in the error line: {line}"
    return line
