/* SPDX-License-Identifier: MPL-2.0 */
/*
 * MSI-X: the capability's registers through real configuration cycles,
 * enable and function mask, per-vector mask with pending bits and delivery
 * on unmask, messages with bad addresses dropped, table access sizes and
 * out-of-range or misaligned accesses. Pure logic: no KVM.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "devices/msix.h"

#define NVEC      5
#define TABLE_OFF 0x2000u
#define PBA_OFF   0x3000u
#define MAX_MSI   32

struct env {
    struct pci_topology topo;
    struct pci_func f;
    struct msix x;
    struct irq_sink sink;
    struct {
        uint64_t addr;
        uint32_t data;
    } msi[MAX_MSI];
    unsigned nmsi;
    unsigned cap;
};

static void rec_msi(void *ctx, uint64_t address, uint32_t data)
{
    struct env *e = ctx;
    assert_true(e->nmsi < MAX_MSI);
    e->msi[e->nmsi].addr = address;
    e->msi[e->nmsi].data = data;
    e->nmsi++;
}

static int setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    e->sink = (struct irq_sink){.ctx = e, .msi = rec_msi};
    assert_int_equal(pci_topology_init(&e->topo, NULL, NULL), 0);
    pci_func_init(&e->f, "msixdev", PCI_HEADER_TYPE_NORMAL);
    pci_func_set_ids(&e->f, 0x1234, 0x5678);
    assert_int_equal(pci_set_bar(&e->f, 0, PCI_BAR_MEM64, 0x4000, false, NULL, NULL), 0);
    assert_int_equal(msix_init(&e->x, &e->f, NVEC, 0, TABLE_OFF, PBA_OFF, &e->sink), 0);
    e->cap = e->x.cap;
    struct pci_path p = {.bus = 0, .device = 3, .function = 0};
    assert_int_equal(pci_topology_add(&e->topo, &p, &e->f), 0);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    msix_destroy(&e->x);
    pci_topology_destroy(&e->topo);
    free(e);
    return 0;
}

static uint32_t cfg_rd(struct env *e, unsigned off, unsigned size)
{
    return pci_topology_cfg_read(&e->topo, 0, 3, 0, off, size);
}

static void cfg_wr(struct env *e, unsigned off, unsigned size, uint32_t v)
{
    pci_topology_cfg_write(&e->topo, 0, 3, 0, off, size, v);
}

/* Programs vector v with a valid message and unmasks it (8-byte + 4-byte writes). */
static void program(struct env *e, unsigned v, uint32_t data, bool unmask)
{
    msix_table_write(&e->x, v * 16u, 8, 0xfee00000u | (v << 12));
    msix_table_write(&e->x, v * 16u + 8, 4, data);
    msix_table_write(&e->x, v * 16u + 12, 4, unmask ? 0 : 1);
}

static void enable(struct env *e, bool on, bool fmask)
{
    cfg_wr(e, e->cap + 2, 2, (on ? 0x8000u : 0) | (fmask ? 0x4000u : 0));
}

static void test_init_args(void **state)
{
    (void)state;
    struct pci_func f;
    struct msix x;
    pci_func_init(&f, "bad", PCI_HEADER_TYPE_NORMAL);
    assert_int_equal(msix_init(&x, &f, 0, 0, 0, 0x100, NULL), -EINVAL);
    assert_int_equal(msix_init(&x, &f, MSIX_MAX_VECTORS + 1, 0, 0, 0x1000, NULL), -EINVAL);
    assert_int_equal(msix_init(&x, &f, 4, 6, 0, 0x100, NULL), -EINVAL);
    assert_int_equal(msix_init(&x, &f, 4, 0, 4, 0x100, NULL), -EINVAL);       /* misaligned */
    assert_int_equal(msix_init(&x, &f, 4, 0, 0, 0x38, NULL), -EINVAL);        /* PBA in table */
    assert_int_equal(msix_init(&x, &f, 4, 0, 0x40, 0x78, NULL), -EINVAL);     /* overlap */
    assert_int_equal(msix_init(&x, &f, 4, 0, 0xfffffff8u, 0, NULL), -EINVAL); /* wraps */
    assert_int_equal(msix_init(&x, &f, 4, 0, 0, 0x40, NULL), 0);              /* adjacent is fine */
    assert_int_equal(msix_table_size(4), 64);
    assert_int_equal(msix_pba_size(4), 8);
    assert_int_equal(msix_pba_size(65), 16);
    msix_destroy(&x);
    msix_destroy(&x); /* twice is harmless */
}

static void test_capability_registers(void **state)
{
    struct env *e = *state;
    assert_true(cfg_rd(e, PCI_REG_STATUS, 2) & PCI_STS_CAP_LIST);
    assert_int_equal(cfg_rd(e, PCI_REG_CAP_PTR, 1), e->cap);
    assert_int_equal(cfg_rd(e, e->cap, 1), PCI_CAP_ID_MSIX);
    assert_int_equal(cfg_rd(e, e->cap + 2, 2), NVEC - 1);
    assert_int_equal(cfg_rd(e, e->cap + 4, 4), TABLE_OFF | 0);
    assert_int_equal(cfg_rd(e, e->cap + 8, 4), PBA_OFF | 0);
    /* Dword read covering ID, next and Message Control. */
    assert_int_equal(cfg_rd(e, e->cap, 4), (uint32_t)(NVEC - 1) << 16 | PCI_CAP_ID_MSIX);
    /* Table size, offsets and BIR are read-only. */
    cfg_wr(e, e->cap + 2, 2, 0x07ff);
    cfg_wr(e, e->cap + 4, 4, 0xffffffff);
    cfg_wr(e, e->cap + 8, 4, 0xffffffff);
    assert_int_equal(cfg_rd(e, e->cap + 2, 2), NVEC - 1);
    assert_int_equal(cfg_rd(e, e->cap + 4, 4), TABLE_OFF);
    assert_int_equal(cfg_rd(e, e->cap + 8, 4), PBA_OFF);
}

static void test_enable_disable(void **state)
{
    struct env *e = *state;
    assert_false(msix_enabled(&e->x));
    enable(e, true, false);
    assert_true(msix_enabled(&e->x));
    assert_int_equal(cfg_rd(e, e->cap + 2, 2), 0x8000 | (NVEC - 1));
    /* A byte write to the upper half alone works too. */
    cfg_wr(e, e->cap + 3, 1, 0x00);
    assert_false(msix_enabled(&e->x));
    cfg_wr(e, e->cap + 3, 1, 0xc0);
    assert_true(msix_enabled(&e->x));
    assert_int_equal(cfg_rd(e, e->cap + 3, 1), 0xc0);
    assert_int_equal(cfg_rd(e, e->cap + 2, 1), NVEC - 1);
    /* A dword write at the capability start reaches Message Control too. */
    cfg_wr(e, e->cap, 4, 0x00000000);
    assert_false(msix_enabled(&e->x));
    assert_int_equal(cfg_rd(e, e->cap, 1), PCI_CAP_ID_MSIX);

    /* Disabled: a notification is only recorded. */
    program(e, 1, 0x41, true);
    msix_notify(&e->x, 1);
    assert_int_equal(e->nmsi, 0);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 1u << 1);
    /* Enabling delivers it. */
    enable(e, true, false);
    assert_int_equal(e->nmsi, 1);
    assert_int_equal(e->msi[0].addr, 0xfee01000u);
    assert_int_equal(e->msi[0].data, 0x41);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0);
    msix_notify(&e->x, 1);
    assert_int_equal(e->nmsi, 2);

    /* Reset: disabled, all masked, nothing pending. */
    msix_notify(&e->x, 0); /* masked: pending */
    assert_int_equal(msix_pba_read(&e->x, 0, 4), 1);
    msix_reset(&e->x);
    assert_false(msix_enabled(&e->x));
    assert_int_equal(cfg_rd(e, e->cap + 2, 2), NVEC - 1);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0);
    assert_int_equal(msix_table_read(&e->x, 16 + 12, 4), 1);
    assert_int_equal(msix_table_read(&e->x, 16, 8), 0);
}

static void test_function_mask(void **state)
{
    struct env *e = *state;
    program(e, 0, 0x30, true);
    program(e, 2, 0x32, true);
    enable(e, true, true);
    msix_notify(&e->x, 0);
    msix_notify(&e->x, 2);
    msix_notify(&e->x, 2);
    assert_int_equal(e->nmsi, 0);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0x5);
    /* Clearing the function mask delivers each pending vector once. */
    enable(e, true, false);
    assert_int_equal(e->nmsi, 2);
    assert_int_equal(e->msi[0].data, 0x30);
    assert_int_equal(e->msi[1].data, 0x32);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0);
    msix_notify(&e->x, 2);
    assert_int_equal(e->nmsi, 3);
}

static void test_vector_mask_pending(void **state)
{
    struct env *e = *state;
    program(e, 3, 0x33, false); /* stays masked */
    program(e, 4, 0x34, true);
    enable(e, true, false);
    msix_notify(&e->x, 3);
    assert_int_equal(e->nmsi, 0);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 1u << 3);
    assert_int_equal(msix_pba_read(&e->x, 4, 4), 0);
    msix_notify(&e->x, 4);
    assert_int_equal(e->nmsi, 1);
    assert_int_equal(e->msi[0].data, 0x34);
    /* The mask bit reads back; reserved ctrl bits do not stick. */
    assert_int_equal(msix_table_read(&e->x, 3 * 16 + 12, 4), 1);
    msix_table_write(&e->x, 3 * 16 + 12, 4, 0xfffffffe);
    /* Unmasking the vector delivers its pending message. */
    assert_int_equal(e->nmsi, 2);
    assert_int_equal(e->msi[1].data, 0x33);
    assert_int_equal(e->msi[1].addr, 0xfee03000u);
    assert_int_equal(msix_table_read(&e->x, 3 * 16 + 12, 4), 0);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0);
    /* Masking then unmasking without a notification sends nothing. */
    msix_table_write(&e->x, 3 * 16 + 12, 4, 1);
    msix_table_write(&e->x, 3 * 16 + 12, 4, 0);
    assert_int_equal(e->nmsi, 2);
    /* Unmask through an 8-byte write of data + ctrl. */
    msix_table_write(&e->x, 3 * 16 + 12, 4, 1);
    msix_notify(&e->x, 3);
    msix_table_write(&e->x, 3 * 16 + 8, 8, 0x99);
    assert_int_equal(e->nmsi, 3);
    assert_int_equal(e->msi[2].data, 0x99);
    /* Out-of-range vectors are ignored. */
    msix_notify(&e->x, NVEC);
    msix_notify(&e->x, 1000);
    assert_int_equal(e->nmsi, 3);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0);
}

static void test_bad_address_dropped(void **state)
{
    struct env *e = *state;
    enable(e, true, false);
    msix_table_write(&e->x, 0, 4, 0x12345000);
    msix_table_write(&e->x, 8, 4, 7);
    msix_table_write(&e->x, 12, 4, 0);
    msix_notify(&e->x, 0);
    assert_int_equal(e->nmsi, 0);
    assert_int_equal(msix_pba_read(&e->x, 0, 8), 0); /* dropped, not pending */
    /* Right window but a high address dword: dropped too. */
    msix_table_write(&e->x, 0, 8, 0x1fee00000ull);
    msix_notify(&e->x, 0);
    assert_int_equal(e->nmsi, 0);
    /* Fixed, it works. */
    msix_table_write(&e->x, 4, 4, 0);
    msix_notify(&e->x, 0);
    assert_int_equal(e->nmsi, 1);
    assert_int_equal(e->msi[0].addr, 0xfee00000u);
}

static void test_table_access_sizes(void **state)
{
    struct env *e = *state;
    msix_table_write(&e->x, 16, 8, 0x11111111fee0000cull);
    msix_table_write(&e->x, 24, 8, 0x0000000122222222ull);
    /* Address bits 1:0 are reserved (dword-aligned messages). */
    assert_int_equal(msix_table_read(&e->x, 16, 4), 0xfee0000c);
    assert_int_equal(msix_table_read(&e->x, 20, 4), 0x11111111);
    assert_int_equal(msix_table_read(&e->x, 16, 8), 0x11111111fee0000cull);
    assert_int_equal(msix_table_read(&e->x, 24, 8), 0x0000000122222222ull);
    msix_table_write(&e->x, 16, 4, 0xfee00003);
    assert_int_equal(msix_table_read(&e->x, 16, 4), 0xfee00000);
    /* Sizes other than 4 and 8 are ignored (reads all ones). */
    msix_table_write(&e->x, 16, 2, 0xffff);
    msix_table_write(&e->x, 16, 1, 0xff);
    assert_int_equal(msix_table_read(&e->x, 16, 4), 0xfee00000);
    assert_int_equal(msix_table_read(&e->x, 16, 2), 0xffff);
    assert_int_equal(msix_table_read(&e->x, 16, 1), 0xff);
    /* Misaligned: ignored. */
    msix_table_write(&e->x, 18, 4, 0);
    msix_table_write(&e->x, 20, 8, 0);
    assert_int_equal(msix_table_read(&e->x, 20, 4), 0x11111111);
    assert_int_equal(msix_table_read(&e->x, 18, 4), 0xffffffff);
    assert_int_equal(msix_table_read(&e->x, 20, 8), UINT64_MAX);
}

static void test_out_of_range(void **state)
{
    struct env *e = *state;
    uint64_t end = msix_table_size(NVEC);
    /* The last entry is reachable, one past it is not. */
    msix_table_write(&e->x, end - 8, 8, 0x1234);
    assert_int_equal(msix_table_read(&e->x, end - 8, 8), 0x1234);
    msix_table_write(&e->x, end, 4, 0);
    msix_table_write(&e->x, end - 4, 8, 0);
    msix_table_write(&e->x, UINT64_MAX - 3, 4, 0);
    msix_table_write(&e->x, UINT64_MAX - 7, 8, 0);
    assert_int_equal(msix_table_read(&e->x, end, 4), 0xffffffff);
    assert_int_equal(msix_table_read(&e->x, UINT64_MAX - 7, 8), UINT64_MAX);
    assert_int_equal(msix_table_read(&e->x, 1ull << 40, 4), 0xffffffff);
    /* The PBA of 5 vectors is one qword. */
    assert_int_equal(msix_pba_read(&e->x, 8, 4), 0xffffffff);
    assert_int_equal(msix_pba_read(&e->x, 8, 8), UINT64_MAX);
    assert_int_equal(msix_pba_read(&e->x, 2, 4), 0xffffffff);
    assert_int_equal(msix_pba_read(&e->x, 0, 2), 0xffff);
    assert_int_equal(msix_pba_read(&e->x, UINT64_MAX - 3, 4), 0xffffffff);
    /* Entries past the end were not touched by any of this. */
    for (unsigned v = 0; v < NVEC - 1; v++)
        assert_int_equal(msix_table_read(&e->x, v * 16 + 12, 4), 1);
}

static void test_many_vectors_pba(void **state)
{
    (void)state;
    struct pci_func f;
    struct msix x;
    struct env rec = {0};
    struct irq_sink sink = {.ctx = &rec, .msi = rec_msi};
    pci_func_init(&f, "big", PCI_HEADER_TYPE_NORMAL);
    assert_int_equal(msix_init(&x, &f, MSIX_MAX_VECTORS, 2, 0, 0x800, &sink), 0);
    assert_int_equal(pci_cfg_peek(&f, (uint16_t)(x.cap + 2), 2), MSIX_MAX_VECTORS - 1);
    assert_int_equal(pci_cfg_peek(&f, (uint16_t)(x.cap + 4), 4), 2);
    assert_int_equal(pci_cfg_peek(&f, (uint16_t)(x.cap + 8), 4), 0x800 | 2);
    msix_notify(&x, 127);
    msix_notify(&x, 64);
    msix_notify(&x, 31);
    assert_int_equal(msix_pba_read(&x, 0, 8), 1ull << 31);
    assert_int_equal(msix_pba_read(&x, 8, 8), 1ull | 1ull << 63);
    assert_int_equal(msix_pba_read(&x, 12, 4), 0x80000000u);
    msix_table_write(&x, 127 * 16 + 12, 4, 0);
    assert_int_equal(rec.nmsi, 0); /* still disabled */
    assert_int_equal(msix_table_read(&x, 127 * 16 + 12, 4), 0);
    msix_destroy(&x);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_init_args),
        cmocka_unit_test_setup_teardown(test_capability_registers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enable_disable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_function_mask, setup, teardown),
        cmocka_unit_test_setup_teardown(test_vector_mask_pending, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_address_dropped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_table_access_sizes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_out_of_range, setup, teardown),
        cmocka_unit_test(test_many_vectors_pba),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
