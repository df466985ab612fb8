"""``python -m experiments.timing`` = ``python -m experiments.timing.run``."""
from experiments.timing.run import main

main()
