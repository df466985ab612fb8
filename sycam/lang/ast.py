# placeholder, replaced by the language work package
from dataclasses import dataclass


@dataclass(frozen=True)
class ScoreSpec:
    """Which scalar a program explains.

    ``logit``: the target's raw logit (default).  ``prob``: its softmax probability.
    ``finer``: Finer-CAM's comparison with the ``k`` most similar classes at strength ``alpha``.
    """

    kind: str = "logit"
    k: int = 3
    alpha: float = 1.0
