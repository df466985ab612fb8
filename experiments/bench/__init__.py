"""The search benchmark: candidates per second through sycam's scorers and Optuna's cost per trial."""
