#!/usr/bin/python3
"""Boot benchmark: cella against QEMU on the same kernel and initramfs.

Runs inside the test host (see ./run). For each VMM it starts the process,
waits for the guest kit's ready line on the serial console, records the
time since process start and the process's memory overhead (resident set
minus guest RAM, which both VMMs keep in a memfd, so it shows up as shared
memory and is subtracted), then powers the guest off. Runs alternate
A B C A B C ... so drift on a shared machine hits every VMM alike.
Prints medians and the ratios cella/QEMU.
"""
import argparse
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "guest"))
from console import GuestConsole  # noqa: E402


def kit_env():
    path = os.path.join(os.environ.get("CELLA_CACHE", "/var/cache/cella-testhost"),
                        "guest", "kit.env")
    env = {}
    for line in open(path):
        line = line.strip()
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v.strip("'")
    return env


def rss_overhead_kib(pid):
    """VmRSS - RssShmem: everything resident except the memfd guest RAM."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssShmem", "RssAnon", "RssFile"):
                fields[k] = int(v.split()[0])
    return fields["VmRSS"] - fields["RssShmem"]


def vmms(kit, build, mem, cpus):
    cmdline = kit["GUEST_CMDLINE"]
    cfg = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
    cfg.write(f"[main]\ncpus = {cpus}\nmemory = {mem}\n")
    cfg.close()
    common = ["-enable-kvm", "-cpu", "host", "-m", str(mem), "-smp", str(cpus),
              "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
              "-object", f"memory-backend-memfd,id=ram,size={mem}M",
              "-kernel", kit["GUEST_BZIMAGE"], "-initrd", kit["GUEST_INITRAMFS"],
              "-append", cmdline]
    return {
        "cella": [os.path.join(build, "src", "standalone", "cella-standalone"), cfg.name,
                  "--kernel", kit["GUEST_BZIMAGE"], "--initrd", kit["GUEST_INITRAMFS"],
                  "--cmdline", cmdline],
        "qemu-pc": ["qemu-system-x86_64", "-machine", "pc,memory-backend=ram"] + common,
        "qemu-microvm": ["qemu-system-x86_64", "-machine", "microvm,memory-backend=ram"] + common,
    }


def one(argv):
    with GuestConsole(argv) as g:
        t = g.wait_ready(timeout=180)
        over = rss_overhead_kib(g.proc.pid)
        g.poweroff()
    return t, over


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mem", type=int, default=512)
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--build", default=os.environ.get("CELLA_BUILD_DIR",
                                                      os.path.join(ROOT, "build")))
    a = ap.parse_args()
    cmds = vmms(kit_env(), a.build, a.mem, a.cpus)
    res = {k: {"t": [], "m": []} for k in cmds}
    for i in range(a.runs):
        for name, argv in cmds.items():
            t, m = one(argv)
            res[name]["t"].append(t)
            res[name]["m"].append(m)
            print(f"run {i + 1} {name:13s} ready {t:6.3f} s  overhead {m / 1024:7.2f} MiB",
                  flush=True)
    med = {k: (statistics.median(v["t"]), statistics.median(v["m"]) / 1024)
           for k, v in res.items()}
    print(f"\nboot to ready line, {a.cpus} vCPU, {a.mem} MiB, median of {a.runs}:")
    print(f"{'vmm':14s} {'time s':>8s} {'overhead MiB':>13s}")
    for k, (t, m) in med.items():
        print(f"{k:14s} {t:8.3f} {m:13.2f}")
    ct, cm = med["cella"]
    for q in ("qemu-pc", "qemu-microvm"):
        qt, qm = med[q]
        print(f"ratio cella/{q}: time {ct / qt:.2f}  overhead {cm / qm:.2f}")


if __name__ == "__main__":
    main()
