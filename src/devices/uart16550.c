/* SPDX-License-Identifier: MPL-2.0 */
/*
 * 16550A UART core. See uart16550.h for the contract; this file explains
 * the choices.
 *
 * Interrupts. The identification priority is the 16550's: line status
 * (overrun) > received data (trigger level reached, or character timeout)
 * > THR empty > modem status. THR-empty follows what Linux's 8250 driver
 * probes for at startup (UART_BUG_TXEN / UART_BUG_THRE tests): setting
 * IER.ETBEI while THR is empty raises it at once, reading IIR while it is
 * the reported source clears it, writing THR clears it, and the end of a
 * transmission raises it again. Since transmission is instantaneous, a THR
 * write lowers then raises the line, which gives an edge-triggered
 * IOAPIC pin a fresh edge for every byte, as real hardware would.
 *
 * OUT2. On PC boards the UART's INTR pin reaches the interrupt controller
 * through a buffer enabled by the OUT2 modem-control output. Linux's 8250
 * driver sets OUT2 in startup whenever the port has an IRQ ("Most PC
 * uarts need OUT2 raised to enable interrupts") and clears it at shutdown,
 * so gating on MCR.OUT2 works with Linux and keeps a closed port quiet.
 * Firmware polls and never needs the line. QEMU does not gate; we follow
 * the board. One deliberate difference: on the board, loopback forces the
 * OUT2 pin inactive and so cuts the line; here loopback does not, so an
 * interrupt-driven loopback self-test in a guest still works (no Linux
 * path depends on either behaviour).
 *
 * Overrun. Host input can never overrun: uart_receive() takes only what
 * fits. Loopback can: a byte looped into a full receiver is lost and sets
 * LSR.OE (FIFO mode drops the new byte; non-FIFO mode overwrites RBR, as
 * the 16550 datasheet describes).
 */
#include "devices/uart16550.h"

#include <errno.h>
#include <string.h>

/* Register offsets. */
enum {
    REG_RBR_THR = 0, /* DLL when LCR.DLAB */
    REG_IER = 1,     /* DLM when LCR.DLAB */
    REG_IIR_FCR = 2,
    REG_LCR = 3,
    REG_MCR = 4,
    REG_LSR = 5,
    REG_MSR = 6,
    REG_SCR = 7,
};

#define IER_ERBFI 0x01 /* received data available */
#define IER_ETBEI 0x02 /* THR empty */
#define IER_ELSI  0x04 /* line status */
#define IER_EDSSI 0x08 /* modem status */
#define IER_MASK  0x0f

#define IIR_NONE      0x01
#define IIR_MSI       0x00
#define IIR_THRE      0x02
#define IIR_RDA       0x04
#define IIR_RLS       0x06
#define IIR_CTI       0x0c
#define IIR_FIFO_BITS 0xc0

#define FCR_ENABLE   0x01
#define FCR_CLEAR_RX 0x02
#define FCR_CLEAR_TX 0x04
#define FCR_STORED   0xc9 /* enable, DMA mode, trigger level */

#define LCR_DLAB 0x80

#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define MCR_MASK 0x1f

#define LSR_DR   0x01
#define LSR_OE   0x02
#define LSR_ERR  0x1e /* OE, PE, FE, BI */
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

#define MSR_DELTA 0x0f
#define MSR_DCTS  0x01
#define MSR_DDSR  0x02
#define MSR_TERI  0x04
#define MSR_DDCD  0x08
#define MSR_CTS   0x10
#define MSR_DSR   0x20
#define MSR_RI    0x40
#define MSR_DCD   0x80

/* What the host side of the line shows: carrier, data set ready, clear to send. */
#define HOST_MODEM_LINES (MSR_DCD | MSR_DSR | MSR_CTS)

#define RESET_DIVISOR 12 /* 115200 / 12 = 9600 baud */

static const char DEV[] = "uart16550";

/* ---- pure helpers (lock held) ---- */

static bool fifo_enabled(const struct uart *u)
{
    return u->fcr & FCR_ENABLE;
}

static uint8_t rx_capacity(const struct uart *u)
{
    return fifo_enabled(u) ? UART_FIFO_SIZE : 1;
}

static uint8_t rx_trigger(const struct uart *u)
{
    static const uint8_t levels[4] = {1, 4, 8, 14};
    return levels[u->fcr >> 6];
}

static bool loopback(const struct uart *u)
{
    return u->mcr & MCR_LOOP;
}

/* MSR bits 4-7: the host lines, or MCR's outputs wired back in loopback. */
static uint8_t modem_status(const struct uart *u)
{
    if (!loopback(u))
        return HOST_MODEM_LINES;
    uint8_t s = 0;
    if (u->mcr & MCR_RTS)
        s |= MSR_CTS;
    if (u->mcr & MCR_DTR)
        s |= MSR_DSR;
    if (u->mcr & MCR_OUT1)
        s |= MSR_RI;
    if (u->mcr & MCR_OUT2)
        s |= MSR_DCD;
    return s;
}

/* Delta bits for a change of the modem status lines from `old` to `now`. */
static uint8_t modem_deltas(uint8_t old, uint8_t now)
{
    uint8_t changed = old ^ now, d = 0;
    if (changed & MSR_CTS)
        d |= MSR_DCTS;
    if (changed & MSR_DSR)
        d |= MSR_DDSR;
    if ((old & MSR_RI) && !(now & MSR_RI))
        d |= MSR_TERI;
    if (changed & MSR_DCD)
        d |= MSR_DDCD;
    return d;
}

/* The highest-priority enabled pending interrupt, as IIR bits 0-3. */
static uint8_t intr_id(const struct uart *u)
{
    if ((u->ier & IER_ELSI) && u->lsr_err)
        return IIR_RLS;
    if ((u->ier & IER_ERBFI) && u->rx_count) {
        if (!fifo_enabled(u) || u->rx_count >= rx_trigger(u))
            return IIR_RDA;
        return IIR_CTI; /* no timer: the timeout is deemed elapsed */
    }
    if ((u->ier & IER_ETBEI) && u->thre_pending)
        return IIR_THRE;
    if ((u->ier & IER_EDSSI) && u->msr_delta)
        return IIR_MSI;
    return IIR_NONE;
}

static void update_irq(struct uart *u)
{
    bool level = (u->mcr & MCR_OUT2) && intr_id(u) != IIR_NONE;
    if (level != u->irq_level) {
        u->irq_level = level;
        irq_line_set(&u->cfg.irq, level);
    }
}

/* Sets the line to the state's level even if we think it is there already. */
static void force_irq(struct uart *u)
{
    u->irq_level = (u->mcr & MCR_OUT2) && intr_id(u) != IIR_NONE;
    irq_line_set(&u->cfg.irq, u->irq_level);
}

static bool can_receive_locked(const struct uart *u)
{
    return !loopback(u) && u->rx_count < rx_capacity(u);
}

/* Pays the rx_space notification owed after a refused uart_receive. */
static void notify_rx_space(struct uart *u)
{
    if (u->rx_blocked && can_receive_locked(u)) {
        u->rx_blocked = false;
        if (u->cfg.rx_space)
            u->cfg.rx_space(u->cfg.ctx);
    }
}

static void rx_clear(struct uart *u)
{
    u->rx_head = 0;
    u->rx_count = 0;
}

static void rx_push(struct uart *u, uint8_t byte)
{
    u->rx_fifo[(u->rx_head + u->rx_count) % UART_FIFO_SIZE] = byte;
    u->rx_count++;
}

static uint8_t rx_pop(struct uart *u)
{
    uint8_t byte = u->rx_fifo[u->rx_head];
    u->rx_head = (u->rx_head + 1) % UART_FIFO_SIZE;
    u->rx_count--;
    return byte;
}

/* A byte arriving from the loopback path; may overrun. */
static void rx_loopback(struct uart *u, uint8_t byte)
{
    if (u->rx_count < rx_capacity(u)) {
        rx_push(u, byte);
        return;
    }
    u->lsr_err |= LSR_OE;
    if (!fifo_enabled(u)) /* the unread RBR byte is destroyed */
        u->rx_fifo[u->rx_head] = byte;
}

/* ---- register reads (lock held) ---- */

static uint8_t read_rbr(struct uart *u)
{
    if (!u->rx_count)
        return 0;
    uint8_t byte = rx_pop(u);
    update_irq(u);
    notify_rx_space(u);
    return byte;
}

static uint8_t read_iir(struct uart *u)
{
    uint8_t id = intr_id(u);
    if (id == IIR_THRE) {
        u->thre_pending = false;
        update_irq(u);
    }
    return id | (fifo_enabled(u) ? IIR_FIFO_BITS : 0);
}

static uint8_t read_lsr(struct uart *u)
{
    uint8_t v = u->lsr_err | LSR_THRE | LSR_TEMT;
    if (u->rx_count)
        v |= LSR_DR;
    u->lsr_err = 0;
    update_irq(u);
    return v;
}

static uint8_t read_msr(struct uart *u)
{
    uint8_t v = modem_status(u) | u->msr_delta;
    u->msr_delta = 0;
    update_irq(u);
    return v;
}

static uint8_t read_reg(struct uart *u, unsigned reg)
{
    bool dlab = u->lcr & LCR_DLAB;
    switch (reg) {
    case REG_RBR_THR:
        return dlab ? u->dll : read_rbr(u);
    case REG_IER:
        return dlab ? u->dlm : u->ier;
    case REG_IIR_FCR:
        return read_iir(u);
    case REG_LCR:
        return u->lcr;
    case REG_MCR:
        return u->mcr;
    case REG_LSR:
        return read_lsr(u);
    case REG_MSR:
        return read_msr(u);
    default:
        return u->scr;
    }
}

/* ---- register writes (lock held) ---- */

static void write_thr(struct uart *u, uint8_t byte)
{
    u->thre_pending = false;
    update_irq(u);
    if (loopback(u))
        rx_loopback(u, byte);
    else if (u->cfg.tx)
        u->cfg.tx(u->cfg.ctx, &byte, 1);
    u->thre_pending = true; /* the (instant) transmission finished */
    update_irq(u);
}

static void write_ier(struct uart *u, uint8_t v)
{
    uint8_t old = u->ier;
    u->ier = v & IER_MASK;
    if ((old ^ u->ier) & IER_ETBEI)
        u->thre_pending = u->ier & IER_ETBEI; /* THR is always empty */
    update_irq(u);
}

static void write_fcr(struct uart *u, uint8_t v)
{
    if ((v ^ u->fcr) & FCR_ENABLE)
        rx_clear(u); /* switching FIFO mode empties both FIFOs */
    if (!(v & FCR_ENABLE)) {
        u->fcr = 0; /* other bits are only programmed with bit 0 set */
    } else {
        if (v & FCR_CLEAR_RX)
            rx_clear(u);
        /* FCR_CLEAR_TX: the TX FIFO is always empty already. */
        u->fcr = v & FCR_STORED;
    }
    update_irq(u);
    notify_rx_space(u);
}

static void write_mcr(struct uart *u, uint8_t v)
{
    uint8_t old = modem_status(u);
    u->mcr = v & MCR_MASK;
    u->msr_delta |= modem_deltas(old, modem_status(u));
    update_irq(u);
    notify_rx_space(u);
}

static void write_reg(struct uart *u, unsigned reg, uint8_t v)
{
    bool dlab = u->lcr & LCR_DLAB;
    switch (reg) {
    case REG_RBR_THR:
        if (dlab)
            u->dll = v;
        else
            write_thr(u, v);
        break;
    case REG_IER:
        if (dlab)
            u->dlm = v;
        else
            write_ier(u, v);
        break;
    case REG_IIR_FCR:
        write_fcr(u, v);
        break;
    case REG_LCR:
        u->lcr = v;
        break;
    case REG_MCR:
        write_mcr(u, v);
        break;
    case REG_LSR:
    case REG_MSR:
        guest_error(DEV, "write 0x%02x to read-only %s ignored", v, reg == REG_LSR ? "LSR" : "MSR");
        break;
    default:
        u->scr = v;
        break;
    }
}

/* ---- io_ops ---- */

/* Byte i of an access at `offset` lands on a UART register (overflow-safe). */
static bool byte_in_range(uint64_t offset, unsigned i)
{
    return offset < UART_NPORTS && i < UART_NPORTS - offset;
}

static void log_out_of_range(const char *what, uint64_t offset, unsigned size)
{
    guest_error(DEV, "%u-byte %s at offset 0x%llx reaches beyond the 8 ports", size, what,
                (unsigned long long)offset);
}

static uint64_t uart_io_read(void *opaque, uint64_t offset, unsigned size)
{
    struct uart *u = opaque;
    uint64_t value = 0;
    if (size > 8)
        size = 8;
    if (size && !byte_in_range(offset, size - 1))
        log_out_of_range("read", offset, size);
    pthread_mutex_lock(&u->lock);
    for (unsigned i = 0; i < size; i++) {
        uint64_t byte = 0xff;
        if (byte_in_range(offset, i))
            byte = read_reg(u, (unsigned)(offset + i));
        value |= byte << (8 * i);
    }
    pthread_mutex_unlock(&u->lock);
    return value;
}

static void uart_io_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct uart *u = opaque;
    if (size > 8)
        size = 8;
    if (size && !byte_in_range(offset, size - 1))
        log_out_of_range("write", offset, size);
    pthread_mutex_lock(&u->lock);
    for (unsigned i = 0; i < size; i++) {
        if (byte_in_range(offset, i))
            write_reg(u, (unsigned)(offset + i), (uint8_t)(value >> (8 * i)));
    }
    pthread_mutex_unlock(&u->lock);
}

const struct io_ops uart_io_ops = {
    .read = uart_io_read,
    .write = uart_io_write,
};

/* ---- lifecycle and host side ---- */

static void power_on_state(struct uart *u)
{
    u->ier = 0;
    u->fcr = 0;
    u->lcr = 0;
    u->mcr = 0;
    u->lsr_err = 0;
    u->msr_delta = 0;
    u->scr = 0;
    u->dll = RESET_DIVISOR;
    u->dlm = 0;
    u->thre_pending = false;
    rx_clear(u);
    memset(u->rx_fifo, 0, sizeof(u->rx_fifo));
}

int uart_init(struct uart *u, const struct uart_config *cfg)
{
    memset(u, 0, sizeof(*u));
    int rc = pthread_mutex_init(&u->lock, NULL);
    if (rc)
        return -rc;
    u->cfg = *cfg;
    power_on_state(u);
    return 0;
}

void uart_destroy(struct uart *u)
{
    pthread_mutex_destroy(&u->lock);
}

void uart_reset(struct uart *u)
{
    pthread_mutex_lock(&u->lock);
    power_on_state(u);
    force_irq(u);
    notify_rx_space(u);
    pthread_mutex_unlock(&u->lock);
}

size_t uart_receive(struct uart *u, const uint8_t *buf, size_t len)
{
    size_t n = 0;
    pthread_mutex_lock(&u->lock);
    while (n < len && can_receive_locked(u))
        rx_push(u, buf[n++]);
    if (n < len)
        u->rx_blocked = true;
    update_irq(u);
    pthread_mutex_unlock(&u->lock);
    return n;
}

bool uart_can_receive(struct uart *u)
{
    pthread_mutex_lock(&u->lock);
    bool ok = can_receive_locked(u);
    pthread_mutex_unlock(&u->lock);
    return ok;
}

void uart_save(struct uart *u, struct uart_state *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_lock(&u->lock);
    s->ier = u->ier;
    s->fcr = u->fcr;
    s->lcr = u->lcr;
    s->mcr = u->mcr;
    s->lsr = u->lsr_err;
    s->msr = u->msr_delta;
    s->scr = u->scr;
    s->dll = u->dll;
    s->dlm = u->dlm;
    s->thre_pending = u->thre_pending;
    s->rx_count = u->rx_count;
    for (uint8_t i = 0; i < u->rx_count; i++)
        s->rx_fifo[i] = u->rx_fifo[(u->rx_head + i) % UART_FIFO_SIZE];
    pthread_mutex_unlock(&u->lock);
}

/* Validates an untrusted saved state completely before anything uses it. */
static bool state_valid(const struct uart_state *s)
{
    uint8_t cap = (s->fcr & FCR_ENABLE) ? UART_FIFO_SIZE : 1;
    if ((s->ier & ~IER_MASK) || (s->mcr & ~MCR_MASK) || (s->lsr & ~LSR_ERR) ||
        (s->msr & ~MSR_DELTA) || s->thre_pending > 1 || s->rx_count > cap)
        return false;
    /* Without FIFO mode the other FCR bits are never programmed. */
    if ((s->fcr & ~FCR_STORED) || (!(s->fcr & FCR_ENABLE) && s->fcr))
        return false;
    return true;
}

int uart_restore(struct uart *u, const struct uart_state *s)
{
    if (!state_valid(s))
        return -EINVAL;
    pthread_mutex_lock(&u->lock);
    u->ier = s->ier;
    u->fcr = s->fcr;
    u->lcr = s->lcr;
    u->mcr = s->mcr;
    u->lsr_err = s->lsr;
    u->msr_delta = s->msr;
    u->scr = s->scr;
    u->dll = s->dll;
    u->dlm = s->dlm;
    u->thre_pending = s->thre_pending;
    memcpy(u->rx_fifo, s->rx_fifo, sizeof(u->rx_fifo));
    u->rx_head = 0;
    u->rx_count = s->rx_count;
    force_irq(u);
    notify_rx_space(u);
    pthread_mutex_unlock(&u->lock);
    return 0;
}

/* ---- migration payload ---- */

int uart_mig_save(const struct uart *u, struct mig_out *o)
{
    struct uart_state s;
    uart_save((struct uart *)u, &s); /* takes the lock; changes nothing */
    mig_put_u8(o, s.ier);
    mig_put_u8(o, s.fcr);
    mig_put_u8(o, s.lcr);
    mig_put_u8(o, s.mcr);
    mig_put_u8(o, s.lsr);
    mig_put_u8(o, s.msr);
    mig_put_u8(o, s.scr);
    mig_put_u8(o, s.dll);
    mig_put_u8(o, s.dlm);
    mig_put_u8(o, s.thre_pending);
    mig_put_u8(o, s.rx_count);
    mig_put_bytes(o, s.rx_fifo, s.rx_count);
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

int uart_mig_load(struct uart *u, struct mig_in *in, uint32_t version)
{
    if (version != UART_STATE_VERSION)
        return -EPROTO;
    struct uart_state s;
    memset(&s, 0, sizeof(s));
    s.ier = mig_get_u8(in);
    s.fcr = mig_get_u8(in);
    s.lcr = mig_get_u8(in);
    s.mcr = mig_get_u8(in);
    s.lsr = mig_get_u8(in);
    s.msr = mig_get_u8(in);
    s.scr = mig_get_u8(in);
    s.dll = mig_get_u8(in);
    s.dlm = mig_get_u8(in);
    s.thre_pending = mig_get_u8(in);
    s.rx_count = mig_get_u8(in);
    if (s.rx_count > UART_FIFO_SIZE)
        mig_in_fail(in);
    else
        mig_get_bytes(in, s.rx_fifo, s.rx_count);
    if (!mig_in_done(in) || uart_restore(u, &s) < 0) {
        mig_in_fail(in);
        return -EINVAL;
    }
    return 0;
}
