"""Removing what dead processes left behind: leakguard's own journaled objects
(``journaled``, SPEC 2.4) and other libraries' leftovers (``foreign``, SPEC 3).

Imports ``_journal`` and ``_os``.
"""
