# SPDX-License-Identifier: MPL-2.0
"""A small load test: 50 state-monitor long polls and 10 history readers for
about 5 s while the (fake) instance keeps publishing states and writing
console output. No request may fail and every answer must match the
documents."""
import threading
import time

import requests

from conftest import Api, check_answer

WAITERS = 50
READERS = 10
SECONDS = 5


def test_monitors_and_history_under_load(server, running):
    stop = threading.Event()
    failures = []
    counts = {"monitor": 0, "history": 0, "published": 0}
    lock = threading.Lock()

    def fail(what):
        with lock:
            failures.append(what)

    def waiter():
        s = requests.Session()
        gen = 1
        while not stop.is_set():
            try:
                r = s.get(server.url("/instance/state-monitor"), json={"gen": gen}, timeout=15)
                check_answer("GET", "/instance/state-monitor", r)
                if r.status_code != 200 or r.json()["gen"] < gen:
                    fail(f"monitor {gen}: {r.status_code} {r.text[:200]}")
                    return
                gen = r.json()["gen"] + 1
                with lock:
                    counts["monitor"] += 1
            except Exception as e:  # noqa: BLE001 - every failure counts
                fail(f"monitor {gen}: {e!r}")
                return

    def reader():
        s = requests.Session()
        while not stop.is_set():
            try:
                r = s.get(server.url("/instance/serial/history?most_recent=4096"), timeout=15)
                check_answer("GET", "/instance/serial/history", r)
                if r.status_code != 200:
                    fail(f"history: {r.status_code} {r.text[:200]}")
                    return
                with lock:
                    counts["history"] += 1
            except Exception as e:  # noqa: BLE001
                fail(f"history: {e!r}")
                return

    threads = [threading.Thread(target=waiter) for _ in range(WAITERS)]
    threads += [threading.Thread(target=reader) for _ in range(READERS)]
    for t in threads:
        t.start()
    end = time.time() + SECONDS
    states = ["Rebooting", "Running"]
    while time.time() < end and not failures:
        server.cmd("state " + states[counts["published"] % 2])
        server.cmd("write " + (b"x" * 200 + b"\n").hex())
        counts["published"] += 1
        time.sleep(0.05)
    stop.set()
    # Waiters blocked on a generation that will not come are released by
    # one last state change.
    server.cmd("state Running")
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert not failures, failures[:5]
    assert counts["monitor"] >= WAITERS * 10, counts
    assert counts["history"] > READERS, counts
    print("load:", counts)
    # The server is still fine.
    Api(server).get("/instance", expect=200)
