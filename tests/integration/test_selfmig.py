"""Live migration, machine side (issue 6): tests/machine/selfmig moves a
running guest between two machines in one process (dirty-log pre-copy,
pause, state payloads, resume) and checks that the guest carries on: its
background counter keeps counting, the console answers, and a disk still
takes writes."""
import os
import re
import subprocess

import pytest

from conftest import BUILD, LINUXBOOT, SEABIOS, copy_file, small_config

DISK_WRITER = ("(while :; do dd if=/dev/urandom of=/dev/vda bs=64k count=16 seek=200 "
               "oflag=direct 2>/dev/null; done) &")
DISK_CHECK = ("dd if=/dev/urandom of=/tmp/x bs=4k count=64 2>/dev/null && "
              "dd if=/tmp/x of=/dev/vda bs=4k seek=5000 conv=fsync 2>/dev/null && sync && "
              "dd if=/dev/vda bs=4k skip=5000 count=64 iflag=direct 2>/dev/null | cmp - /tmp/x")


@pytest.fixture(scope="session")
def selfmig():
    exe = os.path.join(BUILD, "tests", "machine", "selfmig")
    if not os.path.exists(exe):
        pytest.exit(f"{exe} missing: build cella with -Dtests=true", 2)
    return exe


def run_selfmig(exe, kit, tmp_path, config, firmware=False, extra=()):
    cfg = tmp_path / "vm.toml"
    cfg.write_text(config)
    argv = [exe, str(cfg), "--kernel", kit["GUEST_BZIMAGE"], "--initrd", kit["GUEST_INITRAMFS"],
            "--cmdline", kit["GUEST_CMDLINE"]]
    if firmware:
        argv += ["--bootrom", SEABIOS, "--linuxboot-rom", LINUXBOOT]
    argv += list(extra)
    p = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=600)
    (tmp_path / "selfmig.log").write_text(p.stdout + "\n--- stderr ---\n" + p.stderr)
    assert p.returncode == 0, f"selfmig exited {p.returncode}:\n{p.stderr[-3000:]}"
    assert "selfmig: PASS" in p.stderr
    m = re.search(r"pause -> resume: ([0-9.]+) ms", p.stderr)
    assert m
    print(f"pause -> resume {m.group(1)} ms")
    return p.stderr


@pytest.mark.parametrize("cpus", [1, 2])
def test_selfmig_direct_boot(selfmig, kit, tmp_path, cpus):
    run_selfmig(selfmig, kit, tmp_path, small_config(cpus=cpus, memory=512))


def test_selfmig_virtio_disk_busy(selfmig, kit, tmp_path):
    disk = copy_file(kit["GUEST_DISK"], tmp_path / "disk.img")
    cfg = small_config(cpus=2, memory=512, extra=(
        f'[block_dev.b0]\ntype = "file"\npath = "{disk}"\nreadonly = false\n'
        '[dev.disk0]\ndriver = "pci-virtio-block"\nblock_dev = "b0"\npci-path = "0.4.0"\n'))
    run_selfmig(selfmig, kit, tmp_path, cfg,
                extra=["--pre-cmd", DISK_WRITER, "--disk-check", DISK_CHECK])


def test_selfmig_nvme_disk(selfmig, kit, tmp_path):
    disk = copy_file(kit["GUEST_DISK"], tmp_path / "disk.img")
    cfg = small_config(cpus=2, memory=512, extra=(
        f'[block_dev.b0]\ntype = "file"\npath = "{disk}"\nreadonly = false\n'
        '[dev.disk0]\ndriver = "pci-nvme"\nblock_dev = "b0"\npci-path = "0.5.0"\n'))
    run_selfmig(selfmig, kit, tmp_path, cfg,
                extra=["--pre-cmd", DISK_WRITER.replace("/dev/vda", "/dev/nvme0n1"),
                       "--disk-check", DISK_CHECK.replace("/dev/vda", "/dev/nvme0n1")])


def test_selfmig_seabios(selfmig, kit, tmp_path):
    run_selfmig(selfmig, kit, tmp_path, small_config(cpus=2, memory=512), firmware=True)
