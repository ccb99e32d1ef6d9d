"""Kazakh IFEval (``kind: ifeval``): lm-eval's strict and loose tests with checks right for Kazakh,
the shipped prompts, and bad prompt files named by file and line before any model loads.

Each Kazakh check is shown next to lm-eval's English one on the same answer where they disagree,
so a test fails if the replacement stops mattering (or stops being used)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def score(ids_kwargs: list[tuple[str, dict]], answer: str, prompt: str = "Сұрақ?") -> dict:
    from kazhpc.evaluation.ifeval import process_results

    doc = {"key": 1, "prompt": prompt, "instruction_id_list": [i for i, _ in ids_kwargs],
           "kwargs": [k for _, k in ids_kwargs]}  # fmt: skip
    return process_results(doc, [answer])


def english(iid: str, kwargs: dict, answer: str) -> bool:
    """lm-eval's own English check of one instruction, for comparison."""
    from lm_eval.tasks.ifeval import instructions_registry

    from kazhpc.evaluation.ifeval import registry

    registry()  # imports lm-eval's IFEval modules offline
    check = instructions_registry.INSTRUCTION_DICT[iid](iid)
    check.build_description(**kwargs)
    return bool(check.check_following(answer))


def test_the_shipped_prompts_are_forty_or_more_valid_rows_with_kazakh_ids() -> None:
    from kazhpc.evaluation.ifeval import builtin_path, check_row, registry

    rows = [json.loads(line) for line in Path(builtin_path()).read_text(encoding="utf-8").splitlines()]
    assert len(rows) >= 40 and len({r["key"] for r in rows}) == len(rows)
    for row in rows:
        check_row(row)
    used = {i for r in rows for i in r["instruction_id_list"]}
    assert {"language:response_language", "change_case:kazakh_capital", "keywords:frequency",
            "length_constraints:number_sentences", "detectable_format:json_format"} <= used  # fmt: skip
    assert used <= set(registry())
    assert sum(r["kwargs"][r["instruction_id_list"].index("language:response_language")]["language"] == "kk"
               for r in rows if "language:response_language" in r["instruction_id_list"]) >= 3  # fmt: skip


def test_words_are_kazhpcs_words_and_sentences_do_not_end_at_abbreviations() -> None:
    from kazhpc.evaluation.ifeval import count_sentences

    answer = "«Абай», Python-да — 2024"  # three words: the dash is none, Python-да is one
    words = ("length_constraints:number_words", {"num_words": 4, "relation": "less than"})
    assert score([words], answer)["prompt_level_strict_acc"] is True
    assert score([("length_constraints:number_words", {"num_words": 3, "relation": "less than"})], answer)[
        "prompt_level_strict_acc"] is False  # fmt: skip
    assert english(*words, answer) is False  # lm-eval's \w+ count makes Python-да two words

    text = "Алма, алмұрт т.б. жемістер бар. Олар пайдалы! «Неге?» деп сұрайсыз ба? 2024 жылы да солай."
    assert count_sentences(text) == 4
    assert count_sentences("Бір сөйлем ғана") == 1 and count_sentences("") == 0


def test_keywords_match_through_suffixes_and_stem_final_voicing() -> None:
    from kazhpc.evaluation.ifeval import keyword_pattern

    answer = "Кітабы жоқ бала жүрегі таза, ал кітаптардың бәрі кітапханада."
    assert len(keyword_pattern("кітап").findall(answer)) == 3  # кітабы (п→б), кітаптардың, кітапханада
    assert keyword_pattern("жүрек").search(answer)  # к→г
    assert not keyword_pattern("тап").search(answer)  # inside a word is not a match: only at its start
    freq = ("keywords:frequency", {"keyword": "кітап", "frequency": 3, "relation": "at least"})
    assert score([freq], answer)["prompt_level_strict_acc"] is True
    assert english(*freq, answer) is False  # lm-eval's substring count misses кітабы
    forbidden = ("keywords:forbidden_words", {"forbidden_words": ["жүрек"]})
    assert score([forbidden], answer)["prompt_level_strict_acc"] is False
    assert english(*forbidden, answer) is True  # \bжүрек\b does not see жүрегі
    phrase = ("keywords:existence", {"keywords": ["таза ауа"]})
    assert score([phrase], "Тауда таза ауасы бар.")["prompt_level_strict_acc"] is True
    assert score([phrase], "Таза су, ауа.")["prompt_level_strict_acc"] is False


def test_language_case_letters_and_quotes_are_checked_for_kazakh() -> None:
    kk = "Қазақстан — кең байтақ ел, оның табиғаты әсем және халқы қонақжай."
    ru = "Казахстан — большая страна, его природа красива, а народ гостеприимен."
    lang = ("language:response_language", {"language": "kk"})
    assert score([lang], kk)["prompt_level_strict_acc"] is True
    assert score([lang], ru)["prompt_level_strict_acc"] is False
    assert score([lang], "Иә.")["prompt_level_strict_acc"] is False  # too short to identify: not followed
    capital = ("change_case:kazakh_capital", {})
    assert score([capital], kk.upper())["prompt_level_strict_acc"] is True
    assert score([capital], ru.upper())["prompt_level_strict_acc"] is False
    assert score([capital], kk)["prompt_level_strict_acc"] is False
    assert score([("change_case:kazakh_lowercase", {})], kk.lower())["prompt_level_strict_acc"] is True
    letter = ("keywords:letter_frequency", {"letter": "қ", "let_frequency": 3, "let_relation": "at least"})
    assert score([letter], "Қақпақ")["prompt_level_strict_acc"] is True
    assert score([letter], "Қазан")["prompt_level_strict_acc"] is False
    quote = ("startend:quotation", {})
    assert score([quote], "«Домбыра — қос ішекті аспап.»")["prompt_level_strict_acc"] is True
    assert english(*quote, "«Домбыра — қос ішекті аспап.»") is False
    fixed = ("detectable_format:kazakh_constrained_response", {})
    assert score([fixed], "Ойланып көрдім. Менің жауабым: иә.")["prompt_level_strict_acc"] is True
    assert score([fixed], "Иә, солай.")["prompt_level_strict_acc"] is False


def test_strict_and_loose_and_instruction_level_are_lm_evals() -> None:
    both = [("startend:quotation", {}), ("punctuation:no_comma", {})]
    out = score(both, "Міне жауап:\n«Домбыра қос ішекті аспап»")  # a preamble line: loose forgives it
    assert out == {"prompt_level_strict_acc": False, "inst_level_strict_acc": [False, True],
                   "prompt_level_loose_acc": True, "inst_level_loose_acc": [True, True]}  # fmt: skip
    assert score(both, "   ")["inst_level_loose_acc"] == [False, False]  # an empty answer follows nothing


def test_importing_lm_evals_ifeval_code_does_not_reach_for_the_network() -> None:
    code = ("import nltk\n"
            "def refuse(*a, **k): raise SystemExit('nltk.download called')\n"
            "nltk.download = refuse\n"
            "from kazhpc.evaluation.ifeval import registry\n"
            "print(len(registry()))\n")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert int(result.stdout.split()[-1]) > 20


ROW = {"key": 1, "prompt": "Жазыңыз.", "instruction_id_list": ["length_constraints:number_words"],
       "kwargs": [{"num_words": 10, "relation": "less than"}]}  # fmt: skip


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"instruction_id_list": ["keywords:frequncy"]}, r"unknown instruction id 'keywords:frequncy' \(did you mean 'keywords:frequency'\?\)"),
        ({"kwargs": [{"num_words": "10", "relation": "less than"}]}, r"num_words must be a positive integer, got '10'"),
        ({"kwargs": [{"num_words": 0, "relation": "less than"}]}, r"num_words must be a positive integer, got 0"),
        ({"kwargs": [{"num_words": 10}]}, r"argument 'relation' is missing \(lm-eval would pick a random one\)"),
        ({"kwargs": [{"num_words": 10, "relation": "at most"}]}, r"supported relation .* but at most is given"),
        ({"kwargs": [{"num_words": 10, "relation": "less than", "n": 2}]}, r"unknown argument 'n'"),
        ({"kwargs": []}, r"1 instruction ids but 0 kwargs entries"),
        ({"kwargs": "{num_words: 10}"}, r"'kwargs' must be a list"),
        ({"prompt": None}, r"'prompt' must be a non-empty string"),
        ({"instruction_id_list": ["language:response_language"], "kwargs": [{"language": "xx"}]},
         r"unknown ISO 639-1 language code 'xx'"),
    ],
)  # fmt: skip
def test_a_bad_prompt_row_is_named_by_file_and_line_at_preflight(tmp_path: Path, change: dict, message: str) -> None:
    from kazhpc.config import EvalTaskConfig, EvaluateConfig
    from kazhpc.errors import KazhpcError
    from kazhpc.evaluation.suite import preflight

    data = tmp_path / "mine.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in (ROW, ROW, {**ROW, **change})) + "\n",
                    encoding="utf-8")  # fmt: skip
    with pytest.raises(KazhpcError, match=rf"mine\.jsonl:3: task ifx: .*{message}"):
        preflight(EvaluateConfig(tasks=[EvalTaskConfig(name="ifx", kind="ifeval", path=str(data))]))


def test_ifeval_config_defaults_and_refusals() -> None:
    from pydantic import ValidationError

    from kazhpc.config import EvalTaskConfig
    from kazhpc.evaluation.ifeval import builtin_path, ifeval_config

    task = EvalTaskConfig(name="kk_ifeval", kind="ifeval")
    config = ifeval_config(task)
    assert config["dataset_kwargs"]["data_files"]["test"] == builtin_path()
    assert config["generation_kwargs"]["max_gen_toks"] == 512 and config["metadata"]["chat"] is True
    with pytest.raises(ValidationError, match="kind: ifeval reads the IFEval schema as it is"):
        EvalTaskConfig(name="x", kind="ifeval", columns={"question": "q"})
    with pytest.raises(ValidationError, match="path: required for kind: mc"):
        EvalTaskConfig(name="x", kind="mc")


@pytest.mark.slow
@pytest.mark.parametrize("handling", ["reject", "neutralise"])
def test_a_prompt_spelling_a_special_token_is_left_out_or_neutralised_inside_the_chat_template(
    tmp_path: Path, model_cache: Path, handling: str
) -> None:
    from kazhpc.config import load_config
    from kazhpc.evaluation.job import run_part
    from kazhpc.evaluation.sharding import merge

    from conftest import write_yaml

    rows = [dict(ROW, key=1), dict(ROW, key=2, prompt="Мына белгіні түсіндіріңіз: <end_of_turn>")]
    data = tmp_path / "mine.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    path = write_yaml(tmp_path / "c.yaml", f"""
        name: special
        jobs: [evaluate]
        model: gemma3-270m
        runs_root: {tmp_path / 'runs'}
        cache_dir: {model_cache}
        tracking: {{enabled: false}}
        evaluate:
          tasks: [{{name: ifx, kind: ifeval, path: {data}, max_gen_toks: 4}}]
          models: [{{label: base}}]
          perplexity_texts: null
          special_tokens: {handling}
        """)
    cfg = load_config(path)
    run_part(cfg, tmp_path / "job", 0, 1)
    entry = merge(cfg.evaluate, tmp_path / "job", 1)["models"]["base"]["tasks"]["ifx"]
    samples = [json.loads(x) for x in (tmp_path / "job" / "samples" / "base" / "ifx.jsonl").read_text().splitlines()]
    if handling == "reject":
        assert entry["n"] == 1 and entry["extra"]["excluded"] == {"special_token_text": 1}
    else:
        assert entry["n"] == 2 and entry["extra"]["neutralised"] == {"special_token_text": 1}
        prompt = samples[1]["prompt"]  # the template's own markers stay, the document's text is neutralised
        assert prompt.startswith("<bos><start_of_turn>user\n") and "<\u2060end_of_turn>" in prompt
