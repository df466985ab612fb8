"""``sycam evaluate``: score several explainers with several metrics on one dataset, side by side.

One room per job:

=====================  ======================================================================
module                 its job
=====================  ======================================================================
:mod:`.methods`        what is compared: methods (programs, baselines) with ``--params``, metrics
:mod:`.baselines`      the ``random`` and ``center`` maps every explainer must beat
:mod:`.job`            the loop: capture once per batch, then every method × metric
:mod:`.resume`         the output folder: fingerprint, ``config.json``, partial batches, resume
:mod:`.results`        what was measured: per-image values, bootstrap summaries, timings
:mod:`.report`         the written forms: text table, Markdown, CSV and JSON
:mod:`.figures`        ``table.png`` and ``overlays.png``
=====================  ======================================================================

The names below are the public interface; :func:`evaluate` is the API call behind the command.
Atomic writes, folder checks and file digests live in :mod:`sycam.files`.
"""
from __future__ import annotations

from sycam.evaluation.baselines import BASELINES, baseline_maps
from sycam.evaluation.job import evaluate, metric_inputs
from sycam.evaluation.methods import Method, available_methods, parse_params, resolve_methods, resolve_metrics
from sycam.evaluation.report import format_table
from sycam.evaluation.results import EvalResult, Summary
from sycam.evaluation.resume import default_out_dir, make_fingerprint, prepare_out

__all__ = [
    "BASELINES",
    "EvalResult",
    "Method",
    "Summary",
    "available_methods",
    "baseline_maps",
    "default_out_dir",
    "evaluate",
    "format_table",
    "make_fingerprint",
    "metric_inputs",
    "parse_params",
    "prepare_out",
    "resolve_methods",
    "resolve_metrics",
]
