/* SPDX-License-Identifier: MPL-2.0 */
/*
 * A 16550A UART as a pure register state machine: eight byte registers,
 * 16-byte RX and TX FIFOs, interrupt identification, loopback, and the PC
 * board's OUT2 gate on the interrupt line. No KVM and no I/O of its own:
 * transmitted bytes go to a callback, received bytes come in through
 * uart_receive(), and the interrupt is an irq_line.
 *
 * Behaviour worth knowing (docs for each choice are in uart16550.c):
 *  - Transmission is instantaneous: a byte written to THR is handed to the
 *    tx callback (or, in loopback, to the RX FIFO) before the write returns,
 *    so LSR.THRE and LSR.TEMT always read 1 and the TX FIFO is never
 *    observed holding bytes.
 *  - The core has no timer. With FIFOs enabled and fewer bytes than the
 *    trigger level waiting, the character-timeout interrupt (IIR 0xC) is
 *    reported at once, as if four character times had already passed.
 *  - The IRQ line is asserted only while an enabled interrupt is pending
 *    AND MCR.OUT2 is set, as on PC boards. Linux's 8250 driver sets OUT2
 *    whenever the port has an IRQ, and drops it at shutdown.
 *
 * Locking: one internal mutex serialises vCPU threads (register access)
 * and the event loop (uart_receive). The tx, rx_space and irq callbacks
 * run with that mutex held, on whichever thread caused them: they must be
 * short, must not block, and must not call back into this UART.
 */
#ifndef CELLA_DEVICES_UART16550_H
#define CELLA_DEVICES_UART16550_H

#include "common/mig_buf.h"
#include "devices/io.h"

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define UART_NPORTS    8 /* size of the port range uart_io_ops serves */
#define UART_FIFO_SIZE 16

/* Conventional PC placement; the machine picks the GSI for the ISA IRQ. */
#define UART_COM1_BASE 0x3f8
#define UART_COM2_BASE 0x2f8
#define UART_COM3_BASE 0x3e8
#define UART_COM4_BASE 0x2e8
#define UART_COM1_IRQ  4 /* also COM3 */
#define UART_COM2_IRQ  3 /* also COM4 */

/* Migration payload kind/version for struct uart_state. */
#define UART_STATE_KIND    "uart16550"
#define UART_STATE_VERSION 1

struct uart_config {
    /* Level-triggered interrupt output (ISA IRQ 4 or 3 on a PC). */
    struct irq_line irq;
    /*
     * Called for every transmitted byte (len is 1 today), with the UART
     * lock held, on the vCPU thread that wrote THR. Must not block: the
     * machine queues the bytes for its sink and drops them if it must.
     */
    void (*tx)(void *ctx, const uint8_t *buf, size_t len);
    /*
     * Optional (may be NULL). Called once after uart_receive() refused
     * bytes, as soon as the UART can take input again (the guest read RBR,
     * cleared the FIFO, left loopback, or the UART was reset). Runs with
     * the lock held on the thread that made room; typically it signals
     * the event loop to retry.
     */
    void (*rx_space)(void *ctx);
    void *ctx;
};

/*
 * The guest-visible state, for save/restore and live migration. Plain
 * bytes, no pointers. Derived bits are not stored: LSR.DR/THRE/TEMT come
 * from the FIFO, MSR's status nibble from MCR (loopback) or the host lines.
 */
struct uart_state {
    uint8_t ier; /* bits 0-3 */
    uint8_t fcr; /* bits 0 (enable), 3 (DMA mode), 6-7 (trigger) */
    uint8_t lcr;
    uint8_t mcr; /* bits 0-4 */
    uint8_t lsr; /* error bits only: OE, PE, FE, BI */
    uint8_t msr; /* delta bits only (0-3) */
    uint8_t scr;
    uint8_t dll;
    uint8_t dlm;
    uint8_t thre_pending; /* 0 or 1: the THR-empty interrupt latch */
    uint8_t rx_count;     /* bytes in rx_fifo, oldest first */
    uint8_t rx_fifo[UART_FIFO_SIZE];
};

/*
 * One UART. Invariants (under lock): rx_count <= the current RX capacity
 * (16 with FIFOs enabled, else 1); irq_level is the level last given to
 * cfg.irq; reserved register bits are zero.
 */
struct uart {
    pthread_mutex_t lock;
    struct uart_config cfg;
    uint8_t ier, fcr, lcr, mcr, lsr_err, msr_delta, scr, dll, dlm;
    bool thre_pending;
    bool irq_level;
    bool rx_blocked; /* uart_receive refused bytes; rx_space owed */
    uint8_t rx_head, rx_count;
    uint8_t rx_fifo[UART_FIFO_SIZE];
};

/*
 * Initialises `u` in its power-on state with the IRQ line low (it does not
 * call the irq sink). cfg is copied. Any thread, before the UART is shared.
 * Returns 0 or a negative errno (mutex creation failed).
 */
int uart_init(struct uart *u, const struct uart_config *cfg);

/* Releases the mutex. The UART must no longer be reachable from any thread. */
void uart_destroy(struct uart *u);

/*
 * Returns the UART to its power-on state (the MR pin): FIFOs emptied,
 * interrupts disabled, divisor 12 (9600 baud). Drives the IRQ line low
 * (always calls the sink). State-driver thread, vCPUs paused.
 */
void uart_reset(struct uart *u);

/*
 * Pushes host input into the receiver. Returns how many leading bytes of
 * buf were taken (0 when the FIFO is full or in loopback mode, where the
 * receiver is disconnected from the line); the caller keeps the rest and
 * retries after rx_space or a later poll. Event-loop thread (any thread).
 */
size_t uart_receive(struct uart *u, const uint8_t *buf, size_t len);

/* True when uart_receive would take at least one byte now. Any thread. */
bool uart_can_receive(struct uart *u);

/* Copies the guest-visible state into *s. Any thread (takes the lock). */
void uart_save(struct uart *u, struct uart_state *s);

/*
 * Loads a state saved by uart_save (possibly by another host). The input
 * is untrusted: out-of-range counts or reserved bits give -EINVAL and
 * leave `u` unchanged. On success drives the IRQ line to the level the new
 * state implies (always calls the sink). State-driver thread, vCPUs paused.
 * Returns 0 or -EINVAL.
 */
int uart_restore(struct uart *u, const struct uart_state *s);

/*
 * Live migration payload (UART_STATE_VERSION): struct uart_state as
 * little-endian bytes (registers, THR-empty latch, the pending RX bytes
 * oldest first). uart_mig_load validates like uart_restore and needs the
 * whole input consumed: -EPROTO for another version, -EINVAL for bad data
 * (u unchanged). Same threads as uart_save / uart_restore.
 */
int uart_mig_save(const struct uart *u, struct mig_out *o);
int uart_mig_load(struct uart *u, struct mig_in *in, uint32_t version);

/*
 * Register access for the 8-port range (opaque = struct uart *). Accesses
 * wider than a byte are split into byte accesses at consecutive offsets,
 * as the ISA bus does; bytes beyond the range are guest errors.
 * vCPU threads.
 */
extern const struct io_ops uart_io_ops;

#endif
