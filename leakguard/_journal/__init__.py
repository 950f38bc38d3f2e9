"""The journal: who a process is (``identity``), where journals live (``folder``),
the file format and its reader (``format``), this process's journal file
(``writer``) and what this process owns (``owner``).

The write-ahead order every creation follows is explained once, in docs/design.md.
Imports ``_os``, ``_errors`` and ``_failpoint``.
"""
