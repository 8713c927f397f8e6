#!/usr/bin/python3
"""Block I/O benchmark: cella against QEMU, virtio-blk and NVMe.

Runs inside the test host (see ./run and README.md). For each device kind
and VMM it boots the guest kit (kernel direct boot) with one disk on a
fresh, fully written raw file, and runs the kit's `rio` in the guest for
each cell (seqwrite 1M, seqread 1M, randwrite 4K, randread 4K; O_DIRECT,
QD 1 by default). The backing file lives on an ext4 file system on a RAM
disk (brd) that this script sets up in the test host, so QEMU can use
cache=none (O_DIRECT; the test host's tmpfs has none) and the numbers show
the VMM's I/O path rather than a disk. Runs alternate VMMs; medians of N.

A VMM that refuses the config (a cella build without the devices) is
reported as such and its column shows "-".
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools", "guest"))
sys.path.insert(0, os.path.join(ROOT, "bench", "boot"))
from boot_bench import kit_env  # noqa: E402
from console import GuestConsole, GuestError  # noqa: E402

KINDS = {
    # name: (cella driver, QEMU -device, guest device)
    "virtio-blk": ("pci-virtio-block", "virtio-blk-pci,drive=d0", "/dev/vda"),
    "nvme": ("pci-nvme", "nvme,drive=d0,serial=bench0", "/dev/nvme0n1"),
}
# (row label, rio op, block size, which --*-mb applies)
CELLS = [
    ("seqwrite 1M", "seqwrite", "1M", "seq"),
    ("seqread 1M", "seqread", "1M", "seq"),
    ("randwrite 4K", "randwrite", "4k", "rand"),
    ("randread 4K", "randread", "4k", "rand"),
]
RIO_RE = re.compile(r"RIO op=(\S+) .*MBps=([0-9.]+) iops=([0-9.]+)")


class Refused(Exception):
    """The VMM would not run this config (e.g. devices not built yet)."""


def sh(*argv, **kw):
    p = subprocess.run(argv, capture_output=True, text=True, **kw)
    if p.returncode:
        raise RuntimeError(f"{' '.join(argv)} exited {p.returncode}: {p.stderr.strip()}")
    return p


class RamDisk:
    """ext4 on a brd RAM disk, mounted at a temporary directory."""

    def __init__(self, mib):
        self.dir = None
        self.mnt = tempfile.mkdtemp(prefix="cella-io-")
        subprocess.run(["rmmod", "brd"], capture_output=True)
        sh("modprobe", "brd", "rd_nr=1", f"rd_size={mib * 1024}", "max_part=0")
        # The test host's kernel cannot auto-load modules (its modprobe path
        # is the initramfs's): load ext4 by hand.
        subprocess.run(["modprobe", "ext4"], capture_output=True)
        sh("mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", "/dev/ram0")
        sh("mount", "/dev/ram0", self.mnt)
        self.dir = self.mnt

    def close(self):
        if self.dir:
            subprocess.run(["umount", self.mnt], capture_output=True)
            subprocess.run(["rmmod", "brd"], capture_output=True)
        os.rmdir(self.mnt)


def fresh_disk(path, mib):
    """A fully written raw file (no holes, no unwritten extents)."""
    if os.path.exists(path):
        os.unlink(path)
    sh("dd", "if=/dev/zero", f"of={path}", "bs=1M", f"count={mib}", "oflag=direct",
       "status=none")


def cella_argv(build, kit, kind, disk, mem, cpus, tmpdir):
    cfg = os.path.join(tmpdir, f"io-{kind}.toml")
    with open(cfg, "w") as f:
        f.write(f"[main]\ncpus = {cpus}\nmemory = {mem}\n\n"
                f"[block_dev.bench]\ntype = \"file\"\npath = \"{disk}\"\n\n"
                f"[dev.disk0]\ndriver = \"{KINDS[kind][0]}\"\nblock_dev = \"bench\"\n"
                f"pci-path = \"0.4.0\"\n")
        if kind == "nvme":
            f.write('serial = "bench0"\n')
    return [os.path.join(build, "src", "standalone", "cella-standalone"), cfg,
            "--kernel", kit["GUEST_BZIMAGE"], "--initrd", kit["GUEST_INITRAMFS"],
            "--cmdline", kit["GUEST_CMDLINE"]]


def qemu_argv(kit, kind, disk, mem, cpus, aio):
    return ["qemu-system-x86_64", "-machine", "pc", "-enable-kvm", "-cpu", "host",
            "-m", str(mem), "-smp", str(cpus), "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-no-reboot",
            "-kernel", kit["GUEST_BZIMAGE"], "-initrd", kit["GUEST_INITRAMFS"],
            "-append", kit["GUEST_CMDLINE"],
            "-drive", f"file={disk},if=none,id=d0,format=raw,cache=none,aio={aio}",
            "-device", KINDS[kind][1]]


def refusal(lines):
    """The most telling line of a VMM that exited before the ready line."""
    for line in lines:
        if "not emulated" in line:
            return line.strip()
    for line in reversed(lines):
        if line.strip():
            return line.strip()
    return "exited without output"


def one_boot(argv, dev, a, log):
    """Boots once, runs every cell; returns {row: (MBps, iops)}."""
    res = {}
    with GuestConsole(argv, log=log) as g:
        try:
            g.wait_ready(timeout=240)
        except GuestError:
            try:
                g.proc.wait(timeout=5)  # the console closes just before the exit
            except subprocess.TimeoutExpired:
                raise
            raise Refused(f"exit status {g.proc.returncode}: {refusal(g.lines)}")
        for row, op, bs, size in CELLS:
            mb = a.seq_mb if size == "seq" else a.rand_mb
            status, out = g.run(f"rio {dev} {op} {bs} {mb} {a.qd}", timeout=300)
            m = next((RIO_RE.search(x) for x in out if RIO_RE.search(x)), None)
            if status != 0 or not m:
                raise GuestError(f"rio {op} failed ({status}): {out[-5:]}")
            res[row] = (float(m.group(2)), float(m.group(3)))
        g.poweroff()
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--qemu-only", action="store_true", help="skip cella")
    ap.add_argument("--kinds", default="virtio-blk,nvme")
    ap.add_argument("--disk-mb", type=int, default=256, help="backing file size (MiB)")
    ap.add_argument("--seq-mb", type=int, default=1024, help="MiB moved per sequential cell")
    ap.add_argument("--rand-mb", type=int, default=32, help="MiB moved per random cell")
    ap.add_argument("--qd", type=int, default=1)
    ap.add_argument("--mem", type=int, default=512)
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--aio", default="io_uring", help="QEMU aio= (io_uring, native, threads)")
    ap.add_argument("--build", default=os.environ.get("CELLA_BUILD_DIR",
                                                      os.path.join(ROOT, "build")))
    a = ap.parse_args()
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    for k in kinds:
        if k not in KINDS:
            ap.error(f"unknown kind {k}; choose from {', '.join(KINDS)}")
    kit = kit_env()
    vmms = ["qemu"] if a.qemu_only else ["cella", "qemu"]
    tmpdir = tempfile.mkdtemp(prefix="cella-io-cfg-")
    rd = RamDisk(a.disk_mb + 64)
    disk = os.path.join(rd.dir, "disk.raw")
    print(f"backing: {a.disk_mb} MiB raw file, written in full before every boot, on ext4 on a "
          f"brd RAM disk in the test host; QEMU cache=none,aio={a.aio}; rio O_DIRECT QD {a.qd}; "
          f"seq cells {a.seq_mb} MiB, random cells {a.rand_mb} MiB; {a.cpus} vCPU {a.mem} MiB",
          flush=True)
    # res[kind][vmm][row] = [MBps...]; refused[kind][vmm] = reason
    res = {k: {v: {c[0]: [] for c in CELLS} for v in vmms} for k in kinds}
    refused = {k: {} for k in kinds}
    failed = {k: {v: 0 for v in vmms} for k in kinds}
    try:
        for i in range(a.runs):
            for kind in kinds:
                for vmm in vmms:
                    if vmm in refused[kind]:
                        continue
                    fresh_disk(disk, a.disk_mb)
                    if vmm == "cella":
                        argv = cella_argv(a.build, kit, kind, disk, a.mem, a.cpus, tmpdir)
                    else:
                        argv = qemu_argv(kit, kind, disk, a.mem, a.cpus, a.aio)
                    log = os.path.join(tmpdir, f"{vmm}-{kind}-{i}.log")
                    t0 = time.monotonic()
                    try:
                        r = one_boot(argv, KINDS[kind][2], a, log)
                    except Refused as e:
                        refused[kind][vmm] = str(e)
                        print(f"run {i + 1} {kind:10s} {vmm:5s} REFUSED: {e}", flush=True)
                        continue
                    except GuestError as e:
                        # A guest gone silent (the nested test host loses an
                        # interrupt now and then, for either VMM): reported
                        # with what the VMM said, left out of the medians.
                        failed[kind][vmm] += 1
                        print(f"run {i + 1} {kind:10s} {vmm:5s} FAILED: {e}", flush=True)
                        continue
                    for row, (mbps, _) in r.items():
                        res[kind][vmm][row].append(mbps)
                    cells = "  ".join(f"{row} {r[row][0]:8.2f}" for row in r)
                    print(f"run {i + 1} {kind:10s} {vmm:5s} {cells}  ({time.monotonic() - t0:.0f} s)",
                          flush=True)
    finally:
        rd.close()

    def med(kind, vmm, row):
        v = res[kind][vmm][row] if vmm in res[kind] else []
        return statistics.median(v) if v else None

    print(f"\nMB/s (10^6 bytes/s), median of {a.runs} (less any failed run):")
    print(f"{'device / cell':26s} {'cella':>10s} {'qemu':>10s} {'cella/qemu':>11s}")
    for kind in kinds:
        for row, *_ in CELLS:
            c = None if a.qemu_only else med(kind, "cella", row)
            q = med(kind, "qemu", row)
            cs = f"{c:10.2f}" if c is not None else f"{'-':>10s}"
            qs = f"{q:10.2f}" if q is not None else f"{'-':>10s}"
            ratio = f"{c / q:11.2f}" if c is not None and q else f"{'-':>11s}"
            print(f"{kind + ' ' + row:26s} {cs} {qs} {ratio}")
    for kind in kinds:
        for vmm, n in failed[kind].items():
            if n:
                print(f"{vmm} {kind}: {n} of {a.runs} runs failed (guest silent), not in the medians")
        for vmm, why in refused[kind].items():
            print(f"{vmm} refused {kind}: {why}")
    if a.qemu_only:
        print("cella: not run (--qemu-only)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
