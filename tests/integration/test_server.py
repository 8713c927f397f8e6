"""cella-server on real KVM: the Propolis v5 API with a real guest (issue 4)."""
import json
import threading
import time

import pytest
import websocket

from conftest import ensure_body, small_config, spec_from_toml

READY = b"CELLA-GUEST-READY"


class Monitor:
    """Follows the state monitor and records every (gen, state) it sees."""

    def __init__(self, srv):
        self.srv = srv
        self.seen = []
        self.gen = 0

    def wait_for(self, state, timeout=120):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.srv.get("/instance/state-monitor", json={"gen": self.gen + 1}, timeout=timeout)
            if r.status_code == 410:
                raise AssertionError(f"instance gone while waiting for {state}: {self.seen}")
            assert r.status_code == 200, r.text
            body = r.json()
            if body["gen"] > self.gen:
                assert not self.seen or body["gen"] > self.seen[-1][0]
                self.seen.append((body["gen"], body["state"]))
                self.gen = body["gen"]
            if body["state"] == state:
                return body
        raise AssertionError(f"no {state} within {timeout} s: {self.seen}")


class Console:
    def __init__(self, srv, query=""):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{srv.port}/instance/serial{query}", timeout=120)
        self.buf = b""

    def read_until(self, needle, timeout=120):
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            op, data = self.ws.recv_data()
            if op == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"console closed before {needle!r}; got {self.buf[-300:]!r}")
            if op == websocket.ABNF.OPCODE_BINARY:
                self.buf += data
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r}; got {self.buf[-300:]!r}")
        i = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def run(self, cmd):
        self.ws.send_binary(cmd.encode() + b"\n")
        out = self.read_until(b"CELLA-EXIT ")
        self.read_until(b"\n")
        return out

    def close(self):
        self.ws.close()


def guest_spec(tmp_path, cpus=2):
    return spec_from_toml(small_config(cpus=cpus, extra='[dev.pvpanic]\ndriver = "qemu-pvpanic"\n'),
                          tmp_path)


def test_lifecycle(server, tmp_path):
    srv = server()
    assert srv.get("/instance").json()["error_code"] == "NoInstance"
    r = srv.put("/instance", json=ensure_body(guest_spec(tmp_path)))
    assert r.status_code == 201, r.text
    assert r.json() == {"migrate": None}
    mon = Monitor(srv)
    mon.wait_for("Creating")
    spec = srv.get("/instance/spec").json()
    assert spec["spec"]["type"] == "Present"
    assert spec["spec"]["value"]["board"]["cpuid"]["entries"], "effective CPUID filled in"
    con = Console(srv)
    assert srv.put("/instance/state", json="Run").status_code == 204
    mon.wait_for("Running")
    con.read_until(READY)
    assert con.run("nproc").replace(b"\r", b"").endswith(b"2\nCELLA-EXIT ")
    assert srv.put("/instance/state", json="Reboot").status_code == 204
    mon.wait_for("Running")
    con.read_until(READY)
    assert srv.put("/instance/state", json="Stop").status_code == 204
    mon.wait_for("Destroyed")
    states = [s for _, s in mon.seen]
    # A long poll answers with the newest state, so a fast pair of changes may
    # show only the second; the generation counts every published change:
    # Creating Starting Running Rebooting Running Stopping Stopped Destroyed.
    for want in ("Creating", "Running", "Rebooting", "Destroyed"):
        assert want in states, states
    assert mon.gen == 8, mon.seen
    gens = [g for g, _ in mon.seen]
    assert gens == sorted(set(gens)), "generations only increase"
    r = srv.get("/instance/state-monitor", json={"gen": mon.gen + 1})
    assert r.status_code == 410
    assert srv.get("/instance").json()["instance"]["state"] == "Destroyed"
    con.close()


def test_guest_poweroff_and_history(server, tmp_path):
    srv = server()
    assert srv.put("/instance", json=ensure_body(guest_spec(tmp_path, cpus=1))).status_code == 201
    mon = Monitor(srv)
    assert srv.put("/instance/state", json="Run").status_code == 204
    con = Console(srv)
    con.read_until(READY)
    h = srv.get("/instance/serial/history", params={"from_start": 0, "max_bytes": 1 << 20}).json()
    data = bytes(h["data"])
    assert READY in data
    assert h["last_byte_offset"] == len(data)
    tail = srv.get("/instance/serial/history", params={"most_recent": 10}).json()
    assert bytes(tail["data"]) == data[-10:]
    far = srv.get("/instance/serial/history", params={"from_start": 1 << 40}).json()
    assert far["data"] == [] and far["last_byte_offset"] == len(data)
    assert srv.get("/instance/serial/history",
                   params={"from_start": 0, "most_recent": 5}).status_code == 400
    # Two clients at once, one of which never reads.
    idle = Console(srv, "?from_start=0")
    other = Console(srv, "?most_recent=0")
    out = con.run("echo two-clients")
    assert b"two-clients" in out
    other.read_until(b"two-clients")
    con.ws.send_binary(b"poweroff -f\n")
    mon.wait_for("Destroyed")
    for c in (con, idle, other):
        c.close()


def test_bad_input_is_refused_and_guest_unaffected(server, tmp_path):
    srv = server()
    assert srv.put("/instance/state", json="Run").status_code == 424
    bad = srv.put("/instance", data=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "request_id" in bad.json()
    body = ensure_body(guest_spec(tmp_path))
    body["init"]["value"]["spec"]["bogus"] = 1
    r = srv.put("/instance", json=body)
    assert r.status_code == 400 and "bogus" in r.json()["message"]
    body = ensure_body(guest_spec(tmp_path))
    body["init"]["value"]["spec"]["board"]["cpus"] = 0
    r = srv.put("/instance", json=body)
    assert r.status_code == 400 and "/board/cpus" in r.json()["message"]
    r = srv.put("/instance", data=b"[" * 10 + b" " * (80 << 20))
    assert r.status_code in (400, 413)
    assert srv.get("/no/such/route").status_code == 404
    assert srv.put("/instance", json=ensure_body(guest_spec(tmp_path))).status_code == 201
    assert srv.put("/instance", json=ensure_body(guest_spec(tmp_path))).json()["error_code"] == \
        "AlreadyInitialized"
    r = srv.put("/instance/state", json="Reboot")
    assert r.status_code == 403, r.text
    assert srv.put("/instance/state", json="Dance").status_code == 400
    assert srv.put("/instance/state", json="Run").status_code == 204
    mon = Monitor(srv)
    mon.wait_for("Running")
    con = Console(srv, "?from_start=0")
    con.read_until(READY)
    assert srv.post("/instance/nmi").status_code in (200, 204)
    assert b"still-here" in con.run("echo still-here")
    assert srv.put("/instance/state", json="Stop").status_code == 204
    mon.wait_for("Destroyed")
    assert srv.put("/instance/state", json="Run").status_code == 403
    con.close()


def test_many_waiters_and_readers(server, tmp_path):
    srv = server()
    assert srv.put("/instance", json=ensure_body(guest_spec(tmp_path, cpus=1))).status_code == 201
    assert srv.put("/instance/state", json="Run").status_code == 204
    Monitor(srv).wait_for("Running")
    failures = []
    stop = time.monotonic() + 5

    def waiter():
        import requests
        s = requests.Session()
        while time.monotonic() < stop:
            try:
                r = s.get(srv.url("/instance/state-monitor"), json={"gen": 1}, timeout=10)
                h = s.get(srv.url("/instance/serial/history"), params={"most_recent": 100},
                          timeout=10)
                if r.status_code != 200 or h.status_code != 200:
                    failures.append((r.status_code, h.status_code))
            except Exception as e:  # noqa: BLE001
                failures.append(repr(e))

    threads = [threading.Thread(target=waiter) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
    con = Console(srv, "?from_start=0")
    con.read_until(READY)
    assert b"alive" in con.run("echo alive")
    con.close()


def test_cli_drives_the_server(server, tmp_path):
    import os
    import subprocess
    from conftest import BUILD, ROOT
    srv = server()
    cella = os.path.join(BUILD, "src", "cli", "cella")

    def cli(*args, timeout=120):
        return subprocess.run([cella, "--server", f"127.0.0.1:{srv.port}", *args],
                              capture_output=True, text=True, timeout=timeout)

    assert cli("get").returncode == 1  # 424 NoInstance
    r = cli("new", "kit", "--config", os.path.join(ROOT, "examples", "guest-kit.toml"))
    assert r.returncode == 0, r.stderr
    assert cli("new", "kit", "--config", os.path.join(ROOT, "examples", "guest-kit.toml")) \
        .returncode == 1  # AlreadyInitialized
    assert cli("state", "run").returncode == 0
    r = cli("monitor", "--until", "Running", "--timeout", "120")
    assert r.returncode == 0 and "Running" in r.stdout, r.stdout + r.stderr
    p = subprocess.Popen([cella, "--server", f"127.0.0.1:{srv.port}", "serial", "--from-start",
                          "0", "--exit-after", "60"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    seen = b""
    import select
    while READY not in seen and time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 1)[0]:
            seen += os.read(p.stdout.fileno(), 4096)
    assert READY in seen, seen[-300:]
    p.stdin.write(b"echo via-cli-$((6*7))\n")
    p.stdin.flush()
    while b"via-cli-42" not in seen and time.monotonic() < deadline:
        if select.select([p.stdout], [], [], 1)[0]:
            seen += os.read(p.stdout.fileno(), 4096)
    assert b"via-cli-42" in seen
    p.kill()
    p.wait()
    h = cli("serial", "--history", "--most-recent", "4096")
    assert h.returncode == 0 and "via-cli-42" in h.stdout
    assert cli("state", "stop").returncode == 0
    r = cli("monitor", "--until", "Destroyed", "--timeout", "60")
    assert r.returncode == 0, r.stdout + r.stderr


def test_guest_panic_fails_the_instance(server, tmp_path):
    """A pvpanic report stops the guest for good (QEMU's default panic
    action): the instance is Failed, refuses Run and Reboot, keeps its serial
    history, and Stop still destroys it."""
    srv = server()
    assert srv.put("/instance", json=ensure_body(guest_spec(tmp_path, cpus=1))).status_code == 201
    mon = Monitor(srv)
    con = Console(srv)
    assert srv.put("/instance/state", json="Run").status_code == 204
    con.read_until(READY)
    con.run("modprobe pvpanic-mmio || modprobe pvpanic")
    con.ws.send_binary(b"echo c > /proc/sysrq-trigger\n")
    mon.wait_for("Failed")
    for req in ("Run", "Reboot"):
        r = srv.put("/instance/state", json=req)
        assert r.status_code == 403 and "Failed" in r.json()["message"], r.text
    h = srv.get("/instance/serial/history", params={"from_start": 0}).json()
    assert READY in bytes(h["data"])
    assert srv.put("/instance/state", json="Stop").status_code == 204
    mon.wait_for("Destroyed")
    con.close()
