"""Context managers that leave a user's model exactly as they found it."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put every sub-module in eval mode; restore each one's own ``training`` flag on exit
    (``module.train(flag)`` would flatten a mixed state, e.g. frozen BatchNorm in a training net)."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, flag in flags:
            m.training = flag
