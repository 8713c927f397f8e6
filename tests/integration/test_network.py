"""A virtio NIC on a tap interface, on real KVM (issue 5).

Each test makes a network namespace, creates the tap `ctap0` inside it with
10.77.0.1/24, and runs cella in that namespace (`ip netns exec`), so cella
opens the tap by name and nothing touches the test host's own network; the
host-side peers (ping, a Python TCP listener) run there too. The namespace
and its tap are removed afterwards. The guest is 10.77.0.2/24."""
import os
import subprocess
import sys

import pytest

from conftest import small_config

HOST_IP = "10.77.0.1"
GUEST_IP = "10.77.0.2"
MAC = "02:08:20:00:77:02"
TAP = "ctap0"


def sh(*argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    assert p.returncode == 0, f"{' '.join(argv)} exited {p.returncode}: {p.stderr}"
    return p.stdout


@pytest.fixture
def netns():
    """A fresh network namespace holding tap ctap0 (10.77.0.1/24, up)."""
    # The test host's kernel cannot load modules on demand: load tun here.
    subprocess.run(["modprobe", "tun"], capture_output=True)
    if not os.path.exists("/dev/net/tun"):
        pytest.fail("no /dev/net/tun (the tun module did not load)")
    ns = f"cella-test-{os.getpid()}"
    sh("ip", "netns", "add", ns)
    try:
        ex = ["ip", "netns", "exec", ns]
        sh(*ex, "ip", "link", "set", "lo", "up")
        sh(*ex, "ip", "tuntap", "add", "dev", TAP, "mode", "tap")
        sh(*ex, "ip", "addr", "add", f"{HOST_IP}/24", "dev", TAP)
        sh(*ex, "ip", "link", "set", TAP, "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "exec", ns, "ip", "tuntap", "del", "dev", TAP,
                        "mode", "tap"], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def nic_config():
    return small_config(extra=f"[dev.net0]\ndriver = \"pci-virtio-viona\"\nvnic = \"{TAP}\"\n"
                              f"pci-path = \"0.5.0\"\nmac = \"{MAC}\"\n")


def guest_up(v):
    v.ready()
    assert v.check("cat /sys/class/net/eth0/address") == [MAC]
    v.check(f"ip link set eth0 up && ip addr add {GUEST_IP}/24 dev eth0")


# A one-connection TCP peer for the host side, run inside the namespace:
#   peer.py recv PORT NBYTES     accept, read NBYTES, print "<n> <sha256>"
#   peer.py send PORT NBYTES     accept, send NBYTES of random data, close,
#                                print "<n> <sha256>"
# It prints "listening" once it is ready for the guest to connect.
PEER = r"""
import hashlib, os, socket, sys
mode, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[4], port))
s.listen(1)
s.settimeout(90)
print("listening", flush=True)
c, _ = s.accept()
c.settimeout(90)
h = hashlib.sha256()
got = 0
if mode == "recv":
    while got < n:
        b = c.recv(min(1 << 20, n - got))
        if not b:
            break
        h.update(b)
        got += len(b)
else:
    data = os.urandom(n)
    c.sendall(data)
    h.update(data)
    got = n
c.close()
print(got, h.hexdigest(), flush=True)
"""


class Peer:
    def __init__(self, ns, mode, port, nbytes):
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", PEER, mode, str(port),
             str(nbytes), HOST_IP], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        assert line.strip() == "listening", line + self.proc.stderr.read()

    def result(self, timeout=90):
        out, err = self.proc.communicate(timeout=timeout)
        assert self.proc.returncode == 0, err
        n, digest = out.split()
        return int(n), digest

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def test_ping_both_ways(vm, netns):
    v = vm(nic_config(), prefix=["ip", "netns", "exec", netns])
    guest_up(v)
    out = v.check(f"ping -c 3 -W 5 {HOST_IP}", timeout=60)
    assert any("bytes from" in line for line in out), out
    # busybox's ping: the test host need not have iputils-ping.
    sh("ip", "netns", "exec", netns, "busybox", "ping", "-c", "3", "-W", "5", GUEST_IP)
    # The guest's MAC is what the host learned.
    neigh = sh("ip", "netns", "exec", netns, "ip", "neigh", "show", GUEST_IP)
    assert MAC in neigh, neigh
    assert v.console.poweroff() == 0


NBYTES = 10 << 20


def test_tcp_10mib_both_ways(vm, netns):
    v = vm(nic_config(), prefix=["ip", "netns", "exec", netns])
    guest_up(v)
    # Guest -> host.
    out = v.check("dd if=/dev/urandom of=/tmp/out bs=1M count=10 2>/dev/null && "
                  "sha256sum /tmp/out")
    sent = out[-1].split()[0]
    peer = Peer(netns, "recv", 5001, NBYTES)
    try:
        v.check(f"nc {HOST_IP} 5001 < /tmp/out", timeout=90)
        n, digest = peer.result()
    finally:
        peer.kill()
    assert (n, digest) == (NBYTES, sent)
    # Host -> guest: the guest connects, the host sends and closes.
    peer = Peer(netns, "send", 5002, NBYTES)
    try:
        v.check(f"nc {HOST_IP} 5002 < /dev/null > /tmp/in", timeout=90)
        n, digest = peer.result()
    finally:
        peer.kill()
    out = v.check("wc -c < /tmp/in && sha256sum /tmp/in")
    assert int(out[0]) == NBYTES
    assert out[-1].split()[0] == digest
    assert v.console.poweroff() == 0
