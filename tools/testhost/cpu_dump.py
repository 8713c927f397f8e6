#!/usr/bin/python3
"""Says where the test host's CPUs are: a few samples of every vCPU's RIP
through the outer QEMU's HMP monitor socket, each named from the test
host's /proc/kallsyms (its init copies it to the run directory).
tools/testhost/run calls this before it ends a run that timed out or
locked up, to tell a guest stuck in cella from a test-host kernel stuck
with interrupts off.

Usage: cpu_dump.py MONITOR_SOCKET [KALLSYMS] [SAMPLES]
"""
import bisect
import re
import socket
import sys
import time


def hmp(sock_path, command, timeout=5.0):
    """Runs one HMP command; returns its output (the prompt stripped)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(sock_path)
        buf = b""
        while b"(qemu) " not in buf:  # the greeting
            chunk = s.recv(65536)
            if not chunk:
                return ""
            buf += chunk
        s.sendall(command.encode() + b"\n")
        buf = b""
        deadline = time.monotonic() + timeout
        while buf.count(b"(qemu) ") < 1 and time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            buf += chunk
        text = buf.decode("utf-8", "replace").replace("\r", "")
        text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)
        return text.split("(qemu) ")[0]


def load_map(path):
    addrs, names = [], []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[1] in "tTwW":
                    addrs.append(int(parts[0], 16))
                    names.append(parts[2] + (" " + parts[3] if len(parts) > 3 else ""))
    except OSError:
        return [], []
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    return [addrs[i] for i in order], [names[i] for i in order]


def symbol(addrs, names, rip):
    i = bisect.bisect_right(addrs, rip) - 1
    if i < 0 or rip - addrs[i] > 1 << 20:
        return "?"
    return f"{names[i]}+{rip - addrs[i]:#x}"


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    mon = sys.argv[1]
    addrs, names = load_map(sys.argv[2]) if len(sys.argv) > 2 else ([], [])
    samples = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for n in range(samples):
        try:
            out = hmp(mon, "info registers -a")
        except OSError as e:
            print(f"cpu dump: monitor: {e}")
            return 1
        cpus = re.split(r"^CPU#(\d+)", out, flags=re.M)
        line = []
        for k in range(1, len(cpus) - 1, 2):
            body = cpus[k + 1]
            rip = re.search(r"RIP=([0-9a-f]+)", body)
            efl = re.search(r"RFL=([0-9a-f]+)", body)
            cpl = re.search(r"CPL=(\d)", body)
            hlt = re.search(r"HLT=(\d)", body)
            if not rip:
                continue
            r = int(rip.group(1), 16)
            irq = "on" if efl and int(efl.group(1), 16) & 0x200 else "off"
            line.append(f"CPU{cpus[k]} rip {r:#x} {symbol(addrs, names, r)} cpl "
                        f"{cpl.group(1) if cpl else '?'} irqs {irq}"
                        f"{' halted' if hlt and hlt.group(1) == '1' else ''}")
        print(f"cpu dump sample {n + 1}: " + ("; ".join(line) or "no registers"), flush=True)
        time.sleep(1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
