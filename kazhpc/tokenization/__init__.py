"""Tokenizer analysis: fertility, parity and the Kazakh "tokenizer tax" of any set of tokenizers.

:mod:`kazhpc.tokenization.offline` loads tokenizers (five offline ones by name, or transformers
tokenizers) behind one interface; :mod:`kazhpc.tokenization.corpus` reads a corpus,
:mod:`kazhpc.tokenization.measure` measures a tokenizer on it, and
:mod:`kazhpc.tokenization.report` writes ``tokenizers.md``/``.csv``/``.json`` and ``fertility.png``.
Importing this package is cheap: the tokenizer libraries load only when a tokenizer does.
"""

from kazhpc.tokenization.offline import OFFLINE_TOKENIZERS, TokenizerAdapter, load_tokenizer_by_name
from kazhpc.tokenization.corpus import LANGUAGES, CorpusSpec, read_corpus
from kazhpc.tokenization.measure import DEFINITIONS, Metrics, measure, parity
from kazhpc.tokenization.report import flat_metrics, tokenizer_report

__all__ = [
    "DEFINITIONS",
    "LANGUAGES",
    "OFFLINE_TOKENIZERS",
    "CorpusSpec",
    "Metrics",
    "TokenizerAdapter",
    "flat_metrics",
    "load_tokenizer_by_name",
    "measure",
    "parity",
    "read_corpus",
    "tokenizer_report",
]
