"""The CAM language: grammar, AST, type checker, pretty-printer and canonical form.

Knows nothing of torch or models.
"""
from sycam.lang.ast import Program, ScoreSpec, size
from sycam.lang.parse import grammar_hash, parse
from sycam.lang.pretty import pretty
from sycam.lang.types import CheckResult, check

__all__ = ["Program", "ScoreSpec", "CheckResult", "parse", "pretty", "check", "size", "grammar_hash"]
