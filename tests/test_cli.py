"""``python -m isstreamer_jupyter demo | serve | upload`` as a user runs them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import requests

CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith("IS_")}


def test_demo_is_the_main_job_and_needs_no_account(tmp_path):
    done = subprocess.run([sys.executable, "-m", "isstreamer_jupyter", "demo", "--points", "5"],
                          capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env=CLEAN_ENV)
    assert done.returncode == 0, done.stderr
    assert "logged 16 events" in done.stdout
    assert "recorded locally to build/demo_recording.csv" in done.stdout
    rows = [r for r in (tmp_path / "build/demo_recording.csv").read_text().splitlines()
            if not r.startswith("#")]
    assert len(rows) == 16


def test_serve_runs_the_receiver_until_interrupted(tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "isstreamer_jupyter", "serve", "--port", "0",
                               "--rate-limit", "5"], stdout=subprocess.PIPE, text=True,
                              env=CLEAN_ENV, cwd=tmp_path)
    try:
        line = server.stdout.readline()
        assert line.startswith("receiver listening on http://127.0.0.1:")
        api = line.split()[3]
        answer = requests.post(f"{api}/events", json={"key": "t", "value": 1},
                               headers={"X-IS-AccessKey": "k", "X-IS-BucketKey": "b"},
                               timeout=5)
        assert answer.status_code == 204
        assert answer.headers["X-RateLimit-Limit"] == "5"
    finally:
        server.send_signal(signal.SIGINT)
        summary, _ = server.communicate(timeout=10)
    assert server.returncode == 0
    assert "receiver stopped: 1 events in 1 buckets from 1 requests" in summary
