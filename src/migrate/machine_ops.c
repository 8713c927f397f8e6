/* SPDX-License-Identifier: MPL-2.0 */
/*
 * The migration drivers' VM operations over the real machine
 * (machine/machine_mig.h); the `vm` pointer is a struct machine *.
 */
#include "migrate/ops.h"

#include "machine/machine.h"
#include "machine/machine_mig.h"

static struct guest_mem *m_guest_mem(void *vm)
{
    return machine_guest_mem(vm);
}

static size_t m_payload_kinds(void *vm, struct mig_kind_version *out, size_t max)
{
    return machine_payload_kinds(vm, out, max);
}

static int m_pause(void *vm)
{
    return machine_pause(vm);
}

static int m_resume(void *vm)
{
    return machine_resume(vm);
}

static int m_dirty_start(void *vm)
{
    return machine_dirty_start(vm);
}

static int m_dirty_fetch(void *vm, uint64_t *out)
{
    return machine_dirty_fetch(vm, out);
}

static int m_dirty_clear(void *vm, const uint64_t *bits)
{
    return machine_dirty_clear(vm, bits);
}

static int m_dirty_peek(void *vm, uint64_t *out)
{
    return machine_dirty_peek(vm, out);
}

static int m_throttle(void *vm, unsigned pct)
{
    return machine_throttle(vm, pct);
}

static void m_dirty_stop(void *vm)
{
    machine_dirty_stop(vm);
}

static int m_save_state(void *vm, const struct mig_kind_version *want, size_t nwant,
                        mig_emit_fn emit, void *ctx)
{
    return machine_save_state(vm, want, nwant, emit, ctx);
}

static int m_load_state(void *vm, const char *kind, const char *id, uint32_t version,
                        const uint8_t *data, size_t len, struct cella_errors *errs)
{
    return machine_load_state(vm, kind, id, version, data, len, errs);
}

static int m_load_finish(void *vm, struct cella_errors *errs)
{
    return machine_load_finish(vm, errs);
}

const struct mig_vm_ops mig_machine_vm_ops = {
    .guest_mem = m_guest_mem,
    .payload_kinds = m_payload_kinds,
    .pause = m_pause,
    .dirty_start = m_dirty_start,
    .dirty_fetch = m_dirty_fetch,
    .dirty_clear = m_dirty_clear,
    .dirty_stop = m_dirty_stop,
    .dirty_peek = m_dirty_peek,
    .throttle = m_throttle,
    .save_state = m_save_state,
    .resume = m_resume,
    .load_state = m_load_state,
    .load_finish = m_load_finish,
};
