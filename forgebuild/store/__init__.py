"""Store: keeps bytes, and never decides what they mean.

The local content-addressed store with its action cache and build records (``local``), the
shared remote (``remote``, with the strict schemas of what it reads, ``documents``, and the
signatures it checks, ``signing``), the project's workspace of materialised outputs
(``workspace``), provenance statements (``provenance``) and garbage collection over plain data
(``gc``).

May import: the base (``errors``, ``limits``, ``hashing``) and the store itself. Never planning,
the engine, the rules or the command line.
"""
