"""What users share between processes: ``SharedMemory`` and ``SharedArray``
(``shm``) and named semaphores (``sem``), each journaled before it exists.

Imports ``_journal`` and ``_os``.
"""
