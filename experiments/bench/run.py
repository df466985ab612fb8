"""The search benchmark, ``python -m experiments.bench.run``: the ``search`` section of the timing
suite (``experiments/timing``), two threads, written here (``report.md``, ``report.json``) with this
folder's ``notes.md``. Any option of ``python -m experiments.timing.run`` passes through
(``--quick``, ``--tiny``, ``--device cuda``, ``--out DIR``)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

HERE = Path(__file__).resolve().parent


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from experiments.timing.run import main as timing_main

    args = list(sys.argv[1:] if argv is None else argv)
    defaults = {"--sections": "search", "--threads": "2", "--out": str(HERE), "--notes": str(HERE / "notes.md")}
    for flag, value in defaults.items():
        if not any(a == flag or a.startswith(flag + "=") for a in args):
            args += [flag, value]
    return timing_main(args)


if __name__ == "__main__":
    main()
