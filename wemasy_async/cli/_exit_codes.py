"""The command line's exit codes, and the sentence of its help that lists them."""

from __future__ import annotations

from typing import Final

__all__ = ["EXIT_API", "EXIT_CODES_HELP", "EXIT_INCOMPLETE", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_USAGE"]

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_API, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES_HELP: Final = (
    "Exit codes: 0 done, 1 some ids rejected or failed, 2 usage, configuration or auth, 3 API unreachable or "
    "failing, 130 interrupted."
)
