"""Disks on real KVM (issue 5): virtio-blk and NVMe on file, blob and NBD
backends, read-only backends, data integrity with rio, a disk behind a
PCI-PCI bridge, and SeaBIOS booting from disks in boot_order.

The guest side uses the guest kit (tools/guest): busybox, ext4, rio. The
host side checks what the guest wrote with debugfs and e2fsck, without
mounting anything."""
import base64
import hashlib
import os
import random
import shutil
import socket
import subprocess
import time

import pytest

from conftest import copy_file, debugfs_read, e2fsck_clean, sha256_file, small_config

# kind -> (driver, guest device node)
KINDS = {
    "virtio": ("pci-virtio-block", "/dev/vda"),
    "nvme": ("pci-nvme", "/dev/nvme0n1"),
}


def disk_config(backend, kind="virtio", name="disk0", pci="0.4.0", serial=None, extra=""):
    """One disk: backend is the body of [block_dev.b0] (TOML lines); extra
    goes first (tables, or [main] keys)."""
    dev = (f"\n[block_dev.b0]\n{backend}\n"
           f"[dev.{name}]\ndriver = \"{KINDS[kind][0]}\"\nblock_dev = \"b0\"\n"
           f"pci-path = \"{pci}\"\n")
    if serial is not None:
        dev += f"serial = \"{serial}\"\n"
    return small_config(extra=extra + dev)


def file_backend(path, readonly=False):
    return f"type = \"file\"\npath = \"{path}\"\nreadonly = {'true' if readonly else 'false'}\n"


def guest_ext4_roundtrip(v, dev):
    """In the guest: mount the kit's disk, check its files, write two files,
    unmount. Returns the sha256 of the binary file written."""
    v.check(f"mount -t ext4 {dev} /mnt")
    out = v.check("cd /mnt && sha256sum -c SHA256SUMS", timeout=120)
    assert sum(line.endswith(": OK") for line in out) == 4, out
    v.check("echo written-by-the-guest > /mnt/guest.txt")
    out = v.check("dd if=/dev/urandom of=/mnt/guest.bin bs=64k count=64 2>/dev/null && "
                  "sha256sum /mnt/guest.bin")
    digest = out[-1].split()[0]
    v.check("sync && umount /mnt")
    return digest


def host_checks_ext4(image, digest):
    assert debugfs_read(image, "/guest.txt") == b"written-by-the-guest\n"
    assert hashlib.sha256(debugfs_read(image, "/guest.bin")).hexdigest() == digest
    assert debugfs_read(image, "/hello.txt") == b"hello from cella's test disk\n"
    e2fsck_clean(image)


@pytest.mark.parametrize("kind", ["virtio", "nvme"])
def test_file_disk_ext4_roundtrip(vm, kit, tmp_path, kind):
    image = copy_file(kit["GUEST_DISK"], tmp_path / "disk.ext4")
    serial = "CELLA-NVME-0001" if kind == "nvme" else None
    v = vm(disk_config(file_backend(image), kind, serial=serial))
    v.ready()
    dev = KINDS[kind][1]
    assert v.check(f"cat /sys/block/{os.path.basename(dev)}/size") == [str(64 << 11)]
    if kind == "nvme":
        # The 20-byte serial, space padded (Linux 6.1 shows the padding).
        serial = v.check("cat /sys/class/nvme/nvme0/serial")
        assert serial == ["CELLA-NVME-0001".ljust(20)] or serial == ["CELLA-NVME-0001"], serial
        model = v.check("cat /sys/class/nvme/nvme0/model")
        assert model and model[0].strip(), model
    digest = guest_ext4_roundtrip(v, dev)
    assert v.console.poweroff() == 0
    host_checks_ext4(image, digest)


def test_disk_behind_pci_bridge(vm, kit, tmp_path):
    image = copy_file(kit["GUEST_DISK"], tmp_path / "disk.ext4")
    bridge = "[[pci_bridge]]\npci-path = \"0.6.0\"\ndownstream-bus = 1\n"
    v = vm(disk_config(file_backend(image), "virtio", pci="1.0.0", extra=bridge))
    v.ready()
    path = v.check("readlink -f /sys/block/vda")[0]
    # The disk is function 0 of device 0 on bus 1, under the bridge at 00:06.0.
    assert "/0000:00:06.0/0000:01:00.0/" in path, path
    digest = guest_ext4_roundtrip(v, "/dev/vda")
    assert v.console.poweroff() == 0
    host_checks_ext4(image, digest)


def test_blob_disk_reads_back(vm, tmp_path):
    data = random.Random(5).randbytes(64 << 10)
    b64 = base64.b64encode(data).decode()
    v = vm(disk_config(f"type = \"blob\"\nbase64 = \"{b64}\"\n", "virtio"))
    v.ready()
    assert v.check("cat /sys/block/vda/size") == [str(len(data) // 512)]
    out = v.check("dd if=/dev/vda bs=4096 2>/dev/null | sha256sum")
    assert out[-1].split()[0] == hashlib.sha256(data).hexdigest()
    out = v.check("dd if=/dev/vda bs=512 skip=77 count=3 iflag=direct 2>/dev/null | sha256sum")
    assert out[-1].split()[0] == hashlib.sha256(data[77 * 512:80 * 512]).hexdigest()
    assert v.console.poweroff() == 0


class Nbdkit:
    """nbdkit's file plugin serving one image on a Unix socket."""

    def __init__(self, image, tmp_path):
        if not shutil.which("nbdkit"):
            pytest.skip("nbdkit is not installed (Debian package nbdkit)")
        self.sock = str(tmp_path / "nbd.sock")
        self.log = open(tmp_path / "nbdkit.log", "w")
        self.proc = subprocess.Popen(["nbdkit", "-f", "--unix", self.sock, "file", str(image)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while True:
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect(self.sock)
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("nbdkit did not start; see nbdkit.log")
                time.sleep(0.05)
            finally:
                s.close()
        self.uri = f"nbd+unix:///?socket={self.sock}"

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.log.close()


def test_nbd_disk_ext4_roundtrip(vm, kit, tmp_path):
    image = copy_file(kit["GUEST_DISK"], tmp_path / "disk.ext4")
    nbd = Nbdkit(image, tmp_path)
    try:
        v = vm(disk_config(f"type = \"nbd\"\nuri = \"{nbd.uri}\"\n", "virtio"))
        v.ready()
        assert v.check("cat /sys/block/vda/size") == [str(64 << 11)]
        digest = guest_ext4_roundtrip(v, "/dev/vda")
        assert v.console.poweroff() == 0
    finally:
        nbd.stop()
    host_checks_ext4(image, digest)


@pytest.mark.parametrize("kind", ["virtio", "nvme"])
def test_readonly_backend_refuses_writes(vm, kit, tmp_path, kind):
    image = copy_file(kit["GUEST_DISK"], tmp_path / "disk.ext4")
    before = sha256_file(image)
    v = vm(disk_config(file_backend(image, readonly=True), kind))
    v.ready()
    dev = KINDS[kind][1]
    if kind == "virtio":
        # VIRTIO_BLK_F_RO: the kernel marks the disk read-only.
        assert v.check("cat /sys/block/vda/ro") == ["1"]
    # O_DIRECT + fsync, so a write cannot stay in the guest's page cache.
    status, out = v.run(f"dd if=/dev/urandom of={dev} bs=4096 count=4 seek=100 "
                        f"oflag=direct conv=fsync")
    assert status != 0, f"a write to a read-only disk succeeded: {out}"
    status, out = v.run(f"dd if=/dev/urandom of={dev} bs=1M count=1 conv=fsync")
    assert status != 0, f"a buffered write to a read-only disk succeeded: {out}"
    # Pages of a failed buffered write stay in the guest's cache: drop them
    # so what follows reads the disk.
    v.run(f"sync; blockdev --flushbufs {dev}; echo 3 > /proc/sys/vm/drop_caches")
    # Reading still works, and the guest sees the image unchanged.
    v.check(f"mount -t ext4 -o ro,noload {dev} /mnt")
    out = v.check("cd /mnt && sha256sum -c SHA256SUMS", timeout=120)
    assert sum(line.endswith(": OK") for line in out) == 4, out
    v.check("umount /mnt")
    out = v.check(f"dd if={dev} bs=1M iflag=direct 2>/dev/null | sha256sum", timeout=120)
    assert out[-1].split()[0] == before
    assert v.console.poweroff() == 0
    assert sha256_file(image) == before


# (fill block size, verify block size, MiB, seed): every pair crosses sizes,
# so a request split or merged wrongly shows as a pattern mismatch.
RIO_ROUNDS = [("512", "1M", 1, 11), ("64k", "512", 1, 12), ("4k", "64k", 8, 13),
              ("1M", "4k", 8, 14)]


@pytest.mark.parametrize("kind", ["virtio", "nvme"])
def test_rio_fill_verify(vm, kit, tmp_path, kind):
    image = tmp_path / "rio.raw"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    v = vm(disk_config(file_backend(image), kind, name="nvme0" if kind == "nvme" else "disk0"))
    v.ready()
    dev = KINDS[kind][1]
    if kind == "nvme":
        # The default serial is the device's name, space padded.
        serial = v.check("cat /sys/class/nvme/nvme0/serial")
        assert serial == ["nvme0".ljust(20)] or serial == ["nvme0"], serial
    for fill_bs, verify_bs, mb, seed in RIO_ROUNDS:
        v.check(f"rio {dev} fill {seed} {mb} {fill_bs}", timeout=120)
        out = v.check(f"rio {dev} verify {seed} {mb} {verify_bs}", timeout=120)
        assert out[-1].startswith("RIO op=verify") and out[-1].endswith(" ok"), out
    # Several requests in flight at once (4 threads) must not fail.
    v.check(f"rio {dev} randread 4k 2 4", timeout=120)
    assert v.console.poweroff() == 0
    # The last pattern reached the backing file.
    p = subprocess.run([kit["GUEST_RIO"], str(image), "verify", "14", "8"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr


# -- firmware: SeaBIOS boots the kit's boot-seabios.img from a disk --------

def boot_image(kit, tmp_path, name, marker=None):
    """A copy of boot-seabios.img; with marker, its syslinux.cfg adds
    `cella_boot=<marker>` to the kernel command line."""
    img = copy_file(kit["GUEST_BOOT_IMG"], tmp_path / name)
    if marker:
        cfg = tmp_path / f"{name}.syslinux.cfg"
        cfg.write_text("DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL vmlinuz\n"
                       f"  INITRD initrd.gz\n  APPEND {kit['GUEST_CMDLINE']} cella_boot={marker}\n")
        subprocess.run(["mcopy", "-i", img, "-o", str(cfg), "::syslinux.cfg"], check=True)
    return img


@pytest.mark.parametrize("kind", ["virtio", "nvme"])
def test_seabios_boots_from_disk(vm, kit, tmp_path, kind):
    img = boot_image(kit, tmp_path, "boot.img")
    v = vm(disk_config(file_backend(img), kind), firmware=True, kernel=False)
    v.ready(timeout=240)
    cmdline = v.check("cat /proc/cmdline")[0]
    # syslinux put BOOT_IMAGE= there: the kernel came from the disk.
    assert "BOOT_IMAGE=vmlinuz" in cmdline, cmdline
    assert os.path.basename(KINDS[kind][1]) in v.check("ls -1 /sys/block")
    assert v.console.poweroff() == 0


@pytest.mark.parametrize("order,want", [(["diskb", "diska"], "B"), (["diska", "diskb"], "A")])
def test_boot_order_picks_the_disk(vm, kit, tmp_path, order, want):
    # Two bootable disks whose kernels get different command lines: A on
    # virtio-blk at 0.4.0 (first in PCI order), B on NVMe at 0.5.0.
    a = boot_image(kit, tmp_path, "a.img", "A")
    b = boot_image(kit, tmp_path, "b.img", "B")
    extra = (f"boot_order = [\"{order[0]}\", \"{order[1]}\"]\n"
             f"[block_dev.a]\n{file_backend(a)}\n[block_dev.b]\n{file_backend(b)}\n"
             "[dev.diska]\ndriver = \"pci-virtio-block\"\nblock_dev = \"a\"\npci-path = \"0.4.0\"\n"
             "[dev.diskb]\ndriver = \"pci-nvme\"\nblock_dev = \"b\"\npci-path = \"0.5.0\"\n")
    v = vm(small_config(extra=extra), firmware=True, kernel=False)
    v.ready(timeout=240)
    cmdline = v.check("cat /proc/cmdline")[0]
    assert f"cella_boot={want}" in cmdline, cmdline
    assert v.console.poweroff() == 0
