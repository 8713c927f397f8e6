# SPDX-License-Identifier: MPL-2.0
"""The API in the real cella-server (real instance driver), for everything
that needs no guest: answers before any VM, spec errors as the real driver
reports them (pointers named in the request body), MigrationTarget, and a VM
that cannot be built. No test here builds a VM; guests are
tests/integration's business.

Skipped when build/src/server/cella-server is not built.
"""
import re
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from conftest import BUILD, Api, base_spec, ensure_body, properties

CELLA_SERVER = BUILD / "src" / "server" / "cella-server"
MIGRATION_ID = "0d6b8a4e-5f44-4b8a-9f4f-2c3b1e0f7a10"

pytestmark = pytest.mark.skipif(not CELLA_SERVER.exists(), reason=f"{CELLA_SERVER} not built")


class RealServer:
    def __init__(self, tmp):
        self.tmp = Path(tmp)
        bootrom = Path(tmp) / "bootrom.bin"
        bootrom.write_bytes(b"\xf4" * 65536)  # hlt; never run by these tests
        self.log = Path(tmp) / "server.log"
        self.proc = subprocess.Popen([str(CELLA_SERVER), "run", "127.0.0.1:0",
                                      "--bootrom", str(bootrom)],
                                     stdout=subprocess.DEVNULL, stderr=open(self.log, "w"))
        end = time.time() + 10
        self.port = None
        while self.port is None and time.time() < end:
            m = re.search(r"listening on 127\.0\.0\.1 port (\d+)", self.log.read_text())
            if m:
                self.port = int(m.group(1))
            elif self.proc.poll() is not None:
                raise RuntimeError("cella-server exited:\n" + self.log.read_text())
            else:
                time.sleep(0.05)
        assert self.port, self.log.read_text()
        self.base = f"http://127.0.0.1:{self.port}"

    def url(self, path):
        return self.base + path

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(20)


@pytest.fixture
def real():
    with tempfile.TemporaryDirectory(prefix="cella-api-real-") as tmp:
        s = RealServer(tmp)
        yield s
        assert s.stop() == 0, s.log.read_text()[-3000:]


def test_no_instance(real):
    api = Api(real)
    for method, path, kw in [("GET", "/instance", {}), ("GET", "/instance/spec", {}),
                             ("PUT", "/instance/state", {"json": "Run"}),
                             ("GET", "/instance/state-monitor", {"json": {"gen": 1}}),
                             ("GET", "/instance/migration-status", {}),
                             ("POST", "/instance/nmi", {}),
                             ("GET", "/instance/serial/history?from_start=0", {})]:
        r = api.call(method, path, expect=424, **kw)
        assert r.json()["error_code"] == "NoInstance"


def test_invalid_spec_pointers(real):
    api = Api(real)
    spec = base_spec()
    spec["components"]["disk0"]["component"]["backend_id"] = "missing"
    r = api.put("/instance", json=ensure_body(spec), expect=400)
    assert "/init/value/spec/components/disk0/component/backend_id" in r.json()["message"]
    spec = base_spec()
    spec["components"]["net0-be"] = {"type": "dlpi_network_backend",
                                     "component": {"vnic_name": "vnic0"}}
    r = api.put("/instance", json=ensure_body(spec), expect=400)
    assert "/init/value/spec/components/net0-be" in r.json()["message"]
    api.get("/instance", expect=424)


def test_migration_target(real):
    api = Api(real)
    body = {"properties": properties(), "init": {"method": "MigrationTarget", "value": {
        "migration_id": MIGRATION_ID, "src_addr": "127.0.0.1:1", "replace_components": {}}}}
    # An unreachable source is the request's problem: 400 naming src_addr.
    r = api.put("/instance", json=body, expect=400)
    assert "/init/value/src_addr" in r.json()["message"], r.text
    assert "127.0.0.1:1" in r.json()["message"], r.text
    api.get("/instance", expect=424)


def test_vm_that_cannot_be_built(real):
    api = Api(real)
    (real.tmp / "bootrom.bin").write_bytes(b"abc")  # not a bootrom
    spec = {"board": {"cpus": 1, "memory_mb": 64,
                      "chipset": {"type": "i440_fx", "value": {"enable_pcie": False}}},
            "components": {"com1": {"type": "serial_port", "component": {"num": "com1"}}}}
    r = api.put("/instance", json=ensure_body(spec), check=False)
    api.get("/instance", expect=424)
    assert r.status_code == 500, r.text
    assert r.json()["error_code"] == "CreateFailed"
