#!/usr/bin/python3
"""Live migration benchmark: cella against QEMU, inside the test host (see ./run).

For each scenario (an idle guest; a guest whose `memtouch loop` bumps a
counter in every page of a tmpfs buffer, pass after pass) and each variant

  cella         two cella-server processes on loopback, `cella migrate`
  qemu-default  two qemu-system-x86_64, `migrate` over QMP, default parameters
  qemu-fast     the same with max-bandwidth raised (default 10 GiB/s)

it boots the guest kit (direct kernel boot, 1 GiB, same kernel, initramfs
and command line), waits for the ready line, starts the dirtier if any,
migrates, records total time, blackout (downtime) and bytes sent, and checks
that the guest answers on the target (and `memtouch check` passes). Runs
alternate the variants (A B C A B C ...) so drift hits all alike; the table
shows medians and the ratios cella/QEMU. A QEMU migration that has not
completed after --qemu-cap seconds is cancelled and counted as "did not
converge" (the guest runs on at the source).
"""
import argparse
import atexit
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import requests
import websocket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
READY = b"CELLA-GUEST-READY"
ZERO = "00000000-0000-0000-0000-000000000000"
MIB = 1 << 20
VARIANTS = ("cella", "qemu-default", "qemu-fast")
SCENARIOS = ("idle", "dirtying")

PROCS = []  # every process this script started and has not reaped yet


# ----------------------------------------------------------------------------
# processes, ports, counters


def kit_env():
    path = os.path.join(os.environ.get("CELLA_CACHE", "/var/cache/cella-testhost"),
                        "guest", "kit.env")
    env = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if "=" in line and not line.startswith("#"):
                k, v = line.split("=", 1)
                env[k] = v.strip("'")
    return env


def spawn(argv, log):
    """Starts argv in its own session (so it never sees our terminal's
    signals), output appended to log; remembered for reap_all."""
    out = open(log, "ab")
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                         start_new_session=True)
    out.close()
    p.log = log
    PROCS.append(p)
    return p


def reap(p, grace=5.0):
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def reap_all():
    for p in list(PROCS):
        try:
            reap(p, 2.0)
        except Exception:  # noqa: BLE001 - best effort at exit
            pass


def on_signal(signum, frame):
    reap_all()
    sys.exit(128 + signum)


def free_port():
    """A port nobody listens on now (the kernel's pick); runs use fresh ones,
    so a TIME_WAIT or a stray listener from an earlier run never collides."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def lo_bytes():
    """Bytes the loopback interface carried so far: a byte count measured the
    same way for both VMMs (migration stream + TCP/IP headers + the little
    control traffic of the run)."""
    try:
        with open("/sys/class/net/lo/statistics/tx_bytes") as f:
            return int(f.read())
    except OSError:
        return None


def tail(path, n=15):
    try:
        with open(path, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
    except OSError:
        return ""


class BenchError(Exception):
    pass


# ----------------------------------------------------------------------------
# the guest kit's console protocol over a websocket (cella) or a unix socket
# (QEMU): one command per line, answered by "CELLA-EXIT <status>"


class Console:
    def __init__(self):
        self.buf = b""

    def read_until(self, needle, timeout):
        deadline = time.monotonic() + timeout
        while needle not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise BenchError(f"no {needle!r} within {timeout:.0f} s; got {self.buf[-300:]!r}")
            self.buf += self._recv(min(left, 1.0))
        i = self.buf.index(needle) + len(needle)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def run(self, cmd, timeout=120):
        """Runs cmd in the guest; (status, output lines)."""
        self._send(cmd.encode() + b"\n")
        out = self.read_until(b"CELLA-EXIT ", timeout)
        status = int(self.read_until(b"\n", timeout).strip())
        text = out[:-len(b"CELLA-EXIT ")].decode(errors="replace").replace("\r", "")
        return status, [line for line in text.split("\n") if line]

    def check(self, cmd, timeout=120):
        status, lines = self.run(cmd, timeout)
        if status != 0:
            raise BenchError(f"guest: {cmd!r} exited {status}: {lines[-5:]}")
        return lines


class WsConsole(Console):
    def __init__(self, port, query):
        super().__init__()
        self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}/instance/serial{query}",
                                              timeout=30)

    def _recv(self, timeout):
        self.ws.settimeout(timeout)
        try:
            op, data = self.ws.recv_data()
        except websocket.WebSocketTimeoutException:
            return b""
        if op == websocket.ABNF.OPCODE_CLOSE:
            raise BenchError("serial websocket closed")
        return data if op == websocket.ABNF.OPCODE_BINARY else b""

    def _send(self, data):
        self.ws.send_binary(data)

    def close(self):
        try:
            self.ws.close()
        except Exception:  # noqa: BLE001
            pass


def connect_unix(path, timeout=30):
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise BenchError(f"cannot connect to {path}")
            time.sleep(0.05)


class SockConsole(Console):
    def __init__(self, path):
        super().__init__()
        self.sock = connect_unix(path)

    def _recv(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return b""
        if not data:
            raise BenchError("serial socket closed")
        return data

    def _send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


# ----------------------------------------------------------------------------
# a minimal QMP client (JSON lines over a unix socket)


class QMP:
    def __init__(self, path, timeout=60):
        self.sock = connect_unix(path)
        self.sock.settimeout(timeout)
        self.f = self.sock.makefile("rwb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise BenchError(f"QMP {path}: unexpected greeting {greeting}")
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise BenchError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        self.f.flush()
        while True:
            r = self._read()
            if "event" in r:
                continue
            if "error" in r:
                raise BenchError(f"QMP {name}: {r['error'].get('desc', r['error'])}")
            return r.get("return")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


# ----------------------------------------------------------------------------
# the guest workload


def start_dirtier(con, mb, seed, window):
    """Starts `memtouch loop MB SEED` in the background, waits until its
    buffer is written and the loop runs, then measures its rate over window
    seconds from the pass counter in the buffer's header. Returns the loop's
    passes per second (each pass writes one word of every page of the
    buffer, so the whole buffer is dirty again after every pass: what limits
    the dirty rate during a migration is the cost of the guest's first write
    to each write-protected page, which both VMMs leave to KVM)."""
    con.check(f"memtouch loop {mb} {seed} >/tmp/memtouch.log 2>&1 &")
    deadline = time.monotonic() + 600
    while con.run("grep -q looping /tmp/memtouch.log")[0] != 0:
        if time.monotonic() > deadline:
            raise BenchError("memtouch never started looping")
        time.sleep(0.5)

    def passes():
        # header word 3 (struct header.passes), read without pausing the loop
        out = con.check("dd if=/dev/shm/memtouch bs=8 skip=3 count=1 2>/dev/null | od -An -tu8")
        return int(out[-1].split()[0]), time.monotonic()

    p0, t0 = passes()
    time.sleep(window)
    p1, t1 = passes()
    return (p1 - p0) / (t1 - t0)


def verify(con, scenario):
    """The guest answers on the target; its memory is intact."""
    out = con.check("echo migrated-ok", timeout=120)
    if "migrated-ok" not in out:
        raise BenchError(f"guest did not echo: {out}")
    if scenario == "dirtying":
        out = con.check("memtouch check", timeout=600)
        return out[-1] if out else ""
    return ""


# ----------------------------------------------------------------------------
# cella


# A guest that dirties memory fast on the nested test host now and then
# triple-faults during pre-copy, under either VMM (the emulated SVM under
# dirty logging). cella then ends the migration with this reason (the source
# reboots the guest); QEMU resets the guest and migrates the rebooted one.
# Such runs are counted apart, not as failures of either VMM.
GUEST_RESET = "the guest reset, powered off or failed on the source"
RESET_NOTE = "guest reset during the migration (nested test host artefact; not counted)"


def cella_spec(build, mem, cpus, tmp):
    cfg = os.path.join(tmp, "vm.toml")
    with open(cfg, "w") as f:
        f.write(f"[main]\ncpus = {cpus}\nmemory = {mem}\n")
    out = subprocess.run([os.path.join(build, "src", "cli", "cella"), "spec", "from-toml", cfg],
                         check=True, capture_output=True, text=True, timeout=60).stdout
    return json.loads(out)


def ensure_body(spec):
    return {"properties": {"id": str(uuid.uuid4()), "name": "migrate-bench",
                           "description": "bench/migrate",
                           "metadata": {"project_id": ZERO, "silo_id": ZERO, "sled_id": ZERO,
                                        "sled_model": "cella", "sled_revision": 0,
                                        "sled_serial": "bench"}},
            "init": {"method": "Spec", "value": {"spec": spec}}}


def cella_server(a, kit, tmp, name):
    port = free_port()
    p = spawn([os.path.join(a.build, "src", "server", "cella-server"), "run",
               f"127.0.0.1:{port}", "--kernel", kit["GUEST_BZIMAGE"], "--initrd",
               kit["GUEST_INITRAMFS"], "--cmdline", kit["GUEST_CMDLINE"], "--log-level",
               a.server_log_level],
              os.path.join(tmp, f"{name}.log"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(base + "/instance", timeout=2)
            return p, port, base
        except requests.RequestException:
            if p.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"cella-server {name} did not start: {tail(p.log)}")
            time.sleep(0.05)


def wait_state(base, want, timeout):
    deadline = time.monotonic() + timeout
    while True:
        r = requests.get(base + "/instance", timeout=10)
        st = r.json()["instance"]["state"] if r.status_code == 200 else None
        if st == want:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"{base} is {st}, never {want}")
        time.sleep(0.1)


def run_cella(a, kit, scenario, seed):
    tmp = tempfile.mkdtemp(prefix="migbench-cella-")
    procs, cons = [], []
    try:
        src, sport, sbase = cella_server(a, kit, tmp, "source")
        procs.append(src)
        dst, dport, dbase = cella_server(a, kit, tmp, "target")
        procs.append(dst)
        r = requests.put(sbase + "/instance", json=ensure_body(cella_spec(a.build, a.mem, a.cpus,
                                                                          tmp)), timeout=120)
        if r.status_code != 201:
            raise BenchError(f"PUT /instance: {r.status_code} {r.text}")
        con = WsConsole(sport, "?from_start=0")
        cons.append(con)
        if requests.put(sbase + "/instance/state", json="Run", timeout=30).status_code != 204:
            raise BenchError("cannot start the source VM")
        con.read_until(READY, a.boot_timeout)
        rate = None
        if scenario == "dirtying":
            rate = start_dirtier(con, a.dirty_mb, seed, a.rate_window)
        if a.downtime_ms:
            requests.put(sbase + "/instance/migration-settings",
                         json={"downtime_ms": a.downtime_ms}, timeout=10).raise_for_status()
        con.close()
        cons.remove(con)
        lo0, t0 = lo_bytes(), time.monotonic()
        p = subprocess.run([os.path.join(a.build, "src", "cli", "cella"), "migrate", "--from",
                            f"127.0.0.1:{sport}", "--to", f"127.0.0.1:{dport}", "--timeout",
                            str(a.cella_timeout)],
                           capture_output=True, text=True, timeout=a.cella_timeout + 60)
        wall = time.monotonic() - t0
        lo1 = lo_bytes()
        rep = requests.get(sbase + "/instance/migration-report", timeout=10)
        report = rep.json() if rep.status_code == 200 else {}
        if p.returncode != 0 and GUEST_RESET in p.stdout + p.stderr:
            return {"ok": False, "converged": False, "loop_rate": rate, "wall_s": wall,
                    "guest_reset": True, "note": RESET_NOTE}
        if p.returncode != 0 or report.get("outcome") != "committed":
            return {"ok": False, "converged": False, "loop_rate": rate, "wall_s": wall,
                    "note": f"cella migrate exited {p.returncode}: "
                            f"{(p.stderr or p.stdout).strip()[-300:]}"}
        wait_state(dbase, "Running", 60)
        con2 = WsConsole(dport, "?most_recent=0")
        cons.append(con2)
        check = verify(con2, scenario)
        phases = report.get("phases", {})
        return {"ok": True, "converged": True,
                "total_ms": report["total_ms"], "blackout_ms": report["blackout_ms"],
                "bytes": sum(ph.get("bytes", 0) for ph in phases.values()),
                "lo_bytes": (lo1 - lo0) if lo0 is not None else None,
                "wall_s": wall, "passes": report.get("passes"),
                "precopy_end": report.get("precopy_end"),
                "within_budget": report["blackout_ms"] <= (a.downtime_ms or 300),
                "predicted_ms": report.get("predicted_downtime_ms"),
                "final_dirty_pages": report.get("final_dirty_pages"),
                "bandwidth_MiBps": report.get("bandwidth_bps", 0) / MIB,
                "throttle_pct": report.get("throttle_pct", 0),
                "delta_pages": report.get("delta_pages", 0),
                "deferred_pages": report.get("deferred_pages", 0),
                "phases": phases, "loop_rate": rate, "check": check}
    finally:
        if a.keep_logs:
            keep = os.path.join(a.keep_logs, f"{scenario}-{seed}")
            os.makedirs(keep, exist_ok=True)
            for name in ("source.log", "target.log"):
                if os.path.exists(os.path.join(tmp, name)):
                    shutil.copy(os.path.join(tmp, name), keep)
        cleanup(cons, procs, tmp)


def cleanup(consoles, procs, tmp):
    """Closes consoles, reaps the processes a run started, removes its files."""
    for c in consoles:
        c.close()
    for pr in procs:
        reap(pr)
    shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------
# QEMU


def qemu_argv(a, kit, tmp, name, extra):
    return (["qemu-system-x86_64", "-enable-kvm", "-machine", "pc", "-cpu", "host",
             "-m", str(a.mem), "-smp", str(a.cpus), "-nodefaults", "-no-user-config",
             "-display", "none",
             "-chardev", f"socket,id=con,path={tmp}/{name}.con,server=on,wait=off",
             "-serial", "chardev:con",
             "-qmp", f"unix:{tmp}/{name}.qmp,server=on,wait=off",
             "-kernel", kit["GUEST_BZIMAGE"], "-initrd", kit["GUEST_INITRAMFS"],
             "-append", kit["GUEST_CMDLINE"]] + extra)


def run_qemu(a, kit, scenario, seed, fast):
    tmp = tempfile.mkdtemp(prefix="migbench-qemu-")
    procs, closers = [], []
    try:
        # The source starts paused (-S) so the console is connected before
        # the guest prints its ready line (a socket chardev drops output
        # nobody reads); the target waits for migrate-incoming.
        src = spawn(qemu_argv(a, kit, tmp, "source", ["-S"]), os.path.join(tmp, "source.log"))
        procs.append(src)
        dst = spawn(qemu_argv(a, kit, tmp, "target", ["-incoming", "defer"]),
                    os.path.join(tmp, "target.log"))
        procs.append(dst)
        try:
            sq = QMP(os.path.join(tmp, "source.qmp"))
            closers.append(sq)
            dq = QMP(os.path.join(tmp, "target.qmp"))
            closers.append(dq)
        except BenchError as e:
            raise BenchError(f"{e}; source: {tail(src.log)}; target: {tail(dst.log)}")
        con = SockConsole(os.path.join(tmp, "source.con"))
        closers.append(con)
        sq.cmd("cont")
        con.read_until(READY, a.boot_timeout)
        rate = None
        if scenario == "dirtying":
            rate = start_dirtier(con, a.dirty_mb, seed, a.rate_window)
        port = free_port()
        uri = f"tcp:127.0.0.1:{port}"
        dq.cmd("migrate-incoming", uri=uri)
        if fast:
            sq.cmd("migrate-set-parameters", **{"max-bandwidth": a.fast_bandwidth})
        if a.downtime_ms:
            sq.cmd("migrate-set-parameters", **{"downtime-limit": a.downtime_ms})
        params = sq.cmd("query-migrate-parameters")
        lo0, t0 = lo_bytes(), time.monotonic()
        sq.cmd("migrate", uri=uri)
        info, capped, dirty_pps = {}, False, []
        while True:
            info = sq.cmd("query-migrate")
            if info.get("ram", {}).get("dirty-pages-rate"):
                dirty_pps.append(info["ram"]["dirty-pages-rate"])
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - t0 > a.qemu_cap:
                capped = True
                last = info
                sq.cmd("migrate_cancel")
                deadline = time.monotonic() + 60
                while info.get("status") not in ("cancelled", "failed", "completed"):
                    if time.monotonic() > deadline:
                        raise BenchError("QEMU did not cancel the migration")
                    time.sleep(0.1)
                    info = sq.cmd("query-migrate")
                if info.get("status") != "completed":
                    info = dict(info, ram=info.get("ram", last.get("ram", {})))
                    break
                capped = False  # it completed while we cancelled
            time.sleep(a.poll)
        wall = time.monotonic() - t0
        lo1 = lo_bytes()
        ram = info.get("ram", {})
        base = {"loop_rate": rate, "wall_s": wall,
                "bytes": ram.get("transferred"),
                "lo_bytes": (lo1 - lo0) if lo0 is not None else None,
                "passes": ram.get("dirty-sync-count"),
                "max_bandwidth_MiBps": params.get("max-bandwidth", 0) / MIB,
                "downtime_limit_ms": params.get("downtime-limit"),
                "mbps": ram.get("mbps"),
                "dirty_pages_rate": med(dirty_pps)}
        if info.get("status") != "completed":
            note = (f"did not converge in {a.qemu_cap:.0f} s (cancelled)" if capped
                    else f"migration {info.get('status')}: {info.get('error-desc', '')}")
            return dict(base, ok=False, converged=False, note=note,
                        total_ms=None, blackout_ms=None)
        st = dq.cmd("query-status")
        deadline = time.monotonic() + 60
        while st.get("status") != "running":
            if time.monotonic() > deadline:
                raise BenchError(f"target never ran: {st}")
            time.sleep(0.1)
            st = dq.cmd("query-status")
        con.close()
        closers.remove(con)
        con2 = SockConsole(os.path.join(tmp, "target.con"))
        closers.append(con2)
        check = verify(con2, scenario)
        return dict(base, ok=True, converged=True, total_ms=info.get("total-time"),
                    blackout_ms=info.get("downtime"), setup_ms=info.get("setup-time"),
                    within_budget=info.get("downtime", 1e9) <= params.get("downtime-limit", 300),
                    check=check)
    finally:
        cleanup(closers, procs, tmp)


# ----------------------------------------------------------------------------
# report


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, scale=1.0, prec=0):
    return "-" if v is None else f"{v / scale:.{prec}f}"


def summary(a, results):
    print(f"\nmigration of a {a.mem} MiB guest ({a.cpus} vCPU), median of the converged runs "
          f"of {a.runs}; dirtying: memtouch loop {a.dirty_mb} MiB")
    hdr = (f"{'scenario':9s} {'variant':13s} {'conv':>5s} {'total ms':>9s} {'blackout ms':>11s} "
           f"{'MiB sent':>9s} {'lo MiB':>8s} {'wall s':>7s} {'passes':>6s} {'<=budget':>8s} {'loop/s':>7s}")
    print(hdr)
    print("-" * len(hdr))
    meds = {}
    for sc in a.scenarios:
        for v in a.variants:
            rs = results[sc][v]
            good = [r for r in rs if r.get("converged")]
            m = {k: med([r.get(k) for r in good])
                 for k in ("total_ms", "blackout_ms", "bytes", "lo_bytes", "wall_s", "passes")}
            m["loop_rate"] = med([r.get("loop_rate") for r in rs])
            m["n"], m["runs"] = len(good), len(rs)
            m["budget"] = sum(1 for r in good if r.get("within_budget"))
            meds[(sc, v)] = m
            print(f"{sc:9s} {v:13s} {m['n']:>2d}/{m['runs']:<2d} {fmt(m['total_ms']):>9s} "
                  f"{fmt(m['blackout_ms'], 1, 1):>11s} {fmt(m['bytes'], MIB, 1):>9s} "
                  f"{fmt(m['lo_bytes'], MIB, 1):>8s} {fmt(m['wall_s'], 1, 2):>7s} "
                  f"{fmt(m['passes']):>6s} {m['budget']:>5d}/{m['runs']:<2d} "
                  f"{fmt(m['loop_rate'], 1, 0):>7s}")
    if "cella" in a.variants:
        print("\nratios cella/QEMU (medians; < 1 means cella is better; target <= 0.5 for "
              "total and blackout):")
        for sc in a.scenarios:
            c = meds[(sc, "cella")]
            for q in (v for v in a.variants if v != "cella"):
                m = meds[(sc, q)]
                parts = []
                for k, label in (("total_ms", "total"), ("blackout_ms", "blackout"),
                                 ("bytes", "bytes"), ("lo_bytes", "lo bytes")):
                    if k == "total_ms" and m["n"] == 0 and c[k] is not None:
                        # QEMU never finished: its total is at least the cap
                        parts.append(f"total < {c[k] / (a.qemu_cap * 1000):.2f} "
                                     f"(QEMU > {a.qemu_cap:.0f} s)")
                    elif c[k] is None or not m[k]:
                        parts.append(f"{label} -")
                    else:
                        parts.append(f"{label} {c[k] / m[k]:.2f}")
                extra = "" if m["n"] == m["runs"] else \
                    f"   ({q}: {m['runs'] - m['n']}/{m['runs']} runs did not converge)"
                print(f"  {sc:9s} cella/{q:13s} " + ", ".join(parts) + extra)
        # where cella's time goes
        for sc in a.scenarios:
            good = [r for r in results[sc]["cella"] if r.get("converged")]
            if not good:
                continue
            names = []
            for r in good:
                names += [n for n in r["phases"] if n not in names]
            print(f"\ncella {sc}: per phase, median of {len(good)} "
                  f"(pre-copy ended: {', '.join(sorted({str(r['precopy_end']) for r in good}))}; "
                  f"bandwidth estimate {fmt(med([r['bandwidth_MiBps'] for r in good]))} MiB/s)")
            print(f"  {'phase':14s} {'ms':>9s} {'MiB':>9s} {'pages':>9s} {'zero':>9s} "
                  f"{'passes':>6s}")
            for n in names:
                ph = [r["phases"].get(n, {}) for r in good]
                print(f"  {n:14s} {fmt(med([p.get('ms') for p in ph]), 1, 1):>9s} "
                      f"{fmt(med([p.get('bytes') for p in ph]), MIB, 2):>9s} "
                      f"{fmt(med([p.get('pages') for p in ph])):>9s} "
                      f"{fmt(med([p.get('zero_pages') for p in ph])):>9s} "
                      f"{fmt(med([p.get('passes') for p in ph])):>6s}")
    for sc in a.scenarios:
        for v in a.variants:
            for i, r in enumerate(results[sc][v]):
                if not r.get("converged") or not r.get("ok", True):
                    print(f"note: {sc} {v} run {i + 1}: {r.get('note', 'failed')}")
                elif sc == "dirtying" and not r.get("within_budget"):
                    print(f"note: {sc} {v} run {i + 1}: completed, but over the downtime budget "
                          f"(blackout {fmt(r.get('blackout_ms'), 1, 1)} ms"
                          + (f", pre-copy ended: {r['precopy_end']})" if r.get("precopy_end")
                             else ")"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="one run of each cell (smoke test)")
    ap.add_argument("--mem", type=int, default=1024, help="guest MiB (default 1024)")
    ap.add_argument("--cpus", type=int, default=1, help="guest vCPUs (default 1)")
    ap.add_argument("--dirty-mb", type=int, default=256,
                    help="memtouch buffer in the dirtying case (default 256)")
    ap.add_argument("--rate-window", type=float, default=5,
                    help="seconds over which the dirty rate is measured before migrating")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--qemu-cap", type=float, default=120,
                    help="cancel a QEMU migration not completed after this many seconds")
    ap.add_argument("--fast-bandwidth", type=int, default=10 << 30,
                    help="max-bandwidth of qemu-fast, bytes/s (default 10 GiB/s)")
    ap.add_argument("--downtime-ms", type=int, default=0,
                    help="set both VMMs' downtime budget (default: leave both at their "
                         "default, 300 ms)")
    ap.add_argument("--cella-timeout", type=int, default=600)
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--poll", type=float, default=0.05, help="query-migrate interval, s")
    ap.add_argument("--json", help="also write every run's raw results here")
    ap.add_argument("--server-log-level", default="error",
                    help="cella-server --log-level (default error)")
    ap.add_argument("--keep-logs", help="copy each cella run's server logs into DIR/SCENARIO-SEED/")
    ap.add_argument("--build", default=os.environ.get("CELLA_BUILD_DIR",
                                                      os.path.join(ROOT, "build")))
    a = ap.parse_args()
    if a.quick:
        a.runs = 1
    a.scenarios = [s for s in a.scenarios.split(",") if s]
    a.variants = [v for v in a.variants.split(",") if v]
    for s in a.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    for v in a.variants:
        if v not in VARIANTS:
            ap.error(f"unknown variant {v}")
    atexit.register(reap_all)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    kit = kit_env()
    print(f"bench/migrate: {a.runs} run(s) of {a.scenarios} x {a.variants}; guest {a.mem} MiB, "
          f"{a.cpus} vCPU; qemu-fast max-bandwidth {a.fast_bandwidth / MIB:.0f} MiB/s; "
          f"QEMU cap {a.qemu_cap:.0f} s", flush=True)
    results = {s: {v: [] for v in a.variants} for s in a.scenarios}
    t_start = time.monotonic()
    for i in range(a.runs):
        for sc in a.scenarios:
            for v in a.variants:
                seed = 1000 + i
                t0 = time.monotonic()
                try:
                    if v == "cella":
                        r = run_cella(a, kit, sc, seed)
                    else:
                        r = run_qemu(a, kit, sc, seed, fast=(v == "qemu-fast"))
                except (BenchError, requests.RequestException, websocket.WebSocketException,
                        subprocess.SubprocessError, OSError, KeyError, ValueError) as e:
                    r = {"ok": False, "converged": False, "note": f"error: {e}"}
                    if READY.decode() in str(e) or "/dev/shm/memtouch: No such file" in str(e):
                        # The ready line again, or memtouch's tmpfs buffer gone: it rebooted.
                        r.update(guest_reset=True, note=RESET_NOTE)
                results[sc][v].append(r)
                if r.get("converged"):
                    line = (f"total {fmt(r['total_ms']):>6s} ms  blackout "
                            f"{fmt(r['blackout_ms'], 1, 1):>7s} ms  sent "
                            f"{fmt(r['bytes'], MIB, 1):>7s} MiB  lo {fmt(r['lo_bytes'], MIB, 1):>7s}"
                            f" MiB  passes {r.get('passes')}")
                    if v == "cella":
                        line += f" ({r.get('precopy_end')}"
                        if r.get("throttle_pct"):
                            line += f", vCPUs throttled {r['throttle_pct']}%"
                        if r.get("delta_pages"):
                            line += f", {r['delta_pages']} delta pages"
                        if r.get("deferred_pages"):
                            line += f", {r['deferred_pages']} deferred"
                        line += ")"
                else:
                    line = r.get("note", "failed")
                if r.get("loop_rate") is not None:
                    line += f"  memtouch {r['loop_rate']:.0f} passes/s"
                if r.get("check"):
                    line += f"  [{r['check']}]"
                print(f"run {i + 1} {sc:8s} {v:13s} {line}  ({time.monotonic() - t0:.0f} s)",
                      flush=True)
    summary(a, results)
    print(f"\nbench/migrate took {(time.monotonic() - t_start) / 60:.1f} min")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "results": results}, f,
                      indent=1)
    failed = sum(1 for s in results.values() for rs in s.values() for r in rs
                 if not r.get("converged") and "did not converge" not in r.get("note", "")
                 and not r.get("guest_reset"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
