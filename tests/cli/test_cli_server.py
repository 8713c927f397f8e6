# SPDX-License-Identifier: MPL-2.0
"""Black-box tests of the `cella` commands that drive a Propolis v5 server.

Each test starts a fake server (fake_propolis.py), runs the binary against
it and checks what went over the wire and what cella printed.

Run: /usr/bin/python3 -m pytest tests/cli/test_cli_server.py
Environment:
  CELLA_BUILD_DIR  meson build dir holding src/cli/cella (default /work/main/build)
  CELLA_SHARED     the shared dir holding reference/ (default: <repo>/../shared)
"""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import termios
import time

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from fake_propolis import FakePropolis, OP_BINARY, free_port  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = pathlib.Path(os.environ.get("CELLA_BUILD_DIR", "/work/main/build"))
CELLA = BUILD / "src" / "cli" / "cella"
SHARED = pathlib.Path(os.environ.get("CELLA_SHARED", ROOT.parent / "shared"))
OPENAPI = SHARED / "reference" / "propolis-server-openapi-v5.json"
SMALL = ROOT / "examples" / "small.toml"

OK, INVALID, USAGE, UNREACHABLE = 0, 1, 2, 3
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
NIL = "00000000-0000-0000-0000-000000000000"


def cella(*args, server=None, stdin=b"", env=None, timeout=30):
    """Runs cella; output is bytes. server=None leaves --server out."""
    if not CELLA.exists():
        pytest.skip(f"{CELLA} is not built")
    argv = [str(CELLA)] + (["--server", server] if server else []) + [str(a) for a in args]
    e = dict(os.environ)
    e.pop("CELLA_SERVER", None)
    e.update(env or {})
    return subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout, env=e)


@pytest.fixture
def fake():
    f = FakePropolis().start()
    yield f
    f.stop()


# ---- Propolis's schema (OpenAPI 3.0 -> JSON schema) ----

def _openapi_to_jsonschema(node):
    if isinstance(node, list):
        return [_openapi_to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = {k: _openapi_to_jsonschema(v) for k, v in node.items()}
    if node.pop("nullable", False):
        return {"anyOf": [{"type": "null"}, node]}
    return node


def schema_errors(name, body):
    jsonschema = pytest.importorskip("jsonschema")
    if not OPENAPI.exists():
        pytest.skip(f"{OPENAPI} is missing (set CELLA_SHARED)")
    schemas = _openapi_to_jsonschema(json.loads(OPENAPI.read_text())["components"]["schemas"])
    # SpecKey is an untagged serde enum (Uuid | String): serde takes the first
    # variant that fits, which a JSON-schema oneOf cannot say; anyOf can.
    schemas["SpecKey"]["anyOf"] = schemas["SpecKey"].pop("oneOf")
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("uuid")(lambda v: not isinstance(v, str) or bool(
        re.match(r"^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$", v)))
    root = {"components": {"schemas": schemas},
            "allOf": [{"$ref": "#/components/schemas/" + name}]}
    v = jsonschema.Draft7Validator(root, format_checker=checker)
    return ["/".join(map(str, e.absolute_path)) + ": " + e.message for e in v.iter_errors(body)]


# ---- new ----

def test_new_from_config_sends_a_valid_ensure_request(fake):
    r = cella("new", "vm1", "--config", SMALL, server=fake.addr)
    assert r.returncode == OK, r.stderr
    (req,) = fake.by("PUT", "/instance")
    assert req.headers["content-type"] == "application/json"
    body = req.json()
    assert schema_errors("InstanceEnsureRequest", body) == []
    props = body["properties"]
    assert props["name"] == "vm1"
    assert UUID_RE.match(props["id"])
    assert props["description"] == "created by cella new"
    assert props["metadata"] == {"project_id": NIL, "silo_id": NIL, "sled_id": NIL,
                                 "sled_model": "cella", "sled_serial": "cella",
                                 "sled_revision": 0}
    assert body["init"]["method"] == "Spec"
    assert set(body["init"]["value"]) == {"spec"}
    # The spec is what `cella spec from-toml` makes of the file.
    conv = cella("spec", "from-toml", SMALL)
    assert body["init"]["value"]["spec"] == json.loads(conv.stdout)
    # The server's answer on stdout, the id on stderr.
    assert json.loads(r.stdout) == {"migrate": None}
    assert props["id"] in r.stderr.decode()


def test_new_ids_are_fresh(fake):
    for name in ("a", "b"):
        fake.instance = None
        assert cella("new", name, "--config", SMALL, server=fake.addr).returncode == OK
    ids = [r.json()["properties"]["id"] for r in fake.by("PUT", "/instance")]
    assert len(set(ids)) == 2


def test_new_from_spec_with_id_and_description(fake, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_bytes(cella("spec", "from-toml", SMALL).stdout)
    uid = "0c6e2a5e-4a39-4f1e-9d0e-6f4c1e8f9a10"
    r = cella("new", "web", "--spec", spec, "--id", uid, "--description", "hi",
              server=fake.addr)
    assert r.returncode == OK, r.stderr
    body = fake.by("PUT", "/instance")[0].json()
    assert schema_errors("InstanceEnsureRequest", body) == []
    assert body["properties"]["id"] == uid
    assert body["properties"]["description"] == "hi"
    assert body["init"]["value"]["spec"] == json.loads(spec.read_text())


def test_new_spec_from_stdin(fake):
    spec = cella("spec", "from-toml", SMALL).stdout
    r = cella("new", "x", "--spec", "-", server=fake.addr, stdin=spec)
    assert r.returncode == OK, r.stderr
    assert fake.by("PUT", "/instance")[0].json()["init"]["value"]["spec"] == json.loads(spec)


def test_new_conflict_prints_the_servers_error(fake):
    fake.created()
    r = cella("new", "vm1", "--config", SMALL, server=fake.addr)
    assert r.returncode == INVALID
    assert r.stdout == b""
    assert r.stderr.decode() == \
        "error (AlreadyInitialized): Server already initialized [req-1]\n"


def test_new_bad_spec_prints_each_problem(fake):
    fake.errors["ensure"] = (400, "/components/disk0/component/backend_id: backend \"x\" "
                             "does not exist\n/board/cpus: must be 1 to 64", "InvalidSpec")
    r = cella("new", "vm1", "--config", SMALL, server=fake.addr)
    assert r.returncode == INVALID
    assert r.stderr.decode().splitlines() == [
        'error (InvalidSpec): /components/disk0/component/backend_id: backend "x" '
        "does not exist [req-1]",
        "error (InvalidSpec): /board/cpus: must be 1 to 64 [req-1]",
    ]


def test_error_without_code_shows_the_http_status(fake):
    fake.errors["ensure"] = (500, "cannot create vCPUs", None)
    r = cella("new", "vm1", "--config", SMALL, server=fake.addr)
    assert r.returncode == INVALID
    assert r.stderr.decode() == "error (HTTP 500): cannot create vCPUs [req-1]\n"


def test_error_text_from_the_server_cannot_drive_the_terminal(fake):
    fake.errors["ensure"] = (400, "bad\x1b[2Jthing", "X\x07")
    r = cella("new", "vm1", "--config", SMALL, server=fake.addr)
    assert r.returncode == INVALID
    assert b"\x1b" not in r.stderr and b"\x07" not in r.stderr
    assert r.stderr.decode() == "error (X?): bad?[2Jthing [req-1]\n"


@pytest.mark.parametrize("args", [
    ["new", "vm1"],
    ["new", "vm1", "--config", SMALL, "--spec", "x.json"],
    ["new", "vm1", "--config", SMALL, "--id", "not-a-uuid"],
    ["new", "--config", SMALL],
    ["new", "", "--config", SMALL],
])
def test_new_usage_errors(fake, args):
    r = cella(*args, server=fake.addr)
    assert r.returncode == USAGE, r.stderr
    assert fake.requests == []


def test_new_invalid_input_sends_nothing(fake, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"board": {"cpus": 1}, "components": {}, "extra": 1}')
    r = cella("new", "vm1", "--spec", bad, server=fake.addr)
    assert r.returncode == INVALID
    assert str(bad) in r.stderr.decode()
    toml = tmp_path / "bad.toml"
    toml.write_text("[main]\ncpus = 1\n")  # memory is required
    r = cella("new", "vm1", "--config", toml, server=fake.addr)
    assert r.returncode == INVALID
    assert "memory" in r.stderr.decode()
    r = cella("new", "vm1", "--spec", tmp_path / "missing.json", server=fake.addr)
    assert r.returncode == INVALID
    assert fake.requests == []


# ---- get and spec get ----

def test_get_prints_state_and_properties(fake):
    fake.created("Running")
    r = cella("get", server=fake.addr)
    assert r.returncode == OK, r.stderr
    lines = dict(re.split(r":\s+", line, maxsplit=1) for line in r.stdout.decode().splitlines())
    assert lines["state"] == "Running"
    assert lines["name"] == "vm0"
    assert lines["id"] == "11111111-2222-4333-8444-555555555555"
    assert lines["sled_revision"] == "3"
    j = cella("get", "--json", server=fake.addr)
    assert json.loads(j.stdout) == {"instance": fake.instance}


def test_get_before_an_instance_exists(fake):
    r = cella("get", server=fake.addr)
    assert r.returncode == INVALID
    assert r.stderr.decode() == "error (NoInstance): Server not initialized (no instance) [req-1]\n"


def test_get_rejects_a_malformed_answer(fake):
    fake.created()
    fake.instance["state"] = "Dancing"
    r = cella("get", server=fake.addr)
    assert r.returncode == INVALID
    assert "/instance/state" in r.stderr.decode()


def test_spec_get_prints_the_spec(fake):
    assert cella("new", "vm1", "--config", SMALL, server=fake.addr).returncode == OK
    r = cella("spec", "get", server=fake.addr)
    assert r.returncode == OK, r.stderr
    spec = json.loads(r.stdout)
    assert spec == json.loads(cella("spec", "from-toml", SMALL).stdout)
    assert r.stdout.decode() == json.dumps(spec, indent=2, sort_keys=True) + "\n"
    c = cella("spec", "get", "--compact", server=fake.addr)
    assert json.loads(c.stdout) == spec and c.stdout.count(b"\n") == 1


def test_spec_get_no_instance(fake):
    r = cella("spec", "get", server=fake.addr)
    assert r.returncode == INVALID
    assert "NoInstance" in r.stderr.decode()


# ---- state and nmi ----

@pytest.mark.parametrize("word,wire", [("run", "Run"), ("stop", "Stop"), ("Reboot", "Reboot")])
def test_state_sends_the_bare_string(fake, word, wire):
    fake.created()
    r = cella("state", word, server=fake.addr)
    assert r.returncode == OK, r.stderr
    assert r.stdout == b""
    (req,) = fake.by("PUT", "/instance/state")
    assert req.body == json.dumps(wire).encode()
    assert req.headers["content-type"] == "application/json"
    assert schema_errors("InstanceStateRequested", req.json()) == []


def test_state_refused(fake):
    fake.created("Stopped")
    fake.errors["state"] = (403, "the instance is stopping", "Forbidden")
    r = cella("state", "run", server=fake.addr)
    assert r.returncode == INVALID
    assert r.stderr.decode() == "error (Forbidden): the instance is stopping [req-1]\n"


def test_state_unknown_word(fake):
    r = cella("state", "pause", server=fake.addr)
    assert r.returncode == USAGE
    assert fake.requests == []


def test_nmi(fake):
    fake.created()
    r = cella("nmi", server=fake.addr)
    assert r.returncode == OK, r.stderr
    (req,) = fake.by("POST", "/instance/nmi")
    assert req.body == b""


# ---- monitor ----

TIMELINE = [(1, "Creating"), (2, "Starting"), (4, "Running"), (5, "Stopping"),
            (6, "Stopped"), (7, "Destroyed")]


def test_monitor_until_state(fake):
    fake.created()
    fake.timeline = TIMELINE
    r = cella("monitor", "--until", "running", server=fake.addr)
    assert r.returncode == OK, r.stderr
    assert r.stdout.decode() == "gen 1: Creating\ngen 2: Starting\ngen 4: Running\n"
    gens = [q.json() for q in fake.by("GET", "/instance/state-monitor")]
    assert gens == [{"gen": 0}, {"gen": 2}, {"gen": 3}]
    assert all(schema_errors("InstanceStateMonitorRequest", g) == [] for g in gens)


def test_monitor_from_gen_until_destroyed(fake):
    fake.created()
    fake.timeline = TIMELINE
    r = cella("monitor", "--gen", "5", server=fake.addr)
    assert r.returncode == OK, r.stderr
    assert r.stdout.decode() == "gen 5: Stopping\ngen 6: Stopped\ngen 7: Destroyed\n"


def test_monitor_ends_at_410(fake):
    fake.created()
    fake.timeline = TIMELINE[:3]
    fake.gone_at_end = True
    r = cella("monitor", server=fake.addr)
    assert r.returncode == OK, r.stderr
    assert r.stdout.decode().splitlines()[-1] == "gen 4: Running"
    assert "gone" in r.stderr.decode()


def test_monitor_until_never_reached(fake):
    fake.created()
    fake.timeline = [(1, "Creating"), (2, "Failed"), (3, "Destroyed")]
    r = cella("monitor", "--until", "Running", server=fake.addr)
    assert r.returncode == INVALID
    assert "failed" in r.stderr.decode()
    fake.timeline = [(1, "Creating"), (3, "Destroyed")]
    r = cella("monitor", "--until", "Running", server=fake.addr)
    assert r.returncode == INVALID
    assert "destroyed" in r.stderr.decode()
    fake.timeline = [(1, "Creating")]
    fake.gone_at_end = True
    r = cella("monitor", "--until", "Running", server=fake.addr)
    assert r.returncode == INVALID


def test_monitor_timeout(fake):
    fake.created()
    fake.timeline = [(1, "Creating")]  # then the long poll never answers
    t = time.monotonic()
    r = cella("monitor", "--until", "Running", "--timeout", "0.5", server=fake.addr)
    assert r.returncode == INVALID
    assert "timed out" in r.stderr.decode()
    assert r.stdout.decode() == "gen 1: Creating\n"
    r = cella("monitor", "--timeout", "0.5", server=fake.addr)
    assert r.returncode == OK
    assert time.monotonic() - t < 10


@pytest.mark.parametrize("args", [["--until", "Sleeping"], ["--gen", "-1"], ["--gen", "x"],
                                  ["--timeout", "0"], ["--timeout", "soon"]])
def test_monitor_usage_errors(fake, args):
    assert cella("monitor", *args, server=fake.addr).returncode == USAGE
    assert fake.requests == []


def test_monitor_no_instance(fake):
    r = cella("monitor", server=fake.addr)
    assert r.returncode == INVALID
    assert "NoInstance" in r.stderr.decode()


# ---- reaching the server ----

@pytest.mark.parametrize("args", [["get"], ["spec", "get"], ["state", "run"], ["nmi"],
                                  ["monitor"], ["new", "x", "--config", SMALL],
                                  ["serial", "--history"], ["serial"]])
def test_unreachable_server_exits_3(args):
    addr = f"127.0.0.1:{free_port()}"
    r = cella(*args, server=addr)
    assert r.returncode == UNREACHABLE, r.stderr
    assert f"cannot reach the server at {addr}" in r.stderr.decode()


def test_server_from_environment_and_equals_form(fake):
    fake.created()
    assert cella("nmi", env={"CELLA_SERVER": fake.addr}).returncode == OK
    assert cella(f"--server={fake.addr}", "nmi").returncode == OK
    # After the command, too.
    assert cella("nmi", "--server", fake.addr).returncode == OK
    assert cella("nmi", f"--server={fake.addr}").returncode == OK
    assert cella("nmi", "--server").returncode == USAGE
    # --server wins over the environment.
    r = cella("nmi", server=fake.addr, env={"CELLA_SERVER": f"127.0.0.1:{free_port()}"})
    assert r.returncode == OK
    assert len(fake.by("POST", "/instance/nmi")) == 5


def test_default_server_address():
    r = cella("get", env={"CELLA_SERVER": ""})
    # Whatever runs on this host, cella went to the documented default.
    if r.returncode == UNREACHABLE:
        assert "127.0.0.1:12400" in r.stderr.decode()


@pytest.mark.parametrize("addr", ["", "host:0", "host:99999", "a b:1", "h/x:1", "[::1",
                                  "host:1:2x"])
def test_bad_server_address(addr):
    r = cella("get", server=addr) if addr else cella("--server", "", "get")
    assert r.returncode == USAGE, r.stderr


def test_server_address_forms(fake):
    fake.created()
    assert cella("nmi", server=f"http://{fake.addr}/").returncode == OK


# ---- serial history ----

def test_serial_history_prints_the_bytes(fake):
    fake.created()
    fake.history = b"boot\r\nlogin: \xff\x00end"
    r = cella("serial", "--history", server=fake.addr)
    assert r.returncode == OK, r.stderr
    assert r.stdout == fake.history
    (req,) = fake.by("GET", "/instance/serial/history")
    assert req.query == {"most_recent": "16384"}


def test_serial_history_range(fake):
    fake.created()
    fake.history = b"0123456789"
    r = cella("serial", "--history", "--from-start", "2", "--max-bytes", "3", server=fake.addr)
    assert (r.returncode, r.stdout) == (OK, b"234")
    assert fake.by("GET", "/instance/serial/history")[0].query == {
        "from_start": "2", "max_bytes": "3"}
    r = cella("serial", "--history", "--most-recent", "4", server=fake.addr)
    assert (r.returncode, r.stdout) == (OK, b"6789")


def test_serial_history_refused(fake):
    fake.created()
    fake.errors["history"] = (400, "bytes no longer kept", "BadRange")
    r = cella("serial", "--history", "--from-start", "0", server=fake.addr)
    assert r.returncode == INVALID
    assert r.stderr.decode() == "error (BadRange): bytes no longer kept [req-1]\n"


@pytest.mark.parametrize("args", [["--history", "--from-start", "1", "--most-recent", "1"],
                                  ["--history", "--exit-after", "1"],
                                  ["--max-bytes", "3"],
                                  ["--from-start", "x"],
                                  ["--exit-after", "-1"]])
def test_serial_usage_errors(fake, args):
    assert cella("serial", *args, server=fake.addr).returncode == USAGE
    assert fake.requests == []


# ---- the serial console (websocket) ----

def test_serial_console_both_ways(fake):
    fake.created()
    fake.serial.script = [("binary", b"hello")]
    r = cella("serial", server=fake.addr, stdin=b"typed\n")
    assert r.returncode == OK, r.stderr
    assert r.stdout == b"hello"
    assert fake.serial.done.wait(5)
    assert bytes(fake.serial.received) == b"typed\n"
    # Client frames are masked binary frames; cella closed with 1000.
    data = [f for f in fake.serial.frames if f[0] == OP_BINARY]
    assert data and all(masked for _, masked, _ in data)
    assert fake.serial.close_code == 1000
    (req,) = fake.by("GET", "/instance/serial")
    assert req.query == {}


def test_serial_console_echo_and_large_frames(fake):
    fake.created()
    big = bytes(range(256)) * 300  # 76800 bytes: a 64-bit length frame
    fake.serial.script = [("binary", big)]
    fake.serial.echo = True
    typed = b"x" * 70000 + b"\n"
    r = cella("serial", server=fake.addr, stdin=typed)
    assert r.returncode == OK, r.stderr
    assert fake.serial.done.wait(5)
    assert bytes(fake.serial.received) == typed
    assert r.stdout == big + typed


def test_serial_console_offsets(fake):
    fake.created()
    assert cella("serial", "--from-start", "7", server=fake.addr).returncode == OK
    assert cella("serial", "--most-recent", "9", server=fake.addr).returncode == OK
    reqs = fake.by("GET", "/instance/serial")
    assert [r.query for r in reqs] == [{"from_start": "7"}, {"most_recent": "9"}]


def test_serial_control_messages_go_to_stderr(fake):
    fake.created()
    fake.serial.script = [
        ("binary", b"a"),
        ("text", json.dumps({"Migrating": {"destination": "10.0.0.2:12400",
                                           "from_start": 1234}})),
        ("text", "{\"Other\":1}"),
        ("binary", b"b")]
    r = cella("serial", server=fake.addr)
    assert r.returncode == OK, r.stderr
    assert r.stdout == b"ab"
    err = r.stderr.decode()
    assert "migrating to 10.0.0.2:12400" in err and "1234" in err
    assert 'server says: {"Other":1}' in err


def test_serial_server_closes(fake):
    fake.created()
    fake.serial.script = [("binary", b"bye"), ("close", 1000)]
    p = subprocess.Popen([str(CELLA), "--server", fake.addr, "serial", "--exit-after", "20"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=10)
    assert p.returncode == OK, err
    assert out == b"bye"
    assert b"server closed the console" in err


def test_serial_connection_lost(fake):
    fake.created()
    fake.serial.script = [("binary", b"x"), ("drop",)]
    p = subprocess.Popen([str(CELLA), "--server", fake.addr, "serial", "--exit-after", "20"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = p.communicate(timeout=10)
    assert p.returncode == UNREACHABLE, err
    assert b"lost" in err


def test_serial_exit_after_with_open_stdin(fake):
    fake.created()
    t = time.monotonic()
    p = subprocess.Popen([str(CELLA), "--server", fake.addr, "serial", "--exit-after", "0.5"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdin.write(b"ls\n")
    p.stdin.flush()
    out, err = p.communicate(timeout=10)  # closes stdin only after exit... or at once
    assert p.returncode == OK, err
    assert out == b"hello"
    assert fake.serial.done.wait(5)
    assert bytes(fake.serial.received) == b"ls\n"
    assert time.monotonic() - t < 5


def test_serial_exit_after_keeps_running_after_eof(fake):
    fake.created()
    fake.serial.script = [("sleep", 1.3), ("binary", b"late")]
    r = cella("serial", "--exit-after", "2.5", server=fake.addr, stdin=b"")
    assert r.returncode == OK, r.stderr
    assert r.stdout == b"late"


def test_serial_sigterm_closes_cleanly(fake):
    fake.created()
    p = subprocess.Popen([str(CELLA), "--server", fake.addr, "serial"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert p.stdout.read(5) == b"hello"  # the console is up
    p.terminate()
    out, err = p.communicate(timeout=10)
    assert p.returncode == 128 + 15, err
    assert fake.serial.done.wait(5)
    assert fake.serial.close_code == 1000


def test_serial_refused_upgrade(fake):
    r = cella("serial", server=fake.addr)
    assert r.returncode == INVALID
    assert r.stderr.decode() == "error (NoInstance): Server not initialized (no instance) [req-1]\n"


def test_serial_bad_accept_is_refused(fake):
    fake.created()
    fake.serial.bad_accept = True
    r = cella("serial", server=fake.addr)
    assert r.returncode == INVALID
    assert "Sec-WebSocket-Accept" in r.stderr.decode()
    assert r.stdout == b""


def test_serial_not_websocket_at_all():
    """A server that answers 200 to the upgrade is not a websocket server."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    addr = "127.0.0.1:%d" % srv.getsockname()[1]
    p = subprocess.Popen([str(CELLA), "--server", addr, "serial"], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    conn, _ = srv.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    out, err = p.communicate(timeout=10)
    conn.close()
    srv.close()
    assert p.returncode == INVALID, err
    assert b"error (HTTP 200): hi" in err


def test_serial_detach_key_on_a_terminal(fake):
    """On a tty: raw mode, Ctrl-] detaches, and the terminal is restored."""
    fake.created()
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        p = subprocess.Popen([str(CELLA), "--server", fake.addr, "serial"], stdin=slave,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        # Wait until cella has the console (raw mode set), then type.
        deadline = time.monotonic() + 10
        while termios.tcgetattr(slave)[3] & termios.ICANON and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not termios.tcgetattr(slave)[3] & termios.ICANON, "cella did not set raw mode"
        os.write(master, b"ab\x03c\x1d")  # Ctrl-C is just a byte in raw mode
        out, err = p.communicate(timeout=10)
        assert p.returncode == OK, err
        assert fake.serial.done.wait(5)
        assert bytes(fake.serial.received) == b"ab\x03c"
        assert out == b"hello"
        assert b"detached" in err
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


# ---- help ----

@pytest.mark.parametrize("args", [["new"], ["get"], ["state"], ["monitor"], ["nmi"],
                                  ["serial"], ["spec", "get"]])
def test_help_for_every_server_command(args):
    r = cella(*args, "--help")
    assert r.returncode == OK
    out = r.stdout.decode()
    assert out.startswith("Usage: cella " + " ".join(args))
    assert "3 the server cannot be reached" in out


def test_top_help_names_the_server_option():
    out = cella("--help").stdout.decode()
    assert "--server ADDR:PORT" in out and "CELLA_SERVER" in out
    for name in ("new", "get", "state", "monitor", "nmi", "serial"):
        assert re.search(rf"^  {name}\s", out, re.M), name
