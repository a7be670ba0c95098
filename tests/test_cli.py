"""The command line, run in-process against the emulator, without a terminal."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import TOKEN
from wemasy_async.cli import EXIT_INCOMPLETE, EXIT_OK, EXIT_USAGE, main
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
    """Ids and ranges on the command line are pushed; the summary goes to stdout."""
    assert main(["push", "5", "1-3", "7,8", "--chunk-size", "2"]) == EXIT_OK
    assert env.queued == [5, 1, 2, 3, 7, 8]
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


def test_ctrl_c_stops_a_push_and_still_prints_what_was_done(wemasy_emulator: WemasyEmulator) -> None:
    """SIGINT mid-batch: exit 130, one JSON document saying what was accepted before it, nothing lost."""
    wemasy_emulator.faults.delay_seconds = 0.2
    command = [sys.executable, "-m", "wemasy_async", "push", "1-1000", "--chunk-size", "10", "--json"]
    command += ["--base-url", wemasy_emulator.base_url, "--token", TOKEN]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert wemasy_emulator.wait_for_active(count=1, timeout=20)
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=20)
        finally:
            process.kill()
    assert process.returncode == 130
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


def test_push_shares_the_budget_through_redis(env: WemasyEmulator, redis_url: str) -> None:
    """--redis-url puts the token's budget in Redis, where other processes find it."""
    import redis

    from wemasy_async._redis_budget import redis_keys

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
