"""Fixtures for integration tests: real cella processes booting the guest
kit (tools/guest) on real KVM. Run them through tools/testhost/run (see
tests/integration/run), which provides /dev/kvm that can boot a stock
kernel on every machine."""
import faulthandler
import os
import shlex
import signal
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("CELLA_BUILD_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tools", "guest"))

from console import GuestConsole, GuestError  # noqa: E402

# A test that runs longer than this fails (with every thread's traceback)
# instead of holding the whole test-host run until its timeout.
TEST_TIMEOUT = int(os.environ.get("CELLA_TEST_TIMEOUT", "300"))


class TestTimeout(Exception):
    pass


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    def expired(signum, frame):
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        raise TestTimeout(f"{item.nodeid} ran longer than {TEST_TIMEOUT} s "
                          "(CELLA_TEST_TIMEOUT); tracebacks above")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(TEST_TIMEOUT)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


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
                 bootrom=SEABIOS, kernel=True, prefix=()):
        # kernel=False (with firmware=True): no --kernel, the firmware boots
        # from a disk. prefix: argv in front of cella's (e.g. ip netns exec).
        self.config = tmp_path / "vm.toml"
        self.config.write_text(config)
        argv = list(prefix) + [exe, str(self.config)]
        if firmware:
            argv += ["--bootrom", bootrom]
            if bootrom == SEABIOS and kernel:
                argv += ["--linuxboot-rom", LINUXBOOT]
        if kernel:
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


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Server:
    """A cella-server process on loopback, driven over HTTP."""

    def __init__(self, kit, tmp_path, firmware=False, env=None):
        import time
        import requests
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        exe = os.path.join(BUILD, "src", "server", "cella-server")
        argv = [exe, "run", f"127.0.0.1:{self.port}"]
        if firmware:
            argv += ["--bootrom", SEABIOS, "--linuxboot-rom", LINUXBOOT]
        argv += ["--kernel", kit["GUEST_BZIMAGE"], "--initrd", kit["GUEST_INITRAMFS"],
                 "--cmdline", kit["GUEST_CMDLINE"]]
        self.log_path = tmp_path / f"server-{self.port}.log"
        self.log = open(self.log_path, "w")
        penv = dict(os.environ, **(env or {}))
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, env=penv)
        self.http = requests.Session()
        deadline = time.monotonic() + 20
        while True:
            try:
                self.http.get(self.base + "/instance", timeout=2)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("cella-server did not start")
                time.sleep(0.05)

    def url(self, path):
        return self.base + path

    def get(self, path, **kw):
        return self.http.get(self.url(path), timeout=kw.pop("timeout", 30), **kw)

    def put(self, path, **kw):
        return self.http.put(self.url(path), timeout=kw.pop("timeout", 60), **kw)

    def post(self, path, **kw):
        return self.http.post(self.url(path), timeout=kw.pop("timeout", 30), **kw)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture
def server(kit, tmp_path):
    made = []

    def make(**kw):
        s = Server(kit, tmp_path, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


def spec_from_toml(text, tmp_path):
    import json
    cfg = tmp_path / "spec.toml"
    cfg.write_text(text)
    exe = os.path.join(BUILD, "src", "cli", "cella")
    out = subprocess.run([exe, "spec", "from-toml", str(cfg)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def ensure_body(spec, name="vm"):
    import uuid
    zero = "00000000-0000-0000-0000-000000000000"
    return {"properties": {"id": str(uuid.uuid4()), "name": name, "description": "test",
                           "metadata": {"project_id": zero, "silo_id": zero, "sled_id": zero,
                                        "sled_model": "cella", "sled_revision": 0,
                                        "sled_serial": "test"}},
            "init": {"method": "Spec", "value": {"spec": spec}}}


# -- disks (test_storage.py, test_network.py and later users) --------------

def copy_file(src, dst):
    """Copies src to dst (a path in tmp_path) and returns dst as a str."""
    import shutil
    shutil.copyfile(src, dst)
    return str(dst)


def sha256_file(path):
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def e2fsck_clean(image):
    """Asserts that `e2fsck -fn` finds nothing wrong in image."""
    p = subprocess.run(["e2fsck", "-fn", str(image)], capture_output=True, text=True)
    assert p.returncode == 0, f"e2fsck -fn {image} exited {p.returncode}:\n{p.stdout}{p.stderr}"


def debugfs_read(image, path):
    """The bytes of file `path` inside ext4 image (read with debugfs, no mount)."""
    p = subprocess.run(["debugfs", "-R", f"cat {path}", str(image)], capture_output=True)
    assert p.returncode == 0, p.stderr.decode(errors="replace")
    return p.stdout
