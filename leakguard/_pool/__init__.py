"""``leakguard.Pool`` and its machinery: the public class (``pool``), the engine
that dispatches tasks and watches workers (``engine``), the parent's records of
workers and tasks (``processes``), the worker's loop (``worker``), what travels on
the pipes (``wire``), result objects (``results``), progress bars (``progress``)
and the guardian process (``guardian``). ``pool.py`` has the picture of the flow.

Imports every layer below it.
"""
