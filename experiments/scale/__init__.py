"""Scale-out measurements: the capture cache, parallel workers (see experiments/scale/README.md)."""
