#!/bin/sh
# /init of the guest kit's initramfs (busybox ash).  See tools/guest/build.
#
# Mounts proc/sys/dev, loads the kernel modules listed in /etc/modules
# (with busybox modprobe, which also applies module options given on the
# kernel command line), prints exactly one line
#
#   CELLA-GUEST-READY
#
# on the console, then reads commands from it, one per line: each runs with
# `sh -c LINE` (stdin /dev/null, output to the console) and is followed by a
# line `CELLA-EXIT <status>`.  On end of input the guest powers off.
#
# The console is /dev/ttyS0 unless the kernel command line says
# cella_console=<device> (e.g. cella_console=hvc0).  Echo is off, so the
# console carries only the lines above and the commands' output; kernel
# messages are limited to emergencies (printk level 1).

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
/bin/busybox --install -s /bin

mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
echo 1 >/proc/sys/kernel/printk
mkdir -p /dev/pts /dev/shm /tmp /run
mount -t devpts devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t tmpfs -o mode=1777 tmp /tmp
mount -t tmpfs -o mode=755 run /run

# shellcheck disable=SC2046  # one module name per line
modprobe -a -q $(cat /etc/modules)

hostname guest
ip link set lo up

con=/dev/${cella_console:-ttyS0}
# The tty must exist before it is opened (virtio consoles appear a little
# after their module loads).
i=0
while [ ! -c "$con" ] && [ "$i" -lt 100 ]; do
	sleep 0.05
	i=$((i + 1))
done
exec <"$con" >"$con" 2>&1
stty -echo 2>/dev/null

echo CELLA-GUEST-READY
while IFS= read -r line; do
	sh -c "$line" </dev/null
	echo "CELLA-EXIT $?"
done
sync
poweroff -f
