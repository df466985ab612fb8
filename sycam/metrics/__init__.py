"""Saliency metrics: localisation, faithfulness, robustness, noise robustness, complexity, sanity checks
(batched torch).

``get_metric(name, **options)`` builds a metric by its CLI name; ``iou@T`` (e.g. ``iou@0.5``)
is the fixed-threshold IoU family. Each metric maps :class:`MetricInputs` to per-image float32
scores (NaN where undefined) and declares ``higher_is_better`` and ``needs``.
"""
from __future__ import annotations

from typing import Any, Callable

from sycam.metrics.base import ExplainFn, ExplainWith, Metric, MetricInputs, PredictFn, ScoreFn, validate_inputs
from sycam.metrics.cascade import RandomisationStep, cascading_randomisation, randomisation_steps
from sycam.metrics.complexity import Sparsity, gini
from sycam.metrics.faithfulness import (
    AverageDrop,
    AverageIncrease,
    Deletion,
    FinerDrop,
    Insertion,
    Road,
    RoadLeRF,
    RoadMoRF,
    gaussian_blur,
    linear_impute,
    pixel_ranks,
)
from sycam.metrics.localisation import (
    CentreOfMassDistance,
    EnergyPointingGame,
    OtsuIoU,
    PointingGame,
    ThresholdIoU,
    dilate_disc,
    otsu_thresholds,
    parse_iou_at,
)
from sycam.metrics.noise import DEFAULT_LEVELS, NOISE_FAMILIES, Consistency, Responsiveness, add_noise
from sycam.metrics.robustness import Robustness, pearson_maps
from sycam.metrics.sanity import (
    THRESHOLDS,
    ClassSensitivity,
    ClassSensitivityTop2,
    ModelRandomisation,
    RandomisationTop,
    passes,
    spearman,
)
from sycam.metrics.stats import bootstrap_ci

#: CLI name → metric class (constructed with keyword options by :func:`get_metric`)
METRICS: dict[str, Callable[..., Metric]] = {
    "iou": OtsuIoU,
    "pointing_game": PointingGame,
    "energy_pg": EnergyPointingGame,
    "com_dist": CentreOfMassDistance,
    "deletion": Deletion,
    "insertion": Insertion,
    "avg_drop": AverageDrop,
    "avg_increase": AverageIncrease,
    "finer_drop": FinerDrop,
    "road_morf": RoadMoRF,
    "road_lerf": RoadLeRF,
    "road": Road,
    "robustness": Robustness,
    "consistency": Consistency,
    "responsiveness": Responsiveness,
    "sparsity": Sparsity,
    "randomisation": ModelRandomisation,
    "randomisation_top": RandomisationTop,
    "class_sensitivity": ClassSensitivity,
    "class_sensitivity_top2": ClassSensitivityTop2,
}


def get_metric(name: str, **options: Any) -> Metric:
    """The metric called ``name`` (see :func:`list_metrics`), built with ``options``.

    ``iou@T`` gives the IoU at fixed threshold T ∈ [0, 1] (no options). Unknown names raise a
    ``KeyError`` listing the known ones; unknown options raise the constructor's ``TypeError``.
    """
    if not isinstance(name, str):
        raise TypeError(f"metric name must be a str, got {type(name).__name__}")
    key = name.strip()
    at = parse_iou_at(key)
    if at is not None:
        if options:
            raise TypeError(f"metric {name!r} takes no options, got {sorted(options)}")
        return at
    if key not in METRICS:
        raise KeyError(f"unknown metric {name!r}; known: {', '.join(list_metrics())}")
    return METRICS[key](**options)


def list_metrics() -> list[str]:
    """Names :func:`get_metric` accepts: the registry plus the ``iou@T`` family (as ``iou@0.5``)."""
    return sorted(METRICS) + ["iou@0.5"]


__all__ = [
    "DEFAULT_LEVELS",
    "METRICS",
    "NOISE_FAMILIES",
    "THRESHOLDS",
    "AverageDrop",
    "AverageIncrease",
    "CentreOfMassDistance",
    "ClassSensitivity",
    "ClassSensitivityTop2",
    "Consistency",
    "Deletion",
    "EnergyPointingGame",
    "ExplainFn",
    "ExplainWith",
    "FinerDrop",
    "Insertion",
    "Metric",
    "MetricInputs",
    "ModelRandomisation",
    "OtsuIoU",
    "PointingGame",
    "PredictFn",
    "RandomisationStep",
    "RandomisationTop",
    "Responsiveness",
    "Road",
    "RoadLeRF",
    "RoadMoRF",
    "Robustness",
    "ScoreFn",
    "Sparsity",
    "ThresholdIoU",
    "add_noise",
    "bootstrap_ci",
    "cascading_randomisation",
    "dilate_disc",
    "gaussian_blur",
    "get_metric",
    "gini",
    "linear_impute",
    "list_metrics",
    "otsu_thresholds",
    "parse_iou_at",
    "passes",
    "pearson_maps",
    "pixel_ranks",
    "randomisation_steps",
    "spearman",
    "validate_inputs",
]
