/* SPDX-License-Identifier: MPL-2.0 */
/*
 * libFuzzer target for the split virtqueue core: the fuzzer writes the
 * guest memory image (descriptor table, rings, indirect tables) and a
 * script of device actions.
 *
 * Input: byte 0 picks the queue size (1 << (b % 8)), byte 1 the ring
 * features (bit 0 EVENT_IDX, bit 1 INDIRECT_DESC) and max_iov (b >> 2),
 * byte 2 the script length L; then L script bytes; the rest is copied to
 * guest RAM at address 0 (64 KiB; descriptor table at 0, avail ring at
 * 0x1000, used ring at 0x2000).
 * Script byte % 6: 0-1 pop, 2 push everything popped, 3 unpop one,
 * 4 let the "guest" bump avail->idx by the next byte, 5 reset + enable.
 *
 * Checked after every pop (abort otherwise): every buffer lies inside
 * guest RAM and is non-empty, niov <= max_iov, nread <= niov, the byte
 * totals match the buffers and stay under VQ_MAX_CHAIN_BYTES, the head is
 * inside the table, and a queue that failed keeps failing until reset.
 */
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "devices/virtqueue.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define RAM_SIZE 0x10000u
#define DESC     0x0000u
#define AVAIL    0x1000u
#define USED     0x2000u
#define MAX_IOV  64u

static uint8_t *ram;

static void check_chain(const struct vq_chain *c, const struct iovec *iov, unsigned max_iov,
                        uint16_t num)
{
    uint64_t r = 0, w = 0;
    if (c->niov > max_iov || c->nread > c->niov || c->head >= num)
        abort();
    for (unsigned i = 0; i < c->niov; i++) {
        const uint8_t *p = iov[i].iov_base;
        if (iov[i].iov_len == 0 || p < ram || p > ram + RAM_SIZE ||
            iov[i].iov_len > (size_t)(ram + RAM_SIZE - p))
            abort();
        if (i < c->nread)
            r += iov[i].iov_len;
        else
            w += iov[i].iov_len;
    }
    if (r != c->read_len || w != c->write_len || r + w > VQ_MAX_CHAIN_BYTES)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    if (!ram && !(ram = aligned_alloc(4096, RAM_SIZE)))
        abort();
    uint16_t num = (uint16_t)(1u << (data[0] % 8));
    bool event_idx = data[1] & 1, indirect = data[1] & 2;
    unsigned max_iov = 1 + (data[1] >> 2) % MAX_IOV;
    size_t slen = data[2];
    data += 3;
    size -= 3;
    if (slen > size)
        slen = size;
    const uint8_t *script = data;
    data += slen;
    size -= slen;
    memset(ram, 0, RAM_SIZE);
    memcpy(ram, data, size < RAM_SIZE ? size : RAM_SIZE);

    struct guest_mem mem;
    guest_mem_init_buffer(&mem, ram, RAM_SIZE);
    struct virtqueue vq;
    if (vq_init(&vq, &mem) < 0)
        abort();
    if (vq_enable(&vq, num, DESC, AVAIL, USED, event_idx, indirect) < 0)
        abort();

    struct iovec iov[MAX_IOV];
    struct vq_used popped[256];
    unsigned npopped = 0;
    bool failed = false;
    for (size_t i = 0; i < slen; i++) {
        struct vq_chain c;
        switch (script[i] % 6) {
        case 0:
        case 1: {
            int rc = vq_pop(&vq, &c, iov, max_iov);
            if (failed && rc != -EIO)
                abort();
            if (rc < 0) {
                failed = true;
            } else if (rc == 1) {
                check_chain(&c, iov, max_iov, num);
                if (npopped < 256)
                    popped[npopped++] = (struct vq_used){c.head, (uint32_t)c.write_len};
            }
            break;
        }
        case 2:
            vq_push(&vq, popped, npopped);
            npopped = 0;
            break;
        case 3:
            if (npopped) {
                vq_unpop(&vq, 1);
                npopped--;
            }
            break;
        case 4: {
            uint16_t idx;
            memcpy(&idx, ram + AVAIL + 2, 2);
            idx = (uint16_t)(idx + (i + 1 < slen ? script[++i] : 1));
            memcpy(ram + AVAIL + 2, &idx, 2);
            break;
        }
        case 5:
            vq_reset(&vq);
            npopped = 0;
            failed = false;
            if (vq_enable(&vq, num, DESC, AVAIL, USED, event_idx, indirect) < 0)
                abort();
            break;
        }
    }
    vq_destroy(&vq);
    return 0;
}
