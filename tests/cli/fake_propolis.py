# SPDX-License-Identifier: MPL-2.0
"""A small fake Propolis server (API v5) for black-box tests of `cella`.

It serves the instance routes with canned state, records every request, and
speaks just enough websocket (RFC 6455, hand-rolled) for the serial console.
Nothing here is a faithful server: each behaviour a test needs is a knob.

    fake = FakePropolis().start()
    ... run `cella --server {fake.addr} ...` ...
    fake.requests   # [Request(method, path, query, headers, body), ...]
    fake.stop()
"""
import base64
import hashlib
import http.server
import json
import socket
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass, field

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def free_port():
    """A port nobody listens on (bound, then released)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ws_accept(key):
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class Serial:
    """Knobs and records of the websocket console."""
    # Done in order once the upgrade is answered: ("binary", bytes),
    # ("text", str), ("close", code), ("drop",), ("sleep", seconds).
    script: list = field(default_factory=lambda: [("binary", b"hello")])
    echo: bool = False              # send every binary frame back
    bad_accept: bool = False        # answer with a wrong Sec-WebSocket-Accept
    received: bytearray = field(default_factory=bytearray)
    frames: list = field(default_factory=list)   # (opcode, masked, payload) from the client
    close_code: int = None          # the client's close frame, when one came
    done: threading.Event = field(default_factory=threading.Event)


class FakePropolis:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.instance = None         # {"properties": ..., "state": ...} once ensured
        self.spec = None
        self.next_request = 0
        # Error answers: route name -> (status, message, error_code or None).
        self.errors = {}
        # state-monitor: the timeline [(gen, state)], answered with the first
        # entry at or after the asked generation; past its end, 410 when
        # gone_at_end, else the request blocks (long poll) until stop().
        self.timeline = [(1, "Creating")]
        self.gone_at_end = False
        self.history = b""
        self.serial = Serial()
        # Migration: the id of the last MigrationTarget ensure; the sides'
        # states for migration-status ({"migration_in": "Finish", ...}); the
        # source's report (a dict, or a callable returning one), else 404.
        self.migration_id = None
        self.migration = {}
        self.report = None
        self._stopping = threading.Event()

    # ---- lifetime ----

    def start(self):
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        self._stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- helpers for tests ----

    def created(self, state="Running"):
        """Pretends an instance exists (as if PUT /instance had happened)."""
        self.instance = {"properties": {
            "id": "11111111-2222-4333-8444-555555555555", "name": "vm0",
            "description": "made by the fake",
            "metadata": {"project_id": "00000000-0000-0000-0000-000000000000",
                         "silo_id": "00000000-0000-0000-0000-000000000000",
                         "sled_id": "00000000-0000-0000-0000-000000000000",
                         "sled_model": "fake", "sled_revision": 3, "sled_serial": "s1"}},
            "state": state}
        self.spec = {"board": {"cpus": 1, "memory_mb": 256,
                               "chipset": {"type": "i440_fx", "value": {"enable_pcie": False}}},
                     "components": {}}
        return self

    def by(self, method, path):
        with self.lock:
            return [r for r in self.requests if r.method == method and r.path == path]

    def record(self, req):
        with self.lock:
            self.requests.append(req)
            self.next_request += 1
            return f"req-{self.next_request}"


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_fake = None

    def log_message(self, *args):
        pass

    # ---- plumbing ----

    def _begin(self):
        u = urllib.parse.urlsplit(self.path)
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        self.req = Request(self.command, u.path, dict(urllib.parse.parse_qsl(u.query)),
                           {k.lower(): v for k, v in self.headers.items()}, body)
        self.request_id = self.server_fake.record(self.req)
        return self.req

    def _send(self, status, obj=None, raw=None):
        data = raw if raw is not None else (b"" if obj is None and status == 204
                                            else json.dumps(obj).encode())
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status, message, code=None):
        body = {"request_id": self.request_id, "message": message}
        if code is not None:
            body["error_code"] = code
        self._send(status, body)

    def _canned(self, route):
        """Answers with a configured error for route; True when it did."""
        e = self.server_fake.errors.get(route)
        if e:
            self._error(*e)
            return True
        return False

    def _need_instance(self):
        if self.server_fake.instance is None:
            self._error(424, "Server not initialized (no instance)", "NoInstance")
            return False
        return True

    # ---- routes ----

    def do_PUT(self):
        req = self._begin()
        fake = self.server_fake
        if req.path == "/instance":
            if self._canned("ensure"):
                return
            if fake.instance is not None:
                return self._error(409, "Server already initialized", "AlreadyInitialized")
            body = req.json()
            if body["init"]["method"] == "MigrationTarget":
                fake.migration_id = body["init"]["value"]["migration_id"]
                fake.instance = {"properties": body["properties"], "state": "Migrating"}
                return self._send(201, {"migrate": {"migration_id": fake.migration_id}})
            fake.instance = {"properties": body["properties"], "state": "Creating"}
            fake.spec = body["init"]["value"]["spec"]
            return self._send(201, {"migrate": None})
        if req.path == "/instance/migration-settings":
            if not self._need_instance() or self._canned("settings"):
                return
            return self._send(204)
        if req.path == "/instance/state":
            if not self._need_instance() or self._canned("state"):
                return
            want = req.json()
            if want not in ("Run", "Stop", "Reboot"):
                return self._error(400, f"unknown state {want!r}")
            return self._send(204)
        self._error(404, "Not Found")

    def do_POST(self):
        req = self._begin()
        if req.path == "/instance/nmi":
            if not self._need_instance() or self._canned("nmi"):
                return
            return self._send(200, None, raw=b"null")
        self._error(404, "Not Found")

    def do_GET(self):
        if self.path.split("?")[0] == "/instance/serial":
            return self._serial()
        req = self._begin()
        fake = self.server_fake
        if req.path == "/instance":
            if self._need_instance() and not self._canned("get"):
                self._send(200, {"instance": fake.instance})
        elif req.path == "/instance/spec":
            if self._need_instance() and not self._canned("spec"):
                self._send(200, {"properties": fake.instance["properties"],
                                 "state": fake.instance["state"],
                                 "spec": {"type": "Present", "value": fake.spec}})
        elif req.path == "/instance/migration-status":
            if self._need_instance() and not self._canned("migration-status"):
                nil = "00000000-0000-0000-0000-000000000000"
                self._send(200, {side: ({"id": fake.migration_id or nil,
                                         "state": fake.migration[side]}
                                        if side in fake.migration else None)
                                 for side in ("migration_in", "migration_out")})
        elif req.path == "/instance/migration-report":
            if self._need_instance() and fake.report is not None:
                self._send(200, fake.report() if callable(fake.report) else fake.report)
            elif fake.instance is not None:
                self._error(404, "no migration report", "NotFound")
        elif req.path == "/instance/state-monitor":
            if self._need_instance() and not self._canned("monitor"):
                self._monitor(req.json()["gen"])
        elif req.path == "/instance/serial/history":
            if self._need_instance() and not self._canned("history"):
                q = req.query
                data = fake.history
                if "from_start" in q:
                    data = data[int(q["from_start"]):]
                elif "most_recent" in q:
                    data = data[-int(q["most_recent"]):] if int(q["most_recent"]) else b""
                else:
                    return self._error(400, "exactly one of from_start and most_recent")
                data = data[:int(q.get("max_bytes", 16384))]
                self._send(200, {"data": list(data), "last_byte_offset": len(fake.history)})
        else:
            self._error(404, "Not Found")

    def _monitor(self, gen):
        fake = self.server_fake
        for g, state in fake.timeline:
            if g >= gen:
                fake.instance["state"] = state
                return self._send(200, {"gen": g, "state": state, "migration": {
                    "migration_in": None, "migration_out": None}})
        if fake.gone_at_end:
            return self._error(410, "the instance is gone", "Gone")
        fake._stopping.wait(30)  # long poll that never ends
        self.close_connection = True

    # ---- the websocket console ----

    def _serial(self):
        req = self._begin()
        fake = self.server_fake
        ser = fake.serial
        if not self._need_instance() or self._canned("serial"):
            return
        key = req.headers.get("sec-websocket-key", "")
        ok = (req.headers.get("upgrade", "").lower() == "websocket"
              and "upgrade" in req.headers.get("connection", "").lower()
              and req.headers.get("sec-websocket-version") == "13"
              and len(base64.b64decode(key)) == 16)
        if not ok:
            return self._error(400, "not a websocket upgrade")
        accept = ws_accept(key if not ser.bad_accept else key + "x")
        self.wfile.write(("HTTP/1.1 101 Switching Protocols\r\n"
                          "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        self.close_connection = True
        self.connection.settimeout(20)
        sent_close = False
        try:
            for action in ser.script:
                if action[0] == "binary":
                    self._frame(OP_BINARY, action[1])
                elif action[0] == "text":
                    self._frame(OP_TEXT, action[1].encode())
                elif action[0] == "close":
                    self._frame(OP_CLOSE, struct.pack(">H", action[1]))
                    sent_close = True
                elif action[0] == "drop":
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                elif action[0] == "sleep":
                    time.sleep(action[1])
            while True:
                f = self._read_frame()
                if f is None:
                    return
                op, masked, payload = f
                ser.frames.append(f)
                if op == OP_BINARY:
                    ser.received += payload
                    if ser.echo:
                        self._frame(OP_BINARY, payload)
                elif op == OP_PING:
                    self._frame(OP_PONG, payload)
                elif op == OP_CLOSE:
                    ser.close_code = struct.unpack(">H", payload[:2])[0] if payload else 0
                    if not sent_close:
                        self._frame(OP_CLOSE, payload[:2])
                    return
        except (OSError, ValueError):
            return
        finally:
            ser.done.set()

    def _frame(self, op, payload):
        n = len(payload)
        if n < 126:
            head = struct.pack(">BB", 0x80 | op, n)
        elif n < 65536:
            head = struct.pack(">BBH", 0x80 | op, 126, n)
        else:
            head = struct.pack(">BBQ", 0x80 | op, 127, n)
        self.wfile.write(head + payload)
        self.wfile.flush()

    def _read_exact(self, n):
        data = self.rfile.read(n)
        if len(data) < n:
            raise ValueError("connection closed")
        return data

    def _read_frame(self):
        """(opcode, masked, payload) of one frame, or None at EOF (cella never fragments)."""
        try:
            b0, b1 = self._read_exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._read_exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._read_exact(8))[0]
            mask = self._read_exact(4) if b1 & 0x80 else None
            data = self._read_exact(n)
            if mask:
                data = bytes(c ^ mask[i % 4] for i, c in enumerate(data))
            return b0 & 0x0F, mask is not None, data
        except ValueError:
            return None
