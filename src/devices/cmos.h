/* SPDX-License-Identifier: MPL-2.0 */
/*
 * CMOS RAM and MC146818 real-time clock at ports 0x70 (index; bit 7 masks
 * NMI) and 0x71 (data). 128 bytes: 0x00-0x0D are the RTC registers, the
 * rest is battery-backed RAM that firmware reads for memory sizes and the
 * CPU count (the SeaBIOS layout, see cmos_set_memory).
 *
 * The clock is the host's wall clock (UTC) plus a per-VM offset in whole
 * seconds, which the guest changes by writing the time registers. Register
 * B's format bits are honoured (BCD or binary, 12- or 24-hour), and its
 * SET bit freezes the time registers while the guest writes them.
 * Register A's UIP bit is set only in the last 244 us before each second
 * ticks over, which is what Linux's mc146818_get_time() expects.
 *
 * Not emulated: the periodic, alarm and update-ended interrupts (register
 * C always reads 0). The RTC's IRQ 8 line is part of the config so the
 * machine wires it now, but this core never raises it. Linux only needs
 * those interrupts for /dev/rtc alarms and wakeups.
 *
 * Locking: an internal mutex; vCPU threads (ports) and the machine's setup
 * calls may race. No callback runs under it.
 */
#ifndef CELLA_DEVICES_CMOS_H
#define CELLA_DEVICES_CMOS_H

#include "common/mig_buf.h"
#include "devices/io.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#define CMOS_PORT_BASE 0x70
#define CMOS_NPORTS    2 /* index, data */
#define CMOS_ISA_IRQ   8
#define CMOS_SIZE      128

/* Registers other components refer to. */
#define CMOS_REG_A       0x0a
#define CMOS_REG_B       0x0b
#define CMOS_REG_C       0x0c
#define CMOS_REG_D       0x0d
#define CMOS_REG_CENTURY 0x32 /* the ACPI FADT's CENTURY field points here */

/* Migration payload kind/version for struct cmos_state. */
#define CMOS_STATE_KIND    "cmos"
#define CMOS_STATE_VERSION 1

struct cmos_config {
    /* The RTC's interrupt output (ISA IRQ 8); never raised today. */
    struct irq_line irq;
    /*
     * Optional wall clock (nanoseconds since the Unix epoch, UTC); NULL
     * means CLOCK_REALTIME. Tests use a fake. Called with the lock held
     * on the thread accessing the device.
     */
    int64_t (*clock_ns)(void *ctx);
    void *clock_ctx;
};

/* Guest-visible state for save/restore. */
struct cmos_state {
    uint8_t ram[CMOS_SIZE]; /* time registers hold their last values */
    uint8_t index;          /* bits 0-6 */
    uint8_t nmi_masked;     /* 0 or 1 */
    uint8_t pad[6];
    int64_t offset_s; /* guest time minus host UTC, seconds */
};

/*
 * Invariants (under lock): ram[0x0A] bit 7 is 0 (UIP is computed on read);
 * ram[0x0C] is 0 and ram[0x0D] is 0x80 (no interrupts, valid RAM/time).
 * While register B's SET bit is clear the time registers are refreshed
 * from clock + offset_s on every read.
 */
struct cmos {
    pthread_mutex_t lock;
    struct cmos_config cfg;
    uint8_t ram[CMOS_SIZE];
    uint8_t index;
    bool nmi_masked;
    int64_t offset_s;
};

/*
 * Initialises `c`: guest time = host UTC, 24-hour BCD mode (register B
 * 0x02, as SeaBIOS sets it), register A 0x26, base memory 640 KiB, one
 * CPU, no extended memory. cfg is copied. Returns 0 or a negative errno.
 */
int cmos_init(struct cmos *c, const struct cmos_config *cfg);

/* Releases the mutex. No thread may use `c` any more. */
void cmos_destroy(struct cmos *c);

/*
 * Machine reset: clears the interrupt enables in register B (the RAM, the
 * clock offset and the time format survive, as they do on a battery-backed
 * part). State-driver thread, vCPUs paused.
 */
void cmos_reset(struct cmos *c);

/*
 * Records the guest's RAM size in the fields SeaBIOS reads:
 *  0x15/0x16  base memory in KiB (640),
 *  0x17/0x18 and 0x30/0x31  KiB of RAM between 1 MiB and 64 MiB (capped),
 *  0x34/0x35  RAM from 16 MiB up to the end of low RAM in 64 KiB units,
 *  0x5b-0x5d  RAM above 4 GiB in 64 KiB units (24 bits).
 * low_bytes is the RAM below the PCI hole (the caller splits; values that
 * do not fit a field saturate it), high_bytes the RAM from 4 GiB up.
 * Machine setup thread, before the vCPUs run.
 */
void cmos_set_memory(struct cmos *c, uint64_t low_bytes, uint64_t high_bytes);

/* Records the CPU count (1-256; clamped) at 0x5f as count - 1. Setup thread. */
void cmos_set_cpus(struct cmos *c, uint32_t ncpus);

/* Copies the guest-visible state into *s. Any thread. */
void cmos_save(struct cmos *c, struct cmos_state *s);

/*
 * Loads a saved state (untrusted input: checked first; -EINVAL and no
 * change when invalid). State-driver thread, vCPUs paused. Returns 0 or
 * -EINVAL.
 */
int cmos_restore(struct cmos *c, const struct cmos_state *s);

/*
 * Live migration payload (CMOS_STATE_VERSION): the 128 bytes, the index,
 * the NMI mask and the guest clock's offset from host UTC in seconds, so
 * on a target whose wall clock agrees the guest's time simply continues.
 * cmos_mig_load validates like cmos_restore and needs the whole input:
 * -EPROTO for another version, -EINVAL for bad data (c unchanged).
 */
int cmos_mig_save(const struct cmos *c, struct mig_out *o);
int cmos_mig_load(struct cmos *c, struct mig_in *in, uint32_t version);

/*
 * Ports 0x70-0x71 (opaque = struct cmos *). Offset 0 write: index and NMI
 * mask; offset 0 read: 0xff (write-only on the PC). Offset 1: the indexed
 * byte. Wider accesses are split into bytes. vCPU threads.
 */
extern const struct io_ops cmos_io_ops;

#endif
