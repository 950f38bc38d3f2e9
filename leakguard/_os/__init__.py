"""The operating system's side: the only code that calls posix_ipc, mmap and
fallocate (``ipc``), memfd_create and ``/proc/PID/fd`` (``memfd``, anonymous blocks),
the names leakguard gives its objects and where Linux shows them (``names``),
descriptors an exception stranded (``fds``), and write leases, the kernel's word
that nobody else has a file open (``lease``).

Imports nothing of leakguard's but ``_errors``.
"""
