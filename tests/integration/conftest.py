"""Fixtures for integration tests: real cella processes booting the guest
kit (tools/guest) on real KVM. Run them through tools/testhost/run (see
tests/integration/run), which provides /dev/kvm that can boot a stock
kernel on every machine."""
import os
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CELLA_BUILD_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tools", "guest"))

from console import GuestConsole, GuestError  # noqa: E402

SEABIOS = "/usr/share/seabios/bios-256k.bin"
LINUXBOOT = "/usr/share/qemu/linuxboot_dma.bin"


def _kit_env():
    path = os.environ.get("CELLA_GUEST_KIT_ENV")
    if not path:
        cache = os.environ.get("CELLA_CACHE", "/var/cache/cella-testhost")
        path = os.path.join(cache, "guest", "kit.env")
    if not os.path.exists(path):
        pytest.exit(f"guest kit not built ({path} missing): run tools/guest/build", 2)
    env = {}
    for line in open(path):
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            env[k] = shlex.split(v)[0] if v else ""
    return env


@pytest.fixture(scope="session")
def kit():
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        pytest.exit("no usable /dev/kvm: run through tools/testhost/run", 2)
    return _kit_env()


@pytest.fixture(scope="session")
def standalone():
    exe = os.path.join(BUILD, "src", "standalone", "cella-standalone")
    if not os.path.exists(exe):
        pytest.exit(f"{exe} missing: build cella first", 2)
    return exe


class Vm:
    """A cella-standalone process with the guest kit; console via GuestConsole."""

    def __init__(self, exe, kit, tmp_path, config, extra=(), firmware=False, cmdline=None,
                 bootrom=SEABIOS):
        self.config = tmp_path / "vm.toml"
        self.config.write_text(config)
        argv = [exe, str(self.config)]
        if firmware:
            argv += ["--bootrom", bootrom]
            if bootrom == SEABIOS:
                argv += ["--linuxboot-rom", LINUXBOOT]
        argv += ["--kernel", kit["GUEST_BZIMAGE"], "--initrd", kit["GUEST_INITRAMFS"],
                 "--cmdline", cmdline or kit["GUEST_CMDLINE"]]
        argv += list(extra)
        self.argv = argv
        self.console = GuestConsole(argv, log=str(tmp_path / "console.log"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.console.kill()

    def ready(self, timeout=120):
        return self.console.wait_ready(timeout)

    def run(self, cmd, timeout=60):
        status, out = self.console.run(cmd, timeout)
        return status, out

    def check(self, cmd, timeout=60):
        status, out = self.run(cmd, timeout)
        assert status == 0, f"{cmd!r} exited {status}: {out}"
        return out

    def wait_exit(self, timeout=60):
        """Reads the console until the process exits; returns (status, lines)."""
        c = self.console
        try:
            c.proc.stdin.close()
        except BrokenPipeError:
            pass
        import time
        deadline = time.monotonic() + timeout
        while c._readline(deadline) is not None:
            pass
        return c.proc.wait(timeout=max(1, deadline - time.monotonic())), c.lines


@pytest.fixture
def vm(standalone, kit, tmp_path):
    made = []

    def make(config, **kw):
        v = Vm(standalone, kit, tmp_path, config, **kw)
        made.append(v)
        return v

    yield make
    for v in made:
        v.console.kill()


def small_config(cpus=1, memory=512, extra=""):
    return f"[main]\ncpus = {cpus}\nmemory = {memory}\n{extra}"
