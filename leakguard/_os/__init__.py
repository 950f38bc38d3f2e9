"""The operating system's side: the only code that calls posix_ipc, mmap and
fallocate (``ipc``), the names leakguard gives its objects and where Linux shows
them (``names``), and descriptors an exception stranded (``fds``).

Imports nothing of leakguard's but ``_errors``.
"""
