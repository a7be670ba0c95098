"""What a user of the package gets beyond its code: the files in the sdist and the wheel, the pytest plugin
(light at pytest's start, working as docs/testing.md shows it) and the README's two commands, as CI runs them.

Nothing here needs the network: the sdist and the wheel are built in-process by hatchling (a test
dependency), and pytest runs in subprocesses in a temporary directory with a user's configuration.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")
TESTING_PAGE = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
PLUGIN_MODULE = PYPROJECT["project"]["entry-points"]["pytest11"]["wemasy_async"]


def _fenced_blocks(text: str, language: str) -> list[str]:
    """The bodies of the ```language fences of a page's text, in order."""
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def _section(heading: str, text: str = README) -> str:
    """The text (the README's unless given) under ``heading`` up to the next heading of the same level."""
    level = heading.split(" ")[0]
    start = text.index(f"\n{heading}\n")
    end = text.find(f"\n{level} ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _clean_env(**extra: str) -> dict[str, str]:
    """This environment without anything that would change how a pytest subprocess starts, with the checkout
    under test first on the path (the subprocess must import the same ``wemasy_async`` as this test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_") and k != "PYTHONWARNINGS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _pytest_in(directory: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess, with ``directory`` as its working directory and rootdir, leaving no cache."""
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--strict-markers", "-q"]
    return subprocess.run(
        [*command, "--rootdir", str(directory), *args],
        cwd=directory,
        env=_clean_env(**env),
        capture_output=True,
        text=True,
    )


# --- the sdist and the wheel -------------------------------------------------------------------------------


def test_every_file_the_sdist_and_wheel_name_exists() -> None:
    targets = PYPROJECT["tool"]["hatch"]["build"]["targets"]
    named = targets["sdist"]["include"] + targets["wheel"]["only-include"] + PYPROJECT["project"]["license-files"]
    assert [path for path in named if not (ROOT / path).exists()] == []


def test_the_declared_mit_licence_has_its_file() -> None:
    assert PYPROJECT["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 wemasy-async developers" in text


def test_project_urls_point_at_the_repository() -> None:
    urls = PYPROJECT["project"]["urls"]
    assert {"Homepage", "Repository", "Issues", "Changelog"} <= urls.keys()
    assert all(url.startswith("https://github.com/wemasy/wemasy-async") for url in urls.values())


def test_the_sdist_holds_the_license_the_examples_and_what_the_tests_need(tmp_path: Path) -> None:
    from hatchling.builders.sdist import SdistBuilder

    (sdist,) = SdistBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    expected = {
        "LICENSE",
        "README.md",
        "CHANGELOG.md",
        "pyproject.toml",
        "noxfile.py",
        ".ci/run",
        "examples/quickstart.py",
        f"{PLUGIN_MODULE}.py",
        "wemasy_async/__init__.py",
        "wemasy_async/budgets/_redis_window.lua",
        "tests/conftest.py",
        "tests/redis_server.py",
    }
    assert expected - names == set()


def test_the_wheel_holds_the_plugin_module_and_the_license(tmp_path: Path) -> None:
    from hatchling.builders.wheel import WheelBuilder

    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(tmp_path), versions=["standard"])
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = (name for name in names if name.endswith(".dist-info/entry_points.txt"))
        entry_text = archive.read(entry_points).decode()
    assert {f"{PLUGIN_MODULE}.py", "wemasy_async/py.typed", "wemasy_async/budgets/_redis_window.lua"} <= names
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert f"[pytest11]\nwemasy_async = {PLUGIN_MODULE}\n" in entry_text
    # Nothing of the checkout's tooling or tests lands in site-packages.
    top_level = {name.split("/")[0] for name in names}
    assert {name for name in top_level if not name.endswith(".dist-info")} == {"wemasy_async", f"{PLUGIN_MODULE}.py"}


# --- the pytest plugin ---------------------------------------------------------------------------------


def test_importing_the_plugin_imports_nothing_of_the_sdk() -> None:
    code = (
        f"import sys, {PLUGIN_MODULE}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'aiohttp', 'wemasy_async', 'attrs', 'cattrs'}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=_clean_env(), capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


@pytest.mark.once  # a pytest in a subprocess: the plugin, not this Python
def test_pytest_starts_without_the_sdk_and_the_fixture_brings_it(tmp_path: Path) -> None:
    """The plugin alone (as its entry point loads it): collecting and a test without the fixture import
    nothing heavy; the fixture then serves a working emulator."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_light.py").write_text(
        "import sys\n"
        "import urllib.request\n\n"
        "HEAVY = {'aiohttp', 'wemasy_async'}\n\n\n"
        "def test_a_test_without_the_fixture():\n"
        "    assert HEAVY & {m.split('.')[0] for m in sys.modules} == set()\n\n\n"
        "@__import__('pytest').mark.wemasy_emulator(limit=7)\n"
        "def test_the_fixture(wemasy_emulator):\n"
        "    request = urllib.request.Request(\n"
        "        wemasy_emulator.base_url + '/services/webshop/v1/integrations/sendcloud/status',\n"
        "        headers={'Authorization': 'Bearer t', 'Accept': 'application/json'},\n"
        "    )\n"
        "    with urllib.request.urlopen(request) as answer:\n"
        "        assert answer.headers['X-RateLimit-Limit'] == '7'\n",
        encoding="utf-8",
    )
    result = _pytest_in(tmp_path, "-p", PLUGIN_MODULE, "test_light.py", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^2 passed in ", result.stdout, flags=re.MULTILINE), result.stdout


def _docs_pytest_example() -> tuple[str, str]:
    """The pytest example of docs/testing.md (the first Python fence after "With pytest") and the pyproject.toml
    lines it shows for asyncio_mode=auto (the TOML fence after it)."""
    testing = _section("## The pytest fixture", TESTING_PAGE)
    after = testing[testing.index("With pytest") :]
    return _fenced_blocks(after, "python")[0], _fenced_blocks(after, "toml")[0]


@pytest.mark.once  # a pytest in a subprocess: the plugin, not this Python
def test_the_docs_pytest_example_runs_as_written_in_a_users_project(tmp_path: Path) -> None:
    """The example of docs/testing.md, in a directory with a user's own bare pytest.ini (none of this project's
    settings), with the plugins installed in this environment loaded as pytest loads them for a user."""
    example, _ = _docs_pytest_example()
    (tmp_path / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    (tmp_path / "test_readme_example.py").write_text(example, encoding="utf-8")
    result = _pytest_in(tmp_path, "test_readme_example.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^1 passed in ", result.stdout, flags=re.MULTILINE), result.stdout


@pytest.mark.once  # a pytest in a subprocess: the plugin, not this Python
def test_the_docs_pytest_example_runs_without_its_marker_under_the_pages_auto_mode(tmp_path: Path) -> None:
    """docs/testing.md says the asyncio marker can go with the pyproject.toml lines it shows, and that those
    lines keep pytest-asyncio quiet: a user's pyproject.toml of just those lines, the example less its marker."""
    example, config = _docs_pytest_example()
    (marker,) = (line for line in example.splitlines() if line.startswith("@pytest.mark.asyncio"))
    (tmp_path / "pyproject.toml").write_text(config, encoding="utf-8")
    (tmp_path / "test_readme_example.py").write_text(example.replace(marker + "\n", ""), encoding="utf-8")
    result = _pytest_in(tmp_path, "test_readme_example.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"^1 passed in ", result.stdout, flags=re.MULTILINE), result.stdout
    assert "configfile: pyproject.toml" in _pytest_in(tmp_path, "--co", "-v").stdout
    assert "Warning" not in result.stdout + result.stderr


# --- the README's two commands and CI ------------------------------------------------------------------


def _two_commands() -> tuple[str, str]:
    demo, tests = (block.strip() for block in _fenced_blocks(_section("## Two commands"), "sh"))
    return demo, tests


def test_each_of_the_two_commands_makes_its_own_environment() -> None:
    """Neither may need `python` on PATH, an active virtualenv or a system pip that installs (PEP 668):
    each starts by making .venv with python3 and runs everything else from .venv/bin."""
    for command in _two_commands():
        first, *rest = (step.strip() for step in command.split("&&"))
        assert first == "python3 -m venv .venv"
        assert all(step.startswith(".venv/bin/") for step in rest), command
    demo, tests = _two_commands()
    assert demo.endswith(".venv/bin/wemasy-async demo")
    assert PYPROJECT["project"]["scripts"]["wemasy-async"] == "wemasy_async.cli:main"
    assert tests.endswith(".venv/bin/nox")


def test_ci_runs_the_readme_commands_as_written() -> None:
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()]
    for command in _two_commands():
        # In a subshell, so that `set -e` stops the script when any step of the && list fails.
        assert f"( {command} )" in ci_lines


def test_nox_tests_every_python_the_package_declares() -> None:
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    (pythons,) = (
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PYTHONS" for t in node.targets)
    )
    classifiers = PYPROJECT["project"]["classifiers"]
    declared = [c.rsplit(" :: ", 1)[1] for c in classifiers if re.fullmatch(r".* :: Python :: 3\.\d+", c)]
    assert pythons == declared
    assert PYPROJECT["project"]["requires-python"] == f">={declared[0]}"
