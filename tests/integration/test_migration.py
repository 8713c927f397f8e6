"""Live migration between two cella-server processes on loopback (issue 6):
a running guest moves with its disks and NIC, keeps counting, loses no
memory write and no disk write; failures leave exactly one VM running."""
import json
import os
import subprocess
import time

import pytest
import websocket

from conftest import BUILD, copy_file, e2fsck_clean, debugfs_read, ensure_body, spec_from_toml

READY = b"CELLA-GUEST-READY"
CELLA = os.path.join(BUILD, "src", "cli", "cella")


class Console:
    def __init__(self, srv, query="?most_recent=0"):
        self.ws = websocket.create_connection(
            f"ws://127.0.0.1:{srv.port}/instance/serial{query}", timeout=120)
        self.buf = b""
        self.control = []

    def read_until(self, needle, timeout=120):
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            op, data = self.ws.recv_data()
            if op == websocket.ABNF.OPCODE_CLOSE:
                raise AssertionError(f"console closed before {needle!r}; got {self.buf[-300:]!r}")
            if op == websocket.ABNF.OPCODE_BINARY:
                self.buf += data
            elif op == websocket.ABNF.OPCODE_TEXT:
                self.control.append(json.loads(data))
            if time.monotonic() > deadline:
                raise AssertionError(f"no {needle!r}; got {self.buf[-300:]!r}")
        i = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def run(self, cmd, timeout=120):
        """Runs cmd in the guest; returns (status, output lines)."""
        self.ws.send_binary(cmd.encode() + b"\n")
        out = self.read_until(b"CELLA-EXIT ", timeout)
        status = int(self.read_until(b"\n", timeout).strip())
        lines = out[:-len(b"CELLA-EXIT ")].decode(errors="replace").replace("\r", "").split("\n")
        return status, [l for l in lines if l]

    def check(self, cmd, timeout=120):
        status, lines = self.run(cmd, timeout)
        assert status == 0, f"{cmd!r} exited {status}: {lines[-10:]}"
        return lines

    def close(self):
        self.ws.close()


def wait_state(srv, want, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = srv.get("/instance")
        if r.status_code == 200 and r.json()["instance"]["state"] == want:
            return
        time.sleep(0.1)
    raise AssertionError(f"{srv.base} never reached {want}: {srv.get('/instance').text}")


def state(srv):
    r = srv.get("/instance")
    return r.json()["instance"]["state"] if r.status_code == 200 else None


def disk_config(tmp_path, kit, memory=256, extra=""):
    vd = copy_file(kit["GUEST_DISK"], tmp_path / "vd.img")
    nv = copy_file(kit["GUEST_DISK"], tmp_path / "nv.img")
    return vd, nv, (f"[main]\ncpus = 2\nmemory = {memory}\n"
                    f"[block_dev.vdb]\ntype = \"file\"\npath = \"{vd}\"\n"
                    f"[block_dev.nvb]\ntype = \"file\"\npath = \"{nv}\"\n"
                    "[dev.vd]\ndriver = \"pci-virtio-block\"\nblock_dev = \"vdb\"\n"
                    "pci-path = \"0.4.0\"\n"
                    "[dev.nv]\ndriver = \"pci-nvme\"\nblock_dev = \"nvb\"\npci-path = \"0.5.0\"\n"
                    "serial = \"MIGRATE-NVME-1\"\n" + extra)


def start_vm(server, tmp_path, config, env=None):
    src = server(env=env)
    spec = spec_from_toml(config, tmp_path)
    r = src.put("/instance", json=ensure_body(spec))
    assert r.status_code == 201, r.text
    con = Console(src, "?from_start=0")
    assert src.put("/instance/state", json="Run").status_code == 204
    con.read_until(READY)
    return src, con


def migrate(src, dst, *extra, check=True):
    p = subprocess.run([CELLA, "migrate", "--from", f"127.0.0.1:{src.port}", "--to",
                        f"127.0.0.1:{dst.port}", "--timeout", "300", *extra],
                       capture_output=True, text=True, timeout=400)
    if check:
        assert p.returncode == 0, f"cella migrate: {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


# Written aside and renamed, so a reader never sees the file between the
# shell's truncation and its write (an empty read once failed a run).
COUNTER = ("(i=0; while :; do i=$((i+1)); echo $i > /tmp/cnt.new; mv /tmp/cnt.new /tmp/cnt; "
           "sleep 0.05; done) >/dev/null 2>&1 &")


def memtouch_ready(con, timeout=120):
    """Waits until the memtouch buffer is written (its loop is then running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if con.run("memtouch check")[0] == 0:
            return
        time.sleep(1)
    raise AssertionError("memtouch never finished writing its buffer")


def start_migration(from_port, to_port, timeout):
    """`cella migrate` in the background (a test interferes while it runs)."""
    return subprocess.Popen([CELLA, "migrate", "--from", f"127.0.0.1:{from_port}", "--to",
                             f"127.0.0.1:{to_port}", "--timeout", str(timeout)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_phase(srv, side, phase, timeout):
    """Waits until srv's migration `side` ("migration_out" or "migration_in")
    is in `phase`; returns whether it got there in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = srv.get("/instance/migration-status")
        mig = r.json().get(side) if r.status_code == 200 else None
        if mig and mig["state"] == phase:
            return True
        time.sleep(0.02)
    return False


def wait_ram_push(src, timeout=60):
    """Waits until the source's outgoing migration is in RamPush."""
    wait_phase(src, "migration_out", "RamPush", timeout)


def counter(con):
    return int(con.check("cat /tmp/cnt")[-1])


def sh(*argv):
    subprocess.run(argv, check=True, capture_output=True)


@pytest.fixture
def taps():
    """Two taps: the source's NIC uses mtapa, the target's (by replacement)
    mtapb, which has the host address 10.78.0.1/24."""
    subprocess.run(["modprobe", "tun"], capture_output=True)
    made = []
    try:
        for t in ("mtapa", "mtapb"):
            sh("ip", "tuntap", "add", "dev", t, "mode", "tap")
            made.append(t)
            sh("ip", "link", "set", t, "up")
        sh("ip", "addr", "add", "10.78.0.1/24", "dev", "mtapb")
        yield
    finally:
        for t in made:
            subprocess.run(["ip", "tuntap", "del", "dev", t, "mode", "tap"], capture_output=True)


NIC = ('[dev.net0]\ndriver = "pci-virtio-viona"\nvnic = "mtapa"\npci-path = "0.6.0"\n'
       'mac = "02:08:20:00:00:42"\n')


def test_migrate_running_guest_with_disks_and_nic(server, kit, tmp_path, taps):
    vd, nv, cfg = disk_config(tmp_path, kit, extra=NIC)
    src, con = start_vm(server, tmp_path, cfg)
    con.check("mkdir -p /mnt/a /mnt/b && mount /dev/vda /mnt/a && mount /dev/nvme0n1 /mnt/b")
    con.check("echo before > /mnt/a/before && echo before > /mnt/b/before && sync")
    con.check(COUNTER)
    con.check("memtouch loop 32 7 >/dev/null 2>&1 &")
    memtouch_ready(con)
    c0 = counter(con)
    con.check("ip link set eth0 up && ip addr add 10.78.0.2/24 dev eth0")
    nic = tmp_path / "nic.json"
    nic.write_text(json.dumps({"component": "VirtioNetworkBackend",
                               "spec": {"vnic_name": "mtapb"}}))
    dst = server()
    p = migrate(src, dst, f"net0-backend={nic}")
    assert "blackout" in p.stdout, p.stdout
    # The source is gone, and told its console clients where the VM went.
    wait_state(src, "Destroyed", 30)
    try:
        con.read_until(b"\xff" * 64, timeout=5)
    except (AssertionError, websocket.WebSocketException):
        pass
    assert any("Migrating" in c for c in con.control), con.control
    con.close()
    wait_state(dst, "Running", 30)
    con2 = Console(dst, "?most_recent=0")
    c1 = counter(con2)
    time.sleep(0.5)
    c2 = counter(con2)
    assert c0 < c1 < c2, (c0, c1, c2)
    con2.check("memtouch check")
    # The NIC works on the target's tap.
    con2.check("ping -c 2 -W 5 10.78.0.1")
    assert con2.check("cat /sys/class/net/eth0/address")[-1] == "02:08:20:00:00:42"
    con2.check("cat /mnt/a/before /mnt/b/before")
    con2.check("cd /mnt/a && sha256sum -c SHA256SUMS >/dev/null && cd /mnt/b && "
               "sha256sum -c SHA256SUMS >/dev/null")
    con2.check("echo after > /mnt/a/after && echo after > /mnt/b/after && sync")
    con2.check("umount /mnt/a /mnt/b")
    # The serial history came along.
    h = dst.get("/instance/serial/history", params={"from_start": 0}).json()
    assert READY in bytes(h["data"])
    assert dst.put("/instance/state", json="Stop").status_code == 204
    wait_state(dst, "Destroyed", 60)
    con2.close()
    for img in (vd, nv):
        e2fsck_clean(img)
        assert debugfs_read(img, "/after") == b"after\n"
        assert debugfs_read(img, "/before") == b"before\n"


GUEST_RESET = "the guest reset, powered off or failed on the source"


def test_memory_integrity_under_dirtying(server, kit, tmp_path):
    """Like QEMU's migration test: a guest program bumps a counter in every
    page of a large buffer during the migration; the checker afterwards
    finds every page consistent (no lost update), pre-copy converged
    within the downtime budget, and pages written again went as deltas.

    On this machine's nested test host a guest that dirties memory this fast
    now and then triple-faults during pre-copy (QEMU's guest does too, in
    bench/migrate: an environment problem of the emulated SVM under dirty
    logging). cella then ends the migration with that reason, and the source
    handles the reset (the guest reboots there, the target never runs it);
    that outcome is checked, and the scenario is tried again, at most three
    times."""
    for attempt in range(3):
        src, con = start_vm(server, tmp_path, "[main]\ncpus = 2\nmemory = 384\n")
        con.check("memtouch loop 64 11 >/dev/null 2>&1 &")
        memtouch_ready(con)
        dst = server()
        p = migrate(src, dst, check=False)
        if p.returncode != 0 and GUEST_RESET in p.stdout + p.stderr:
            print(f"attempt {attempt + 1}: the guest reset on the source during pre-copy")
            wait_state(src, "Running", 120)  # rebuilt and rebooted there
            assert state(dst) != "Running"
            con.close()
            src.close()
            dst.close()
            continue
        assert p.returncode == 0, f"cella migrate: {p.returncode}\n{p.stdout}\n{p.stderr}"
        wait_state(dst, "Running", 30)
        con.close()
        con2 = Console(dst, "?most_recent=0")
        try:
            con2.check("memtouch check")
        except (AssertionError, websocket.WebSocketException) as e:
            # Say what the target and the migration looked like.
            h = dst.get("/instance/serial/history", params={"most_recent": 4096}).json()
            raise AssertionError(
                f"{e!r}; target state {state(dst)}; target console tail "
                f"{bytes(h.get('data', []))[-2000:]!r}; source report "
                f"{src.get('/instance/migration-report').text}") from e
        rep = src.get("/instance/migration-report")
        assert rep.status_code == 200, rep.text
        report = rep.json()
        assert report["outcome"] == "committed"
        assert report["passes"] >= 1
        # memtouch dirties its 64 MiB faster than the nested test host's
        # loopback carries it (without throttling: 31 passes, "max passes");
        # auto-converge throttles the vCPUs until the final pass fits 300 ms.
        assert report["converged"], f"pre-copy did not converge: {report}"
        # Pages memtouch writes again go as deltas (protocol version 3), and
        # memtouch check above proves none of them lost an update.
        assert report["delta_pages"] > 0, f"no delta pages: {report}"
        print(f"converged after {report['passes']} passes, vCPUs throttled "
              f"{report.get('throttle_pct')}%, {report['delta_pages']} delta pages, "
              f"{report.get('deferred_pages')} deferred, blackout {report['blackout_ms']} ms")
        con2.close()
        return
    pytest.fail("the guest reset on the source during all three attempts")


def test_ping_pong(server, kit, tmp_path):
    """Ten migrations back and forth; the counter and the console follow."""
    src, con = start_vm(server, tmp_path, "[main]\ncpus = 1\nmemory = 128\n")
    con.check(COUNTER)
    con.close()
    last = 0
    here = src
    for i in range(10):
        there = server()
        migrate(here, there)
        wait_state(there, "Running", 30)
        wait_state(here, "Destroyed", 30)
        c = Console(there, "?most_recent=0")
        n = counter(c)
        assert n > last, (i, n, last)
        last = n
        c.close()
        here.close()
        here = there
    h = here.get("/instance/serial/history", params={"from_start": 0}).json()
    assert READY in bytes(h["data"])


def test_migrate_starts_the_target(server, kit, tmp_path):
    """`cella migrate --start-target`: nothing listens at --to; cella starts an
    empty cella-server there (with the host facts given), and the guest moves
    into it and keeps counting."""
    import re
    import signal
    from conftest import free_port
    src, con = start_vm(server, tmp_path, "[main]\ncpus = 1\nmemory = 128\n")
    con.check(COUNTER)
    con.close()
    port = free_port()
    log = tmp_path / "started-target.log"
    p = subprocess.run([CELLA, "migrate", "--from", f"127.0.0.1:{src.port}", "--to",
                        f"127.0.0.1:{port}", "--timeout", "300", "--start-target",
                        f"--target-arg=--kernel={kit['GUEST_BZIMAGE']}",
                        f"--target-arg=--initrd={kit['GUEST_INITRAMFS']}",
                        f"--target-arg=--cmdline={kit['GUEST_CMDLINE']}",
                        "--target-log", str(log)],
                       capture_output=True, text=True, timeout=400)
    m = re.search(r"\(pid (\d+)\)", p.stderr)
    pid = int(m.group(1)) if m else None
    try:
        assert p.returncode == 0, f"cella migrate: {p.returncode}\n{p.stdout}\n{p.stderr}"
        assert pid, p.stderr
        import types
        import requests
        base = f"http://127.0.0.1:{port}"
        there = types.SimpleNamespace(
            port=port, base=base,
            get=lambda path, **kw: requests.get(base + path, timeout=30, **kw))
        wait_state(there, "Running", 30)
        wait_state(src, "Destroyed", 30)
        c = Console(there, "?most_recent=0")
        n1 = counter(c)
        time.sleep(0.5)
        assert counter(c) > n1
        c.close()
    finally:
        if pid:
            os.kill(pid, signal.SIGKILL)


def test_replacing_a_device_is_refused_before_any_vm(server, kit, tmp_path):
    vd, nv, cfg = disk_config(tmp_path, kit)
    src, con = start_vm(server, tmp_path, cfg)
    bad = tmp_path / "bad.json"
    # A device is not a backend: refused with the reason, nothing built.
    bad.write_text(json.dumps({"component": "FileStorageBackend", "spec": {
        "path": vd, "readonly": False, "block_size": 512, "workers": None}}))
    dst = server()
    p = migrate(src, dst, f"vd={bad}", check=False)
    assert p.returncode != 0
    assert "replace_components" in p.stderr or "vd" in p.stderr, p.stderr
    assert dst.get("/instance").status_code == 424
    # A missing key, likewise.
    p = migrate(src, dst, f"nosuch={bad}", check=False)
    assert p.returncode != 0 and dst.get("/instance").status_code == 424
    # The source never stopped.
    assert state(src) == "Running"
    assert b"still" in b"".join(l.encode() for l in con.check("echo still"))
    # A backend replaced with another path to the same data works.
    copy = copy_file(vd, tmp_path / "vd-copy.img")
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"component": "FileStorageBackend", "spec": {
        "path": copy, "readonly": False, "block_size": 512, "workers": None}}))
    con.check("sync")
    con.close()
    migrate(src, dst, f"vdb={good}")
    wait_state(dst, "Running", 30)
    spec = dst.get("/instance/spec").json()["spec"]["value"]
    assert spec["components"]["vdb"]["component"]["path"] == copy


def test_failure_injector_then_retry(server, kit, tmp_path):
    """fail_exports (once) fails the first migration at the source; then
    fail_imports fails at the target until a replacement clears it."""
    cfg = ("[main]\ncpus = 1\nmemory = 160\n"
           "[dev.inject]\ndriver = \"migration-failure-injector\"\nfail_exports = 1\n"
           "fail_imports = 1\n")
    src, con = start_vm(server, tmp_path, cfg)
    con.check(COUNTER)
    dst = server()
    p = migrate(src, dst, check=False)
    assert p.returncode != 0
    assert state(src) == "Running"
    deadline = time.monotonic() + 30
    while state(dst) not in ("Failed", None) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(dst) in ("Failed", None)
    c0 = counter(con)
    time.sleep(0.3)
    assert counter(con) > c0, "the source resumed"
    # The import side fails too, as long as the injector says so ...
    dst2 = server()
    p = migrate(src, dst2, check=False)
    assert p.returncode != 0
    assert state(src) == "Running"
    # ... and a replacement of the injector lets the migration through.
    inj = tmp_path / "inj.json"
    inj.write_text(json.dumps({"component": "MigrationFailureInjector",
                               "spec": {"fail_exports": 0, "fail_imports": 0}}))
    con.close()
    dst3 = server()
    migrate(src, dst3, f"inject={inj}")
    wait_state(dst3, "Running", 30)
    c = Console(dst3, "?most_recent=0")
    assert counter(c) > c0
    c.close()


def test_target_killed_during_ram_transfer(server, kit, tmp_path):
    src, con = start_vm(server, tmp_path, "[main]\ncpus = 1\nmemory = 384\n")
    con.check(COUNTER)
    con.check("memtouch loop 96 3 >/dev/null 2>&1 &")
    memtouch_ready(con)
    dst = server()
    proc = start_migration(src.port, dst.port, 300)
    wait_ram_push(src)
    dst.proc.kill()
    source_runs_on_then_migrates(server, src, con, proc)


def source_runs_on_then_migrates(server, src, con, proc):
    """After the target died mid-migration (`proc` is that `cella migrate`):
    the migration failed, the source runs the guest on (its counter moves,
    memtouch's pages are consistent), and it migrates again afterwards."""
    proc.wait(120)
    assert proc.returncode != 0
    deadline = time.monotonic() + 60
    while state(src) != "Running" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert state(src) == "Running"
    c0 = counter(con)
    time.sleep(0.3)
    assert counter(con) > c0
    con.check("memtouch check")
    con.close()
    dst2 = server()
    migrate(src, dst2)
    wait_state(dst2, "Running", 30)
    c = Console(dst2, "?most_recent=0")
    c.check("memtouch check")
    c.close()


def test_target_killed_during_device_state(server, kit, tmp_path):
    """The target dies while it receives device state (the source is paused,
    RAM is all sent): the source resumes the guest, nothing is lost, and a
    later migration works. The target holds the Device phase (a test hook)
    so the kill lands inside it."""
    src, con = start_vm(server, tmp_path, "[main]\ncpus = 1\nmemory = 256\n")
    con.check(COUNTER)
    con.check("memtouch loop 16 5 >/dev/null 2>&1 &")
    memtouch_ready(con)
    dst = server(env={"CELLA_MIGRATE_TEST_HOLD": "Device:20000"})
    proc = start_migration(src.port, dst.port, 300)
    assert wait_phase(dst, "migration_in", "Device", 120), "the target never reached Device"
    dst.proc.kill()
    source_runs_on_then_migrates(server, src, con, proc)


class Proxy:
    """A TCP proxy to the source that can stop forwarding (a cut link that
    stays open: nothing moves, nothing is closed)."""

    def __init__(self, port):
        import socket
        import threading
        self.port_to = port
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(16)
        self.port = self.ls.getsockname()[1]
        self.frozen = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        import socket
        import threading
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            u = socket.create_connection(("127.0.0.1", self.port_to))
            for a, b in ((c, u), (u, c)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, a, b):
        while True:
            try:
                data = a.recv(65536)
            except OSError:
                return
            if not data:
                return
            while self.frozen.is_set():
                time.sleep(0.1)
            try:
                b.sendall(data)
            except OSError:
                return


def test_link_cut_times_out_and_the_source_runs_on(server, kit, tmp_path):
    env = {"CELLA_MIGRATE_STALL_MS": "3000"}
    src, con = start_vm(server, tmp_path, "[main]\ncpus = 1\nmemory = 256\n", env=env)
    con.check(COUNTER)
    con.check("memtouch loop 48 5 >/dev/null 2>&1 &")
    memtouch_ready(con)
    proxy = Proxy(src.port)
    dst = server(env=env)
    proc = start_migration(proxy.port, dst.port, 120)
    wait_ram_push(src)
    proxy.frozen.set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (state(src) != "Running" or
                                           state(dst) not in ("Failed", None)):
        time.sleep(0.2)
    assert state(src) == "Running"
    assert state(dst) in ("Failed", None)
    proc.kill()
    proc.wait()
    c0 = counter(con)
    time.sleep(0.3)
    assert counter(con) > c0
    con.check("memtouch check")
    con.close()


def test_source_killed_target_never_runs(server, kit, tmp_path):
    env = {"CELLA_MIGRATE_STALL_MS": "3000"}
    src, con = start_vm(server, tmp_path, "[main]\ncpus = 1\nmemory = 256\n", env=env)
    con.check("memtouch loop 48 9 >/dev/null 2>&1 &")
    memtouch_ready(con)
    dst = server(env=env)
    proc = start_migration(src.port, dst.port, 120)
    wait_ram_push(src)
    src.proc.kill()
    proc.wait(120)
    assert proc.returncode != 0
    deadline = time.monotonic() + 60
    while state(dst) not in ("Failed", None) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert state(dst) in ("Failed", None), "the target must never run a half-copied guest"
    con.close()
