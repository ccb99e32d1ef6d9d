"""Translation scores: sacrebleu corpus BLEU and chrF++, with their signatures and a bootstrap stderr.

The reference project "corrected" BLEU by subtracting a constant; here BLEU is sacrebleu's corpus
BLEU, unchanged, and every score carries the signature that makes it reproducible.

Tokenization: BLEU uses sacrebleu's ``intl`` tokenizer, not the default ``13a``. ``13a`` splits
only ASCII punctuation, so the guillemets, dashes and ellipses of Kazakh text stay glued to words
(``«Абай`` ≠ ``Абай``) and a correct word counts as a miss; ``intl`` splits all Unicode punctuation
and symbols (``« Абай жолы »``) and on English behaves almost like ``13a``. The signature says
``tok:intl``, so nobody compares it with a ``13a`` figure by accident. chrF++ (character 6-grams
plus word bigrams, ``CHRF(word_order=2)``) needs no tokenizer and suits an agglutinative language,
where a word-level miss often hides a mostly right stem.

Uncertainty: a bootstrap over sentences (1000 resamples by default, numpy ``default_rng`` with
seed 12345, sacrebleu's own default seed) gives the stderr and a 95% percentile interval. It reuses
sacrebleu's per-sentence sufficient statistics, so a resample costs a sum, not a re-tokenization;
with the same resampled indices for two systems it gives a *paired* difference
(:func:`paired_difference`), which the report uses for a model against its baseline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from kazhpc.errors import KazhpcError

if TYPE_CHECKING:
    import numpy as np
    from sacrebleu.metrics.base import Metric

#: BLEU tokenizer (see the module docstring for why not sacrebleu's default 13a).
BLEU_TOKENIZE = "intl"
CHRF_WORD_ORDER = 2
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 12345
#: Corpus-level metrics this module computes, by the name used in results and reports.
CORPUS_METRICS = ("bleu", "chrf")


def _metric(name: str, tokenize: str = BLEU_TOKENIZE) -> Metric:
    from sacrebleu.metrics import BLEU, CHRF

    if name == "bleu":
        return BLEU(tokenize=tokenize)
    if name == "chrf":
        return CHRF(word_order=CHRF_WORD_ORDER)
    raise KazhpcError(f"translation metric '{name}': expected one of {', '.join(CORPUS_METRICS)}")


def check_pairs(hypotheses: Sequence[str], references: Sequence[str], where: str = "translation") -> None:
    """Refuse empty input, mismatched lengths and non-strings before any scoring."""
    if len(hypotheses) != len(references):
        raise KazhpcError(
            f"{where}: {len(hypotheses)} hypotheses but {len(references)} references; they must pair up one to one"
        )
    if not hypotheses:
        raise KazhpcError(f"{where}: no hypotheses and no references to score")
    for kind, texts in (("hypothesis", hypotheses), ("reference", references)):
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise KazhpcError(f"{where}: {kind} {i + 1} is {type(text).__name__}, expected a string")
    empty_refs = [i + 1 for i, ref in enumerate(references) if not ref.strip()]
    if empty_refs:
        raise KazhpcError(f"{where}: reference {empty_refs[0]} is empty ({len(empty_refs)} empty references)")


def _segment_stats(metric: Metric, hypotheses: Sequence[str], references: Sequence[str]) -> np.ndarray:
    import numpy as np

    return np.asarray(metric._extract_corpus_statistics(list(hypotheses), [list(references)]), dtype="float64")


def _resample_scores(
    metric: Metric, stats: Sequence[np.ndarray], resamples: int, seed: int
) -> np.ndarray:
    """Scores of each system on the same bootstrap resamples: shape (resamples, systems)."""
    import numpy as np

    n = len(stats[0])
    rng = np.random.default_rng(seed)
    out = np.empty((resamples, len(stats)))
    for r in range(resamples):
        idx = rng.integers(0, n, size=n)
        for s, system in enumerate(stats):
            out[r, s] = metric._compute_score_from_stats(system[idx].sum(0).tolist()).score
    return out


def score_translations(
    hypotheses: list[str],
    references: list[str],
    *,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    tokenize: str = BLEU_TOKENIZE,
) -> dict[str, Any]:
    """Corpus BLEU and chrF++ (0–100) of ``hypotheses`` against one reference each.

    Returns ``{"bleu", "chrf", "bleu_signature", "chrf_signature", "n"}`` plus, when
    ``bootstrap`` > 1, ``bleu_stderr``/``chrf_stderr`` (std of the bootstrap scores),
    ``bleu_ci95``/``chrf_ci95`` ([low, high] percentiles), ``bootstrap`` and ``bootstrap_seed``.
    Deterministic for a given ``seed``.
    """
    import numpy as np

    check_pairs(hypotheses, references)
    result: dict[str, Any] = {"n": len(hypotheses)}
    for name in CORPUS_METRICS:
        metric = _metric(name, tokenize)
        score = metric.corpus_score(list(hypotheses), [list(references)])
        result[name] = float(score.score)
        result[f"{name}_signature"] = str(metric.get_signature())
        if bootstrap > 1:
            scores = _resample_scores(metric, [_segment_stats(metric, hypotheses, references)], bootstrap, seed)[:, 0]
            result[f"{name}_stderr"] = float(np.std(scores, ddof=1))
            result[f"{name}_ci95"] = [float(np.percentile(scores, 2.5)), float(np.percentile(scores, 97.5))]
    if bootstrap > 1:
        result["bootstrap"] = bootstrap
        result["bootstrap_seed"] = seed
    return result


def paired_difference(
    metric_name: str,
    hypotheses: list[str],
    baseline_hypotheses: list[str],
    references: list[str],
    *,
    bootstrap: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    tokenize: str = BLEU_TOKENIZE,
) -> dict[str, float | int]:
    """A system's corpus score minus a baseline's on the same sentences, by paired bootstrap.

    Both systems are scored on the same resampled sentence indices, so the sentence difficulty
    they share cancels out of the stderr. Returns ``{"diff", "stderr", "ci_low", "ci_high", "n"}``:
    ``diff`` is the difference of the real corpus scores; the interval is the 2.5/97.5 percentiles
    of the resampled differences.
    """
    import numpy as np

    check_pairs(hypotheses, references, where=f"{metric_name} paired difference")
    check_pairs(baseline_hypotheses, references, where=f"{metric_name} paired difference (baseline)")
    metric = _metric(metric_name, tokenize)
    diff = (
        metric.corpus_score(list(hypotheses), [list(references)]).score
        - metric.corpus_score(list(baseline_hypotheses), [list(references)]).score
    )
    stats = [_segment_stats(metric, h, references) for h in (hypotheses, baseline_hypotheses)]
    scores = _resample_scores(metric, stats, max(bootstrap, 2), seed)
    diffs = scores[:, 0] - scores[:, 1]
    return {
        "diff": float(diff),
        "stderr": float(np.std(diffs, ddof=1)),
        "ci_low": float(np.percentile(diffs, 2.5)),
        "ci_high": float(np.percentile(diffs, 97.5)),
        "n": len(references),
    }


def translation_task_entry(scores: dict[str, Any], metric: str = "chrf") -> dict[str, Any]:
    """A :func:`score_translations` result as one task entry of the report's ``results`` dict.

    The headline metric is chrF++ by default (BLEU is noisy on short Kazakh sentences); the other
    metric, both signatures and the bootstrap settings go into ``extra``, where the report finds them.
    """
    if metric not in CORPUS_METRICS:
        raise KazhpcError(f"translation metric '{metric}': expected one of {', '.join(CORPUS_METRICS)}")
    extra = {k: v for k, v in scores.items() if k not in (metric, f"{metric}_stderr", "n")}
    return {
        "metric": metric,
        "score": scores[metric],
        "stderr": scores.get(f"{metric}_stderr"),
        "n": scores["n"],
        "chance": None,
        "higher_is_better": True,
        "extra": extra,
    }
