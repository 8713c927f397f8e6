#!/usr/bin/python3
"""Drive the console of a guest booted from the guest kit (tools/guest).

The guest's /init prints one line ``CELLA-GUEST-READY`` and then runs each
line it reads from the console with ``sh -c``, answering with the command's
output and a line ``CELLA-EXIT <status>`` (which follows output that did not end in a
newline on the same line).  This module starts a VMM (any
command whose stdin/stdout are the guest console, e.g. ``qemu-system-x86_64
-nographic ...``), waits for the ready line and runs commands.

As a library::

    from console import GuestConsole
    with GuestConsole(["qemu-system-x86_64", ...]) as g:
        g.wait_ready(timeout=60)          # -> seconds since start
        status, out = g.run("nproc")      # out: list of lines
        g.poweroff()                      # -> VMM exit status

As a command::

    console.py [--timeout S] [-c CMD]... [--log FILE] -- VMM ARGS...

waits for the ready line (reporting the time to it on stderr), runs each
CMD (printing its output), powers off, and exits 0 if every command exited
0.
"""

import argparse
import os
import re
import select
import signal
import subprocess
import sys
import time

READY = "CELLA-GUEST-READY"
EXIT_RE = re.compile(r"CELLA-EXIT (\d+)$")


class GuestError(Exception):
    pass


class GuestConsole:
    def __init__(self, argv, log=None):
        self.t0 = time.monotonic()
        self.log = open(log, "a") if log else None
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.buf = b""
        self.lines = []          # every line seen, for diagnostics
        self.ready_after = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.kill()

    def elapsed(self):
        return time.monotonic() - self.t0

    def _readline(self, deadline):
        """Next console line (without CR/LF), or None on EOF."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                dump = self._debug_dump()
                raise GuestError("timeout; last lines:\n  " +
                                 "\n  ".join(self.lines[-15:]) +
                                 ("\nthe VMM's state (SIGUSR2):\n  " + "\n  ".join(dump)
                                  if dump else ""))
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                if self.buf:
                    line, self.buf = self.buf, b""
                    return self._keep(line)
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return self._keep(line)

    def _debug_dump(self, wait=2.0):
        """Asks a cella VMM for its device state (SIGUSR2); returns the lines it logged."""
        args = self.proc.args if isinstance(self.proc.args, list) else [self.proc.args]
        if self.proc.poll() is not None or not any(
                os.path.basename(str(a)).startswith("cella") for a in args):
            return []
        try:
            self.proc.send_signal(signal.SIGUSR2)
        except OSError:
            return []
        fd = self.proc.stdout.fileno()
        end = time.monotonic() + wait
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], max(0, end - time.monotonic()))
            if not r:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.buf += chunk
        text = self.buf.decode("utf-8", "replace").replace("\r", "")
        self.buf = b""
        return [ln for ln in text.split("\n") if '"debug"' in ln]

    def _keep(self, raw):
        line = raw.decode("utf-8", "replace").replace("\r", "")
        self.lines.append(line)
        if self.log:
            self.log.write("%8.3f %s\n" % (self.elapsed(), line))
            self.log.flush()
        return line

    def wait_ready(self, timeout=120):
        deadline = time.monotonic() + timeout
        while True:
            line = self._readline(deadline)
            if line is None:
                raise GuestError("console closed before the ready line; "
                                 "last lines:\n  " + "\n  ".join(self.lines[-15:]))
            # The firmware may leave escape sequences before the line.
            if line.endswith(READY):
                self.ready_after = self.elapsed()
                return self.ready_after

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def run(self, cmd, timeout=60):
        """Run CMD in the guest; return (status, output lines)."""
        if "\n" in cmd:
            raise ValueError("one line per command")
        self.send(cmd)
        deadline = time.monotonic() + timeout
        out = []
        while True:
            line = self._readline(deadline)
            if line is None:
                raise GuestError("console closed while running %r" % cmd)
            m = EXIT_RE.search(line)
            if m:
                # Output without a final newline ends up before the marker.
                if m.start() > 0:
                    out.append(line[:m.start()])
                return int(m.group(1)), out
            out.append(line)

    def poweroff(self, timeout=30):
        """Power the guest off; return the VMM's exit status."""
        try:
            self.send("poweroff -f")
        except BrokenPipeError:
            pass
        try:
            self.proc.stdin.close()
        except BrokenPipeError:
            pass
        deadline = time.monotonic() + timeout
        try:
            while self._readline(deadline) is not None:
                pass
            return self.proc.wait(max(0.1, deadline - time.monotonic()))
        except (GuestError, subprocess.TimeoutExpired):
            self.kill()
            raise GuestError("VMM did not exit after poweroff")

    def kill(self, wait=30):
        """SIGKILL the VMM; a process that does not go (stuck in the kernel) is reported."""
        if self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                raise GuestError("VMM pid %d did not exit %d s after SIGKILL:\n%s" %
                                 (self.proc.pid, wait, _proc_state(self.proc.pid)))


def _proc_state(pid):
    """Each thread's state and kernel wait channel/stack, for a stuck process."""
    out = []
    try:
        tids = sorted(os.listdir("/proc/%d/task" % pid), key=int)
    except OSError as e:
        return "  (no /proc entry: %s)" % e
    for tid in tids:
        base = "/proc/%d/task/%s/" % (pid, tid)
        parts = []
        for name in ("comm", "wchan", "stat"):
            try:
                with open(base + name) as f:
                    parts.append(f.read().strip())
            except OSError:
                pass
        try:
            with open(base + "stack") as f:
                parts.append(f.read().strip().replace("\n", " | "))
        except OSError:
            pass
        out.append("  tid %s: %s" % (tid, " ; ".join(parts)))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--timeout", type=float, default=120,
                    help="seconds to wait for the ready line and for each command")
    ap.add_argument("-c", "--cmd", action="append", default=[],
                    help="command to run in the guest (repeatable)")
    ap.add_argument("--log", help="append every console line to this file")
    ap.add_argument("vmm", nargs="+", help="VMM command line (after --)")
    a = ap.parse_args()
    worst = 0
    with GuestConsole(a.vmm, log=a.log) as g:
        try:
            t = g.wait_ready(a.timeout)
            print("console.py: ready after %.2f s" % t, file=sys.stderr)
            for cmd in a.cmd:
                status, out = g.run(cmd, a.timeout)
                for line in out:
                    print(line)
                print("CELLA-EXIT %d" % status)
                worst = worst or status
            g.poweroff()
        except GuestError as e:
            print("console.py: %s" % e, file=sys.stderr)
            return 125
    return 1 if worst else 0


if __name__ == "__main__":
    sys.exit(main())
