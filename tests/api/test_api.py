# SPDX-License-Identifier: MPL-2.0
"""The JSON endpoints of the API server over the fake instance: success and
error shapes of every route, limits, and that the server keeps serving after
bad input. Every answer is checked against docs/openapi.json and Propolis's
reference document by the Api client (conftest.py).

Run:  /usr/bin/python3 -m pytest tests/api   (CELLA_BUILD_DIR=<meson build dir>)
"""
import json
import socket
import threading
import time

import pytest
import requests

from conftest import (ApiServer, Api, CELLA_DOC, PROPOLIS_DOC, base_spec, ensure_body,
                      new_uuid, properties, wait_for)

MIGRATION_ID = "0d6b8a4e-5f44-4b8a-9f4f-2c3b1e0f7a10"

# Every /instance... request but PUT /instance, as (method, path, kwargs).
INSTANCE_CALLS = [
    ("GET", "/instance", {}),
    ("GET", "/instance/spec", {}),
    ("PUT", "/instance/state", {"json": "Run"}),
    ("GET", "/instance/state-monitor", {"json": {"gen": 0}}),
    ("GET", "/instance/migration-status", {}),
    ("POST", "/instance/nmi", {}),
    ("GET", "/instance/serial/history?most_recent=10", {}),
    ("GET", "/instance/serial", {"headers": {
        "Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}}),
    ("GET", f"/instance/migrate/{MIGRATION_ID}/start", {}),
]


def message(r):
    return r.json()["message"]


# ---- before any instance ----

@pytest.mark.parametrize("method,path,kw", INSTANCE_CALLS, ids=[c[1] for c in INSTANCE_CALLS])
def test_no_instance_is_424(api, method, path, kw):
    r = api.call(method, path, expect=424, **kw)
    assert r.json()["error_code"] == "NoInstance"


# ---- PUT /instance ----

def test_ensure_then_get_and_spec(api):
    props = properties("web-1")
    body = ensure_body(props=props)
    assert not PROPOLIS_DOC or not PROPOLIS_DOC.request_errors("PUT", "/instance", body)
    r = api.put("/instance", json=body, expect=201)
    assert r.json() == {"migrate": None}
    inst = api.get("/instance", expect=200).json()["instance"]
    assert inst["properties"] == props
    assert inst["state"] == "Creating"
    got = api.get("/instance/spec", expect=200).json()
    assert got["properties"] == props and got["state"] == "Creating"
    assert got["spec"]["type"] == "Present"
    assert got["spec"]["value"]["components"] == base_spec()["components"]
    assert got["spec"]["value"]["board"]["cpus"] == 2


def test_second_ensure_is_409(api):
    api.ensure()
    r = api.ensure(expect=409)
    assert r.json()["error_code"] == "AlreadyInitialized"
    # The first instance is untouched.
    assert api.get("/instance", expect=200).json()["instance"]["state"] == "Creating"


def test_ensure_decode_errors_list_every_problem(api):
    spec = base_spec()
    spec["board"]["bogus"] = 1
    spec["board"]["cpus"] = "two"
    spec["components"]["com1"]["component"]["num"] = "com9"
    body = ensure_body(spec)
    body["properties"]["id"] = "not-a-uuid"
    r = api.put("/instance", json=body, expect=400)
    m = message(r)
    for ptr in ("/init/value/spec/board/bogus", "/init/value/spec/board/cpus",
                "/init/value/spec/components/com1/component/num", "/properties/id"):
        assert ptr in m, m
    assert "4 problems" in m
    # Nothing was created.
    api.get("/instance", expect=424)


def test_ensure_invalid_spec_names_body_pointers(api):
    spec = base_spec()
    spec["components"]["disk0"]["component"]["backend_id"] = "missing"
    spec["components"]["nvme0"]["component"]["pci_path"] = {"bus": 0, "device": 6,
                                                            "function": 0}
    r = api.put("/instance", json=ensure_body(spec), expect=400)
    m = message(r)
    assert "/init/value/spec/components/disk0/component/backend_id" in m, m
    assert "/init/value/spec/components/" in m and "pci" in m.lower(), m
    api.get("/instance", expect=424)
    api.ensure()  # a valid one still works afterwards


def test_ensure_unsupported_kind_is_400_with_reason(api):
    spec = base_spec()
    spec["components"]["root"] = {"type": "crucible_storage_backend", "component": {
        "readonly": False, "request_json": "{}"}}
    r = api.put("/instance", json=ensure_body(spec), expect=400)
    m = message(r)
    assert "/init/value/spec/components/root" in m and "Crucible" in m, m


def test_ensure_cella_only_spec_accepted(api):
    spec = base_spec()
    spec["components"]["data"] = {"type": "nbd_storage_backend", "component": {
        "uri": "nbd://127.0.0.1:10809/data", "readonly": False}}
    spec["components"]["net0"]["component"]["mac"] = "02:00:00:00:00:01"
    spec["components"]["nvme0"]["component"]["string_pad"] = 0
    body = ensure_body(spec)
    assert not CELLA_DOC.request_errors("PUT", "/instance", body)
    if PROPOLIS_DOC:
        assert PROPOLIS_DOC.request_errors("PUT", "/instance", body)
    api.cella_only = True
    api.put("/instance", json=body, expect=201)
    got = api.get("/instance/spec", expect=200).json()["spec"]["value"]["components"]
    assert got["data"]["type"] == "nbd_storage_backend"
    assert got["net0"]["component"]["mac"] == "02:00:00:00:00:01"
    assert got["nvme0"]["component"]["string_pad"] == 0


def test_ensure_migration_target_failure_is_400_and_leaves_no_instance(api):
    body = {"properties": properties(), "init": {"method": "MigrationTarget", "value": {
        "migration_id": MIGRATION_ID, "src_addr": "[::1]:12400", "replace_components": {
            "root": {"component": "VirtioNetworkBackend", "spec": {"vnic_name": "tap1"}}}}}}
    r = api.put("/instance", json=body, expect=400)
    assert "/init/value/src_addr" in message(r) and "[::1]:12400" in message(r)
    api.get("/instance", expect=424)


def test_ensure_create_failure_is_500(api):
    r = api.ensure(props=properties("fail-create"), expect=500)
    assert r.json()["error_code"] == "CreateFailed"
    assert "fake failure" in message(r)
    api.get("/instance", expect=424)


def test_ensure_unknown_top_level_field_is_400(api):
    body = ensure_body()
    body["extra"] = True
    r = api.put("/instance", json=body, expect=400)
    assert "extra" in message(r)


@pytest.mark.parametrize("text,where", [
    ('{"properties": ', "line 1"),
    ('{\n  "properties": {},\n  "init": [1,,2]\n}', "line 3"),
    ('{"a": 1, "a": 2}', "duplicate"),
    ('{"a": 1} trailing', "line 1"),
    ('"Run"', "object"),
    ("", "empty"),
])
def test_malformed_json_is_400_with_position(api, text, where):
    r = api.put("/instance", data=text.encode(),
                headers={"Content-Type": "application/json"}, expect=400)
    m = message(r)
    assert where in m, m
    if where.startswith("line"):
        assert "column" in m


# ---- content type and body limits ----

def test_content_type(api):
    api.put("/instance/state", data=b'"Run"', headers={"Content-Type": "text/plain"},
            expect=415)
    api.put("/instance/state", data=b'"Run"',
            headers={"Content-Type": "application/x-www-form-urlencoded"}, expect=415)
    # No Content-Type is taken as JSON; parameters are fine.
    api.put("/instance/state", data=b'"Run"', headers={"Content-Type": ""}, expect=424)
    api.put("/instance/state", data=b'"Run"',
            headers={"Content-Type": "Application/JSON; charset=utf-8"}, expect=424)
    # Endpoints without a body do not care.
    api.get("/instance", headers={"Content-Type": "text/plain"}, expect=424)


def test_small_body_limit_is_413(api):
    big = b'"' + b"x" * 5000 + b'"'
    r = api.put("/instance/state", data=big, headers={"Content-Type": "application/json"},
                expect=413)
    assert "4096 byte limit" in message(r)
    api.get("/instance/state-monitor", data=b'{"gen":' + b" " * 5000 + b"1}", expect=413)
    api.post("/instance/nmi", data=b"x" * 5000, expect=413)
    # Routing errors come first.
    api.get("/nope", data=b"x" * 5000, expect=404)
    api.call("DELETE", "/instance", data=b"x" * 5000, expect=405)


def test_ensure_body_limit_is_413(start_server):
    s = start_server("--max-ensure-body", "8192")
    api = Api(s)
    body = ensure_body()
    body["init"]["value"]["spec"]["components"]["data"]["component"]["base64"] = "A" * 9000
    r = api.put("/instance", json=body, expect=413)
    assert "8192 byte limit" in message(r)
    api.ensure()  # a body under the limit is fine


def test_huge_declared_body_is_answered_at_once(server):
    """Content-Length far over the limit: 413 before the body is sent."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"PUT /instance HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10000000000\r\n\r\n")
        data = c.recv(65536).decode()
    assert data.startswith("HTTP/1.1 413"), data
    assert "x-request-id" in data.lower()
    Api(server).get("/instance", expect=424)


def test_expect_continue_over_limit_is_413_before_body(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"PUT /instance/state HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
                  b"Expect: 100-continue\r\n\r\n")
        data = c.recv(65536).decode()
    assert data.startswith("HTTP/1.1 413"), data


def test_chunked_body_over_limit(server):
    chunk = b"x" * 3000
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as c:
        c.sendall(b"PUT /instance/state HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"\r\n" + (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 3 + b"0\r\n\r\n")
        data = c.recv(65536).decode()
    assert data.startswith("HTTP/1.1 413"), data


# ---- routing ----

@pytest.mark.parametrize("path", ["/", "/instances", "/instance/", "/instance/specs",
                                  "/instance/serial/history/x", "/instance/migrate/x",
                                  "/instance/migrate//start", "/instance/disk/a/status",
                                  "/instance/migrate/a/b/start"])
def test_unknown_route_is_404(api, path):
    r = api.get(path, expect=404)
    assert message(r) == "Not Found"


@pytest.mark.parametrize("method,path,allow", [
    ("DELETE", "/instance", "GET, PUT"), ("POST", "/instance", "GET, PUT"),
    ("PUT", "/instance/spec", "GET"), ("GET", "/instance/state", "PUT"),
    ("POST", "/instance/state-monitor", "GET"), ("GET", "/instance/nmi", "POST"),
    ("PUT", "/instance/serial/history", "GET"), ("POST", "/instance/serial", "GET"),
    ("PATCH", "/instance/migration-status", "GET"),
    ("POST", f"/instance/migrate/{MIGRATION_ID}/start", "GET"),
])
def test_wrong_method_is_405(api, method, path, allow):
    r = api.call(method, path, expect=405, data=b'{"a": 1}')
    assert r.headers["Allow"] == allow
    assert message(r) == "Method Not Allowed"


def test_head_is_405(api):
    r = api.call("HEAD", "/instance", check=False)
    assert r.status_code == 405 and r.headers.get("x-request-id")


# ---- PUT /instance/state ----

def test_state_requests(api):
    api.ensure()
    for bad in ['"run"', "5", '{"Run": null}', '["Run"]', "null", '"Running"']:
        r = api.put("/instance/state", data=bad.encode(), expect=400)
        assert '"Run"' in message(r)
    r = api.put("/instance/state", json="Reboot", expect=403)
    assert "Creating" in message(r)
    api.put("/instance/state", json="Run", expect=204)
    assert api.get("/instance", expect=200).json()["instance"]["state"] == "Running"
    api.put("/instance/state", json="Reboot", expect=204)
    api.put("/instance/state", json="Stop", expect=204)
    assert api.get("/instance", expect=200).json()["instance"]["state"] == "Destroyed"
    r = api.put("/instance/state", json="Run", expect=403)
    assert "Destroyed" in message(r)


def test_state_while_initializing_is_503(server, api):
    api.ensure()
    server.cmd("busy 1")
    api.put("/instance/state", json="Run", expect=503)
    server.cmd("busy 0")
    api.put("/instance/state", json="Run", expect=204)


# ---- GET /instance/state-monitor ----

def monitor(api, gen, **kw):
    return api.get("/instance/state-monitor", json={"gen": gen}, **kw)


def test_monitor_answers_at_once_when_reached(api):
    api.ensure()
    for gen in (0, 1):
        r = monitor(api, gen, expect=200).json()
        assert r == {"gen": 1, "state": "Creating",
                     "migration": {"migration_in": None, "migration_out": None}}


def test_monitor_long_polls(server, api):
    api.ensure()
    out = {}

    def waiter():
        t = time.time()
        out["r"] = monitor(Api(server), 2, expect=200).json()
        out["t"] = time.time() - t

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.7)
    assert "r" not in out
    server.cmd("state Running")
    th.join(10)
    assert out["r"]["gen"] == 2 and out["r"]["state"] == "Running"
    assert out["t"] >= 0.6


def test_monitor_sequence_follows_every_generation(server, api):
    api.ensure()
    api.put("/instance/state", json="Run", expect=204)
    api.put("/instance/state", json="Stop", expect=204)
    seen = []
    gen = 1
    while True:
        r = monitor(api, gen, expect=200).json()
        seen.append((r["gen"], r["state"]))
        if r["state"] == "Destroyed":
            break
        gen = r["gen"] + 1
    assert seen[-1][0] == 6
    # The instance is gone for good: a later generation never comes.
    r = monitor(api, 7, expect=410)
    monitor(api, 6, expect=200)


@pytest.mark.parametrize("body", ['{}', '{"gen": -1}', '{"gen": "1"}', '{"gen": 1, "x": 2}',
                                  '[1]', '{"gen": 1.5}'])
def test_monitor_bad_bodies(api, body):
    api.ensure()
    api.get("/instance/state-monitor", data=body.encode(), expect=400)


def test_monitor_needs_a_body(api):
    api.ensure()
    r = api.get("/instance/state-monitor", expect=400)
    assert "empty" in message(r)


def test_monitor_dropped_client_frees_its_thread(server, api):
    api.ensure()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(server.url("/instance/state-monitor"), json={"gen": 50}, timeout=0.5)

    def aborted():
        return [l for l in server.log_lines() if l.get("path") == "/instance/state-monitor"
                and l.get("status") == 0]
    assert wait_for(aborted, timeout=5), server.log_text()[-2000:]


def test_monitor_ends_when_server_stops(start_server):
    s = start_server()
    api = Api(s)
    api.ensure()
    out = {}

    def waiter():
        try:
            out["r"] = requests.get(s.url("/instance/state-monitor"), json={"gen": 9},
                                    timeout=20)
        except requests.RequestException as e:
            out["e"] = e

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.5)
    t = time.time()
    s.proc.stdin.write("quit\n")
    s.proc.stdin.flush()
    s.proc.wait(10)
    assert time.time() - t < 5
    th.join(10)
    if "r" in out:
        assert out["r"].status_code == 503


# ---- migration status, NMI, migrate start ----

def test_migration_status(api):
    api.ensure()
    r = api.get("/instance/migration-status", expect=200)
    assert r.json() == {"migration_in": None, "migration_out": None}


def test_nmi(server, api):
    api.ensure()
    r = api.post("/instance/nmi", expect=409)
    assert "not running" in message(r)
    api.put("/instance/state", json="Run", expect=204)
    r = api.post("/instance/nmi", expect=200)
    assert r.json() is None
    api.post("/instance/nmi", expect=200)
    assert server.cmd("nmi") == "2"


def test_migrate_start_refusals(api):
    api.get(f"/instance/migrate/{MIGRATION_ID}/start", expect=424)
    api.get("/instance/migrate/not-a-uuid/start", expect=400)
    api.get("/instance/migrate/" + "a" * 200 + "/start", expect=400)
    api.ensure()
    # Only a Running instance migrates.
    r = api.get(f"/instance/migrate/{MIGRATION_ID}/start", expect=409)
    assert "Creating" in message(r)
    api.put("/instance/state", json="Run", expect=204)
    # It is a websocket: a plain GET is refused before anything starts.
    r = api.get(f"/instance/migrate/{MIGRATION_ID}/start", expect=400)
    assert "websocket" in message(r)


def test_migration_settings(api):
    api.put("/instance/migration-settings", json={"downtime_ms": 100}, expect=424)
    api.ensure()
    api.cella_only = True
    api.put("/instance/migration-settings", json={"downtime_ms": 100}, expect=204)
    api.put("/instance/migration-settings", json={"max_bandwidth_mibps": 64}, expect=204)
    api.put("/instance/migration-settings", json={"auto_converge": False}, expect=204)
    api.put("/instance/migration-settings",
            json={"downtime_ms": 5, "max_bandwidth_mibps": 0, "auto_converge": True}, expect=204)
    api.put("/instance/migration-settings", json={"delta_cache_mib": 0}, expect=204)
    api.put("/instance/migration-settings", json={"delta_cache_mib": 512}, expect=204)
    for bad in ({"downtime_ms": 0}, {"downtime_ms": 700000}, {"downtime": 5}, {},
                {"delta_cache_mib": -1}, {"delta_cache_mib": 65537}, {"delta_cache_mib": "1G"},
                {"max_bandwidth_mibps": -1}, {"max_bandwidth_mibps": 2 << 20},
                {"auto_converge": 1}, {"downtime_ms": 10, "auto_converge": "yes"}):
        api.put("/instance/migration-settings", json=bad, expect=400)


def test_migration_report_before_any_migration(api):
    api.get("/instance/migration-report", expect=424)
    api.ensure()
    r = api.get("/instance/migration-report", expect=404)
    assert "no outgoing migration" in message(r)


# ---- request ids, logs, robustness ----

def test_request_ids_are_unique_and_match(api):
    ids = set()
    for _ in range(20):
        r = api.get("/instance", expect=424)
        assert r.json()["request_id"] == r.headers["x-request-id"]
        ids.add(r.headers["x-request-id"])
    assert len(ids) == 20
    api.ensure()
    r = api.get("/instance", expect=200)
    assert r.headers["x-request-id"] not in ids


def test_every_request_is_logged(server, api):
    r = api.get("/instance", expect=424)
    rid = r.headers["x-request-id"]
    api.put("/instance/state", json="Run", expect=424)

    def line():
        return [l for l in server.log_lines() if l.get("request_id") == rid and "status" in l]
    found = wait_for(line)
    assert found, server.log_text()
    entry = found[0]
    assert entry["component"] == "api" and entry["level"] == "info"
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/instance", 424)
    assert isinstance(entry["duration_ms"], float) and entry["duration_ms"] >= 0


def test_log_lines_carry_instance_and_request_ids(server, api):
    """Bunyan-like fields: once an instance exists every line names it, and
    lines logged while serving a request name the request."""
    props = {"id": "3f1a2b4c-0000-4000-8000-00000000abcd", "name": "logged", "description": "",
             "metadata": {"project_id": "3f1a2b4c-0000-4000-8000-000000000001",
                          "silo_id": "3f1a2b4c-0000-4000-8000-000000000002",
                          "sled_id": "3f1a2b4c-0000-4000-8000-000000000003",
                          "sled_model": "m", "sled_revision": 1, "sled_serial": "s"}}
    r = api.ensure(props=props)
    rid = r.headers["x-request-id"]
    api.get("/instance", expect=200)

    def tagged():
        return [l for l in server.log_lines()
                if l.get("instance_id") == props["id"] and l.get("path") == "/instance"
                and l.get("method") == "GET"]
    assert wait_for(tagged), server.log_text()[-3000:]
    ensure_line = [l for l in server.log_lines() if l.get("request_id") == rid]
    assert ensure_line and all(isinstance(l["time"], str) for l in ensure_line)


# The allowed (state, request) pairs, written out independently of the C table.
ALLOWED = {
    "Creating": {"Run", "Stop"}, "Starting": {"Run", "Stop"},
    "Running": {"Run", "Stop", "Reboot"}, "Rebooting": {"Run", "Stop", "Reboot"},
    "Stopping": {"Stop"}, "Stopped": {"Stop"}, "Failed": {"Stop"}, "Destroyed": set(),
}


@pytest.mark.parametrize("state", sorted(ALLOWED))
def test_state_changes_refused_exactly_where_they_should_be(server, api, state):
    api.ensure()
    for req in ("Run", "Stop", "Reboot"):
        server.cmd(f"state {state}")
        r = api.put("/instance/state", json=req)
        if req in ALLOWED[state]:
            assert r.status_code == 204, (state, req, r.text)
        else:
            assert r.status_code == 403, (state, req, r.text)
            assert state in message(r) and req in message(r)
            # A refusal changes nothing.
            assert api.get("/instance", expect=200).json()["instance"]["state"] == state


def test_server_survives_garbage(server, api):
    junk = [b"\x00\x01\x02garbage\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
            b"PUT /instance HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
            b"GET /instance HTTP/1.1\r\nHost: x\r\n" + b"X-Long: " + b"a" * 100000 + b"\r\n\r\n",
            b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
            b"PUT /instance HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{\"a"]
    for j in junk:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as c:
            try:
                c.sendall(j)
                c.shutdown(socket.SHUT_WR)
                c.recv(65536)
            except OSError:
                pass
    api.get("/instance", expect=424)
    api.ensure()
    api.put("/instance", data=b"\xff\xfe{", headers={"Content-Type": "application/json"},
            expect=400)
    api.get("/instance", expect=200)


def test_query_strings_on_json_routes_are_ignored(api):
    api.get("/instance?x=1", expect=424)


def test_ipv6_listener(start_server):
    try:
        socket.create_connection(("::1", 1), timeout=1)
    except ConnectionRefusedError:
        pass
    except OSError:
        pytest.skip("no IPv6 loopback here")
    s = start_server("--address", "::1")
    api = Api(s)
    api.get("/instance", expect=424)
    api.ensure()


def test_bad_address_fails_to_start():
    with pytest.raises(Exception):
        ApiServer(("--address", "not-an-address"))
