"""Prompt functions the task YAMLs name with ``!function utils.<name>`` (lm-eval loads this file by path)."""

from kazhpc.evaluation.prompts import doc_to_choice, doc_to_target, doc_to_text

__all__ = ["doc_to_choice", "doc_to_target", "doc_to_text"]
