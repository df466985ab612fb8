"""The final phase's plan: FinalCost's terms, and the clock's record of phases."""
from __future__ import annotations

import pytest

from sycam.search.budget import OUTPUTS_ALLOWANCE, SAFETY, FinalCost


def test_final_cost_counts_what_the_final_phase_captures_and_scores() -> None:
    cost = FinalCost(capture_per_image=0.5, references_per_image=0.02, row_per_image=0.004, train=190, val=48,
                     test=62, overlay=32, rows=49, extra_captures=0, hall=9, sanity_seconds=12.0)
    parts = cost.parts()
    # validation, test and the overlay images are captured; the train split is not captured again
    assert parts["captures"] == pytest.approx(0.5 * (48 + 62 + 32))
    assert parts["sanity"] == 12.0
    assert parts["references"] == pytest.approx(0.02 * (48 + 62))  # references get no train score
    assert parts["programs"] == pytest.approx(0.004 * (49 * 48 + 9 * 62))
    assert parts["suite"] == 0.0
    assert cost.seconds() == pytest.approx(SAFETY * sum(parts.values()) + OUTPUTS_ALLOWANCE)
    assert cost.describe() == "captures 71 s, sanity 12 s, references 2 s, programs 12 s"


def test_final_cost_prices_no_worse_than_and_its_suite() -> None:
    cost = FinalCost(capture_per_image=0.5, references_per_image=0.0, row_per_image=0.0, train=10, val=20, test=30,
                     overlay=0, rows=5, extra_captures=20, suite_per_image=0.1, suite_rows=3)
    assert cost.parts()["captures"] == pytest.approx(0.5 * (20 + 30 + 20))
    assert cost.parts()["suite"] == pytest.approx(0.1 * (3 * 20 + 2 * 30))


def test_final_cost_prices_the_validation_checks_of_every_row() -> None:
    cost = FinalCost(capture_per_image=0.0, references_per_image=0.0, row_per_image=0.0, train=190, val=48, test=62,
                     overlay=0, rows=47, check_per_image=0.02, sanity_images=32)
    assert cost.parts()["checks"] == pytest.approx(0.02 * 32 * 47)
    assert cost.describe() == "checks 30 s"
    assert FinalCost(capture_per_image=0.0, references_per_image=0.0, row_per_image=0.0, train=1, val=1, test=1,
                     overlay=0, rows=47).parts()["checks"] == 0.0  # --sanity off: nothing checked
