/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The 16550A UART core (devices/uart16550.h) driven through its io_ops on
 * a fake irq sink: registers, FIFOs, interrupt identification, the IRQ
 * line, loopback, reset, save/restore and a hostile access storm.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "devices/uart16550.h"

/* Register offsets and bits as a guest driver spells them. */
enum { RBR = 0, THR = 0, DLL = 0, IER = 1, DLM = 1, IIR = 2, FCR = 2 };
enum { LCR = 3, MCR = 4, LSR = 5, MSR = 6, SCR = 7 };
#define IER_RDI  0x01
#define IER_THRI 0x02
#define IER_RLSI 0x04
#define IER_MSI  0x08
#define MCR_DTR  0x01
#define MCR_RTS  0x02
#define MCR_OUT1 0x04
#define MCR_OUT2 0x08
#define MCR_LOOP 0x10
#define LSR_DR   0x01
#define LSR_OE   0x02
#define LSR_THRE 0x20
#define LSR_TEMT 0x40

/* ---- fixture: a UART wired to recorders ---- */

struct fixture {
    struct uart u;
    struct irq_sink sink;
    bool level;           /* last level the sink saw */
    unsigned level_calls; /* set_level calls */
    unsigned repeats;     /* calls that did not change the level */
    uint32_t gsi_seen;
    uint8_t tx[256];
    size_t ntx;      /* bytes stored in tx (capped) */
    size_t tx_total; /* bytes transmitted */
    unsigned tx_bad_len;
    unsigned rx_space_calls;
};

static void rec_set_level(void *ctx, uint32_t gsi, bool level)
{
    struct fixture *f = ctx;
    if (f->level_calls && level == f->level)
        f->repeats++;
    f->level = level;
    f->level_calls++;
    f->gsi_seen = gsi;
}

static void rec_tx(void *ctx, const uint8_t *buf, size_t len)
{
    struct fixture *f = ctx;
    if (len != 1)
        f->tx_bad_len++;
    for (size_t i = 0; i < len; i++) {
        if (f->ntx < sizeof(f->tx))
            f->tx[f->ntx++] = buf[i];
        f->tx_total++;
    }
}

static void rec_rx_space(void *ctx)
{
    struct fixture *f = ctx;
    f->rx_space_calls++;
}

static int setup(void **state)
{
    struct fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->sink = (struct irq_sink){.ctx = f, .set_level = rec_set_level};
    struct uart_config cfg = {
        .irq = {.sink = &f->sink, .gsi = 4},
        .tx = rec_tx,
        .rx_space = rec_rx_space,
        .ctx = f,
    };
    assert_int_equal(uart_init(&f->u, &cfg), 0);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    uart_destroy(&f->u);
    free(f);
    return 0;
}

static uint8_t rd(struct fixture *f, unsigned reg)
{
    uint64_t v = uart_io_ops.read(&f->u, reg, 1);
    assert_true(v <= 0xff);
    return (uint8_t)v;
}

static void wr(struct fixture *f, unsigned reg, uint8_t v)
{
    uart_io_ops.write(&f->u, reg, 1, v);
}

static void receive_all(struct fixture *f, const char *s)
{
    size_t len = strlen(s);
    assert_int_equal(uart_receive(&f->u, (const uint8_t *)s, len), len);
}

/* ---- registers ---- */

static void test_power_on_values(void **state)
{
    struct fixture *f = *state;
    assert_int_equal(rd(f, IER), 0);
    assert_int_equal(rd(f, IIR), 0x01);
    assert_int_equal(rd(f, LCR), 0);
    assert_int_equal(rd(f, MCR), 0);
    assert_int_equal(rd(f, LSR), LSR_THRE | LSR_TEMT);
    assert_int_equal(rd(f, MSR) & 0xf0, 0xb0); /* DCD, DSR, CTS from the host */
    assert_int_equal(f->level_calls, 0);
}

static void test_divisor_latch(void **state)
{
    struct fixture *f = *state;
    wr(f, LCR, 0x80 | 0x03); /* DLAB, 8N1 */
    wr(f, DLL, 0x01);
    wr(f, DLM, 0x02);
    assert_int_equal(rd(f, DLL), 0x01);
    assert_int_equal(rd(f, DLM), 0x02);
    assert_int_equal(rd(f, IER), 0x02); /* offset 1 is still DLM */
    assert_int_equal(f->tx_total, 0);   /* DLL write did not transmit */

    wr(f, LCR, 0x03); /* DLAB off: the same offsets are THR and IER */
    wr(f, THR, 'x');
    wr(f, IER, IER_RDI);
    assert_int_equal(f->tx_total, 1);
    assert_int_equal(f->tx[0], 'x');
    assert_int_equal(rd(f, IER), IER_RDI);

    wr(f, LCR, 0x83); /* the divisor survived */
    assert_int_equal(rd(f, DLL), 0x01);
    assert_int_equal(rd(f, DLM), 0x02);
    /* IIR/FCR is not banked by DLAB on a 16550A. */
    assert_int_equal(rd(f, IIR) & 0x0f, 0x01);
}

static void test_register_round_trip(void **state)
{
    struct fixture *f = *state;
    for (unsigned v = 0; v < 256; v++) {
        wr(f, LCR, (uint8_t)v);
        assert_int_equal(rd(f, LCR), v);
        wr(f, LCR, 0);
        wr(f, SCR, (uint8_t)v);
        assert_int_equal(rd(f, SCR), v);
        wr(f, MCR, (uint8_t)v);
        assert_int_equal(rd(f, MCR), v & 0x1f); /* bits 5-7 read 0 on a 16550A */
        wr(f, IER, (uint8_t)v);
        assert_int_equal(rd(f, IER), v & 0x0f); /* Linux's probe relies on bits 4-7 = 0 */
    }
}

static void test_read_only_writes_ignored(void **state)
{
    struct fixture *f = *state;
    wr(f, LSR, 0xff);
    wr(f, MSR, 0xff);
    assert_int_equal(rd(f, LSR), LSR_THRE | LSR_TEMT);
    assert_int_equal(rd(f, MSR), 0xb0);
}

/* ---- transmit and receive ---- */

static void test_tx_in_order(void **state)
{
    struct fixture *f = *state;
    const char *msg = "hello, cella\r\n";
    wr(f, FCR, 0x07);
    for (const char *c = msg; *c; c++) {
        wr(f, THR, (uint8_t)*c);
        assert_int_equal(rd(f, LSR) & (LSR_THRE | LSR_TEMT), LSR_THRE | LSR_TEMT);
    }
    assert_int_equal(f->ntx, strlen(msg));
    assert_memory_equal(f->tx, msg, strlen(msg));
    assert_int_equal(f->tx_bad_len, 0);
}

static void test_rx_fifo_fill_and_overflow(void **state)
{
    struct fixture *f = *state;
    wr(f, FCR, 0x01); /* FIFO on, trigger 1 */
    uint8_t in[20];
    for (unsigned i = 0; i < sizeof(in); i++)
        in[i] = (uint8_t)('a' + i);

    assert_true(uart_can_receive(&f->u));
    assert_int_equal(uart_receive(&f->u, in, sizeof(in)), 16);
    assert_false(uart_can_receive(&f->u));
    assert_int_equal(uart_receive(&f->u, in + 16, 4), 0);
    assert_int_equal(rd(f, LSR), LSR_DR | LSR_THRE | LSR_TEMT); /* no overrun from the host */

    assert_int_equal(f->rx_space_calls, 0);
    assert_int_equal(rd(f, RBR), 'a');
    assert_int_equal(f->rx_space_calls, 1); /* room again: the event loop is told once */
    assert_true(uart_can_receive(&f->u));
    for (unsigned i = 1; i < 16; i++)
        assert_int_equal(rd(f, RBR), 'a' + i);
    assert_int_equal(f->rx_space_calls, 1);
    assert_int_equal(rd(f, LSR) & LSR_DR, 0);
    assert_int_equal(rd(f, RBR), 0); /* empty FIFO */
    assert_int_equal(uart_receive(&f->u, in, 0), 0);
}

static void test_rx_without_fifo_holds_one_byte(void **state)
{
    struct fixture *f = *state;
    uint8_t in[3] = {'x', 'y', 'z'};
    assert_int_equal(uart_receive(&f->u, in, 3), 1);
    assert_int_equal(uart_receive(&f->u, in + 1, 2), 0);
    assert_int_equal(rd(f, RBR), 'x');
    assert_int_equal(f->rx_space_calls, 1);
    assert_int_equal(uart_receive(&f->u, in + 1, 2), 1);
    assert_int_equal(rd(f, RBR), 'y');

    /* Turning FIFOs on or off empties them. */
    assert_int_equal(uart_receive(&f->u, in, 1), 1);
    wr(f, FCR, 0x01);
    assert_int_equal(rd(f, LSR) & LSR_DR, 0);
    receive_all(f, "abc");
    wr(f, FCR, 0x03); /* clear RX */
    assert_int_equal(rd(f, LSR) & LSR_DR, 0);
    receive_all(f, "abc");
    wr(f, FCR, 0x00);
    assert_int_equal(rd(f, LSR) & LSR_DR, 0);
}

static void test_fifo_trigger_levels(void **state)
{
    struct fixture *f = *state;
    static const struct {
        uint8_t fcr, level;
    } cases[] = {{0x01, 1}, {0x41, 4}, {0x81, 8}, {0xc1, 14}};
    wr(f, IER, IER_RDI);
    for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
        wr(f, FCR, (uint8_t)(cases[c].fcr | 0x02));
        for (unsigned n = 1; n <= cases[c].level; n++) {
            receive_all(f, "k");
            uint8_t want = n < cases[c].level ? 0xcc : 0xc4; /* timeout, then data */
            assert_int_equal(rd(f, IIR), want);
        }
        receive_all(f, "k"); /* above the trigger: still data available */
        assert_int_equal(rd(f, IIR), 0xc4);
    }
    /* Without FIFOs one byte is "data available", and IIR has no FIFO bits. */
    wr(f, FCR, 0x00);
    assert_int_equal(rd(f, IIR), 0x01);
    receive_all(f, "k");
    assert_int_equal(rd(f, IIR), 0x04);
    rd(f, RBR);
    assert_int_equal(rd(f, IIR), 0x01);
}

/* ---- interrupts ---- */

static void test_thre_semantics(void **state)
{
    struct fixture *f = *state;
    wr(f, FCR, 0x07);
    assert_int_equal(rd(f, IIR), 0xc1);
    wr(f, IER, IER_THRI); /* Linux's UART_BUG_TXEN probe: THRE at once */
    assert_int_equal(rd(f, IIR), 0xc2);
    assert_int_equal(rd(f, IIR), 0xc1); /* reading IIR cleared it */

    wr(f, IER, 0); /* Linux's UART_BUG_THRE probe: re-enabling re-raises */
    wr(f, IER, IER_THRI);
    assert_int_equal(rd(f, IIR), 0xc2);

    wr(f, IER, IER_THRI | IER_RDI); /* ETBEI unchanged: no new THRE */
    assert_int_equal(rd(f, IIR), 0xc1);

    wr(f, THR, 'a'); /* transmission done: THR empty again */
    assert_int_equal(rd(f, IIR), 0xc2);
    wr(f, IER, 0);
    wr(f, THR, 'b');
    assert_int_equal(rd(f, IIR), 0xc1); /* latched but masked */
    wr(f, IER, IER_THRI);
    wr(f, THR, 'c');
    wr(f, IER, IER_THRI | IER_MSI); /* still pending from the write */
    assert_int_equal(rd(f, IIR), 0xc2);
}

/* Sets up an overrun, data, THRE and a modem-status delta all at once. */
static void make_every_interrupt(struct fixture *f)
{
    wr(f, FCR, 0x07);
    wr(f, MCR, MCR_LOOP | MCR_OUT2);
    rd(f, MSR);                       /* forget the deltas of entering loopback */
    for (unsigned i = 0; i < 17; i++) /* one more than fits: overrun */
        wr(f, THR, (uint8_t)i);
    wr(f, MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS); /* CTS changes: DCTS */
    wr(f, IER, IER_RDI | IER_THRI | IER_RLSI | IER_MSI);
}

static void test_iir_priorities(void **state)
{
    struct fixture *f = *state;
    make_every_interrupt(f);
    assert_int_equal(rd(f, IIR), 0xc6); /* line status first */
    assert_int_equal(rd(f, IIR), 0xc6); /* IIR read does not clear it */
    assert_int_equal(rd(f, LSR), LSR_OE | LSR_DR | LSR_THRE | LSR_TEMT);
    assert_int_equal(rd(f, LSR) & LSR_OE, 0);
    assert_int_equal(rd(f, IIR), 0xc4); /* then data (16 >= trigger 1) */
    for (unsigned i = 0; i < 16; i++)
        assert_int_equal(rd(f, RBR), i); /* byte 16 was lost */
    assert_int_equal(rd(f, IIR), 0xc2);  /* then THR empty, cleared by this read */
    assert_int_equal(rd(f, IIR), 0xc0);  /* then modem status */
    assert_int_equal(rd(f, MSR) & 0x0f, 0x01);
    assert_int_equal(rd(f, IIR), 0xc1);
}

static void test_irq_line_levels(void **state)
{
    struct fixture *f = *state;
    wr(f, MCR, MCR_OUT2 | MCR_DTR | MCR_RTS);
    assert_int_equal(f->level_calls, 0);
    wr(f, IER, IER_THRI);
    assert_int_equal(f->level_calls, 1);
    assert_true(f->level);
    assert_int_equal(f->gsi_seen, 4);
    rd(f, IIR);
    assert_false(f->level);
    assert_int_equal(f->level_calls, 2);

    /* Writing THR with ETBEI set gives a fresh edge: low, then high. */
    wr(f, IER, 0);
    wr(f, IER, IER_THRI);
    assert_int_equal(f->level_calls, 3);
    wr(f, THR, 'z');
    assert_int_equal(f->level_calls, 5);
    assert_true(f->level);
    wr(f, IER, 0);
    assert_false(f->level);

    /* OUT2 gates the line; the pending interrupt stays visible in IIR. */
    wr(f, MCR, MCR_DTR | MCR_RTS);
    wr(f, IER, IER_RDI);
    receive_all(f, "q");
    assert_false(f->level);
    assert_int_equal(rd(f, IIR), 0x04);
    unsigned calls = f->level_calls;
    wr(f, MCR, MCR_OUT2);
    assert_true(f->level);
    assert_int_equal(f->level_calls, calls + 1);
    rd(f, RBR);
    assert_false(f->level);
    assert_int_equal(f->repeats, 0);
}

static void test_loopback(void **state)
{
    struct fixture *f = *state;
    wr(f, FCR, 0x07);
    /* Linux's autoconfig: LOOP|OUT2|RTS must read back DCD|CTS in MSR. */
    wr(f, MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
    assert_int_equal(rd(f, MSR) & 0xf0, 0x90);
    wr(f, MCR, MCR_LOOP | MCR_DTR | MCR_OUT1);
    assert_int_equal(rd(f, MSR), 0x60 | 0x01 | 0x02 | 0x08); /* DSR|RI, DCTS|DDSR|DDCD */
    wr(f, MCR, MCR_LOOP | MCR_DTR);
    assert_int_equal(rd(f, MSR), 0x20 | 0x04); /* RI fell: TERI */

    /* Bytes loop back into the receiver instead of reaching the host. */
    wr(f, THR, 'L');
    wr(f, THR, 'B');
    assert_int_equal(f->tx_total, 0);
    assert_int_equal(rd(f, RBR), 'L');
    assert_int_equal(rd(f, RBR), 'B');

    /* The receiver is disconnected from the host line meanwhile. */
    uint8_t in = 'h';
    assert_false(uart_can_receive(&f->u));
    assert_int_equal(uart_receive(&f->u, &in, 1), 0);
    wr(f, MCR, MCR_OUT2);
    assert_int_equal(f->rx_space_calls, 1);
    assert_int_equal(uart_receive(&f->u, &in, 1), 1);
    wr(f, THR, 'o');
    assert_int_equal(f->tx_total, 1);
    assert_int_equal(f->tx[0], 'o');
}

static void test_loopback_overrun_without_fifo(void **state)
{
    struct fixture *f = *state;
    wr(f, MCR, MCR_LOOP);
    wr(f, THR, '1');
    wr(f, THR, '2'); /* overwrites the unread RBR */
    assert_int_equal(rd(f, LSR), LSR_OE | LSR_DR | LSR_THRE | LSR_TEMT);
    assert_int_equal(rd(f, RBR), '2');
    assert_int_equal(rd(f, LSR), LSR_THRE | LSR_TEMT);
}

/* ---- lifecycle ---- */

static void test_reset(void **state)
{
    struct fixture *f = *state;
    make_every_interrupt(f);
    wr(f, LCR, 0x83);
    wr(f, DLL, 0x01);
    wr(f, SCR, 0x5a);
    assert_true(f->level);
    uart_reset(&f->u);
    assert_false(f->level);
    assert_int_equal(rd(f, LCR), 0);
    assert_int_equal(rd(f, IER), 0);
    assert_int_equal(rd(f, MCR), 0);
    assert_int_equal(rd(f, SCR), 0);
    assert_int_equal(rd(f, IIR), 0x01);
    assert_int_equal(rd(f, LSR), LSR_THRE | LSR_TEMT);
    assert_int_equal(rd(f, MSR), 0xb0);
    wr(f, LCR, 0x80);
    assert_int_equal(rd(f, DLL), 12);
    assert_int_equal(rd(f, DLM), 0);
    assert_true(uart_can_receive(&f->u));
}

static void test_save_restore(void **state)
{
    struct fixture *f = *state;
    wr(f, FCR, 0x81);
    receive_all(f, "0123456789");
    for (int i = 0; i < 6; i++)
        rd(f, RBR);                 /* move the ring head */
    receive_all(f, "abcdefghijkl"); /* wraps around the ring */
    wr(f, LCR, 0x83);
    wr(f, DLL, 0x30);
    wr(f, DLM, 0x01);
    wr(f, LCR, 0x1b);
    wr(f, SCR, 0xa5);
    wr(f, MCR, MCR_OUT2 | MCR_RTS | MCR_DTR);
    wr(f, IER, IER_RDI | IER_THRI);

    struct uart_state s, again;
    uart_save(&f->u, &s);
    assert_int_equal(s.rx_count, 16);
    assert_memory_equal(s.rx_fifo, "6789abcdefghijkl", 16);
    assert_int_equal(s.thre_pending, 1);

    struct fixture *g = NULL;
    void *gs = NULL;
    setup(&gs);
    g = gs;
    assert_int_equal(uart_restore(&g->u, &s), 0);
    assert_true(g->level); /* restore drives the line to the state's level */
    uart_save(&g->u, &again);
    assert_memory_equal(&s, &again, sizeof(s));
    for (const char *c = "6789abcdefghijkl"; *c; c++)
        assert_int_equal(rd(g, RBR), *c);
    assert_int_equal(rd(g, LCR), 0x1b);
    wr(g, LCR, 0x9b);
    assert_int_equal(rd(g, DLL), 0x30);
    assert_int_equal(rd(g, DLM), 0x01);

    /* Untrusted input is checked before use. */
    struct uart_state bad = s;
    bad.rx_count = 17;
    assert_int_equal(uart_restore(&g->u, &bad), -EINVAL);
    bad = s;
    bad.fcr = 0;
    bad.rx_count = 2; /* two bytes do not fit a non-FIFO receiver */
    assert_int_equal(uart_restore(&g->u, &bad), -EINVAL);
    bad = s;
    bad.ier = 0x10;
    assert_int_equal(uart_restore(&g->u, &bad), -EINVAL);
    bad = s;
    bad.thre_pending = 2;
    assert_int_equal(uart_restore(&g->u, &bad), -EINVAL);
    bad = s;
    bad.lsr = LSR_DR;
    assert_int_equal(uart_restore(&g->u, &bad), -EINVAL);
    teardown(&gs);
}

static void test_wide_and_stray_accesses(void **state)
{
    struct fixture *f = *state;
    wr(f, LCR, 0x80);
    uart_io_ops.write(&f->u, DLL, 2, 0x0201); /* split into DLL, DLM */
    assert_int_equal(uart_io_ops.read(&f->u, DLL, 2), 0x0201);
    wr(f, LCR, 0);
    wr(f, SCR, 0x42);
    assert_int_equal(uart_io_ops.read(&f->u, SCR, 4), 0xffffff42); /* beyond: all ones */
    assert_int_equal(uart_io_ops.read(&f->u, 8, 1), 0xff);
    assert_int_equal(uart_io_ops.read(&f->u, UINT64_MAX, 4), 0xffffffff);
    uart_io_ops.write(&f->u, UINT64_MAX - 1, 8, ~0ull); /* offset wraps: ignored */
    assert_int_equal(rd(f, SCR), 0x42);
    assert_int_equal(rd(f, LCR), 0);
    assert_int_equal(uart_io_ops.read(&f->u, 0, 0), 0);
}

/* ---- hostile guest ---- */

static uint64_t prng(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* The line level a saved state implies, computed independently of the core. */
static bool expected_level(const struct uart_state *s)
{
    if (!(s->mcr & MCR_OUT2))
        return false;
    return ((s->ier & IER_RLSI) && s->lsr) || ((s->ier & IER_RDI) && s->rx_count) ||
           ((s->ier & IER_THRI) && s->thre_pending) || ((s->ier & IER_MSI) && s->msr);
}

static void test_hostile_sequence(void **state)
{
    struct fixture *f = *state;
    static const unsigned sizes[] = {1, 1, 1, 1, 2, 4, 8, 0};
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    for (unsigned n = 0; n < 100000; n++) {
        uint64_t r = prng(&seed);
        uint64_t offset = (r >> 8) % 10; /* includes two offsets past the range */
        unsigned size = sizes[(r >> 16) & 7];
        switch (r & 7) {
        case 0:
        case 1:
        case 2:
            uart_io_ops.read(&f->u, offset, size);
            break;
        case 3: {
            uint8_t in[24];
            for (size_t i = 0; i < sizeof(in); i++)
                in[i] = (uint8_t)(r >> (i % 8));
            size_t len = (r >> 24) % sizeof(in);
            assert_true(uart_receive(&f->u, in, len) <= len);
            break;
        }
        default:
            uart_io_ops.write(&f->u, offset, size, prng(&seed));
            break;
        }
        struct uart_state s;
        uart_save(&f->u, &s);
        assert_true(s.rx_count <= 16);
        assert_int_equal(f->level_calls ? f->level : false, expected_level(&s));
    }
    assert_int_equal(f->repeats, 0); /* only transitions reach the sink */
    assert_true(f->level_calls > 100);
    assert_true(f->tx_total > 1000);
    assert_int_equal(f->tx_bad_len, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_power_on_values, setup, teardown),
        cmocka_unit_test_setup_teardown(test_divisor_latch, setup, teardown),
        cmocka_unit_test_setup_teardown(test_register_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_only_writes_ignored, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tx_in_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rx_fifo_fill_and_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rx_without_fifo_holds_one_byte, setup, teardown),
        cmocka_unit_test_setup_teardown(test_fifo_trigger_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_thre_semantics, setup, teardown),
        cmocka_unit_test_setup_teardown(test_iir_priorities, setup, teardown),
        cmocka_unit_test_setup_teardown(test_irq_line_levels, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loopback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_loopback_overrun_without_fifo, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reset, setup, teardown),
        cmocka_unit_test_setup_teardown(test_save_restore, setup, teardown),
        cmocka_unit_test_setup_teardown(test_wide_and_stray_accesses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hostile_sequence, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
