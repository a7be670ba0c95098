"""The command line, run in-process against the emulator, and in a subprocess under a pseudo-terminal where
the terminal matters (the progress bar)."""

from __future__ import annotations

import argparse
import codecs
import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TOKEN
from tests.helpers import run_in_terminal, terminal_lines
from wemasy_async import ConfigurationError, PushDetails, PushResult, PushSummary, WemasyClient
from wemasy_async.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, main
from wemasy_async.cli._commands import _carry_on
from wemasy_async.testing import WemasyEmulator


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, wemasy_emulator: WemasyEmulator) -> WemasyEmulator:
    """Token and base URL from the environment, as a user would set them."""
    monkeypatch.setenv("WEMASY_API_TOKEN", TOKEN)
    monkeypatch.setenv("WEMASY_BASE_URL", wemasy_emulator.base_url)
    return wemasy_emulator


def test_status_prints_the_integration(env: WemasyEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """status prints whether the integration is active and connected; --json prints its JSON."""
    assert main(["status"]) == EXIT_OK
    assert "active=True connected=True" in capsys.readouterr().out
    assert main(["status", "--json"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["is_active"] == "1"


def test_push_ids_and_ranges_from_arguments(env: WemasyEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """Ids and ranges on the command line are pushed, each once; the summary goes to stdout. (Chunks go
    concurrently, and the batch's last one as interactive: the server may queue them in another order.)"""
    assert main(["push", "5", "1-3", "7,8", "--chunk-size", "2"]) == EXIT_OK
    assert sorted(env.queued) == [1, 2, 3, 5, 7, 8]
    assert "accepted 6: 6 new" in capsys.readouterr().out


def test_push_from_stdin_with_json_output(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids one per line or comma-separated on stdin; --json prints exactly one JSON document."""
    monkeypatch.setattr(sys, "stdin", io.StringIO("10\n11,12\n\n13\n"))
    assert main(["push", "--file", "-", "--json"]) == EXIT_OK
    out = capsys.readouterr().out
    document = json.loads(out)  # the whole of stdout is one document
    assert document["summary"]["new_orders"] == 4
    assert document["complete"] is True
    assert env.queued == [10, 11, 12, 13]


def test_a_rejected_id_is_reported_with_its_own_exit_code(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A rejected id is listed with the server's message and the exit code says the push was incomplete."""
    env.unknown_order_ids = {2}
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("1\n2\n3\n")
    assert main(["push", "--file", str(ids_file), "--json"]) == EXIT_INCOMPLETE
    document = json.loads(capsys.readouterr().out)
    assert document["rejected"] == [{"order_id": 2, "message": "The selected order_ids.1 is invalid."}]
    assert document["complete"] is False


def test_failed_ids_are_written_for_a_retry(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--failed-out gets the ids of requests that failed after their retries, one per line."""
    env.faults.server_error_rate = 1.0
    out = tmp_path / "retry.txt"
    code = main(["push", "1-4", "--failed-out", str(out), "--max-attempts", "1"])
    assert code == EXIT_INCOMPLETE
    assert out.read_text().split() == ["1", "2", "3", "4"]
    assert "failed 4 ids" in capsys.readouterr().out


def test_missing_token_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wemasy_emulator: WemasyEmulator
) -> None:
    """Without a token the command says how to give one and exits 2, before any request."""
    monkeypatch.delenv("WEMASY_API_TOKEN", raising=False)
    assert main(["status", "--base-url", wemasy_emulator.base_url]) == EXIT_USAGE
    assert "WEMASY_API_TOKEN" in capsys.readouterr().err
    assert wemasy_emulator.requests == []


def test_bad_ids_are_a_usage_error(env: WemasyEmulator, capsys: pytest.CaptureFixture[str]) -> None:
    """A token that is not an id or a range is named; nothing is sent."""
    assert main(["push", "1", "two", "3"]) == EXIT_USAGE
    assert "'two'" in capsys.readouterr().err
    assert env.requests == []


def test_a_wrong_token_is_an_auth_error(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """401 exits 2 with a hint about the token, which it does not print."""
    env.valid_tokens = {"someone-else"}
    assert main(["status"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "check the token" in err
    assert TOKEN not in err


def test_a_push_with_a_refused_token_stops_and_says_what_was_not_sent(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A 401 stops the push after its first answer: exit 2, the JSON names the ids never sent and why,
    and --failed-out lists every id to push again."""
    env.valid_tokens = {"someone-else"}
    retry = tmp_path / "retry.txt"
    code = main(["push", "1-10", "--chunk-size", "2", "--concurrency", "1", "--json", "--failed-out", str(retry)])
    assert code == EXIT_USAGE
    captured = capsys.readouterr()
    document = json.loads(captured.out)
    assert document["not_sent"] == list(range(3, 11))
    assert "Unauthenticated" in document["stopped_by"]
    assert document["complete"] is False
    assert retry.read_text().split() == [str(i) for i in range(1, 11)]
    assert len(env.requests) == 1
    assert TOKEN not in captured.err + captured.out


def test_demo_pushes_a_batch_and_prints_the_figures(capsys: pytest.CaptureFixture[str]) -> None:
    """The demo runs its own emulator, pushes through the real client and reports the scheduler's figures."""
    assert main(["demo", "--ids", "400", "--chunk-size", "20", "--limit", "10", "--window", "0.5"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "rejected" in out
    assert "0 answered 429" in out
    assert "accepted 395" in out


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
def test_serve_runs_the_emulator_until_ctrl_c() -> None:
    """serve answers API calls on its port and stops cleanly on SIGINT, exiting 0."""
    with subprocess.Popen(
        [sys.executable, "-m", "wemasy_async", "serve", "--port", "0", "--limit", "5"],
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # printed once it listens
            base_url = line.split(" at ")[1].split(" ")[0]
            request = urllib.request.Request(
                base_url + "/services/webshop/v1/integrations/sendcloud/status",
                headers={"Authorization": "Bearer t", "Accept": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                assert response.headers["X-RateLimit-Limit"] == "5"
            process.send_signal(signal.SIGINT)
            assert process.wait(timeout=10) == EXIT_OK
        finally:
            process.kill()


def test_ctrl_c_stops_a_push_and_still_prints_what_was_done(wemasy_emulator: WemasyEmulator, tmp_path: Path) -> None:
    """SIGINT mid-batch: exit 130, one JSON document saying what was accepted before it, nothing lost; on
    stderr, the --failed-out file that holds the ids left and the command that carries on."""
    wemasy_emulator.faults.delay_seconds = 0.2
    left = tmp_path / "left.txt"
    command = [sys.executable, "-m", "wemasy_async", "push", "1-1000", "--chunk-size", "10", "--json"]
    command += ["--base-url", wemasy_emulator.base_url, "--token", TOKEN, "--failed-out", str(left)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert wemasy_emulator.wait_for_active(count=1, timeout=20)
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 130
    written = [int(line) for line in left.read_text().split()]
    assert f"the {len(written)} ids to push again are in {left}; to carry on: wemasy-async push --file {left}" in err
    document = json.loads(out)
    assert document["interrupted"] is True
    assert document["complete"] is False
    assert document["summary"]["total_orders"] < 1000
    # Every id in one place: answered, failed, under way when stopped (in doubt), or never sent.
    details = document["details"]
    places = [int(x) for x in details["new_orders"] + details["retry_orders"] + details["skipped_orders"]]
    places += [i for f in document["failed"] for i in f["order_ids"]] + document["in_doubt"] + document["not_sent"]
    assert sorted(places) == list(range(1, 1001))
    assert document["not_sent"]  # the batch was stopped early: most was never sent
    assert sorted(written) == sorted(
        [i for f in document["failed"] for i in f["order_ids"]] + document["in_doubt"] + document["not_sent"]
    )


@pytest.mark.parametrize("as_json", [False, True])
def test_after_ctrl_c_without_a_file_the_way_on_is_the_same_command(as_json: bool) -> None:
    """Interrupted with neither --journal nor --failed-out, the ids left are in no file: stderr says so and
    gives the command that carries on (pushing again is safe: queued ids come back skipped), and points
    at retry_order_ids only where the output has them (--json)."""
    args = argparse.Namespace(journal=None, failed_out=None, json=as_json)
    result = PushResult(summary=PushSummary(0, 0, 0, 0, 0), details=PushDetails(), not_sent=(1, 2, 3))
    message = _carry_on(args, result, written=False)
    assert message.startswith("the 3 ids left")
    assert "run the same command again" in message
    assert ("retry_order_ids" in message) is as_json


def test_the_window_comes_from_the_environment(env: WemasyEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """WEMASY_WINDOW_SECONDS sets the window of clients and of the command line (an app switches between
    the emulator and production by its environment); --window-seconds and window_seconds= win over it,
    and a value that is not positive seconds is refused, naming the variable."""
    monkeypatch.setenv("WEMASY_WINDOW_SECONDS", "2")
    assert WemasyClient(token=TOKEN, base_url=env.base_url).rate_limit.window_seconds == 2.0
    assert WemasyClient(token=TOKEN, base_url=env.base_url, window_seconds=3).rate_limit.window_seconds == 3.0
    assert main(["status"]) == EXIT_OK
    monkeypatch.setenv("WEMASY_WINDOW_SECONDS", "soon")
    with pytest.raises(ConfigurationError, match="WEMASY_WINDOW_SECONDS must be positive seconds, got 'soon'"):
        WemasyClient(token=TOKEN, base_url=env.base_url)


def test_push_shares_the_budget_through_redis(env: WemasyEmulator, redis_url: str) -> None:
    """--redis-url puts the token's budget in Redis, where other processes find it."""
    import redis

    from wemasy_async.budgets._redis import redis_keys

    assert main(["push", "1-4", "--chunk-size", "2", "--redis-url", redis_url]) == EXIT_OK
    state = redis.Redis.from_url(redis_url).hgetall(redis_keys(env.base_url, TOKEN)[0])
    assert int(state[b"st_sent"]) == 2


def test_a_push_to_a_server_that_cannot_be_reached_exits_3_at_once(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """Nothing listens at the base URL: the push stops after the first request's retries (not every
    chunk's), exits 3, and the JSON lists the ids never sent."""
    from tests.redis_server import free_port

    closed = f"http://127.0.0.1:{free_port()}/api"
    code = main(["push", "1-10000", "--base-url", closed, "--max-attempts", "2", "--concurrency", "1", "--json"])
    assert code == 3
    document = json.loads(capsys.readouterr().out)
    assert len(document["failed"]) == 1
    assert len(document["not_sent"]) == 10000 - 500
    assert "connect" in document["stopped_by"]


# --- status: secrets ---------------------------------------------------------------------------------

SECRET = "sk-live-7f3a9c1e-SECRET"


@pytest.fixture
def with_credentials(env: WemasyEmulator) -> WemasyEmulator:
    env.integration["credentials"] = {"public_key": "pk-live-1234", "secret_key": SECRET, "extra": {"webhook": "x"}}
    return env


def test_status_json_hides_the_credentials_values(
    with_credentials: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """status --json keeps the credentials' keys and says their values are hidden; no secret is printed."""
    assert main(["status", "--json"]) == EXIT_OK
    out = capsys.readouterr().out
    hidden = "<hidden: use --show-secrets>"
    assert json.loads(out)["credentials"] == {"public_key": hidden, "secret_key": hidden, "extra": {"webhook": hidden}}
    assert SECRET not in out
    assert "pk-live-1234" not in out


def test_plain_status_names_the_credentials_but_not_their_values(
    with_credentials: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """The human-readable status lists which credentials there are and how to see them, never a value."""
    assert main(["status"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "credentials: public_key, secret_key, extra (values hidden: use --show-secrets)" in out
    assert SECRET not in out


def test_show_secrets_prints_the_credentials(
    with_credentials: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """--show-secrets prints the values as the API sent them, in JSON and in the plain output."""
    assert main(["status", "--json", "--show-secrets"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["credentials"]["secret_key"] == SECRET
    assert main(["status", "--show-secrets"]) == EXIT_OK
    assert f'secret_key="{SECRET}"' in capsys.readouterr().out


# --- progress ----------------------------------------------------------------------------------------


def test_progress_on_a_terminal_fits_its_width_and_shows_rate_and_eta(env: WemasyEmulator) -> None:
    """On a terminal 60 columns wide, every redraw of the bar fits in it; it shows the ids done, the time
    spent and left ([elapsed<ETA]) and the rate; stdout keeps only the summary."""
    code, out, written = run_in_terminal(["push", "1-200", "--chunk-size", "10", "--concurrency", "1"], columns=60)
    assert code == EXIT_OK
    assert out.startswith("accepted 200")
    lines = terminal_lines(written)
    assert lines
    assert all(len(line) < 60 for line in lines), lines
    assert re.search(r"200/200 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+ids/s\]", lines[-1]), lines[-1]


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
def test_progress_on_a_wider_terminal_uses_its_width(env: WemasyEmulator) -> None:
    """The bar grows with the terminal (a hand-padded line would not)."""
    _, _, narrow = run_in_terminal(["push", "1-20", "--chunk-size", "10"], columns=50)
    _, _, wide = run_in_terminal(["push", "21-40", "--chunk-size", "10"], columns=120)
    assert max(map(len, terminal_lines(narrow))) < 50
    assert 100 < max(map(len, terminal_lines(wide))) < 120


@pytest.mark.once  # the CLI in another process, waiting real windows for its lines
@pytest.mark.wemasy_emulator(limit=3, window_seconds=1.0)
def test_progress_off_a_terminal_is_a_line_every_few_seconds(wemasy_emulator: WemasyEmulator) -> None:
    """stderr a pipe (cron, a container's log): no bar, but a line every --progress-every seconds with the
    ids done of the total, the rate, the 429s and the wait under way; stdout holds only the result."""
    command = [sys.executable, "-m", "wemasy_async", "push", "1-12", "--chunk-size", "1", "--progress-every", "0.5"]
    command += ["--base-url", wemasy_emulator.base_url, "--token", TOKEN, "--window-seconds", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == EXIT_OK, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("wemasy-async: ")]
    assert lines, done.stderr
    pattern = (
        r"wemasy-async: (\d+) of 12 ids \(\d+\.\d%\), \d+ ids/s, 0 x 429"
        r"(, waiting \d+ s (for the rate-limit window|for slots kept for interactive calls))?"
    )
    assert all(re.fullmatch(pattern, line) for line in lines), lines
    counts = [int(re.findall(r"\d+", line)[0]) for line in lines]
    assert counts == sorted(counts)
    assert "\r" not in done.stderr  # no bar drawn
    assert "wemasy-async:" not in done.stdout


@pytest.mark.once  # the CLI in a pseudo-terminal, waiting a real window
@pytest.mark.wemasy_emulator(limit=2, window_seconds=3)
def test_progress_counts_down_a_wait_for_the_window(wemasy_emulator: WemasyEmulator) -> None:
    """When the window's budget is spent, the bar counts down the wait for the next window, second by
    second, and the countdown is gone once the wait is over. (An interactive push: a bulk one would take
    the window's last slot near its end, and count that wait down.)"""
    argv = ["push", "1-3", "--chunk-size", "1", "--concurrency", "1", "--window-seconds", "3"]
    argv += ["--base-url", wemasy_emulator.base_url, "--token", TOKEN, "--priority", "interactive"]
    code, _, written = run_in_terminal(argv, columns=80)
    assert code == EXIT_OK
    lines = terminal_lines(written)
    waits = [re.match(r"waiting (\d+) s for the rate-limit window: ", line) for line in lines if "waiting" in line]
    assert waits
    assert all(waits), lines
    seconds = [int(match[1]) for match in waits if match]
    # Redrawn as each second passes (at least two of 3, 2, 1, whatever the machine's load), counting down.
    assert len(set(seconds)) >= 2, lines
    assert seconds == sorted(seconds, reverse=True)
    assert max(seconds) <= 3
    assert "waiting" not in lines[-1]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_the_wait_countdown_follows_the_clock() -> None:
    """The countdown shows the whole seconds left, goes down as time passes and disappears at the end."""
    from wemasy_async.budgets import RetryEvent, WaitEvent
    from wemasy_async.cli import PushProgress

    now = [100.0]
    screen = FakeTerminal()
    progress = PushProgress(screen, enabled=True, clock=lambda: now[0])
    progress.start(10)
    try:
        progress.on_event(WaitEvent(reason="window", seconds=41.2))
        assert "waiting 42 s for the rate-limit window" in screen.getvalue()
        now[0] += 1.5
        progress.refresh_wait()
        assert progress.wait_description() == "waiting 40 s for the rate-limit window"
        progress.on_event(WaitEvent(reason="probe", seconds=None))  # waits without a known end are not counted
        progress.on_event(RetryEvent(attempt=2, delay=0.5, cause="503", method="POST", path="/x"))
        assert progress.wait_description() == "waiting 40 s for the rate-limit window"
        now[0] += 40
        progress.refresh_wait()
        assert progress.wait_description() == ""
        assert progress.bar.desc == ""
        progress.on_event(WaitEvent(reason="gate", seconds=3))
        assert progress.wait_description() == "waiting 3 s after a 429 (rate limited)"
    finally:
        await progress.aclose()


def test_nothing_is_printed_to_a_stderr_that_is_not_a_terminal(env: WemasyEmulator) -> None:
    """Piped or redirected, stderr gets no progress at all (a log file stays clean)."""
    command = [sys.executable, "-m", "wemasy_async", "push", "1-50", "--chunk-size", "5"]
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == EXIT_OK, done.stderr
    assert done.stderr == ""
    assert done.stdout.startswith("accepted 50")


# --- input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("encoding", "newline"),
    [("utf-8-sig", "\n"), ("utf-16", "\r\n"), ("utf-16-be", "\r\n"), ("utf-32", "\n")],
    ids=["utf-8-bom", "utf-16-powershell", "utf-16-be-bom", "utf-32-bom"],
)
def test_files_with_a_byte_order_mark_are_read(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path, encoding: str, newline: str
) -> None:
    """A file saved with a BOM (Notepad's UTF-8, PowerShell's `>` in UTF-16) is read like plain UTF-8."""
    text = newline.join(["101", "102,103", "104-105", ""])
    data = text.encode(encoding)
    if encoding == "utf-16-be":
        data = codecs.BOM_UTF16_BE + data
    ids_file = tmp_path / "ids.txt"
    ids_file.write_bytes(data)
    assert main(["push", "--file", str(ids_file)]) == EXIT_OK
    assert env.queued == [101, 102, 103, 104, 105]


def test_utf16_on_standard_input_is_read(env: WemasyEmulator) -> None:
    """`Get-Content ids.txt | wemasy-async push -f -` in PowerShell pipes UTF-16 with a BOM: it is read."""
    command = [sys.executable, "-m", "wemasy_async", "push", "--file", "-", "--json"]
    data = "7\r\n8\r\n9\r\n".encode("utf-16")
    done = subprocess.run(command, input=data, capture_output=True, check=False, timeout=120)
    assert done.returncode == EXIT_OK, done.stderr
    assert env.queued == [7, 8, 9]


def test_undecodable_bytes_name_the_file_and_line(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Bytes that are not UTF-8 (a Latin-1 export) are a usage error naming the file and line, not a
    traceback; nothing is sent."""
    ids_file = tmp_path / "export.csv"
    ids_file.write_bytes(b"1\n2\n3 caf\xe9\n4\n")
    assert main(["push", "--file", str(ids_file)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"wemasy-async: {ids_file}: cannot be read as UTF-8 text (line 3")
    assert "Traceback" not in err
    assert env.requests == []


def test_utf16_without_a_byte_order_mark_is_refused_clearly(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """UTF-16 without a BOM decodes as UTF-8 full of NULs: refused with a message that says what it is."""
    ids_file = tmp_path / "ids.txt"
    ids_file.write_bytes("1\n2\n".encode("utf-16-le"))
    assert main(["push", "--file", str(ids_file)]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{ids_file}, line 1 holds NUL characters: is it UTF-16 without a byte-order mark?" in err
    assert env.requests == []


def test_undecodable_standard_input_is_a_usage_error_without_traceback(env: WemasyEmulator) -> None:
    """The same through a pipe, in a real process: exit 2 and one line naming standard input."""
    command = [sys.executable, "-m", "wemasy_async", "push", "--file", "-"]
    done = subprocess.run(command, input=b"1\n\xff\xfe\xfd\n", capture_output=True, check=False, timeout=120)
    assert done.returncode == EXIT_USAGE
    assert done.stderr.decode().startswith("wemasy-async: standard input: cannot be read as UTF-8 text (line 2")
    assert b"Traceback" not in done.stderr


def test_a_bad_id_names_its_file_and_line(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The bad token, its file and its line number: enough to fix it at once. Nothing is sent."""
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("1\n2,3\n\n4, 5x\n6\n")
    assert main(["push", "--file", str(ids_file)]) == EXIT_USAGE
    assert f"not an order id or a range like 1-5000: '5x' ({ids_file}, line 4)" in capsys.readouterr().err
    assert env.requests == []


@pytest.mark.parametrize("bad", ["0", "5-3", "-4", "1.5", "١٢", "1_000"])
def test_what_is_not_a_positive_id_or_range_is_refused(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    """Zero, backwards ranges, signs, decimals and non-ASCII digits are refused, naming the argument."""
    assert main(["push", "1", bad]) == EXIT_USAGE
    assert f"{bad!r} (argument 2)" in capsys.readouterr().err
    assert env.requests == []


def test_a_huge_range_is_refused_without_yes_before_anything_is_read_or_sent(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """`push 1-100000000` (a typo) is refused at once, naming the range and --yes; nothing is sent."""
    assert main(["push", "1-100000000"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "the range 1-100000000 (argument 1) holds 100,000,000 ids, more than 1,000,000: give --yes" in err
    assert env.requests == []


def test_too_many_ids_in_all_are_refused_without_yes(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The limit counts every id, across arguments and the file, and --yes lifts it."""
    import wemasy_async.cli

    monkeypatch.setattr(wemasy_async.cli, "MAX_IDS_WITHOUT_YES", 10)
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("7\n8\n9\n10\n")
    assert main(["push", "1-4", "11-13", "--file", str(ids_file)]) == EXIT_USAGE
    assert f"more than 10 ids in all (at {ids_file}, line 4): give --yes" in capsys.readouterr().err
    assert env.requests == []
    assert main(["push", "1-4", "11-13", "--file", str(ids_file), "--yes"]) == EXIT_OK
    assert env.queued == [1, 2, 3, 4, 11, 12, 13, 7, 8, 9, 10]


def test_ranges_are_read_lazily() -> None:
    """The ids a command line names come one at a time: a range of a trillion is not built to read its
    first ids (with --yes), and is refused without it before one id is read."""
    import argparse
    import itertools

    from wemasy_async.cli import IdCount, UsageError, _order_ids

    args = argparse.Namespace(ids=["5", "1-1000000000000"], file=None)
    assert list(itertools.islice(_order_ids(args, IdCount(allowed=True)), 4)) == [5, 1, 2, 3]
    ids = _order_ids(args, IdCount(allowed=False))
    assert next(ids) == 5
    with pytest.raises(UsageError, match="--yes"):
        next(ids)


def test_no_ids_at_all_is_a_usage_error(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No ids, or a file with none, exits 2 saying so: never "accepted 0"."""
    assert main(["push"]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert "no order ids: give ids or ranges as arguments" in captured.err
    empty = tmp_path / "empty.txt"
    empty.write_bytes(codecs.BOM_UTF8 + b"\n \n")
    assert main(["push", "--file", str(empty)]) == EXIT_USAGE
    captured = capsys.readouterr()
    assert f"no order ids in {empty}" in captured.err
    assert "accepted" not in captured.out
    assert env.requests == []


def test_a_missing_file_is_a_usage_error_naming_it(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    missing = tmp_path / "nope.txt"
    assert main(["push", "--file", str(missing)]) == EXIT_USAGE
    assert f"cannot read {missing}: No such file or directory" in capsys.readouterr().err


# --- messages, options and help ------------------------------------------------------------------------


def test_a_missing_token_is_told_in_the_command_lines_words(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], wemasy_emulator: WemasyEmulator
) -> None:
    """It says --token or WEMASY_API_TOKEN, not the Python argument."""
    monkeypatch.delenv("WEMASY_API_TOKEN", raising=False)
    assert main(["push", "1", "--base-url", wemasy_emulator.base_url]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "give --token or set WEMASY_API_TOKEN" in err
    assert "token=" not in err
    assert "WemasyClient" not in err


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (
            "no API token: pass token=... to WemasyClient or set the WEMASY_API_TOKEN environment variable",
            "no API token: give --token or set WEMASY_API_TOKEN",
        ),
        (
            "base_url must not contain credentials; pass the token as token=...",
            "--base-url (or $WEMASY_BASE_URL) must not contain credentials; give the token with --token or "
            "WEMASY_API_TOKEN",
        ),
        ("timeout must be positive seconds or None, got 0", "--timeout must be positive seconds, got 0"),
        ("chunk_size must be a positive int, got 0", "--chunk-size must be a positive int, got 0"),
        (
            "The rate limit's gate is closed for 300 s, longer than this call waits (RetryPolicy.max_wait=120 s).",
            "The rate limit's gate is closed for 300 s, longer than this call waits (at most 120 s).",
        ),
        (
            "HTTPS_PROXY (from the environment) is not a usable http:// proxy URL; fix it, list api.wemasy.nl in "
            "NO_PROXY, or pass trust_env=False",
            "HTTPS_PROXY (from the environment) is not a usable http:// proxy URL; fix it, list api.wemasy.nl in "
            "NO_PROXY, or unset it",
        ),
    ],
)
def test_client_messages_are_put_in_the_command_lines_words(message: str, expected: str) -> None:
    from wemasy_async.cli import cli_message

    assert cli_message(message) == expected


def test_credentials_in_the_base_url_are_refused_in_cli_words(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """The client's own message, as the command line says it, without the password."""
    assert main(["status", "--base-url", "https://user:hunter2@example.com/api"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "--base-url" in err
    assert "--token" in err
    assert "token=" not in err
    assert "hunter2" not in err


def test_plain_http_is_refused_with_the_flag_that_allows_it(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str]
) -> None:
    """A non-loopback http:// base URL is refused, naming --allow-insecure-http; with it, the call is made.

    0.0.0.0 is not a loopback name to the client, yet connecting to it reaches this machine (Linux), so the
    emulator answers without any traffic leaving the host."""
    insecure = env.base_url.replace("127.0.0.1", "0.0.0.0")
    assert main(["status", "--base-url", insecure]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "give --allow-insecure-http" in err
    assert "allow_insecure_http" not in err
    assert env.requests == []
    assert main(["status", "--base-url", insecure, "--allow-insecure-http"]) == EXIT_OK
    assert "active=True" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["push", "1", "--timeout", "0"], "argument --timeout: must be more than 0, got 0"),
        (["push", "1", "--chunk-size", "0"], "argument --chunk-size: must be at least 1, got 0"),
        (["push", "1", "--max-attempts", "two"], "argument --max-attempts: not a whole number: 'two'"),
        (["serve", "--error-rate", "1.5"], "argument --error-rate: must be between 0 and 1, got 1.5"),
        (["status", "--window-seconds", "nan"], "argument --window-seconds: must be more than 0, got nan"),
    ],
)
def test_bad_option_values_are_usage_errors(argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Numbers out of range are refused by the parser with exit 2 and the option's name, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == EXIT_USAGE
    assert expected in capsys.readouterr().err


@pytest.mark.parametrize("command", ["status", "push", "serve", "demo"])
def test_every_option_has_help_and_its_default(command: str, capsys: pytest.CaptureFixture[str]) -> None:
    """In each command's --help, every option says what it does and what it is when not given."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    options = text.split("options:\n", 1)[1]
    entries: list[str] = []
    for line in options.splitlines():
        if line.startswith("  -"):
            entries.append(line)
        elif line.startswith("   ") and entries:
            entries[-1] += " " + line.strip()
    assert len(entries) > 2
    for entry in entries:
        if entry.lstrip().startswith("-h, --help"):
            continue
        assert "(default" in entry, entry  # argparse shows no help line, and so no default, without help text


# --- the library's log --------------------------------------------------------------------------------


@pytest.fixture
def library_log() -> Iterator[logging.Logger]:
    """The library's logger, restored after the test (the command line configures it once per process)."""
    log = logging.getLogger("wemasy_async")
    handlers, level = list(log.handlers), log.level
    try:
        yield log
    finally:
        log.handlers[:] = handlers
        log.setLevel(level)


def test_verbose_writes_the_librarys_log_without_the_token(
    env: WemasyEmulator, capsys: pytest.CaptureFixture[str], library_log: logging.Logger
) -> None:
    """-v writes each exchange to stderr; the token is nowhere in it."""
    assert main(["push", "1-4", "--chunk-size", "2", "-v", "--token", TOKEN]) == EXIT_OK
    err = capsys.readouterr().err
    assert "wemasy_async DEBUG: POST http://127.0.0.1" in err
    assert err.count("-> 200") == 2
    assert TOKEN not in err


def test_wemasy_log_debug_in_the_environment_does_the_same(
    env: WemasyEmulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    library_log: logging.Logger,
) -> None:
    monkeypatch.setenv("WEMASY_LOG", "debug")
    assert main(["status"]) == EXIT_OK
    err = capsys.readouterr().err
    assert "GET http://127.0.0.1" in err
    assert "-> 200" in err
    assert TOKEN not in err


def test_without_verbose_or_wemasy_log_nothing_is_logged(
    env: WemasyEmulator,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    library_log: logging.Logger,
) -> None:
    monkeypatch.delenv("WEMASY_LOG", raising=False)
    assert main(["status"]) == EXIT_OK
    assert capsys.readouterr().err == ""


def test_setup_logging_from_env_is_idempotent(
    monkeypatch: pytest.MonkeyPatch, library_log: logging.Logger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Called by the command line and by every client, it adds one handler, once; `info` logs info,
    not debug; unset or unknown values add nothing."""
    from wemasy_async._logging import setup_logging_from_env

    before = list(library_log.handlers)
    monkeypatch.setenv("WEMASY_LOG", "verbose")
    setup_logging_from_env()
    assert library_log.handlers == before
    monkeypatch.setenv("WEMASY_LOG", "INFO")
    setup_logging_from_env()
    setup_logging_from_env()
    assert len(library_log.handlers) == len(before) + 1
    library_log.debug("not this")
    library_log.info("this")
    err = capsys.readouterr().err
    assert "wemasy_async INFO: this" in err
    assert "not this" not in err


# --- serve -------------------------------------------------------------------------------------------


def start_serve(*options: str) -> tuple[subprocess.Popen[str], list[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "wemasy_async", "serve", "--port", "0", *options], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    banner = [process.stdout.readline() for _ in range(5)]
    return process, banner


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
def test_serve_prints_the_client_options_that_match_its_window() -> None:
    """The options a client needs to keep to the emulator's window, for the shell, for Python, and for
    both through the environment."""
    process, banner = start_serve("--limit", "50", "--window", "1")
    try:
        base_url = banner[0].split(" at ")[1].split(" ")[0]
        assert banner[0].startswith(f"Wemasy emulator at {base_url} (50 requests per 1 s window)")
        assert f"wemasy-async push --base-url {base_url} --window-seconds 1 " in banner[1]
        assert f'WemasyClient(token=..., base_url="{base_url}", window_seconds=1)' in banner[2]
        assert f"export WEMASY_BASE_URL={base_url} WEMASY_WINDOW_SECONDS=1" in banner[3]
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == EXIT_OK
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.wemasy_emulator(limit=2, window_seconds=2.0)
def test_a_push_that_waits_long_for_an_assumed_window_says_how_to_give_the_servers(
    wemasy_emulator: WemasyEmulator,
) -> None:
    """Against the emulator on this machine with no --window-seconds (nor WEMASY_WINDOW_SECONDS), a push
    that must wait long for the 60 s window assumed says on stderr that the server's may be shorter and
    how to give it (the answers cannot tell the window's length)."""
    command = [sys.executable, "-m", "wemasy_async", "push", "1-10", "--chunk-size", "1"]
    command += ["--base-url", wemasy_emulator.base_url, "--token", TOKEN]
    env = {k: v for k, v in os.environ.items() if k != "WEMASY_WINDOW_SECONDS"}
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as process:
        try:
            assert process.stderr is not None
            line = process.stderr.readline()  # the first line it writes (progress lines come every 10 s)
            process.send_signal(signal.SIGINT)
            process.communicate(timeout=20)
        finally:
            process.kill()
    assert "the rate-limit window of 60 s, the window assumed" in line
    assert "--window-seconds or set WEMASY_WINDOW_SECONDS" in line


@pytest.mark.parametrize(
    ("options", "environment", "hinted"),
    [
        ({"base_url": "http://127.0.0.1:8080/api"}, {}, True),
        ({"base_url": "http://127.0.0.1:8080/api", "window_seconds": 2.0}, {}, False),
        ({"base_url": "http://127.0.0.1:8080/api"}, {"WEMASY_WINDOW_SECONDS": "2"}, False),
        ({"base_url": "https://api.wemasy.nl/api"}, {}, False),
    ],
)
def test_the_window_hint_is_for_an_assumed_window_on_this_machine_only(
    options: dict[str, object], environment: dict[str, str], hinted: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import argparse

    from wemasy_async.cli._commands import client_window_hint

    monkeypatch.delenv("WEMASY_WINDOW_SECONDS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    args = argparse.Namespace(**{"window_seconds": None, **options})
    assert (client_window_hint(args) is not None) is hinted


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
def test_serve_verbose_logs_each_request_and_a_summary_when_stopped() -> None:
    """serve -v: a line per request (method, path, status, ids, what the throttle left); on Ctrl-C, the
    requests by status and the ids pushed."""
    process, banner = start_serve("-v", "--limit", "1", "--window", "60")
    try:
        base_url = banner[0].split(" at ")[1].split(" ")[0]
        headers = {"Authorization": "Bearer t", "Accept": "application/json"}
        status_url = base_url + "/services/webshop/v1/integrations/sendcloud/status"
        with urllib.request.urlopen(urllib.request.Request(status_url, headers=headers), timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as throttled:
            urllib.request.urlopen(urllib.request.Request(status_url, headers=headers), timeout=10)
        assert throttled.value.code == 429
        throttled.value.close()
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=20)
    finally:
        process.kill()
        process.wait()
    lines = out.splitlines()
    assert re.fullmatch(
        r" *\d+\.\d{3} GET /services/webshop/v1/integrations/sendcloud/status 200 remaining 0", lines[0]
    )
    assert re.fullmatch(
        r" *\d+\.\d{3} GET /services/webshop/v1/integrations/sendcloud/status 429 .*retry-after \d+", lines[1]
    )
    assert lines[-1] == "served 2 requests (1 x 200, 1 x 429); 0 order ids in pushes answered 200"


@pytest.mark.once  # other processes (the CLI, killed or locked batches): not this Python's code path
def test_serve_accepts_the_tokens_it_is_given_and_forbids_others() -> None:
    """--token lists the tokens accepted (others: 401), --forbidden-token those answered 403; the banner
    counts them without printing them."""
    process, banner = start_serve("--token", "good-one", "--token", "good-two", "--forbidden-token", "banned")
    try:
        base_url = banner[0].split(" at ")[1].split(" ")[0]
        assert banner[-1].strip() == "tokens: the 2 given with --token; 1 answered 403"
        assert not any(token in "".join(banner) for token in ("good-one", "good-two", "banned"))

        def status_of(token: str) -> int:
            request = urllib.request.Request(
                base_url + "/services/webshop/v1/integrations/sendcloud/status",
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            )
            try:
                with urllib.request.urlopen(request, timeout=20) as response:
                    return int(response.status)
            except urllib.error.HTTPError as error:
                return error.code

        assert status_of("good-two") == 200
        assert status_of("someone-else") == 401
        assert status_of("banned") == 403
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


@pytest.mark.parametrize("module", ["wemasy_async", "wemasy_async.cli"])
def test_the_command_runs_as_a_module(module: str) -> None:
    """``python -m wemasy_async`` and ``python -m wemasy_async.cli`` are the command, as before the CLI was a
    package."""
    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wemasy-async ")


def test_the_human_summary_tells_every_place_an_id_ended_in() -> None:
    """Without --json the push's summary names each place that holds ids, the unreported ones too (an
    answer that named none of them is told, not left out)."""
    from wemasy_async import ChunkFailure, OrderRejection, PushDetails, PushResult, PushSummary, ServerError
    from wemasy_async.cli._output import print_push_result

    result = PushResult(
        summary=PushSummary(1, 1, 0, 0, 1),
        details=PushDetails(new_orders=("1",)),
        rejected=(OrderRejection(2, "The selected order_ids.1 is invalid."),),
        failed=(ChunkFailure((3, 4), ServerError("boom", status_code=500, body=None, raw_text="", headers=None)),),
        unreported=(5,),
        in_doubt=(6, 7),
        not_sent=(8, 9, 10),
    )
    out = io.StringIO()
    print_push_result(result, out)
    lines = out.getvalue().splitlines()
    assert lines[1:] == [
        "rejected 2: The selected order_ids.1 is invalid.",
        "failed 2 ids: HTTP 500: boom",
        "unreported: 1 ids (answered, but named by none of new, retry or skipped)",
        "in doubt: 2 ids (under way when the push stopped)",
        "not sent: 3 ids (the push stopped first)",
    ]
