"""Models under test: base, base + LoRA adapter, adapter merged; wrapped for lm-eval with a <bos> check.

lm-eval's ``HFLM`` takes a model object, so the configured model is loaded once by kazhpc
(``kazhpc.models.load_model``: the bundled Gemma-3-270M by default) and the adapter is applied by
peft. Gemma needs exactly one ``<bos>``: :class:`CheckedHFLM` verifies it on every request the model
sees (log-likelihood inputs and generation prompts) and counts the checked requests. It also checks
that no other control token is among them: documents that spell one are left out of the plan
(``evaluate.special_tokens: reject``) or neutralised here before tokenisation (``neutralise``).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kazhpc.errors import KazhpcError
from kazhpc.models import check_single_bos, load_model, load_tokenizer
from kazhpc.special_text import END_OF_TURN_TOKENS, special_texts, template_special_ids

if TYPE_CHECKING:
    from kazhpc.config import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelUnderTest:
    """One model the suite scores: its label, the base model it loads, and the peft adapter on
    top (None: the base alone); ``merged`` folds the adapter into the weights before scoring."""

    label: str
    kind: str  # base | adapter | merged (kazhpc.config.EvalModelConfig.kind)
    base: ModelConfig
    adapter: Path | None = None


def check_adapter(path: Path, label: str) -> None:
    if not (path / "adapter_config.json").is_file():
        raise KazhpcError(
            f"evaluate.models[{label}]: {path}: no adapter_config.json (a peft adapter folder; "
            "did the train stage finish in this run?)"
        )


@functools.lru_cache(maxsize=4)
def _tokenizer(source: str, revision: str | None, chat_template: str, cache_root: Path) -> Any:
    from kazhpc.config import ModelConfig

    return load_tokenizer(ModelConfig(name="tokenizer", source=source, revision=revision, chat_template=chat_template), cache_root)


def eval_tokenizer(model_cfg: Any, cache_root: Path) -> Any:
    """A model's tokenizer, loaded once per process (seconds for a 262k vocabulary): the plan's
    special-token screen and the model under test share it."""
    return _tokenizer(model_cfg.source, model_cfg.revision, model_cfg.chat_template, Path(cache_root))


def load_for_eval(model: ModelUnderTest, cache_root: Path) -> tuple[Any, Any]:
    """(model, tokenizer) for one model under test, in eval mode on the CPU or the first GPU."""
    import torch

    tokenizer = eval_tokenizer(model.base, cache_root)
    base = load_model(model.base, cache_root)
    if torch.cuda.is_available():
        base = base.to("cuda")
    if model.adapter is None:
        return base.eval(), tokenizer
    check_adapter(model.adapter, model.label)
    from peft import PeftModel

    adapted = PeftModel.from_pretrained(base, str(model.adapter))
    if model.kind == "merged":
        return adapted.merge_and_unload().eval(), tokenizer
    if adapted.peft_config["default"].trainable_token_indices:
        # Trained embedding rows (an extended vocabulary): peft wraps embed_tokens, and ties
        # lm_head to the wrapper itself. lm-eval calls tie_weights() again, and transformers then
        # looks for embed_tokens.weight, which the wrapper hides: the weights are tied already.
        adapted.tie_weights = lambda *args, **kwargs: None
    return adapted.eval(), tokenizer


def distinct_bases(models: list[ModelUnderTest]) -> list[ModelConfig]:
    """The distinct base models (by source) of the models under test: whose tokenizers they use."""
    found: dict[str, ModelConfig] = {}
    for model in models:
        found.setdefault(model.base.source, model.base)
    return list(found.values())


def route_lm_eval_bars() -> None:
    """lm-eval's request loops draw kazhpc's bar (kazhpc.console.LibraryBar: rich on a terminal,
    log lines in a SLURM log), not three tqdm bars per task; its modules import ``tqdm`` by name."""
    import lm_eval.api.model
    import lm_eval.api.task
    import lm_eval.models.huggingface

    from kazhpc.console import LibraryBar

    for module in (lm_eval.api.model, lm_eval.api.task, lm_eval.models.huggingface):
        if hasattr(module, "tqdm"):
            module.tqdm = LibraryBar


def checked_lm(model: Any, tokenizer: Any, batch_size: int, special_tokens: str = "reject") -> Any:
    """An lm-eval HFLM around a loaded model that checks every request: one leading <bos>, and no
    other control token. With ``special_tokens="neutralise"`` text that spells a special token is
    neutralised before it is tokenised; with ``"reject"`` such documents were left out of the plan,
    so meeting one here is a bug (FormattingError)."""
    from lm_eval.models.huggingface import HFLM

    route_lm_eval_bars()
    special = special_texts(tokenizer)
    neutralise = special_tokens == "neutralise"

    class CheckedHFLM(HFLM):
        bos_checked = 0
        chat = False  # set by the caller: this evaluate call renders prompts with the chat template

        def _check(self, ids: list[int], where: str) -> None:
            check_single_bos(ids, self.tokenizer, where=where)
            expected = (template_special_ids(self.tokenizer, ["user"], add_generation_prompt=True) if self.chat
                        else {self.tokenizer.bos_token_id: 1})  # fmt: skip
            special.check_ids(ids, expected, where=where)

        def generate_until(self, requests, disable_tqdm=False):  # type: ignore[override]
            if self.chat:  # a chat answer ends at the end-of-turn marker (Gemma's eos is <eos>)
                stops = [t for t in END_OF_TURN_TOKENS if t in self.tokenizer.get_vocab()]
                for request in requests:
                    context, kwargs = request.args
                    until = kwargs.get("until") or []
                    until = [until] if isinstance(until, str) else list(until)
                    request.arguments = (context, {**kwargs, "until": until + [t for t in stops if t not in until]})
            return super().generate_until(requests, disable_tqdm=disable_tqdm)

        def tok_encode(self, string, *args, **kwargs):  # type: ignore[override]
            return super().tok_encode(special.neutralise(string)[0] if neutralise and not self.chat else string, *args, **kwargs)

        def _loglikelihood_tokens(self, requests, disable_tqdm=False, override_bs=None):  # type: ignore[override]
            for (context, _), context_enc, continuation_enc in requests:
                self._check(context_enc + continuation_enc, f"request {context[:60]!r}")
            self.bos_checked += len(requests)
            return super()._loglikelihood_tokens(requests, disable_tqdm=disable_tqdm, override_bs=override_bs)

        def apply_chat_template(self, chat_history, add_generation_prompt=True):  # type: ignore[override]
            if neutralise:  # the documents' text, before the template adds its own turn markers
                chat_history = [{**m, "content": special.neutralise(m["content"])[0]} for m in chat_history]
            return super().apply_chat_template(chat_history, add_generation_prompt)

        def tok_batch_encode(self, strings, padding_side="left", left_truncate_len=None, truncation=False):  # type: ignore[override]
            if neutralise and not self.chat:  # chat prompts were neutralised before templating
                strings = [special.neutralise(text)[0] for text in strings]
            ids, mask = super().tok_batch_encode(strings, padding_side, left_truncate_len, truncation)
            for text, row, keep in zip(strings, ids, mask):
                self._check(row[keep.bool()].tolist(), f"prompt {text[:60]!r}")
            self.bos_checked += len(strings)
            return ids, mask

    return CheckedHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, add_bos_token=True)


# --------------------------------------------------------------------------------------------
# vLLM (evaluate.backend: vllm): generation on GPU nodes where vLLM is installed.

VLLM_MISSING = ("evaluate.backend: vllm: the vllm package is not installed here (install it in the GPU "
                "container: pip install 'lm-eval[vllm]'); backend: hf runs everywhere")


def check_vllm() -> None:
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        raise KazhpcError(VLLM_MISSING)


def vllm_args(model: ModelUnderTest, cache_root: Path) -> dict[str, Any]:
    """lm-eval's ``VLLM`` arguments for one model under test: the base checkpoint folder (or hub
    id), and the LoRA adapter, which vLLM applies itself; a merged model or an adapter that trained
    embedding rows (an extended vocabulary) is refused, as vLLM's LoRA cannot apply those."""
    import json

    from kazhpc.models import materialize

    args: dict[str, Any] = {"pretrained": materialize(model.base.source, cache_root), "revision": model.base.revision,
                            "dtype": model.base.dtype, "add_bos_token": True, "batch_size": "auto"}  # fmt: skip
    if model.adapter is None:
        return args
    if model.kind == "merged":
        raise KazhpcError(f"evaluate.models[{model.label}]: kind merged with backend: vllm; use kind: adapter "
                          "(vLLM applies the LoRA adapter itself) or backend: hf")  # fmt: skip
    check_adapter(model.adapter, model.label)
    adapter = json.loads((model.adapter / "adapter_config.json").read_text())
    if adapter.get("trainable_token_indices") or adapter.get("modules_to_save"):
        raise KazhpcError(f"evaluate.models[{model.label}]: the adapter trains embedding rows or whole modules, "
                          "which vLLM's LoRA cannot apply; use backend: hf")  # fmt: skip
    return {**args, "lora_local_path": str(model.adapter), "max_lora_rank": int(adapter.get("r", 16))}


def vllm_lm(model: ModelUnderTest, cache_root: Path) -> Any:
    check_vllm()
    from lm_eval.models.vllm_causallms import VLLM

    return VLLM(**vllm_args(model, cache_root))
