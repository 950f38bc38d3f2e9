"""``leakguard demo``: what leakguard is for, shown on real jobs (``scenes``), and
the child processes those jobs run (``jobs``, started as ``python -m
leakguard.demo.jobs``, so this file imports neither). Uses the public API only."""
