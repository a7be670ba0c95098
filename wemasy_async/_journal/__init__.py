"""The batch push journal: one SQLite file that lets a killed batch carry on where it stopped.

A package by concern: the on-disk format (``_codec``), the OS locks (``_lock``), the writer thread and
the run's interface (``_writer``), opening and reading a file (``_store``). The design story is in
docs/design/journal.md.
"""

from __future__ import annotations

from ._codec import JournalError
from ._store import JournalPath, JournalSummary, open_journal, read_journal
from ._writer import BatchJournal

__all__ = ["BatchJournal", "JournalError", "JournalPath", "JournalSummary", "open_journal", "read_journal"]
