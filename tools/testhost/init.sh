#!/bin/sh
# /init of the test host's initramfs (busybox ash).  See tools/testhost/run.
#
# 1. load the modules packed in the initramfs (/modules.*: virtio, 9p,
#    overlay, kvm, and optional extras), in dependency order;
# 2. mount the host's root (9p tag "host", read-only) at /host and this
#    run's control directory (tag "ctl", writable) at /ctl;
# 3. bind the kernel's full module tree (unpacked on the host, reached
#    through /host) to /lib/modules, so that modprobe works in the chroot;
# 4. build the new root: an overlay of /host with a tmpfs on top (so the
#    whole tree is writable, changes are thrown away), plus proc, sys, dev,
#    a private /run, and the writable 9p shares listed in /ctl/mounts at their
#    host paths (the caller's checkout);
# 5. chroot into it and run /ctl/cmd.sh with stdout/stderr on the
#    virtio-serial ports "cella.out"/"cella.err";
# 6. write the exit status to /ctl/status and power off.
#
# Anything that goes wrong is reported on the serial console (a log file on
# the host) and as status 125 in /ctl/status when possible.

export PATH=/bin:/sbin
/bin/busybox --install -s /bin
# shellcheck disable=SC1091
. /etc/cella.conf    # KVER, MODDIR (host path of lib/modules/KVER)

# Boot-time trace on the console with cella_debug=1 on the kernel cmdline.
t() { [ -n "${cella_debug:-}" ] && echo "cella-testhost: $(cut -d' ' -f1 /proc/uptime) $*" >/dev/console; :; }

fail() {
	echo "cella-testhost init: $*" >&2
	[ -d /ctl/. ] && echo 125 >/ctl/status
	sync
	poweroff -f
}

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
echo 1 >/proc/sys/kernel/printk   # keep the console quiet

t "start"
# insmod_list FILE [optional] - load the modules listed in FILE, in order.
insmod_list() {
	while read -r m; do
		n=${m##*/}
		n=${n%%.ko*}
		# shellcheck disable=SC3060  # busybox ash has ${var//a/b}
		grep -q "^${n//-/_} " /proc/modules && continue
		insmod "/lib/modules/$KVER/$m" 2>/dev/null || [ -n "${2:-}" ] || fail "insmod $m"
	done <"$1"
}
insmod_list /modules.base
t "insmod done"
p9='trans=virtio,version=9p2000.L,msize=524288'
mkdir -p /host /ctl /newroot /upper
mount -t 9p -o "$p9,ro,cache=loose" host /host || fail "mount host root"
mount -t 9p -o "$p9,cache=none" ctl /ctl || fail "mount ctl"
[ -f /ctl/cmd.sh ] || fail "no /ctl/cmd.sh"

t "9p mounted"
# KVM and the extras load in the background while the root is set up
# (module loading is slow under TCG: signature checks, relocations).
if grep -q '^flags.* svm' /proc/cpuinfo; then kvm=kvm_amd; else kvm=kvm_intel; fi
( insmod_list /modules.$kvm; t "kvm loaded" ) &
modpid=$!
( insmod_list /modules.extra optional; t "extras loaded" ) &
extpid=$!
# The full module tree, for modprobe in the chroot.
mkdir -p "/lib/modules/$KVER"
mount --bind "/host$MODDIR" "/lib/modules/$KVER" || fail "bind modules"
# The new root: host root + tmpfs overlay.
mount -t tmpfs -o mode=755 upper /upper
mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w \
	root /newroot || fail "mount overlay root"
r=/newroot
mount -t proc proc $r/proc
mount -t sysfs sys $r/sys
mount -t devtmpfs dev $r/dev
mkdir -p $r/dev/pts $r/dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts $r/dev/pts
mount -t tmpfs -o mode=1777 shm $r/dev/shm
mount -t cgroup2 cgroup2 $r/sys/fs/cgroup 2>/dev/null
# /tmp stays the host's, writable through the overlay; /run is private.
mount -t tmpfs -o mode=755 run $r/run
mkdir -p "$r/lib/modules/$KVER"
mount --bind "/lib/modules/$KVER" "$r/lib/modules/$KVER"
# Writable shares: "<tag> <absolute path>" per line.
while read -r tag path; do
	[ -n "$tag" ] || continue
	mkdir -p "$r$path"
	mount -t 9p -o "$p9,cache=mmap" "$tag" "$r$path" || fail "mount $tag at $path"
done </ctl/mounts
mkdir -p $r/ctl
mount --bind /ctl $r/ctl
hostname testhost
ip link set lo up

t "root ready"
# Find the virtio-serial ports by name.
port() {
	for p in /sys/class/virtio-ports/*; do
		[ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && { echo "/dev/${p##*/}"; return; }
	done
	fail "no virtio-serial port $1"
}
out=$(port cella.out)
err=$(port cella.err)
wait $modpid $extpid
[ -c /dev/kvm ] || fail "no /dev/kvm after loading $kvm"
# The kernel's and modules' code symbols, for cpu_dump.py should the run hang.
grep ' [tT] ' /proc/kallsyms >/ctl/kallsyms 2>/dev/null &

chroot $r /bin/sh /ctl/cmd.sh </dev/null >"$out" 2>"$err"
rc=$?
t "command done"
echo $rc >/ctl/status
sync
poweroff -f
