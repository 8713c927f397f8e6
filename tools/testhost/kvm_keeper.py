#!/usr/bin/python3
"""Holds one idle KVM VM (in-kernel irqchip, one vCPU that never runs)
for the whole nested test-host run, so KVM's `apic_sw_disabled` static key
never drops back to zero between the VMs the tests create.

Why: every 0 <-> 1 flip of that key live-patches the test host kernel's
code (text_poke_bp: int3 on every CPU, then an IPI round). Under the outer
QEMU-TCG this has been seen to livelock: one CPU looping in exc_int3 with
interrupts off while the other waits in smp_call_function_many_cond, a
soft lockup that never ends (tools/testhost/cpu_dump.py showed it). A vCPU
created with an in-kernel local APIC starts software-disabled and holds the
key at one or more; this one never enables its APIC, so the key stays set.
Best effort: any failure just leaves the test host as it was.
"""
import fcntl
import os
import sys
import time

KVM_CREATE_VM = 0xAE01
KVM_CREATE_VCPU = 0xAE41
KVM_CREATE_IRQCHIP = 0xAE60


def main():
    try:
        kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        vm = fcntl.ioctl(kvm, KVM_CREATE_VM, 0)
        fcntl.ioctl(vm, KVM_CREATE_IRQCHIP, 0)
        fcntl.ioctl(vm, KVM_CREATE_VCPU, 0)
    except OSError as e:
        print(f"kvm_keeper: {e}", file=sys.stderr)
        return 1
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
