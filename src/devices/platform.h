/* SPDX-License-Identifier: MPL-2.0 */
/*
 * Small PC platform pieces, each a tiny state struct plus io_ops:
 *
 *   i8042        0x60, 0x64   just enough keyboard controller to reset
 *   reset (CF9)  0xcf9        PIIX reset control register
 *   pvpanic      0x505        ISA pvpanic
 *   PM block     0x600-0x623  ACPI PM1a event/control, PM timer, GPE0
 *   POST/delay   0x80, 0xed   write sinks
 *
 * Callbacks (reset, poweroff, panic) are function pointer + ctx given at
 * init. They run on the vCPU thread whose access caused them, with no
 * device lock held; they should only record the request (the instance
 * state driver acts on it) and must not block. The SCI irq_line is driven
 * with the PM lock held.
 *
 * The ACPI tables must agree with the constants below (FADT port blocks
 * and lengths, SCI_INT, RESET_REG/RESET_VALUE, the \_S5 package): they
 * are the contract between this file and the table builder.
 */
#ifndef CELLA_DEVICES_PLATFORM_H
#define CELLA_DEVICES_PLATFORM_H

#include "common/mig_buf.h"
#include "devices/io.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* ------------------------------------------------------------------ */
/* i8042                                                               */
/* ------------------------------------------------------------------ */

/*
 * Not a keyboard controller: only the reset line. The ACPI tables
 * describe no PS/2 controller (no PNP0303/PNP0F13 in the DSDT, FADT
 * IAPC_BOOT_ARCH without the 8042 flag), so Linux's i8042 driver gives up
 * before touching the ports. Should something probe anyway (acpi=off,
 * i8042.nopnp, SeaBIOS's PS/2 setup), the status register reports an
 * output buffer that never drains (OBF=1) and an empty input buffer
 * (IBF=0): Linux's i8042_flush() reads 16 bytes, says "No controller
 * found" and stops in under a millisecond, while the reboot path's
 * kb_wait() (which waits only for IBF=0) proceeds at once to its 0xFE
 * reset pulse. A status of 0xFF (the empty-bus answer) would also fail the
 * probe but makes every kb_wait() spin ~130 ms; an emulated controller
 * with no keyboard makes Linux probe the keyboard and time out.
 *
 * Resets: command 0xFE (or any 0xF0-0xFF pulse command with bit 0 clear)
 * on port 0x64, or command 0xD1 followed by an output-port byte with bit
 * 0 clear on port 0x60. Port 0x60 reads 0. Other commands and data are
 * accepted and ignored, without a guest error.
 */
#define I8042_DATA_PORT 0x60
#define I8042_CMD_PORT  0x64
#define I8042_STATUS    0x15 /* OBF | SYS (self-test passed) | not inhibited */

struct i8042 {
    atomic_uint pending; /* command waiting for its data byte, or 0 */
    void (*reset)(void *ctx);
    void *ctx;
};

/* Initialises `k`; reset(ctx) is called on a guest reset request. */
void i8042_init(struct i8042 *k, void (*reset)(void *ctx), void *ctx);

/* Forgets a half-written command. State-driver thread, vCPUs paused. */
void i8042_reset(struct i8042 *k);

/*
 * Live migration (I8042_STATE_VERSION): the command waiting for its data
 * byte. Load: -EPROTO for another version, -EINVAL unless the input is
 * exactly one byte holding 0 or a command that takes data. vCPUs paused.
 */
#define I8042_STATE_VERSION 1
int i8042_save(const struct i8042 *k, struct mig_out *o);
int i8042_load(struct i8042 *k, struct mig_in *in, uint32_t version);

/* One port each (opaque = struct i8042 *). vCPU threads. */
extern const struct io_ops i8042_data_ops; /* 0x60 */
extern const struct io_ops i8042_cmd_ops;  /* 0x64 */

/* ------------------------------------------------------------------ */
/* Reset control register (PIIX 0xCF9)                                 */
/* ------------------------------------------------------------------ */

/*
 * A write with bit 2 (RST_CPU) set requests a reset, whatever the other
 * bits (Linux writes 0x06 or 0x0E, after a 0x02 "prepare" write; the ACPI
 * reset register writes RESET_VALUE). Reads return the last written
 * value. The port sits inside the PCI config window: the PCI host bridge
 * owns the 32-bit register at 0xCF8 and must pass byte accesses to 0xCF9
 * here, as the PIIX does.
 */
#define CF9_PORT        0xcf9
#define CF9_RESET_VALUE 0x06 /* FADT RESET_VALUE, RESET_REG = I/O 0xCF9 */
#define CF9_RST_CPU     0x04

struct cf9 {
    atomic_uint value;
    void (*reset)(void *ctx);
    void *ctx;
};

/* Initialises `r` (value 0); reset(ctx) is called on a reset request. */
void cf9_init(struct cf9 *r, void (*reset)(void *ctx), void *ctx);

/* Clears the register. State-driver thread, vCPUs paused. */
void cf9_reset(struct cf9 *r);

/* One port (opaque = struct cf9 *). vCPU threads. */
extern const struct io_ops cf9_io_ops;

/* ------------------------------------------------------------------ */
/* pvpanic (ISA)                                                       */
/* ------------------------------------------------------------------ */

#define PVPANIC_PORT         0x505
#define PVPANIC_PANICKED     0x01
#define PVPANIC_CRASH_LOADED 0x02
#define PVPANIC_CAPABILITIES (PVPANIC_PANICKED | PVPANIC_CRASH_LOADED)

struct pvpanic {
    /* events: PVPANIC_PANICKED and/or PVPANIC_CRASH_LOADED, never 0. */
    void (*event)(void *ctx, uint8_t events);
    void *ctx;
};

/* Initialises `p`. Stateless otherwise: nothing to reset or migrate. */
void pvpanic_init(struct pvpanic *p, void (*event)(void *ctx, uint8_t events), void *ctx);

/*
 * Live migration (PVPANIC_STATE_VERSION): an empty payload, so the target
 * still checks that the device exists on both sides. Load: -EPROTO for
 * another version, -EINVAL for any byte.
 */
#define PVPANIC_STATE_VERSION 1
int pvpanic_save(const struct pvpanic *p, struct mig_out *o);
int pvpanic_load(struct pvpanic *p, struct mig_in *in, uint32_t version);

/*
 * One port (opaque = struct pvpanic *). Reads return the capabilities;
 * a write reports its known bits through event() (unknown bits are a
 * guest error). vCPU threads.
 */
extern const struct io_ops pvpanic_io_ops;

/* ------------------------------------------------------------------ */
/* ACPI PM block (PIIX4-style, fixed hardware)                         */
/* ------------------------------------------------------------------ */

/* Port layout; pm_io_ops serves [PM_IO_BASE, PM_IO_BASE + PM_IO_LEN). */
#define PM_IO_BASE   0x600
#define PM1A_EVT_BLK 0x600 /* PM1_STS (16 bits) then PM1_EN (16 bits) */
#define PM1_EVT_LEN  4
#define PM1A_CNT_BLK 0x604 /* PM1_CNT, 16 bits */
#define PM1_CNT_LEN  2
#define PM_TMR_BLK   0x608 /* 24-bit counter, read as 32 bits */
#define PM_TMR_LEN   4
#define GPE0_BLK     0x620 /* GPE0_STS (16 bits) then GPE0_EN (16 bits) */
#define GPE0_BLK_LEN 4
#define PM_IO_LEN    0x24
#define PM_SCI_IRQ   9 /* FADT SCI_INT; level-triggered, asserted = true */
#define PM_TMR_FREQ  3579545

/*
 * SLP_TYP value for S5 (soft off). The DSDT's \_S5 package must be
 * { PM_SLP_TYP_S5, PM_SLP_TYP_S5, 0, 0 }; the table builder's default
 * (ACPI_SLP_TYP_S5 in acpi.h) is the same value. Any of 0-7 would do, as
 * the guest only repeats what \_S5 says; a nonzero one means a stray
 * write of SLP_EN alone (SLP_TYP still at its reset value 0) does not
 * power the VM off. No other sleep state is offered; a request for one is
 * a guest error and wakes at once (WAK_STS is set) so a guest that tries
 * anyway does not hang.
 */
#define PM_SLP_TYP_S5 5

/* PM1 register bits. */
#define PM1_STS_TMR           0x0001
#define PM1_STS_PWRBTN        0x0100
#define PM1_STS_WAK           0x8000
#define PM1_EN_PWRBTN         0x0100
#define PM1_CNT_SCI_EN        0x0001
#define PM1_CNT_SLP_EN        0x2000
#define PM1_CNT_SLP_TYP_SHIFT 10

/*
 * SCI_EN: the FADT's SMI_CMD is 0, which tells the OS that the machine is
 * always in ACPI mode (ACPICA then never tries the ACPI_ENABLE handshake),
 * so SCI_EN is hardwired to 1 and ignores writes.
 *
 * PM timer: 24 bits (FADT flags without TMR_VAL_EXT) at 3.579545 MHz,
 * derived from CLOCK_MONOTONIC plus `tmr_offset_ns` (0 until a migration
 * payload moves the timer's base, so it continues where the source left
 * it); not part of struct pm_state, but of the migration payload. Its overflow
 * event (TMR_STS/TMR_EN) is not generated. The fixed power button is
 * (FADT flags without PWR_BUTTON): pm_press_power_button sets PWRBTN_STS
 * and raises the SCI if PWRBTN_EN is set, which Linux's ACPI button
 * driver turns into an orderly shutdown.
 */
struct pm_config {
    struct irq_line sci; /* GSI 9 on our PC, level-triggered */
    /* The guest entered S5. vCPU thread, no lock held. */
    void (*poweroff)(void *ctx);
    void *ctx;
    /* Optional monotonic clock in ns (NULL: CLOCK_MONOTONIC); lock held. */
    uint64_t (*clock_ns)(void *ctx);
    void *clock_ctx;
};

/* Guest-visible state for save/restore. */
struct pm_state {
    uint16_t pm1_sts, pm1_en, pm1_cnt, gpe0_sts, gpe0_en;
};

/* Invariant (under lock): sci_level is the level last given to cfg.sci. */
struct pm {
    pthread_mutex_t lock;
    struct pm_config cfg;
    uint16_t pm1_sts, pm1_en, pm1_cnt, gpe0_sts, gpe0_en;
    bool sci_level;
    uint64_t tmr_offset_ns; /* added (mod 2^64) to the clock for the PM timer */
};

/* Initialises `pm` with everything clear and the SCI low (not driven). */
int pm_init(struct pm *pm, const struct pm_config *cfg);

/* Releases the mutex. No thread may use `pm` any more. */
void pm_destroy(struct pm *pm);

/* Clears all registers and drives the SCI low. State driver, paused vCPUs. */
void pm_reset(struct pm *pm);

/*
 * Presses the (fixed-feature) power button: sets PWRBTN_STS and raises
 * the SCI when the guest enabled PWRBTN_EN. Any thread (API / state
 * driver).
 */
void pm_press_power_button(struct pm *pm);

/* Copies the registers into *s. Any thread. */
void pm_save(struct pm *pm, struct pm_state *s);

/*
 * Loads saved registers (untrusted: bits we never set give -EINVAL and no
 * change) and drives the SCI to the implied level. State driver, paused
 * vCPUs. Returns 0 or -EINVAL.
 */
int pm_restore(struct pm *pm, const struct pm_state *s);

/*
 * Live migration payload (PM_STATE_VERSION): the registers of struct
 * pm_state and the PM timer's clock (clock + offset, ns), from which the
 * target computes its own offset so the timer continues. Load validates
 * like pm_restore and needs the whole input: -EPROTO for another version,
 * -EINVAL for bad data (pm unchanged). State driver, paused vCPUs.
 */
#define PM_STATE_VERSION 1
int pm_mig_save(const struct pm *pm, struct mig_out *o);
int pm_mig_load(struct pm *pm, struct mig_in *in, uint32_t version);

/*
 * The whole block (opaque = struct pm *); offsets relative to PM_IO_BASE.
 * Accesses of any width are split into bytes; the gap 0x0c-0x1f reads all
 * ones. vCPU threads.
 */
extern const struct io_ops pm_io_ops;

/* ------------------------------------------------------------------ */
/* POST code (0x80) and delay (0xED) ports                             */
/* ------------------------------------------------------------------ */

#define POST_PORT  0x80
#define DELAY_PORT 0xed

/*
 * For both ports, one port each (opaque unused, may be NULL): writes are
 * dropped and reads return all ones, silently, because firmware and
 * Linux's io_delay() write them constantly. vCPU threads.
 */
extern const struct io_ops post_io_ops;

#endif
