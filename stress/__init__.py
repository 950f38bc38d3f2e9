"""python -m stress: the kill-scenario matrix (see docs/stress.md)."""
