"""``python -m experiments.bench`` = ``python -m experiments.bench.run``."""
from experiments.bench.run import main

main()
