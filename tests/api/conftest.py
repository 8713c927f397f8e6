# SPDX-License-Identifier: MPL-2.0
"""Fixtures for the API tests: a test server over the fake instance, and an
HTTP client that checks every answer against docs/openapi.json (and, for
bodies that use nothing cella-only, against Propolis's reference document).

Environment:
  CELLA_BUILD_DIR  meson build dir holding tests/api/api-test-server
                   (default: <repo>/build)
  CELLA_SHARED     the shared dir holding reference/ (default: <repo>/../shared)
"""
import base64
import copy
import json
import os
import select
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import requests

from openapi_check import OpenApi

REPO = Path(__file__).resolve().parents[2]
SHARED = Path(os.environ.get("CELLA_SHARED", REPO.parent / "shared"))
BUILD = Path(os.environ.get("CELLA_BUILD_DIR", REPO / "build"))
SERVER = BUILD / "tests" / "api" / "api-test-server"
# The same fake instance over the real COM1 hub (src/instance/serial_hub.c).
SERVER_REALHUB = BUILD / "tests" / "api" / "api-test-server-realhub"
CELLA_DOC = OpenApi(REPO / "docs" / "openapi.json")
REFERENCE = SHARED / "reference" / "propolis-server-openapi-v5.json"
PROPOLIS_DOC = OpenApi(REFERENCE) if REFERENCE.exists() else None


class ApiServer:
    """api-test-server as a child process; commands go to its stdin."""

    def __init__(self, args=(), binary=SERVER):
        if not binary.exists():
            raise RuntimeError(f"{binary} is missing: build first (ninja -C {BUILD}) "
                               "or set CELLA_BUILD_DIR")
        self.real_hub = binary == SERVER_REALHUB
        self.log = tempfile.NamedTemporaryFile(prefix="cella-api-", suffix=".log", delete=False)
        self.proc = subprocess.Popen([str(binary), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     bufsize=1)
        line = self._line(10)
        assert line.startswith("port "), line
        self.port = int(line.split()[1])
        self.host = "[::1]" if "::1" in args else "127.0.0.1"
        self.base = f"http://{self.host}:{self.port}"

    def _line(self, timeout):
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError("test server did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("test server exited:\n" + self.log_text()[-3000:])
        return line.strip()

    def cmd(self, line, timeout=60):
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        out = self._line(timeout)
        assert out.startswith("ok"), f"{line}: {out}"
        return out[3:]

    def url(self, path):
        return self.base + path

    def ws_url(self, path):
        return f"ws://{self.host}:{self.port}{path}"

    def log_text(self):
        return Path(self.log.name).read_text(errors="replace")

    def log_lines(self):
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.flush()
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("test server did not stop within %d s" % timeout)
        rc = self.proc.returncode
        os.unlink(self.log.name)
        return rc


class Api:
    """requests with answer checks: every answer carries x-request-id, every
    error has the Error shape with the same request_id, every body matches
    the documents."""

    def __init__(self, server):
        self.server = server
        self.s = requests.Session()
        self.cella_only = False  # set when a request uses cella's additions

    def call(self, method, path, expect=None, raw=False, check=True, **kw):
        kw.setdefault("timeout", 30)
        r = self.s.request(method, self.server.url(path), **kw)
        if check:
            check_answer(method, path.split("?")[0], r, cella_only=self.cella_only)
        if expect is not None:
            assert r.status_code == expect, f"{method} {path}: {r.status_code} {r.text[:2000]}"
        return r

    def get(self, path, **kw):
        return self.call("GET", path, **kw)

    def put(self, path, **kw):
        return self.call("PUT", path, **kw)

    def post(self, path, **kw):
        return self.call("POST", path, **kw)

    def ensure(self, spec=None, props=None, expect=201):
        body = ensure_body(spec, props)
        return self.put("/instance", json=body, expect=expect)


def check_answer(method, path, r, cella_only=False):
    rid = r.headers.get("x-request-id")
    assert rid and len(rid) == 36, f"no x-request-id on {method} {path}"
    body = None
    if r.content:
        assert r.headers.get("content-type", "").startswith("application/json")
        body = r.json()
    if r.status_code >= 400:
        assert isinstance(body, dict) and body.get("request_id") == rid, r.text
        assert set(body) <= {"request_id", "message", "error_code"}, body
        assert isinstance(body["message"], str) and body["message"]
    problems = CELLA_DOC.response_errors(method, path, r.status_code, body)
    assert not problems, f"{method} {path} {r.status_code} vs docs/openapi.json: {problems}"
    if PROPOLIS_DOC and not cella_only and PROPOLIS_DOC.operation(method, path) is not None:
        problems = PROPOLIS_DOC.response_errors(method, path, r.status_code, body)
        assert not problems, f"{method} {path} {r.status_code} vs Propolis: {problems}"


def new_uuid():
    return str(uuid.uuid4())


def properties(name="vm0"):
    return {"id": new_uuid(), "name": name, "description": "api test instance",
            "metadata": {"project_id": new_uuid(), "silo_id": new_uuid(),
                         "sled_id": new_uuid(), "sled_model": "test", "sled_serial": "s1",
                         "sled_revision": 1}}


BASE_SPEC = {
    "board": {"cpus": 2, "memory_mb": 512,
              "chipset": {"type": "i440_fx", "value": {"enable_pcie": False}}},
    "components": {
        "disk0": {"type": "virtio_disk", "component": {
            "backend_id": "root", "pci_path": {"bus": 0, "device": 4, "function": 0}}},
        "root": {"type": "file_storage_backend", "component": {
            "path": "/var/lib/vm/root.raw", "readonly": False, "block_size": 512}},
        "nvme0": {"type": "nvme_disk", "component": {
            "backend_id": "data", "pci_path": {"bus": 0, "device": 5, "function": 0},
            "serial_number": [ord(c) for c in "nvme0".ljust(20)]}},
        "data": {"type": "blob_storage_backend", "component": {
            "base64": base64.b64encode(bytes(512)).decode(), "readonly": True}},
        "net0": {"type": "virtio_nic", "component": {
            "backend_id": "net0-be", "interface_id": "6f1d5c3e-0d3a-4a55-9d6e-1c2b3a4d5e6f",
            "pci_path": {"bus": 0, "device": 6, "function": 0}}},
        "net0-be": {"type": "virtio_network_backend", "component": {"vnic_name": "tap0"}},
        "com1": {"type": "serial_port", "component": {"num": "com1"}},
        "boot": {"type": "boot_settings", "component": {"order": [{"id": "disk0"}]}},
    },
}


def base_spec():
    return copy.deepcopy(BASE_SPEC)


def ensure_body(spec=None, props=None):
    return {"properties": props or properties(),
            "init": {"method": "Spec", "value": {"spec": spec or base_spec()}}}


@pytest.fixture
def binary():
    """The test server binary; test_serial.py runs with both hubs."""
    return SERVER


@pytest.fixture
def server(binary):
    s = ApiServer(binary=binary)
    yield s
    assert s.stop() == 0


@pytest.fixture
def api(server):
    return Api(server)


@pytest.fixture
def running(server, api):
    """A server whose instance is Running (gen 3)."""
    api.ensure()
    api.put("/instance/state", json="Run", expect=204)
    return api


@pytest.fixture
def start_server(binary):
    made = []

    def start(*args):
        s = ApiServer(args, binary=binary)
        made.append(s)
        return s
    yield start
    for s in made:
        assert s.stop() == 0


def wait_for(pred, timeout=10, step=0.02):
    end = time.time() + timeout
    while time.time() < end:
        v = pred()
        if v:
            return v
        time.sleep(step)
    return pred()
