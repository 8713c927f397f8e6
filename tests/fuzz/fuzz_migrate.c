/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the migration target: the input is what a hostile
 * source sends, run through both target stages (the preamble and then
 * RAM, device payloads, serial history, blobs and the finish handshake)
 * against fake hooks and a 16-page guest RAM buffer.
 *
 * Input: one flag byte (bit 0: the failure injector fails imports; bit 1:
 * opening the backends fails; bit 2: loading a payload fails), then
 * messages as [u32 little-endian length][message bytes] records (the
 * in-memory stream of migrate/stream.h). Seeds: tests/fuzz/corpus/migrate.
 *
 * Checked: no crash, leak or out-of-bounds access; the guest is started
 * exactly when the run succeeds, only after every page arrived, state was
 * loaded and the backends opened; nothing is written outside guest RAM
 * (guard bytes around it).
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/mig_buf.h"
#include "migrate/target.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define PAGES 16
#define GUARD 64

struct fz {
    uint8_t flags;
    uint8_t mem_buf[GUARD + PAGES * 4096 + GUARD];
    struct guest_mem mem;
    int loaded, resumed, opened, blobs;
    bool finished;
};

static struct guest_mem *fz_mem(void *vm)
{
    return &((struct fz *)vm)->mem;
}

static int fz_load(void *vm, const char *kind, const char *id, uint32_t version,
                   const uint8_t *data, size_t len, struct cella_errors *errs)
{
    struct fz *f = vm;
    if (f->flags & 4)
        return cella_err(errs, -EINVAL, "", "payload refused");
    /* Read it the way a device would: bounded, validated. */
    struct mig_in in;
    mig_in_init(&in, data, len);
    uint32_t n = mig_get_u32(&in);
    size_t blen;
    const uint8_t *b = mig_get_blob(&in, 64, &blen);
    if (!mig_in_done(&in) || n > 1000 || (b && blen && b[0] == 0xff))
        return cella_err(errs, -EINVAL, "", "payload %s/%s invalid", kind, id);
    f->loaded++;
    return 0;
}

static int fz_load_finish(void *vm, struct cella_errors *errs)
{
    struct fz *f = vm;
    f->finished = true;
    return 0;
}

static int fz_resume(void *vm)
{
    struct fz *f = vm;
    if (!f->finished || !f->opened)
        abort(); /* started before state loaded / backends opened */
    f->resumed++;
    return 0;
}

static const struct mig_vm_ops fz_ops = {
    .guest_mem = fz_mem,
    .resume = fz_resume,
    .load_state = fz_load,
    .load_finish = fz_load_finish,
};

static int h_accepts(void *ctx, const char *kind, uint32_t offered, uint32_t *accept)
{
    if (strcmp(kind, "vcpu") == 0 || strcmp(kind, "uart") == 0) {
        *accept = offered > 3 ? 3 : offered;
        return 0;
    }
    return -ENOTSUP;
}

static int h_prepare(void *ctx, const char *json, size_t len, bool check_only,
                     struct mig_target_vm *out, struct cella_errors *errs)
{
    struct fz *f = ctx;
    if (len && json[0] != '{')
        return cella_err(errs, -EINVAL, "", "not a JSON object");
    if (check_only)
        return 0;
    out->ops = &fz_ops;
    out->vm = f;
    out->fail_imports = f->flags & 1;
    return 0;
}

static int h_serial(void *ctx, uint64_t offset, const uint8_t *data, size_t len, uint64_t total,
                    struct cella_errors *errs)
{
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < len; i++)
        sink ^= data[i];
    (void)sink;
    return 0;
}

static int h_blob(void *ctx, const char *key, const uint8_t *data, size_t len,
                  struct cella_errors *errs)
{
    struct fz *f = ctx;
    if (len > MIG_BLOB_MAX || strlen(key) > MIG_MAX_BLOB_KEY)
        abort();
    if (len)
        (void)((volatile const uint8_t *)data)[len - 1];
    f->blobs++;
    return 0;
}

static int h_open(void *ctx, struct cella_errors *errs)
{
    struct fz *f = ctx;
    if (f->flags & 2)
        return cella_err(errs, -ENOENT, "", "backend missing");
    f->opened++;
    return 0;
}

static const struct mig_target_hooks hooks = {
    .payload_accepts = h_accepts,
    .prepare = h_prepare,
    .serial_history = h_serial,
    .blob = h_blob,
    .open_backends = h_open,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    static struct fz f;
    memset(&f, 0, sizeof(f));
    memset(f.mem_buf, 0x5a, sizeof(f.mem_buf));
    f.flags = data[0];
    guest_mem_init_buffer(&f.mem, f.mem_buf + GUARD, PAGES * 4096);

    struct mig_stream *s;
    if (mig_stream_memory(data + 1, size - 1, &s) < 0)
        return 0;
    struct mig_target_params p = {.stream = s, .hooks = &hooks, .ctx = &f};
    struct cella_errors errs = {0};
    struct mig_target *t;
    int r = mig_target_start(&p, &t, &errs);
    if (r == 0) {
        r = mig_target_run(t, &errs);
        if ((r == 0) != (f.resumed == 1))
            abort();
        mig_target_free(t);
    } else if (f.resumed || errs.count == 0) {
        abort();
    }
    if (r < 0 && errs.count == 0)
        abort(); /* every failure says why */
    for (size_t i = 0; i < GUARD; i++)
        if (f.mem_buf[i] != 0x5a || f.mem_buf[GUARD + PAGES * 4096 + i] != 0x5a)
            abort();
    cella_errors_clear(&errs);
    return 0;
}
