"""The docs hold true: every runnable Python block of the README and of docs/ runs against the emulator, the
rest compile, the tables that list what the code defines list it all, and the README stays a landing page.

A Python block is runnable unless the line before its fence is ``<!-- fragment: ... -->`` (a few lines that
need a program around them, which the comment names). A runnable block is run as its reader would run it as a
script, with ``WEMASY_API_TOKEN``, ``WEMASY_BASE_URL`` and ``WEMASY_WINDOW_SECONDS`` pointing it at an emulator;
one that holds a pytest test is run by pytest in tests/test_packaging.py instead.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import NamedTuple

import pytest

from wemasy_async.testing import WemasyEmulator

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]


class Block(NamedTuple):
    page: Path
    line: int
    language: str
    body: str
    fragment: bool

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"^```(?P<language>[\w-]*)[^\n]*\n(?P<body>.*?)^```$", text, re.MULTILINE | re.DOTALL):
        line = text.count("\n", 0, match.start()) + 1
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        fragment = before.startswith("<!-- fragment:")
        blocks.append(Block(page, line, match["language"], match["body"], fragment))
    return blocks


PYTHON = [block for page in PAGES for block in _blocks(page) if block.language == "python"]
RUNNABLE = [block for block in PYTHON if not block.fragment and "def test_" not in block.body]


def test_the_docs_have_runnable_blocks_and_each_fragment_says_what_it_needs() -> None:
    """Not a vacuous pass: the pages hold runnable programs; and a fragment's comment names its context."""
    assert len(RUNNABLE) >= 7
    assert {block.page.name for block in RUNNABLE} >= {"README.md", "batches.md", "testing.md", "telemetry.md"}
    for block in PYTHON:
        if block.fragment:
            before = block.page.read_text(encoding="utf-8").splitlines()[block.line - 2]
            assert re.fullmatch(r"<!-- fragment: .+ -->", before), block.name


@pytest.mark.parametrize("block", PYTHON, ids=lambda block: block.name)
def test_every_python_block_compiles(block: Block) -> None:
    """Fragments too (an ``await`` at their top level is allowed): a typo in a doc shows here."""
    compile(block.body, block.name, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)


@pytest.mark.wemasy_emulator(limit=60, window_seconds=0.5, unknown_order_ids={13})
@pytest.mark.parametrize("block", RUNNABLE, ids=lambda block: block.name)
def test_every_runnable_block_runs_against_the_emulator(
    block: Block, wemasy_emulator: WemasyEmulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As a script, in a directory of its own (a journal it writes lands there), with the environment a user
    sets for it: a token, the emulator's URL and its window."""
    monkeypatch.setenv("WEMASY_API_TOKEN", "docs-token")
    monkeypatch.setenv("WEMASY_BASE_URL", wemasy_emulator.base_url)
    monkeypatch.setenv("WEMASY_WINDOW_SECONDS", str(wemasy_emulator.window_seconds))
    monkeypatch.chdir(tmp_path)
    exec(compile(block.body, block.name, "exec", dont_inherit=True), {"__name__": "__main__"})


# --- tables that list what the code defines --------------------------------------------------------------


def _table_keys(page: str, heading: str) -> list[str]:
    """The first column of the table under ``heading`` of ``docs/<page>``, in order, without backquotes."""
    text = "\n" + (ROOT / "docs" / page).read_text(encoding="utf-8")
    section = text[text.index(f"\n{heading}\n") + len(heading) + 2 :]
    return re.findall(r"^\| `([^`]+)` \|", section.split("\n## ", 1)[0], flags=re.MULTILINE)


def test_the_cli_page_lists_every_key_of_the_json_document_in_order() -> None:
    from wemasy_async import PushDetails, PushResult, PushSummary
    from wemasy_async.cli._output import push_result_json

    document = push_result_json(PushResult(summary=PushSummary(0, 0, 0, 0, 0), details=PushDetails()))
    assert _table_keys("cli.md", "## The `--json` document") == list(document)


def test_the_configuration_page_lists_every_environment_variable_the_package_reads() -> None:
    read = set()
    for source in [*(ROOT / "wemasy_async").rglob("*.py"), ROOT / "_wemasy_async_pytest.py"]:
        read |= set(re.findall(r"\bWEMASY_[A-Z_]+\b", source.read_text(encoding="utf-8")))
    assert read <= set(_table_keys("configuration.md", "# Configuration and environment variables"))


def test_the_errors_page_has_a_row_for_every_exported_error() -> None:
    import wemasy_async

    exported = {
        name
        for name in wemasy_async.__all__
        if isinstance(error := getattr(wemasy_async, name), type) and issubclass(error, Exception)
    }
    text = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    named = {name for row in rows for name in re.findall(r"`(\w+)`", row.split("|")[1])}
    assert exported - {"APIResponseError"} <= named  # APIResponseError: the paragraph under the table


# --- the README as a landing page ----------------------------------------------------------------------


def test_the_readme_is_a_landing_page_under_10_kb() -> None:
    assert len((ROOT / "README.md").read_bytes()) < 10_000


@pytest.mark.parametrize("page", [ROOT / "README.md", ROOT / "CONTRIBUTING.md"], ids=lambda page: page.name)
def test_every_relative_link_of_the_readme_and_contributing_leads_to_a_file(page: Path) -> None:
    """mkdocs --strict checks the links of docs/ (nox -s docs); these two pages are outside its site."""
    text = page.read_text(encoding="utf-8")
    targets = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", text)]
    missing = [t for t in targets if t and "://" not in t and not (page.parent / t).exists()]
    assert missing == []
