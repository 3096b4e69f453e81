"""The resumable bundle download against a real HTTP server on loopback, with its fault knobs
(after Mender's resume table): cuts, a wrong Content-Range, a 200 for a range, 404, 503, a
slow link, a changed file, a cancel, a kill -9, a file that is not the one signed."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

from edgeloop.sync.fetch import Fetcher, FetchCancelled, FetchError, FetchPolicy, Progress
from edgeloop.tools.testing.bundle_server import BundleServer

SIZE = 2 * 1024 * 1024 + 123
FAST = FetchPolicy(backoff_s=0.01, backoff_cap_s=0.05, sync_every_bytes=256 * 1024)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    data = random.Random(7).randbytes(SIZE)
    (root / "model.tflite").write_bytes(data)
    with BundleServer(root) as server:
        yield server, data, hashlib.sha256(data).hexdigest(), tmp_path / "device"


def fetch(server, sha, dest_dir, policy=FAST, progress=None, fetcher=None):
    dest_dir.mkdir(exist_ok=True)
    return (fetcher or Fetcher(policy)).fetch(f"{server.url}/model.tflite", dest_dir / "model.tflite", SIZE, sha,
                                              progress)


def test_a_whole_download_is_verified_and_renamed_into_place(served):
    server, data, sha, dest = served
    progress = Progress(SIZE)
    path = fetch(server, sha, dest, progress=progress)
    assert path.read_bytes() == data and not list(dest.glob("*.part*"))
    assert progress.fetched == SIZE and progress.attempts == 1 and server.sent["model.tflite"] == SIZE


def test_ten_random_cuts_cost_at_most_five_percent_more_bytes(served):
    server, data, sha, dest = served
    rng = random.Random(1)
    server.knobs.cuts.extend(rng.randrange(1, SIZE // 10) for _ in range(10))
    progress = Progress(SIZE)
    assert fetch(server, sha, dest, progress=progress).read_bytes() == data
    ranged = [r for r in server.requests if r[1]]
    assert progress.attempts == 11 and len(ranged) == 10 and progress.restarts == 0, server.requests
    assert server.sent["model.tflite"] <= 1.05 * SIZE, server.sent


def test_a_wrong_content_range_is_never_appended_and_the_file_starts_over(served):
    server, data, sha, dest = served
    server.knobs.cuts.append(SIZE // 3)
    server.knobs.wrong_content_range = 1
    progress = Progress(SIZE)
    assert fetch(server, sha, dest, progress=progress).read_bytes() == data
    assert progress.restarts == 1 and "Content-Range" in (progress.last_error or "")


def test_a_200_for_a_range_restarts_with_the_whole_file(served):
    server, data, sha, dest = served
    server.knobs.cuts.append(SIZE // 2)
    server.knobs.ignore_range = 1
    progress = Progress(SIZE)
    assert fetch(server, sha, dest, progress=progress).read_bytes() == data
    assert progress.restarts == 1 and [s for _, _, s in server.requests] == [200, 200, 206][:len(server.requests)]


def test_a_changed_file_fails_if_range_and_is_fetched_whole(served):
    server, data, sha, dest = served
    server.knobs.cuts.append(SIZE // 2)
    with pytest.raises(FetchError):
        fetch(server, sha, dest, policy=FetchPolicy(max_attempts=1))
    server.knobs.etag_salt = "changed"  # If-Range no longer matches: the server answers 200
    progress = Progress(SIZE)
    assert fetch(server, sha, dest, progress=progress).read_bytes() == data
    assert progress.restarts == 1 and server.requests[-1][2] == 200 and server.requests[-1][1]


def test_a_404_fails_for_good_in_bounded_time_with_the_reason(served):
    server, data, sha, dest = served
    server.knobs.always_status["model.tflite"] = 404
    start = time.monotonic()
    with pytest.raises(FetchError) as err:
        fetch(server, sha, dest)
    assert err.value.permanent and err.value.reason == "http 404" and "3 times" in str(err.value)
    assert len(server.requests) == 3 and time.monotonic() - start < 5


def test_503_with_retry_after_is_waited_out(served):
    server, data, sha, dest = served
    server.knobs.statuses.extend([503, 503, 429])
    server.knobs.retry_after_s = 0.2
    start = time.monotonic()
    progress = Progress(SIZE)
    policy = FetchPolicy(backoff_s=0.01, backoff_cap_s=5.0)
    assert fetch(server, sha, dest, policy=policy, progress=progress).read_bytes() == data
    assert progress.attempts == 4 and 0.6 <= time.monotonic() - start < 3


def test_a_slow_link_is_cut_and_retried(served):
    server, data, sha, dest = served
    server.knobs.slow_bps = 64 * 1024
    policy = FetchPolicy(backoff_s=0.01, low_speed_bps=512 * 1024, low_speed_s=0.5, max_attempts=2)
    progress = Progress(SIZE)
    with pytest.raises(FetchError) as err:
        fetch(server, sha, dest, policy=policy, progress=progress)
    assert "B/s for" in progress.last_error and err.value.reason == "attempt budget"
    assert 0 < progress.have < SIZE  # what came is kept
    server.knobs.slow_bps = None
    assert fetch(server, sha, dest).read_bytes() == data
    assert server.sent["model.tflite"] <= 1.05 * SIZE


def test_cancel_stops_the_download_and_a_later_deployment_resumes(served):
    server, data, sha, dest = served
    server.knobs.slow_bps = 2 * 1024 * 1024
    fetcher = Fetcher(FAST)
    threading.Timer(0.3, fetcher.cancel).start()
    progress = Progress(SIZE)
    with pytest.raises(FetchCancelled):
        fetch(server, sha, dest, fetcher=fetcher, progress=progress)
    assert 0 < progress.have < SIZE
    server.knobs.slow_bps = None
    assert fetch(server, sha, dest).read_bytes() == data
    assert server.sent["model.tflite"] <= 1.05 * SIZE


def test_a_file_that_is_not_the_one_signed_is_refused_and_not_resumed(served):
    server, data, sha, dest = served
    with pytest.raises(FetchError) as err:
        fetch(server, hashlib.sha256(b"another").hexdigest(), dest)
    assert err.value.reason == "hash mismatch" and not err.value.permanent
    assert not (dest / "model.tflite").exists() and (dest / "model.tflite.part").stat().st_size == 0


def test_budgets_end_a_download_that_never_completes(served):
    server, data, sha, dest = served
    server.knobs.cuts.extend([SIZE // 4] * 100)
    server.knobs.ignore_range = 100  # every retry starts over: bytes pile up
    progress = Progress(SIZE)
    with pytest.raises(FetchError) as err:
        fetch(server, sha, dest, policy=FetchPolicy(backoff_s=0.001, byte_budget_factor=1.5, byte_budget_extra=0),
              progress=progress)
    assert err.value.reason == "byte budget" and err.value.permanent
    budget = int(1.5 * SIZE)
    assert budget <= progress.fetched <= budget + 64 * 1024
    assert server.sent["model.tflite"] <= budget + SIZE // 4  # what the server had written when it stopped


def test_a_state_file_of_another_target_is_not_resumed(served):
    server, data, sha, dest = served
    dest.mkdir()
    (dest / "model.tflite.part").write_bytes(b"x" * 1000)
    (dest / "model.tflite.part.json").write_text(json.dumps({"sha256": "0" * 64, "length": SIZE, "offset": 1000}))
    assert fetch(server, sha, dest).read_bytes() == data


KILLED = """
import sys
from pathlib import Path
from edgeloop.sync.fetch import Fetcher, FetchPolicy
Fetcher(FetchPolicy(sync_every_bytes=128 * 1024)).fetch(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
"""


def test_kill_9_mid_download_resumes_from_the_last_durable_offset(served):
    server, data, sha, dest = served
    dest.mkdir()
    server.knobs.slow_bps = 1024 * 1024
    proc = subprocess.Popen([sys.executable, "-c", KILLED, f"{server.url}/model.tflite", str(dest / "model.tflite"),
                             str(SIZE), sha])
    state_file = dest / "model.tflite.part.json"

    def durable_offset() -> int:
        try:
            return json.loads(state_file.read_text())["offset"]
        except (OSError, ValueError):
            return 0

    deadline = time.monotonic() + 30  # what the client made durable, not what the server wrote
    while durable_offset() < SIZE // 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = server.sent["model.tflite"]
    state = json.loads(state_file.read_text())
    assert SIZE // 3 <= state["offset"] <= before
    server.knobs.slow_bps = None
    progress = Progress(SIZE)
    assert fetch(server, sha, dest, progress=progress).read_bytes() == data
    assert progress.fetched == SIZE - state["offset"]
    assert server.sent["model.tflite"] <= SIZE + 128 * 1024 + 64 * 1024 + 16 * 1024
