"""Configs: validation errors that say what and where, overrides, composition, the CLI's exit codes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import CONFIGS, REPO, write_yaml
from kazhpc.config import PipelineConfig, flatten, load_config
from kazhpc.errors import ConfigError

MINIMAL = """
name: t
jobs: [prepare-model]
model:
  name: tiny
  source: bundled:gemma3-270m
"""


def error_of(path: Path, overrides: list[str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides or [])
    return str(info.value)


# -- errors -------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.yaml") == f"{tmp_path / 'nope.yaml'}: config file not found"


def test_malformed_yaml_names_line(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "bad.yaml", "name: t\njobs: [prepare-model\nmodel: x\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: malformed YAML")


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "list.yaml", "- a\n- b\n")
    assert "expected a mapping" in error_of(path)


def test_unknown_top_level_key_suggests(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", MINIMAL + "prepare_modle:\n  max_length: 3\n")
    assert error_of(path) == f"{path}:6: prepare_modle: unknown key (did you mean 'prepare_model'?)"


def test_unknown_nested_key_suggests(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", MINIMAL + "  dtpye: float32\n")
    assert error_of(path) == f"{path}:6: model.dtpye: unknown key (did you mean 'dtype'?)"


def test_unknown_key_without_close_match(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "typo.yaml", MINIMAL + "zzzqqq: 1\n")
    message = error_of(path)
    assert message.endswith("zzzqqq: unknown key") and "did you mean" not in message


def test_wrong_type(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "type.yaml", MINIMAL + "prepare_model:\n  max_length: lots\n")
    message = error_of(path)
    assert message.startswith(f"{path}:7: prepare_model.max_length: Input should be a valid integer")
    assert "(got 'lots')" in message


def test_out_of_range_value(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "neg.yaml", MINIMAL + "prepare_model:\n  batch_size: 0\n")
    assert "prepare_model.batch_size: Input should be greater than 0" in error_of(path)


def test_missing_required_key(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "nomodel.yaml", "name: t\njobs: [prepare-model]\n")
    assert error_of(path) == f"{path}: model: required key is missing"


def test_unknown_job_suggests(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "job.yaml", MINIMAL.replace("[prepare-model]", "[prepare-modle]"))
    assert "unknown job 'prepare-modle' (did you mean 'prepare-model'?)" in error_of(path)


def test_duplicate_job(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "job.yaml", MINIMAL.replace("[prepare-model]", "[prepare-model, prepare-model]"))
    assert "job listed twice: prepare-model" in error_of(path)


def test_more_errors_are_counted(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "two.yaml", MINIMAL + "aaa: 1\nbbb: 2\n")
    assert error_of(path).endswith("(+1 more error)")


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_parse_yaml_values(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", MINIMAL)
    cfg = load_config(path, ["prepare_model.max_length=64", "tracking.enabled=false", "model.dtype=float32"])
    assert cfg.prepare_model.max_length == 64
    assert cfg.tracking.enabled is False
    assert cfg.model.dtype == "float32"


def test_override_errors_name_the_override(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", MINIMAL)
    assert error_of(path, ["model.dtpye=float32"]) == (
        "override 'model.dtpye=float32': model.dtpye: unknown key (did you mean 'dtype'?)"
    )
    assert error_of(path, ["no_equals_sign"]) == "override 'no_equals_sign': expected key.path=value"
    assert "model.name is not a section" in error_of(path, ["model.name.x=1"])


def test_override_replaces_fragment(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "pipelines" / "smoke.yaml", ["model=gemma3-4b", "model.dtype=float16"])
    assert cfg.model.name == "gemma3-4b"
    assert cfg.model.source == "google/gemma-3-4b-pt"
    assert cfg.model.dtype == "float16"


# -- composition ----------------------------------------------------------------------------------


def test_fragment_by_name_and_unknown_fragment(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "pipelines" / "smoke.yaml")
    assert cfg.model.source == "bundled:gemma3-270m"
    path = write_yaml(tmp_path / "configs" / "pipelines" / "p.yaml", "name: t\njobs: [prepare-model]\nmodel: gemma3-4bb\n")
    write_yaml(tmp_path / "configs" / "models" / "gemma3-4b.yaml", "name: g\nsource: google/gemma-3-4b-pt\n")
    message = error_of(path)
    assert message.startswith(f"{path}:3: model: no fragment 'gemma3-4bb'")
    assert "(did you mean 'gemma3-4b'?)" in message


def test_include_merges_and_own_keys_win(tmp_path: Path) -> None:
    write_yaml(tmp_path / "base.yaml", MINIMAL + "seed: 7\nprepare_model:\n  max_length: 99\n  batch_size: 3\n")
    path = write_yaml(tmp_path / "child.yaml", "include: base.yaml\nname: child\nprepare_model:\n  batch_size: 5\n")
    cfg = load_config(path)
    assert (cfg.name, cfg.seed) == ("child", 7)
    assert (cfg.prepare_model.max_length, cfg.prepare_model.batch_size) == (99, 5)


def test_nested_include_and_errors_point_into_the_fragment(tmp_path: Path) -> None:
    write_yaml(tmp_path / "frag" / "m.yaml", "name: m\nsource: bundled:gemma3-270m\nattn: eager\n")
    path = write_yaml(tmp_path / "p.yaml", "name: t\njobs: [prepare-model]\nmodel:\n  include: frag/m.yaml\n")
    message = error_of(path)
    assert message == f"{tmp_path / 'frag' / 'm.yaml'}:3: model.attn: unknown key (did you mean 'attn_implementation'?)"


def test_include_cycle(tmp_path: Path) -> None:
    write_yaml(tmp_path / "a.yaml", "include: b.yaml\n")
    path = write_yaml(tmp_path / "b.yaml", "include: a.yaml\n")
    assert "include cycle" in error_of(path)


def test_missing_include(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "p.yaml", "include: gone.yaml\n")
    # named where it is included (file:line, key), then by its own path
    assert error_of(path) == f"{path}:1: include: {tmp_path / 'gone.yaml'}: config file not found"


# -- resolved config ------------------------------------------------------------------------------


def test_paths_become_absolute_and_hash_is_stable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path = write_yaml(tmp_path / "c.yaml", MINIMAL + "runs_root: out/runs\n")
    first = load_config(path)
    assert first.runs_root == tmp_path / "out" / "runs"
    assert load_config(path).config_hash() == first.config_hash()
    assert load_config(path, ["seed=2"]).config_hash() != first.config_hash()
    # The resolved config round-trips: what a SLURM job receives validates to the same config.
    from kazhpc.config import dump_yaml

    again = load_config(write_yaml(tmp_path / "resolved.yaml", dump_yaml(first)))
    assert again == first


def test_home_and_variables_in_paths_are_expanded_once_at_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """kazhpc expands ~ and $VAR itself, so the path validated is the path every job (and the
    datasets loader, which would expand a $ again) opens; an unset variable is an error."""
    monkeypatch.setenv("KAZHPC_TEST_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    text = MINIMAL + textwrap.dedent("""
        preprocess:
          sources:
            - {name: a, kind: muri-it, path: $KAZHPC_TEST_DATA/a.jsonl}
            - {name: b, kind: muri-it, path: ~/b.jsonl}
            - {name: c, kind: muri-it, hub: "${KAZHPC_TEST_DATA}/folder"}
        evaluate:
          data_overrides: {kk_dastur_mc: $KAZHPC_TEST_DATA/d.jsonl}
        runs_root: $KAZHPC_TEST_DATA/runs
        """)
    cfg = load_config(write_yaml(tmp_path / "c.yaml", text))
    assert [s.path or s.hub for s in cfg.preprocess.sources] == [
        str(tmp_path / "data" / "a.jsonl"), str(tmp_path / "home" / "b.jsonl"), str(tmp_path / "data" / "folder")]
    assert cfg.evaluate.data_overrides == {"kk_dastur_mc": str(tmp_path / "data" / "d.jsonl")}
    assert cfg.runs_root == tmp_path / "data" / "runs"
    monkeypatch.delenv("KAZHPC_TEST_DATA")
    path = tmp_path / "c.yaml"
    assert error_of(path) == (
        f"{path}:14: runs_root: environment variable $KAZHPC_TEST_DATA is not set; "
        "set it, or write the path out (got '$KAZHPC_TEST_DATA/runs') (+3 more errors)"
    )


def test_max_steps_is_a_positive_count_or_minus_one_for_epochs(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", MINIMAL)
    assert load_config(path).train.max_steps == -1  # the default: train for `epochs`
    assert load_config(path, ["train.max_steps=3"]).train.max_steps == 3
    for steps in (-5, 0):
        assert error_of(path, [f"train.max_steps={steps}"]) == (
            f"override 'train.max_steps={steps}': train.max_steps: expected a positive number of optimizer steps, "
            f"or -1 to train for `epochs` (got {steps})"
        )


def test_evaluate_task_entries_are_reported_as_written(tmp_path: Path) -> None:
    """A mapping in evaluate.tasks is an mc/translation builder: its errors name its own keys, not
    the other member of `str | EvalTaskConfig` ('tasks.0.str: Input should be a valid string')."""
    path = write_yaml(tmp_path / "c.yaml", MINIMAL + textwrap.dedent("""
        evaluate:
          tasks:
            - kk_dastur_mc
            - {name: copa, kind: mc, path: copa.jsonl, colums: {question: premise}}
        """))
    assert error_of(path) == f"{path}:8: evaluate.tasks.1.colums: unknown key (did you mean 'columns'?)"
    task = "evaluate.tasks=[{name: copa, kind: mc, path: copa.jsonl, columns: {%s}}]"
    for columns, message in [
        ("questoin: premise", "columns.questoin: unknown field (did you mean 'question'?); mc maps question, choices, answer"),
        ("answer: [a, b]", "columns.answer: expected one column name, got a list"),
        ("choices: [choice1]", "columns.choices: a list names two or more different columns, one per choice"),
    ]:
        assert error_of(path, [task % columns]).endswith(f"evaluate.tasks.0: {message}")
    assert error_of(path, ["evaluate.tasks=[{name: t, kind: translation, path: t.jsonl, columns: {kz: Kazakh}}]"]).endswith(
        "evaluate.tasks.0: columns.kz: unknown field; translation maps kk, en")
    assert error_of(path, ["evaluate.tasks=[{name: t, kind: translation, path: t.jsonl, answer_format: index}]"]).endswith(
        "evaluate.tasks.0: answer_format is for kind: mc")
    assert error_of(path, ["evaluate.tasks=[7]"]).endswith("evaluate.tasks.0: Input should be a valid dictionary "
                                                           "or instance of EvalTaskConfig (got 7)")


def test_flatten() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2], "f": {}}) == {"a.b": 1, "a.c.d": "x", "e": [1, 2], "f": {}}


def test_every_shipped_config_validates() -> None:
    for path in sorted((CONFIGS / "pipelines").glob("*.yaml")):
        assert isinstance(load_config(path), PipelineConfig)
    for model in sorted((CONFIGS / "models").glob("*.yaml")):
        load_config(CONFIGS / "pipelines" / "smoke.yaml", [f"model={model.stem}"])


# -- the CLI: exit code 2 and one line, no traceback ----------------------------------------------


def kazhpc(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kazhpc.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_cli_validate_smoke_ok() -> None:
    result = kazhpc("validate", "configs/pipelines/smoke.yaml")
    assert result.returncode == 0, result.stderr
    assert "source: bundled:gemma3-270m" in result.stdout
    assert "ok: configs/pipelines/smoke.yaml" in result.stdout


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "config file not found"),
        ("name: t\njobs: [x\n", "malformed YAML"),
        (MINIMAL + "prepare_modle: {}\n", "prepare_modle: unknown key (did you mean 'prepare_model'?)"),
        (MINIMAL + "seed: many\n", "seed: Input should be a valid integer"),
    ],
    ids=["missing", "malformed", "unknown-key", "wrong-type"],
)
def test_cli_errors_exit_2_with_one_line(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "c.yaml"
    if content is not None:
        write_yaml(path, content)
    result = kazhpc("validate", str(path))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {path}") and expected in lines[0]
    assert "Traceback" not in result.stderr


def test_cli_preflight_catches_bad_model_source(tmp_path: Path) -> None:
    path = write_yaml(tmp_path / "c.yaml", MINIMAL.replace("bundled:gemma3-270m", "bundled:gemma9"))
    result = kazhpc("validate", str(path))
    assert result.returncode == 2
    assert "unknown bundled model" in result.stderr and "Traceback" not in result.stderr
