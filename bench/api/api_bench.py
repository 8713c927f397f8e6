#!/usr/bin/python3
"""API benchmark, inside the test host (see ./run):

1. Time from PUT /instance (then PUT /instance/state "Run") to the guest
   kit's ready line on the serial websocket, against QEMU started with the
   same kernel and initramfs to its ready line; alternating runs, medians.
2. Requests per second of GET /instance on loopback (keep-alive clients).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid

import requests
import websocket

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "guest"))
sys.path.insert(0, os.path.join(ROOT, "bench", "boot"))
from boot_bench import kit_env, vmms, one  # noqa: E402

ZERO = "00000000-0000-0000-0000-000000000000"


def spec(build, mem, cpus):
    cfg = f"/tmp/api-bench-{os.getpid()}.toml"
    with open(cfg, "w") as f:
        f.write(f"[main]\ncpus = {cpus}\nmemory = {mem}\n")
    out = subprocess.run([os.path.join(build, "src", "cli", "cella"), "spec", "from-toml", cfg],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def body(s):
    return {"properties": {"id": str(uuid.uuid4()), "name": "bench", "description": "bench",
                           "metadata": {"project_id": ZERO, "silo_id": ZERO, "sled_id": ZERO,
                                        "sled_model": "cella", "sled_revision": 0,
                                        "sled_serial": "bench"}},
            "init": {"method": "Spec", "value": {"spec": s}}}


def start_server(build, kit, port):
    p = subprocess.Popen([os.path.join(build, "src", "server", "cella-server"), "run",
                          f"127.0.0.1:{port}", "--kernel", kit["GUEST_BZIMAGE"],
                          "--initrd", kit["GUEST_INITRAMFS"], "--cmdline", kit["GUEST_CMDLINE"],
                          "--log-level", "error"])
    base = f"http://127.0.0.1:{port}"
    for _ in range(200):
        try:
            requests.get(base + "/instance", timeout=1)
            return p, base
        except requests.ConnectionError:
            time.sleep(0.02)
    raise RuntimeError("server did not start")


def ensure_to_ready(build, kit, s, port):
    p, base = start_server(build, kit, port)
    try:
        ws = None
        t0 = time.monotonic()
        r = requests.put(base + "/instance", json=body(s), timeout=60)
        assert r.status_code == 201, r.text
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/instance/serial?from_start=0",
                                         timeout=120)
        assert requests.put(base + "/instance/state", json="Run", timeout=10).status_code == 204
        buf = b""
        while b"CELLA-GUEST-READY" not in buf:
            op, data = ws.recv_data()
            buf += data if op == websocket.ABNF.OPCODE_BINARY else b""
        t = time.monotonic() - t0
        ws.close()
        requests.put(base + "/instance/state", json="Stop", timeout=10)
        return t
    finally:
        p.terminate()
        p.wait()


def rps(build, kit, port, seconds, clients):
    p, base = start_server(build, kit, port)
    s = spec(build, 256, 1)
    requests.put(base + "/instance", json=body(s), timeout=60)
    counts = [0] * clients
    errors = []
    stop = time.monotonic() + seconds

    def worker(i):
        sess = requests.Session()
        while time.monotonic() < stop:
            r = sess.get(base + "/instance", timeout=10)
            if r.status_code != 200:
                errors.append(r.status_code)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    p.terminate()
    p.wait()
    return sum(counts) / elapsed, len(errors)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mem", type=int, default=512)
    ap.add_argument("--rps-seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rps-only", action="store_true",
                    help="only the GET /instance rate (bench/api/run --native runs it on this "
                         "host: creating the VM needs /dev/kvm, running it does not)")
    ap.add_argument("--build", default=os.environ.get("CELLA_BUILD_DIR",
                                                      os.path.join(ROOT, "build")))
    a = ap.parse_args()
    kit = kit_env()
    if a.rps_only:
        r, errs = rps(a.build, kit, 12600, a.rps_seconds, a.clients)
        print(f"GET /instance: {r:.0f} requests/s with {a.clients} keep-alive clients over "
              f"{a.rps_seconds:.0f} s, {errs} errors")
        return
    s = spec(a.build, a.mem, 1)
    qemu = vmms(kit, a.build, a.mem, 1)["qemu-pc"]
    cella_t, qemu_t = [], []
    for i in range(a.runs):
        cella_t.append(ensure_to_ready(a.build, kit, s, 12500 + i))
        qemu_t.append(one(qemu)[0])
        print(f"run {i + 1}: cella PUT->ready {cella_t[-1]:.3f} s   qemu-pc start->ready "
              f"{qemu_t[-1]:.3f} s", flush=True)
    cm, qm = statistics.median(cella_t), statistics.median(qemu_t)
    print(f"\nmedian of {a.runs}: cella PUT /instance -> ready line {cm:.3f} s; "
          f"QEMU -machine pc start -> ready line {qm:.3f} s; ratio cella/QEMU {cm / qm:.2f}")
    r, errs = rps(a.build, kit, 12600, a.rps_seconds, a.clients)
    print(f"GET /instance: {r:.0f} requests/s with {a.clients} keep-alive clients over "
          f"{a.rps_seconds:.0f} s, {errs} errors")


if __name__ == "__main__":
    main()
