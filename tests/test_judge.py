"""``kind: judge``: verdicts parsed, never guessed; both orders combined so position bias cancels;
rates with bootstrap intervals; and the whole mechanics with the bundled 270M as the judge (its
verdicts mean nothing; every prompt, raw verdict and count must still be right)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import REPO, write_yaml

FIX = REPO / "tests" / "fixtures" / "eval"


@pytest.mark.parametrize(
    ("text", "verdict"),
    [("A", "A"), (" b.", "B"), ("T", "T"), ("Шешім: A", "A"), ("В жауабы жақсы", "B"), ("Т", "T"),
     ("Анық емес", None), ("Бұл", None), ("AB", None), ("", None), ("екеуі де жақсы", None)],
)  # fmt: skip
def test_a_verdict_is_read_from_its_first_letter_or_not_at_all(text: str, verdict: str | None) -> None:
    from kazhpc.evaluation.judge import parse_verdict

    assert parse_verdict(text) == verdict


def test_both_orders_must_agree_for_a_win_or_a_loss() -> None:
    from kazhpc.evaluation.judge import outcome

    assert outcome("A", "B") == "win" and outcome("B", "A") == "loss"
    assert outcome("A", "A") == "tie" and outcome("B", "B") == "tie"  # position bias: cancelled
    assert outcome("T", "A") == "tie" and outcome(None, "B") == "unparsed" and outcome("A", None) == "unparsed"


def test_rates_and_preference_have_bootstrap_intervals_and_unparsed_are_counted_apart() -> None:
    from kazhpc.evaluation.judge import judged_entry

    records = [{"outcome": o} for o in ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2 + ["unparsed"] * 3]
    entry = judged_entry(records, "judge-model", "base")
    extra = entry["extra"]
    assert (entry["n"], extra["unparsed"], entry["chance"]) == (10, 3, 0.5)
    assert (extra["win_rate"], extra["tie_rate"], extra["loss_rate"]) == (0.6, 0.2, 0.2)
    assert entry["score"] == pytest.approx(0.7)  # win + tie / 2
    low, high = extra["preference_ci95"]
    assert low < 0.7 < high and 0.0 < entry["stderr"] < 0.2
    none = judged_entry([{"outcome": "unparsed"}], "j", "base")
    assert none["n"] == 0 and none["extra"]["win_rate"] is None and none["extra"]["unparsed"] == 1


@pytest.mark.slow
def test_the_bundled_model_judges_two_models_in_both_orders(tmp_path: Path, model_cache: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.evaluation.job import run_part
    from kazhpc.evaluation.judge import RUBRIC
    from kazhpc.evaluation.sharding import merge

    path = write_yaml(tmp_path / "j.yaml", f"""
        name: judging
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp_path / 'runs'}
        cache_dir: {model_cache}
        tracking: {{enabled: false}}
        evaluate:
          tasks: [{{name: kk_judge, kind: judge, path: {FIX / 'open_kk.jsonl'}, max_gen_toks: 8}}]
          models: [{{label: base}}, {{label: again}}]
          limit: 3
          perplexity_texts: null
        """)
    cfg = load_config(path)
    run_part(cfg, tmp_path / "job", 0, 1)
    results = merge(cfg.evaluate, tmp_path / "job", 1, (cfg.cache_root, cfg.model))
    judged = results["models"]["again"]["tasks"]["kk_judge"]
    assert judged["metric"] == "preference" and judged["chance"] == 0.5
    assert judged["extra"]["judged_against"] == "base" and judged["extra"]["judge"] == "bundled:gemma3-270m"
    assert results["models"]["base"]["tasks"]["kk_judge"]["metric"] == "kazakh"  # the baseline: its answers' facts
    records = [json.loads(x) for x in (tmp_path / "job" / "judge" / "again" / "kk_judge.jsonl").read_text().splitlines()]
    assert len(records) == 3 and judged["n"] + judged["extra"]["unparsed"] == 3
    def pair(ask: str) -> tuple[str, str]:
        a, rest = ask.split("\n\nA жауабы:\n")[1].split("\n\nB жауабы:\n")
        return a, rest.split("\n\nШешіміңіз")[0]

    for r in records:
        first, second = r["judge_prompts"]
        assert first.startswith(RUBRIC) and f"Сұрақ:\n{r['prompt']}\n" in first
        ours, theirs = r["answer"] or "(бос)", r["baseline"] or "(бос)"  # an empty answer is shown as such
        assert pair(first) == (ours, theirs) and pair(second) == (theirs, ours)
        assert len(r["verdicts"]) == 2 and r["outcome"] in ("win", "tie", "loss", "unparsed")
    with pytest.raises(Exception, match="needs its judge model"):
        merge(cfg.evaluate, tmp_path / "job", 1)


def judged_by(tmp: Path, source: str) -> Path:
    """An evaluate-only config whose judge task names ``source`` as its judge."""
    return write_yaml(tmp / "j.yaml", f"""
        name: judging
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp / 'runs'}
        tracking: {{enabled: false}}
        evaluate:
          tasks: [{{name: kk_judge, kind: judge, path: {FIX / 'open_kk.jsonl'}, judge: {{name: judge, source: {source}}}}}]
          models: [{{label: base}}, {{label: again}}]
        """)


def test_a_judge_that_cannot_be_loaded_is_named_at_preflight(tmp_path: Path) -> None:
    from kazhpc.config import load_config
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.job import preflight

    with pytest.raises(KazhpcError, match=r"evaluate.tasks\[kk_judge\].judge.source: .*no-model"):
        preflight(load_config(judged_by(tmp_path, str(tmp_path / "no-model"))))


def test_a_hub_judge_missing_from_the_cache_stops_an_offline_preflight(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from kazhpc.config import load_config
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.job import preflight

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    path = judged_by(tmp_path, "google/gemma-3-27b-it")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    assert any("google/gemma-3-27b-it is not in the local hub cache: the merge downloads it" in w for w in preflight(load_config(path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(KazhpcError, match="not in the local hub cache and HF_HUB_OFFLINE=1"):
        preflight(load_config(path))
