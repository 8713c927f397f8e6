# SPDX-License-Identifier: MPL-2.0
"""Black-box tests of `cella migrate`, and of --start-target, which starts an
empty cella-server for the target.

The servers are fakes (fake_propolis.py) except the ones --start-target
starts: the real cella-server of the build, which answers without a VM (no
KVM needed). No guest is migrated here; tests/integration does that.

Every server cella starts is detached from it (its own session): the tests
take its pid from cella's output and stop it, and the fixture also stops any
cella-server left listening on a port a test handed out.

Run: /usr/bin/python3 -m pytest tests/cli/test_cli_migrate.py
Environment: CELLA_BUILD_DIR (see test_cli_server.py).
"""
import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fake_propolis import FakePropolis, free_port  # noqa: E402

BUILD = pathlib.Path(os.environ.get("CELLA_BUILD_DIR", "/work/main/build"))
CELLA = BUILD / "src" / "cli" / "cella"
CELLA_SERVER = BUILD / "src" / "server" / "cella-server"

OK, INVALID, USAGE, UNREACHABLE = 0, 1, 2, 3

needs_server = pytest.mark.skipif(not CELLA_SERVER.exists(), reason=f"{CELLA_SERVER} not built")


def refused(port):
    """True when nothing listens on 127.0.0.1:port."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def get_instance(port):
    """(status, JSON body) of GET /instance at 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/instance", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def alive(pid):
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def cmdline(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def stop(pid):
    """Stops a process this test made cella start (not our child: poll /proc)."""
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        end = time.monotonic() + grace
        while alive(pid) and time.monotonic() < end:
            time.sleep(0.05)
        if not alive(pid):
            return


def started_pid(stderr):
    m = re.search(r"cella: started \S+ for \S+ \(pid (\d+)\); its log: (\S+)", stderr)
    return (int(m.group(1)), pathlib.Path(m.group(2))) if m else (None, None)


class Spawned:
    """Ports handed to cella and the servers it started on them."""

    def __init__(self):
        self.ports = []
        self.pids = []

    def port(self):
        p = free_port()
        self.ports.append(p)
        return p

    def track(self, stderr):
        pid, log = started_pid(stderr)
        if pid:
            self.pids.append(pid)
        return pid, log

    def leftovers(self):
        """cella-server processes listening on one of our ports."""
        found = []
        for d in pathlib.Path("/proc").iterdir():
            if not d.name.isdigit() or not alive(int(d.name)):
                continue
            argv = cmdline(int(d.name))
            if not argv or not argv[0].endswith(b"cella-server"):
                continue
            # cella-server splits its ADDR:PORT in place: both forms count.
            text = b" ".join(argv)
            if any(f"127.0.0.1:{p}".encode() in text or f"127.0.0.1 {p}".encode() in text
                   for p in self.ports):
                found.append(int(d.name))
        return found

    def cleanup(self):
        for pid in self.pids + self.leftovers():
            stop(pid)


@pytest.fixture
def spawned():
    s = Spawned()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def src():
    f = FakePropolis().start()
    f.created("Running")
    yield f
    f.stop()


@pytest.fixture
def dst():
    f = FakePropolis().start()
    yield f
    f.stop()


@pytest.fixture
def bootrom(tmp_path):
    p = tmp_path / "bootrom.bin"
    p.write_bytes(b"\xf4" * 65536)  # never run: no VM is built
    return p


def migrate(*args, env=None, tmp=None, timeout=60):
    """Runs `cella migrate ARGS`; text output. $TMPDIR is tmp when given."""
    if not CELLA.exists():
        pytest.skip(f"{CELLA} is not built")
    e = dict(os.environ)
    for k in ("CELLA_SERVER", "CELLA_SERVER_BIN"):
        e.pop(k, None)
    if tmp is not None:
        e["TMPDIR"] = str(tmp)
    e.update(env or {})
    return subprocess.run([str(CELLA), "migrate", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=e)


def script(path, text):
    path.write_text("#!/bin/sh\n" + text)
    path.chmod(0o755)
    return path


REPORT = {"outcome": "Finish", "blackout_ms": 12.5, "total_ms": 800.0, "passes": 3,
          "precopy_end": "converged", "error": "",
          "phases": {"ram_push": {"ms": 700.0, "bytes": 1 << 20, "pages": 256, "passes": 3}}}


# ---- the migration itself (servers given) ----

def test_migrate_between_two_servers(src, dst, tmp_path):
    src.migration = {"migration_out": "Finish"}
    dst.migration = {"migration_in": "Finish"}
    src.report = lambda: dict(REPORT, migration_id=dst.migration_id)
    disk = tmp_path / "disk.json"
    disk.write_text('{"component": {"path": "/new/disk.img"}}')
    r = migrate("--from", src.addr, "--to", dst.addr, "--downtime-ms", "50", f"vd={disk}")
    assert r.returncode == OK, r.stderr
    (ensure,) = dst.by("PUT", "/instance")
    body = ensure.json()
    assert body["properties"] == src.instance["properties"]
    assert body["init"] == {"method": "MigrationTarget", "value": {
        "migration_id": dst.migration_id, "src_addr": src.addr,
        "replace_components": {"vd": {"component": {"path": "/new/disk.img"}}}}}
    assert [q.json() for q in src.by("PUT", "/instance/migration-settings")] == \
        [{"downtime_ms": 50}]
    assert "outcome: Finish\nblackout: 12.5 ms\n" in r.stdout
    assert re.search(r"^ram_push\s+700\.0\s+1048576\s+256\s+3$", r.stdout, re.M)
    assert f"migration {dst.migration_id}: {src.addr} -> {dst.addr}" in r.stderr
    assert "started" not in r.stderr


def test_migrate_failure_says_where_the_instance_runs(src, dst):
    src.migration = {"migration_out": "Error"}
    dst.migration = {"migration_in": "Error"}
    src.report = lambda: dict(REPORT, outcome="Error", error="link lost",
                              migration_id=dst.migration_id)
    r = migrate("--from", src.addr, "--to", dst.addr)
    assert r.returncode == INVALID, r.stderr
    assert "error: link lost" in r.stdout
    assert f"the migration failed; the instance runs on at {src.addr}" in r.stderr


def test_without_start_target_an_absent_target_is_unreachable(src, spawned):
    port = spawned.port()
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}")
    assert r.returncode == UNREACHABLE, r.stderr
    assert f"cannot reach the server at 127.0.0.1:{port}" in r.stderr
    assert "started" not in r.stderr
    assert refused(port) and spawned.leftovers() == []


def test_non_empty_target_is_refused_by_its_ensure(src, dst):
    """A target that holds an instance answers the ensure 409, with or without
    --start-target (which uses a target that answers)."""
    dst.created()
    for extra in ([], ["--start-target"]):
        r = migrate("--from", src.addr, "--to", dst.addr, *extra)
        assert r.returncode == INVALID, r.stderr
        assert "error (AlreadyInitialized): Server already initialized" in r.stderr
        assert "started" not in r.stderr
    assert len(dst.by("PUT", "/instance")) == 2


# ---- --start-target ----

@needs_server
def test_start_target_starts_an_empty_server(src, spawned, bootrom, tmp_path):
    port = spawned.port()
    log = tmp_path / "target.log"
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                "--target-arg", f"--bootrom={bootrom}", "--target-log", log, tmp=tmp_path)
    pid, logged = spawned.track(r.stderr)
    assert pid, r.stderr
    assert logged == log
    assert f"started {CELLA_SERVER.resolve()} for 127.0.0.1:{port}" in r.stderr
    # The fake source cannot send an instance: the target's ensure fails.
    assert r.returncode == INVALID, r.stderr
    assert f"PUT /instance on 127.0.0.1:{port}" in r.stderr
    assert f"the cella-server started for 127.0.0.1:{port} still runs (pid {pid}); " \
           f"its log: {log}" in r.stderr
    # The migration did reach the source, from the started target.
    assert src.by("GET", "/instance")
    assert [q.path for q in src.requests if q.path.startswith("/instance/migrate/")]
    # It outlives cella, empty, in its own session, logging to the file.
    assert alive(pid)
    assert os.getsid(pid) == pid
    status, body = get_instance(port)
    assert (status, body["error_code"]) == (424, "NoInstance")
    assert "listening on 127.0.0.1" in log.read_text()
    stop(pid)
    assert refused(port)


@needs_server
def test_start_target_log_goes_to_tmpdir_by_default(src, spawned, bootrom, tmp_path):
    port = spawned.port()
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                "--target-arg=--bootrom", f"--target-arg={bootrom}", tmp=tmp_path)
    pid, log = spawned.track(r.stderr)
    assert pid, r.stderr
    assert log.parent == tmp_path and log.name.startswith(f"cella-server-{port}-")
    assert "listening on" in log.read_text()
    assert get_instance(port)[0] == 424


def test_start_target_uses_a_target_that_answers(src, dst, spawned):
    """An empty server already at --to is the target; nothing is started."""
    src.migration = {"migration_out": "Finish"}
    dst.migration = {"migration_in": "Finish"}
    src.report = lambda: dict(REPORT, migration_id=dst.migration_id)
    r = migrate("--from", src.addr, "--to", dst.addr, "--start-target",
                "--target-arg=--bootrom=/nonexistent")
    assert r.returncode == OK, r.stderr
    assert f"a server answers at {dst.addr}: migrating to it" in r.stderr
    assert "started" not in r.stderr
    assert dst.by("PUT", "/instance")
    assert "outcome: Finish" in r.stdout


@needs_server
def test_start_target_source_must_be_reachable_first(spawned, bootrom):
    """Nothing is started for a source that cannot migrate."""
    port = spawned.port()
    empty = FakePropolis().start()  # no instance
    try:
        r = migrate("--from", empty.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                    f"--target-arg=--bootrom={bootrom}")
    finally:
        empty.stop()
    assert r.returncode == INVALID, r.stderr
    assert "NoInstance" in r.stderr and "started" not in r.stderr
    assert refused(port) and spawned.leftovers() == []


@needs_server
@pytest.mark.parametrize("args,status,says", [
    (["--target-arg=--no-such-option"], 2, "unrecognized option '--no-such-option'"),
    ([], 2, "give a boot source"),
])
def test_start_target_server_that_exits_is_reported(src, spawned, tmp_path, args, status, says):
    port = spawned.port()
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target", *args,
                tmp=tmp_path)
    pid, log = spawned.track(r.stderr)
    assert r.returncode == UNREACHABLE, r.stderr
    assert pid and not alive(pid)
    assert f"the cella-server started for 127.0.0.1:{port} exited with status {status} " \
           f"before it answered; its log: {log}" in r.stderr
    assert says in log.read_text()
    assert "  | " in r.stderr and says in r.stderr  # the log's end, shown
    assert refused(port) and spawned.leftovers() == []
    # Nothing was asked of the source but its instance.
    assert [q.path for q in src.requests] == ["/instance"]


def test_start_target_passes_the_arguments_in_order(src, spawned, tmp_path):
    port = spawned.port()
    seen = tmp_path / "argv"
    fake = script(tmp_path / "fake-server", f'printf "%s\\n" "$@" > {seen}\n'
                  'echo "fake server says no" >&2\nexit 7\n')
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                "--target-arg", "--bootrom", "--target-arg", "/x/bios.bin",
                "--target-arg=--log-level=debug", env={"CELLA_SERVER_BIN": str(fake)},
                tmp=tmp_path)
    assert r.returncode == UNREACHABLE, r.stderr
    assert seen.read_text().splitlines() == ["run", f"127.0.0.1:{port}", "--bootrom",
                                             "/x/bios.bin", "--log-level=debug"]
    assert "exited with status 7 before it answered" in r.stderr
    assert "  | fake server says no" in r.stderr


def test_start_target_server_that_never_answers_is_stopped(src, spawned, tmp_path):
    port = spawned.port()
    marker = f"{59 + (port % 1000) / 1000:.3f}"  # a sleep this test can find
    fake = script(tmp_path / "silent-server", f"sleep {marker}\necho never\n")
    t = time.monotonic()
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                "--timeout", "1.5", env={"CELLA_SERVER_BIN": str(fake)}, tmp=tmp_path)
    pid, log = spawned.track(r.stderr)
    assert r.returncode == UNREACHABLE, r.stderr
    assert time.monotonic() - t < 15
    assert f"the cella-server started for 127.0.0.1:{port} did not answer within 1.5 s" \
        in r.stderr
    assert "was killed by signal 15" in r.stderr and str(log) in r.stderr
    # The whole process group went: the script and its sleep.
    assert not alive(pid)
    left = [p for p in os.listdir("/proc") if p.isdigit() and alive(int(p))
            and marker.encode() in cmdline(int(p))]
    assert left == []


def test_start_target_port_taken_by_another_kind_of_server(src, spawned, tmp_path):
    """What answers must be an empty Propolis server (424 NoInstance)."""
    port = spawned.port()
    fake = script(tmp_path / "web-server",
                  f'exec {sys.executable} -m http.server --bind 127.0.0.1 "${{2##*:}}"\n')
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                env={"CELLA_SERVER_BIN": str(fake)}, tmp=tmp_path)
    pid, _ = spawned.track(r.stderr)
    assert r.returncode == UNREACHABLE, r.stderr
    assert f"127.0.0.1:{port} answered GET /instance with HTTP 404, not 424 NoInstance" \
        in r.stderr
    assert not alive(pid) and refused(port)


def test_start_target_binary_that_cannot_run(src, spawned, tmp_path):
    port = spawned.port()
    missing = tmp_path / "no-such-server"
    r = migrate("--from", src.addr, "--to", f"127.0.0.1:{port}", "--start-target",
                env={"CELLA_SERVER_BIN": str(missing)}, tmp=tmp_path)
    assert r.returncode == UNREACHABLE, r.stderr
    assert f"cannot run {missing}: No such file or directory" in r.stderr
    assert "started" not in r.stderr
    assert not list(tmp_path.glob("cella-server-*.log"))  # the empty log went too


@pytest.mark.parametrize("to,says", [
    ("192.0.2.1:12400", "192.0.2.1 is not an address of this host"),
    ("[2001:db8::1]:12400", "2001:db8::1 is not an address of this host"),
    ("localhost:12400", 'not the name "localhost"'),
    ("vm-host.example:12400", 'not the name "vm-host.example"'),
])
def test_start_target_only_on_this_host(src, to, says):
    r = migrate("--from", src.addr, "--to", to, "--start-target")
    assert r.returncode == USAGE, r.stderr
    assert says in r.stderr
    assert src.requests == []


def test_start_target_accepts_addresses_of_this_host():
    """An interface address of this host is local (the check does not refuse it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # no packet: only picks the source address
            addr = s.getsockname()[0]
        except OSError:
            addr = None
    if not addr or addr.startswith("127."):
        pytest.skip("no IPv4 route, so no interface address to try")
    r = migrate("--from", f"127.0.0.1:{free_port()}", "--to", f"{addr}:1", "--start-target")
    assert "not an address of this host" not in r.stderr
    assert r.returncode == UNREACHABLE  # the source is not there


def test_migration_settings_sent_to_the_source(src, dst):
    src.migration = {"migration_out": "Finish"}
    dst.migration = {"migration_in": "Finish"}
    src.report = lambda: dict(REPORT, migration_id=dst.migration_id, throttle_pct=40,
                              throttled_passes=3)
    r = migrate("--from", src.addr, "--to", dst.addr, "--max-bandwidth", "128",
                "--no-auto-converge")
    assert r.returncode == OK, r.stderr
    assert [q.json() for q in src.by("PUT", "/instance/migration-settings")] == \
        [{"max_bandwidth_mibps": 128, "auto_converge": False}]
    assert "throttle: vCPUs slowed by 40% (3 passes throttled)\n" in r.stdout


def test_auto_converge_back_on(src, dst):
    src.migration = {"migration_out": "Finish"}
    dst.migration = {"migration_in": "Finish"}
    src.report = lambda: dict(REPORT, migration_id=dst.migration_id)
    r = migrate("--from", src.addr, "--to", dst.addr, "--auto-converge")
    assert r.returncode == OK, r.stderr
    assert [q.json() for q in src.by("PUT", "/instance/migration-settings")] == \
        [{"auto_converge": True}]
    r = migrate("--from", src.addr, "--to", dst.addr, "--auto-converge", "--no-auto-converge")
    assert r.returncode == USAGE
    assert "contradict" in r.stderr


def test_delta_cache_sent_to_the_source(src, dst):
    src.migration = {"migration_out": "Finish"}
    dst.migration = {"migration_in": "Finish"}
    src.report = lambda: dict(REPORT, migration_id=dst.migration_id, delta_pages=65000,
                              delta_cache_bytes=256 << 20)
    r = migrate("--from", src.addr, "--to", dst.addr, "--delta-cache-mib", "0")
    assert r.returncode == OK, r.stderr
    assert [q.json() for q in src.by("PUT", "/instance/migration-settings")] == \
        [{"delta_cache_mib": 0}]
    assert "delta pages: 65000 sent again as the bytes that changed (cache 256 MiB)\n" in r.stdout


@pytest.mark.parametrize("option,top", [("--max-bandwidth", 1048576),
                                        ("--delta-cache-mib", 65536)])
@pytest.mark.parametrize("value", ["-1", "x", "", "too big"])
def test_bad_number_option(src, option, top, value):
    value = str(top + 1) if value == "too big" else value
    r = migrate("--from", src.addr, "--to", "127.0.0.1:1", option, value)
    assert r.returncode == USAGE
    assert option in r.stderr and f"0..{top}" in r.stderr
    assert src.requests == []


@pytest.mark.parametrize("args", [["--target-arg", "--bootrom=x"], ["--target-log", "x.log"]])
def test_target_options_need_start_target(src, args):
    r = migrate("--from", src.addr, "--to", "127.0.0.1:1", *args)
    assert r.returncode == USAGE
    assert "go with --start-target" in r.stderr
    assert src.requests == []


def test_migrate_help_names_start_target():
    r = migrate("--help")
    assert r.returncode == OK
    assert r.stdout.startswith("Usage: cella migrate")
    out = " ".join(r.stdout.split())
    for word in ("--start-target", "--target-arg ARG", "--target-log FILE", "CELLA_SERVER_BIN",
                 "3 a server cannot be reached"):
        assert word in out, word
