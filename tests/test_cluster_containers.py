"""The container recipes: the Apptainer .def parses (spython) and installs exactly what the Dockerfile
installs, from the one pinned requirement list, which pins every dependency kazhpc declares.

Apptainer cannot run on these machines; containers/docker-smoke.sh runs a job in Docker for real."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from conftest import REPO

CONTAINERS = REPO / "containers"


def _def_recipe():
    from spython.main.parse.parsers import SingularityParser

    (recipe,) = SingularityParser(str(CONTAINERS / "kazhpc.def")).recipe.values()
    return recipe


def _docker_recipe():
    from spython.main.parse.parsers import DockerParser

    (recipe,) = DockerParser(str(CONTAINERS / "Dockerfile")).recipe.values()
    return recipe


def _pip_pins(lines: list[str]) -> dict[str, str]:
    """name → version of every `pip install name==version` in a recipe's install steps."""
    pins = {}
    for line in lines:
        for name, version in re.findall(r"pip install [^&]*?([A-Za-z0-9_.-]+)==([0-9][^\s\\]*)", line):
            pins[name.lower()] = version
    return pins


def _requirements() -> dict[str, str]:
    pins = {}
    for line in (CONTAINERS / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"containers/requirements.txt: {line!r} is not pinned with =="
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    return pins


def test_def_parses_and_builds_from_the_same_base_and_files_as_the_dockerfile() -> None:
    apptainer, docker = _def_recipe(), _docker_recipe()
    assert apptainer.fromHeader == docker.fromHeader
    def_files = {tuple(f.split()) for f in apptainer.files}
    docker_files = {(src, dst if not dst.endswith("/") else dst + Path(src).name) for src, dst in docker.files}
    assert def_files == docker_files
    assert ("containers/requirements.txt", "/opt/kazhpc/containers/requirements.txt") in def_files
    assert {"kazhpc", "jobs", "configs"} <= {Path(src).name for src, _ in def_files}  # jobs/ for the SLURM steps
    env = lambda recipe: {kv.split("=")[0]: kv.split("=")[1] for e in recipe.environ for kv in e.split()}  # noqa: E731
    assert env(apptainer)["KAZHPC_CACHE"] == env(docker)["KAZHPC_CACHE"]


def test_both_recipes_install_the_same_pinned_requirements() -> None:
    apptainer, docker = _def_recipe(), _docker_recipe()
    for recipe in (apptainer, docker):
        assert any("pip install" in l and "-r /opt/kazhpc/containers/requirements.txt" in l for l in recipe.install)
    assert _pip_pins(apptainer.install) == _pip_pins(docker.install) != {}
    pinned = _requirements()
    for name, version in _pip_pins(apptainer.install).items():
        if name in pinned:  # installed first (deepspeed needs torch) but at the list's version
            assert pinned[name] == version, (name, version, pinned[name])


def test_requirements_pin_every_declared_dependency_at_or_above_its_bound() -> None:
    from packaging.requirements import Requirement

    pinned = _requirements()
    images = _pip_pins(_def_recipe().install)
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for spec in project:
        requirement = Requirement(spec)
        name = re.sub(r"[-_.]+", "-", requirement.name).lower()
        version = pinned.get(name) or images.get(name)
        assert version, f"{name} is a kazhpc dependency but containers/requirements.txt does not pin it"
        assert requirement.specifier.contains(version, prereleases=True), (spec, version)


def test_def_converts_to_a_dockerfile() -> None:
    """spython's writer (what `spython recipe kazhpc.def` does): FROM, the files and the installs survive."""
    from spython.main.parse.writers import DockerWriter

    from spython.main.parse.parsers import SingularityParser

    text = DockerWriter(SingularityParser(str(CONTAINERS / "kazhpc.def")).recipe).convert()
    assert "FROM python:3.11-slim-bookworm" in text
    assert "pip install --no-cache-dir -r /opt/kazhpc/containers/requirements.txt" in text
    assert "ADD jobs /opt/kazhpc/jobs" in text or "COPY jobs /opt/kazhpc/jobs" in text


@pytest.mark.parametrize("runtime", ["apptainer", "docker"])
def test_build_script_builds_from_the_repository_root(runtime: str) -> None:
    result = subprocess.run(["bash", str(CONTAINERS / "build.sh"), runtime], capture_output=True, text=True,
                            cwd="/", env={**os.environ, "KAZHPC_DRY_RUN": "1"}, timeout=60)
    assert result.returncode == 0, result.stderr
    expected = {"apptainer": "+ apptainer build --force kazhpc-0.1.0.sif containers/kazhpc.def",
                "docker": "+ docker build -f containers/Dockerfile --label org.kazhpc.version=0.1.0 -t kazhpc:0.1.0 ."}
    assert result.stdout.strip() == expected[runtime]


def test_scripts_are_valid_bash() -> None:
    for script in sorted(CONTAINERS.glob("*.sh")):
        check = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert check.returncode == 0, f"{script}: {check.stderr}"
