/* SPDX-License-Identifier: MPL-2.0 */
#include "devices/fw_cfg.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DEV "fw_cfg"

/* ---- byte order --------------------------------------------------------- */

static void put_le16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_le32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_le64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void put_be16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

static void put_be32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (24 - 8 * i));
}

static uint32_t get_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint32_t get_be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static uint64_t get_be64(const uint8_t *p)
{
    return (uint64_t)get_be32(p) << 32 | get_be32(p + 4);
}

/* ---- items -------------------------------------------------------------- */

/* 1..FW_CFG_MAX_NAME printable ASCII bytes: what fits a directory entry. */
static int check_name(const char *name)
{
    if (!name || !*name)
        return -EINVAL;
    size_t n = strnlen(name, FW_CFG_MAX_NAME + 1);
    if (n > FW_CFG_MAX_NAME)
        return -E2BIG;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c < 0x20 || c > 0x7e)
            return -EINVAL;
    }
    return 0;
}

/* Heap copy of data[0..len) in *out (NULL for len 0). */
static int copy_bytes(const void *data, size_t len, uint8_t **out)
{
    *out = NULL;
    if (len == 0)
        return 0;
    if (len > FW_CFG_MAX_ITEM_LEN)
        return -E2BIG;
    if (!data)
        return -EINVAL;
    *out = malloc(len);
    if (!*out)
        return -ENOMEM;
    memcpy(*out, data, len);
    return 0;
}

static struct fw_cfg_item *find_item(struct fw_cfg *fw, uint16_t key)
{
    for (size_t i = 0; i < fw->nitems; i++)
        if (fw->items[i].key == key)
            return &fw->items[i];
    return NULL;
}

/* Index of file `name`, or -1. Under lock. */
static ptrdiff_t find_file(const struct fw_cfg *fw, const char *name)
{
    for (size_t i = 0; i < fw->nfiles; i++)
        if (strcmp(fw->files[i].name, name) == 0)
            return (ptrdiff_t)i;
    return -1;
}

/* The item a guest selector designates, or NULL. Under lock. */
static const struct fw_cfg_item *resolve(struct fw_cfg *fw, uint16_t selector)
{
    uint16_t key = selector & (uint16_t)~FW_CFG_WRITE_CHANNEL;

    if (!(key & FW_CFG_ARCH_LOCAL) && key >= FW_CFG_FILE_FIRST) {
        size_t i = (size_t)key - FW_CFG_FILE_FIRST;
        return i < fw->nfiles ? &fw->files[i].item : NULL;
    }
    return find_item(fw, key);
}

/* Re-resolves the current selector after items moved. Under lock. */
static void refresh_cur(struct fw_cfg *fw)
{
    fw->cur = resolve(fw, fw->selector);
    if (fw->cur && fw->offset > fw->cur->len)
        fw->offset = fw->cur->len;
}

static void select_item(struct fw_cfg *fw, uint16_t selector)
{
    fw->selector = selector;
    fw->offset = 0;
    fw->cur = resolve(fw, selector);
}

/* Regenerates the directory item from files[]. Under lock. */
static int rebuild_dir(struct fw_cfg *fw)
{
    struct fw_cfg_item *dir = find_item(fw, FW_CFG_FILE_DIR);
    size_t len = 4 + fw->nfiles * FW_CFG_DIR_ENTRY_SIZE;
    uint8_t *d = calloc(1, len);

    if (!d)
        return -ENOMEM;
    put_be32(d, (uint32_t)fw->nfiles);
    for (size_t i = 0; i < fw->nfiles; i++) {
        uint8_t *e = d + 4 + i * FW_CFG_DIR_ENTRY_SIZE;
        put_be32(e, fw->files[i].item.len);
        put_be16(e + 4, (uint16_t)(FW_CFG_FILE_FIRST + i));
        memcpy(e + 8, fw->files[i].name, strlen(fw->files[i].name));
    }
    free(dir->data);
    dir->data = d;
    dir->len = (uint32_t)len;
    return 0;
}

/* Appends a numbered item taking ownership of data. Under lock. */
static int insert_item(struct fw_cfg *fw, uint16_t key, uint8_t *data, size_t len)
{
    if (find_item(fw, key))
        return -EEXIST;
    if (fw->nitems >= FW_CFG_MAX_ITEMS)
        return -E2BIG;
    fw->items[fw->nitems++] = (struct fw_cfg_item){.key = key, .len = (uint32_t)len, .data = data};
    refresh_cur(fw);
    return 0;
}

/* Inserts a file in name order, taking ownership of data on success. Under lock. */
static int insert_file(struct fw_cfg *fw, const char *name, uint8_t *data, size_t len,
                       bool writable)
{
    size_t pos = 0;
    int rc = 0;

    while (pos < fw->nfiles && strcmp(fw->files[pos].name, name) < 0)
        pos++;
    if (pos < fw->nfiles && strcmp(fw->files[pos].name, name) == 0)
        return -EEXIST;
    if (fw->nfiles >= FW_CFG_MAX_FILES)
        return -E2BIG;
    struct fw_cfg_file *grown = realloc(fw->files, (fw->nfiles + 1) * sizeof(*grown));
    if (!grown)
        return -ENOMEM;
    fw->files = grown;
    memmove(&fw->files[pos + 1], &fw->files[pos], (fw->nfiles - pos) * sizeof(*grown));
    memset(&fw->files[pos], 0, sizeof(fw->files[pos]));
    memcpy(fw->files[pos].name, name, strlen(name));
    fw->files[pos].item =
        (struct fw_cfg_item){.key = 0, .writable = writable, .len = (uint32_t)len, .data = data};
    fw->nfiles++;
    rc = rebuild_dir(fw);
    if (rc < 0) {
        fw->nfiles--;
        memmove(&fw->files[pos], &fw->files[pos + 1], (fw->nfiles - pos) * sizeof(*grown));
    }
    refresh_cur(fw); /* files[] moved even on failure */
    return rc;
}

int fw_cfg_init(struct fw_cfg *fw, const struct guest_mem *mem)
{
    static const uint8_t sig[4] = {'Q', 'E', 'M', 'U'};
    uint8_t id[4];
    uint8_t *s = NULL, *i = NULL;

    memset(fw, 0, sizeof(*fw));
    fw->mem = mem;
    if (pthread_mutex_init(&fw->lock, NULL) != 0)
        return -ENOMEM;
    put_le32(id, FW_CFG_F_TRADITIONAL | FW_CFG_F_DMA);
    if (copy_bytes(sig, sizeof(sig), &s) < 0 || copy_bytes(id, sizeof(id), &i) < 0) {
        free(s);
        fw_cfg_destroy(fw);
        return -ENOMEM;
    }
    insert_item(fw, FW_CFG_SIGNATURE, s, sizeof(sig));
    insert_item(fw, FW_CFG_ID, i, sizeof(id));
    insert_item(fw, FW_CFG_FILE_DIR, NULL, 0);
    if (rebuild_dir(fw) < 0) {
        fw_cfg_destroy(fw);
        return -ENOMEM;
    }
    select_item(fw, FW_CFG_SIGNATURE);
    return 0;
}

void fw_cfg_destroy(struct fw_cfg *fw)
{
    if (!fw)
        return;
    for (size_t i = 0; i < fw->nitems; i++)
        free(fw->items[i].data);
    for (size_t i = 0; i < fw->nfiles; i++)
        free(fw->files[i].item.data);
    free(fw->files);
    pthread_mutex_destroy(&fw->lock);
    memset(fw, 0, sizeof(*fw));
}

void fw_cfg_reset(struct fw_cfg *fw)
{
    pthread_mutex_lock(&fw->lock);
    select_item(fw, FW_CFG_SIGNATURE);
    fw->dma_addr = 0;
    pthread_mutex_unlock(&fw->lock);
}

int fw_cfg_add_bytes(struct fw_cfg *fw, uint16_t key, const void *data, size_t len)
{
    uint8_t *copy;
    int rc;

    if ((key & FW_CFG_WRITE_CHANNEL) || (!(key & FW_CFG_ARCH_LOCAL) && key >= FW_CFG_FILE_FIRST))
        return -EINVAL;
    rc = copy_bytes(data, len, &copy);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&fw->lock);
    rc = insert_item(fw, key, copy, len);
    pthread_mutex_unlock(&fw->lock);
    if (rc < 0)
        free(copy);
    return rc;
}

int fw_cfg_add_u16(struct fw_cfg *fw, uint16_t key, uint16_t value)
{
    uint8_t b[2];
    put_le16(b, value);
    return fw_cfg_add_bytes(fw, key, b, sizeof(b));
}

int fw_cfg_add_u32(struct fw_cfg *fw, uint16_t key, uint32_t value)
{
    uint8_t b[4];
    put_le32(b, value);
    return fw_cfg_add_bytes(fw, key, b, sizeof(b));
}

int fw_cfg_add_u64(struct fw_cfg *fw, uint16_t key, uint64_t value)
{
    uint8_t b[8];
    put_le64(b, value);
    return fw_cfg_add_bytes(fw, key, b, sizeof(b));
}

int fw_cfg_add_string(struct fw_cfg *fw, uint16_t key, const char *s)
{
    if (!s)
        return -EINVAL;
    return fw_cfg_add_bytes(fw, key, s, strlen(s) + 1);
}

static int add_file(struct fw_cfg *fw, const char *name, const void *data, size_t len,
                    bool writable)
{
    uint8_t *copy;
    int rc = check_name(name);

    if (rc < 0)
        return rc;
    rc = copy_bytes(data, len, &copy);
    if (rc < 0)
        return rc;
    pthread_mutex_lock(&fw->lock);
    rc = insert_file(fw, name, copy, len, writable);
    pthread_mutex_unlock(&fw->lock);
    if (rc < 0)
        free(copy);
    return rc;
}

int fw_cfg_add_file(struct fw_cfg *fw, const char *name, const void *data, size_t len)
{
    return add_file(fw, name, data, len, false);
}

int fw_cfg_add_file_rw(struct fw_cfg *fw, const char *name, const void *data, size_t len)
{
    return add_file(fw, name, data, len, true);
}

int fw_cfg_get_file(struct fw_cfg *fw, const char *name, void *out, size_t cap)
{
    int rc = -ENOENT;

    if (!name)
        return -ENOENT;
    pthread_mutex_lock(&fw->lock);
    ptrdiff_t i = find_file(fw, name);
    if (i >= 0) {
        const struct fw_cfg_item *it = &fw->files[i].item;
        size_t n = it->len < cap ? it->len : cap;
        if (n)
            memcpy(out, it->data, n);
        rc = (int)it->len;
    }
    pthread_mutex_unlock(&fw->lock);
    return rc;
}

int fw_cfg_file_selector(struct fw_cfg *fw, const char *name)
{
    int rc = -ENOENT;

    if (!name)
        return -ENOENT;
    pthread_mutex_lock(&fw->lock);
    ptrdiff_t i = find_file(fw, name);
    if (i >= 0)
        rc = FW_CFG_FILE_FIRST + (int)i;
    pthread_mutex_unlock(&fw->lock);
    return rc;
}

/* ---- DMA ---------------------------------------------------------------- */

/*
 * Host pointer for a READ/WRITE target, after the checks every guest range
 * gets: no wrap-around, under the per-descriptor cap, wholly in RAM.
 */
static uint8_t *dma_target(struct fw_cfg *fw, uint64_t address, uint32_t length, const char *op)
{
    uint64_t end;

    if (__builtin_add_overflow(address, (uint64_t)length, &end)) {
        guest_error(DEV, "DMA %s of %" PRIu32 " bytes at %#" PRIx64 " wraps around", op, length,
                    address);
        return NULL;
    }
    if (length > FW_CFG_DMA_MAX_LEN) {
        guest_error(DEV, "DMA %s of %" PRIu32 " bytes exceeds the %u-byte limit", op, length,
                    FW_CFG_DMA_MAX_LEN);
        return NULL;
    }
    uint8_t *p = guest_mem_ptr(fw->mem, address, length);
    if (!p)
        guest_error(DEV, "DMA %s target [%#" PRIx64 ", %#" PRIx64 ") is outside guest RAM", op,
                    address, end);
    return p;
}

/* Bytes of the current item from the offset on. */
static uint32_t remaining(const struct fw_cfg *fw)
{
    return fw->cur ? fw->cur->len - fw->offset : 0;
}

static uint32_t dma_read(struct fw_cfg *fw, uint64_t address, uint32_t length)
{
    uint8_t *p = dma_target(fw, address, length, "read");
    if (!p)
        return FW_CFG_DMA_CTL_ERROR;
    uint32_t avail = remaining(fw), n = length < avail ? length : avail;
    if (n)
        memcpy(p, fw->cur->data + fw->offset, n);
    memset(p + n, 0, length - n); /* past the end reads as zeros */
    guest_mem_dirty(fw->mem, address, length);
    fw->offset += n;
    return 0;
}

/* As QEMU: only into a writable item, and never past its end (no resizing). */
static uint32_t dma_write(struct fw_cfg *fw, uint64_t address, uint32_t length)
{
    const struct fw_cfg_item *it = fw->cur;

    if (!it || !it->writable) {
        guest_error(DEV, "DMA write to %s item %#x", it ? "read-only" : "missing", fw->selector);
        return FW_CFG_DMA_CTL_ERROR;
    }
    if (length > remaining(fw)) {
        guest_error(DEV,
                    "DMA write of %" PRIu32 " bytes at offset %" PRIu32
                    " overruns item %#x of %" PRIu32 " bytes",
                    length, fw->offset, fw->selector, it->len);
        return FW_CFG_DMA_CTL_ERROR;
    }
    const uint8_t *p = dma_target(fw, address, length, "write");
    if (!p)
        return FW_CFG_DMA_CTL_ERROR;
    memcpy(it->data + fw->offset, p, length);
    fw->offset += length;
    return 0;
}

static void dma_skip(struct fw_cfg *fw, uint32_t length)
{
    uint32_t avail = remaining(fw);
    fw->offset += length < avail ? length : avail;
}

/* Stores the final control word; a no-op when it lies outside RAM. */
static void dma_finish(struct fw_cfg *fw, uint64_t desc, uint32_t control)
{
    uint8_t be[4];
    put_be32(be, control);
    if (guest_mem_write(fw->mem, desc, be, sizeof(be)) == 0)
        guest_mem_dirty(fw->mem, desc, sizeof(be));
}

/* Runs the descriptor at guest address desc. Under lock, vCPU thread. */
static void dma_run(struct fw_cfg *fw, uint64_t desc)
{
    uint8_t raw[FW_CFG_DMA_DESC_SIZE];

    /* One copy: the guest may rewrite the descriptor while we work. */
    if (guest_mem_read(fw->mem, desc, raw, sizeof(raw)) < 0) {
        guest_error(DEV, "DMA descriptor at %#" PRIx64 " is outside guest RAM", desc);
        dma_finish(fw, desc, FW_CFG_DMA_CTL_ERROR);
        return;
    }
    uint32_t control = get_be32(raw), length = get_be32(raw + 4), result = 0;
    uint64_t address = get_be64(raw + 8);

    if (control & FW_CFG_DMA_CTL_SELECT)
        select_item(fw, (uint16_t)(control >> 16));
    /* READ wins over WRITE over SKIP; with none, or length 0, nothing moves (QEMU). */
    if (length && (control & FW_CFG_DMA_CTL_READ))
        result = dma_read(fw, address, length);
    else if (length && (control & FW_CFG_DMA_CTL_WRITE))
        result = dma_write(fw, address, length);
    else if (length && (control & FW_CFG_DMA_CTL_SKIP))
        dma_skip(fw, length);
    dma_finish(fw, desc, result);
}

/* ---- port I/O ----------------------------------------------------------- */

static uint64_t all_ones(unsigned size)
{
    return size >= 8 ? ~0ull : (1ull << (8 * size)) - 1;
}

static uint64_t fw_cfg_io_read(void *opaque, uint64_t offset, unsigned size)
{
    static const uint8_t dma_sig[8] = {'Q', 'E', 'M', 'U', ' ', 'C', 'F', 'G'};
    struct fw_cfg *fw = opaque;
    uint64_t v = 0;

    if (offset <= FW_CFG_PORT_DATA && size == 1) {
        pthread_mutex_lock(&fw->lock);
        if (fw->cur && fw->offset < fw->cur->len)
            v = fw->cur->data[fw->offset++];
        pthread_mutex_unlock(&fw->lock);
        return v;
    }
    if (offset >= FW_CFG_PORT_DMA && offset < FW_CFG_IO_SIZE && size >= 1 &&
        size <= FW_CFG_IO_SIZE - offset) {
        /* The register's bytes in address order are "QEMU CFG". */
        for (unsigned i = 0; i < size; i++)
            v |= (uint64_t)dma_sig[offset - FW_CFG_PORT_DMA + i] << (8 * i);
        return v;
    }
    guest_error(DEV, "unsupported %u-byte read at port %#" PRIx64, size, FW_CFG_IO_BASE + offset);
    return all_ones(size);
}

static void fw_cfg_io_write(void *opaque, uint64_t offset, unsigned size, uint64_t value)
{
    struct fw_cfg *fw = opaque;

    if (offset == FW_CFG_PORT_SEL && size == 2) {
        pthread_mutex_lock(&fw->lock);
        select_item(fw, (uint16_t)value);
        pthread_mutex_unlock(&fw->lock);
        return;
    }
    /* The address register is big-endian: the guest wrote its bytes swapped. */
    if (offset == FW_CFG_PORT_DMA && size == 4) {
        pthread_mutex_lock(&fw->lock);
        fw->dma_addr = (uint64_t)__builtin_bswap32((uint32_t)value) << 32;
        pthread_mutex_unlock(&fw->lock);
        return;
    }
    if ((offset == FW_CFG_PORT_DMA + 4 && size == 4) || (offset == FW_CFG_PORT_DMA && size == 8)) {
        pthread_mutex_lock(&fw->lock);
        uint64_t desc = size == 8 ? __builtin_bswap64(value)
                                  : fw->dma_addr | __builtin_bswap32((uint32_t)value);
        fw->dma_addr = 0; /* 0 again after every operation */
        dma_run(fw, desc);
        pthread_mutex_unlock(&fw->lock);
        return;
    }
    if (offset <= FW_CFG_PORT_DATA && size == 1)
        guest_error(DEV, "data register writes are ignored (use DMA WRITE)");
    else
        guest_error(DEV, "unsupported %u-byte write of %#" PRIx64 " at port %#" PRIx64, size, value,
                    FW_CFG_IO_BASE + offset);
}

const struct io_ops fw_cfg_io_ops = {
    .read = fw_cfg_io_read,
    .write = fw_cfg_io_write,
};

/* ---- etc/e820 ----------------------------------------------------------- */

int fw_cfg_add_e820(struct fw_cfg *fw, const struct fw_cfg_e820_entry *entries, size_t n)
{
    uint8_t buf[FW_CFG_E820_MAX * FW_CFG_E820_ENTRY_SIZE];

    if (n > FW_CFG_E820_MAX)
        return -E2BIG;
    if (n && !entries)
        return -EINVAL;
    for (size_t i = 0; i < n; i++) {
        uint8_t *e = buf + i * FW_CFG_E820_ENTRY_SIZE;
        put_le64(e, entries[i].address);
        put_le64(e + 8, entries[i].length);
        put_le32(e + 16, entries[i].type);
    }
    return fw_cfg_add_file(fw, "etc/e820", buf, n * FW_CFG_E820_ENTRY_SIZE);
}

/* ---- ACPI linker/loader ------------------------------------------------- */

/* Field offsets inside a 128-byte command (the structs are naturally aligned). */
#define LD_FILE        4   /* alloc.file, pointer.dest_file, cksum.file */
#define LD_ALLOC_ALIGN 60  /* le32 */
#define LD_ALLOC_ZONE  64  /* u8 */
#define LD_PTR_SRC     60  /* char[56] */
#define LD_PTR_OFFSET  116 /* le32 */
#define LD_PTR_SIZE    120 /* u8 */
#define LD_CK_RESULT   60  /* le32 */
#define LD_CK_START    64  /* le32 */
#define LD_CK_LENGTH   68  /* le32 */
#define LD_NAME_SIZE   56

void fw_cfg_loader_init(struct fw_cfg_loader *l)
{
    memset(l, 0, sizeof(*l));
}

void fw_cfg_loader_free(struct fw_cfg_loader *l)
{
    if (!l)
        return;
    free(l->buf);
    fw_cfg_loader_init(l);
}

static bool loader_allocated(const struct fw_cfg_loader *l, const char *file)
{
    for (size_t off = 0; off + FW_CFG_LOADER_CMD_SIZE <= l->len; off += FW_CFG_LOADER_CMD_SIZE) {
        const uint8_t *c = l->buf + off;
        if (get_le32(c) == FW_CFG_LOADER_ALLOCATE &&
            strncmp((const char *)c + LD_FILE, file, LD_NAME_SIZE) == 0)
            return true;
    }
    return false;
}

/* Appends a zeroed command with its command word; *out points at it. */
static int loader_append(struct fw_cfg_loader *l, uint32_t command, uint8_t **out)
{
    if (l->len / FW_CFG_LOADER_CMD_SIZE >= FW_CFG_LOADER_MAX_CMDS)
        return -E2BIG;
    if (l->len + FW_CFG_LOADER_CMD_SIZE > l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16 * FW_CFG_LOADER_CMD_SIZE;
        uint8_t *b = realloc(l->buf, cap);
        if (!b)
            return -ENOMEM;
        l->buf = b;
        l->cap = cap;
    }
    uint8_t *c = l->buf + l->len;
    memset(c, 0, FW_CFG_LOADER_CMD_SIZE);
    put_le32(c, command);
    l->len += FW_CFG_LOADER_CMD_SIZE;
    *out = c;
    return 0;
}

static void put_name(uint8_t *field, const char *name)
{
    memcpy(field, name, strlen(name)); /* <= 55 bytes: the rest stays NUL */
}

int fw_cfg_loader_allocate(struct fw_cfg_loader *l, const char *file, uint32_t align,
                           enum fw_cfg_loader_zone zone)
{
    uint8_t *c;
    int rc = check_name(file);

    if (rc < 0)
        return rc;
    if (align == 0 || (align & (align - 1)))
        return -EINVAL;
    if (zone != FW_CFG_LOADER_ZONE_HIGH && zone != FW_CFG_LOADER_ZONE_FSEG)
        return -EINVAL;
    if (loader_allocated(l, file))
        return -EEXIST;
    rc = loader_append(l, FW_CFG_LOADER_ALLOCATE, &c);
    if (rc < 0)
        return rc;
    put_name(c + LD_FILE, file);
    put_le32(c + LD_ALLOC_ALIGN, align);
    c[LD_ALLOC_ZONE] = (uint8_t)zone;
    return 0;
}

int fw_cfg_loader_add_pointer(struct fw_cfg_loader *l, const char *dest_file, uint32_t dest_offset,
                              uint8_t size, const char *src_file)
{
    uint32_t end;
    uint8_t *c;
    int rc = check_name(dest_file);

    if (rc == 0)
        rc = check_name(src_file);
    if (rc < 0)
        return rc;
    if ((size != 1 && size != 2 && size != 4 && size != 8) ||
        __builtin_add_overflow(dest_offset, (uint32_t)size, &end))
        return -EINVAL;
    if (!loader_allocated(l, dest_file) || !loader_allocated(l, src_file))
        return -ENOENT;
    rc = loader_append(l, FW_CFG_LOADER_ADD_POINTER, &c);
    if (rc < 0)
        return rc;
    put_name(c + LD_FILE, dest_file);
    put_name(c + LD_PTR_SRC, src_file);
    put_le32(c + LD_PTR_OFFSET, dest_offset);
    c[LD_PTR_SIZE] = size;
    return 0;
}

int fw_cfg_loader_add_checksum(struct fw_cfg_loader *l, const char *file, uint32_t result_offset,
                               uint32_t start, uint32_t length)
{
    uint32_t end;
    uint8_t *c;
    int rc = check_name(file);

    if (rc < 0)
        return rc;
    if (__builtin_add_overflow(start, length, &end))
        return -EINVAL;
    if (!loader_allocated(l, file))
        return -ENOENT;
    rc = loader_append(l, FW_CFG_LOADER_ADD_CHECKSUM, &c);
    if (rc < 0)
        return rc;
    put_name(c + LD_FILE, file);
    put_le32(c + LD_CK_RESULT, result_offset);
    put_le32(c + LD_CK_START, start);
    put_le32(c + LD_CK_LENGTH, length);
    return 0;
}

/* Length of the file named by a command's NUL-padded name field, or -errno. */
static int64_t loader_file_len(struct fw_cfg *fw, const uint8_t *field)
{
    char name[LD_NAME_SIZE];

    if (field[LD_NAME_SIZE - 1] != 0)
        return -EINVAL;
    memcpy(name, field, sizeof(name));
    pthread_mutex_lock(&fw->lock);
    ptrdiff_t i = find_file(fw, name);
    int64_t len = i < 0 ? -ENOENT : (int64_t)fw->files[i].item.len;
    pthread_mutex_unlock(&fw->lock);
    return len;
}

/* Checks one command against fw's files. */
static int loader_check(struct fw_cfg *fw, const uint8_t *c)
{
    int64_t len = loader_file_len(fw, c + LD_FILE), src;

    if (len < 0)
        return (int)len;
    switch (get_le32(c)) {
    case FW_CFG_LOADER_ALLOCATE:
        return len > 0 ? 0 : -ENOENT; /* SeaBIOS silently skips empty files */
    case FW_CFG_LOADER_ADD_POINTER:
        src = loader_file_len(fw, c + LD_PTR_SRC);
        if (src < 0)
            return (int)src;
        return (uint64_t)get_le32(c + LD_PTR_OFFSET) + c[LD_PTR_SIZE] <= (uint64_t)len ? 0
                                                                                       : -ERANGE;
    case FW_CFG_LOADER_ADD_CHECKSUM:
        if (get_le32(c + LD_CK_RESULT) >= (uint64_t)len ||
            (uint64_t)get_le32(c + LD_CK_START) + get_le32(c + LD_CK_LENGTH) > (uint64_t)len)
            return -ERANGE;
        return 0;
    default:
        return -EINVAL;
    }
}

int fw_cfg_add_table_loader(struct fw_cfg *fw, const struct fw_cfg_loader *l)
{
    if (!l->buf || l->len == 0 || l->len % FW_CFG_LOADER_CMD_SIZE)
        return -EINVAL;
    for (size_t off = 0; off < l->len; off += FW_CFG_LOADER_CMD_SIZE) {
        int rc = loader_check(fw, l->buf + off);
        if (rc < 0)
            return rc;
    }
    return fw_cfg_add_file(fw, FW_CFG_LOADER_FILE, l->buf, l->len);
}

/* ---- bootorder ---------------------------------------------------------- */

/* Appends "/name@slot[,func]" at buf[n] (buf has room: see the bound below). */
static size_t put_node(char *buf, size_t cap, size_t n, const char *name, struct fw_cfg_pci_loc loc)
{
    n += (size_t)snprintf(buf + n, cap - n, "/%s@%x", name, loc.slot);
    if (loc.func)
        n += (size_t)snprintf(buf + n, cap - n, ",%x", loc.func);
    return n;
}

int fw_cfg_bootorder_path(char *out, size_t cap, const struct fw_cfg_boot_dev *dev)
{
    /*
     * Longest path: "/pci@i0cf8" (10) + 7 bridges "/pci-bridge@1f,7" (16
     * each) + "/pci1234,5678@1f,7" (18) + "/namespace@ffffffff,0" (21) = 161.
     */
    char buf[192], name[16];
    size_t n = 0;

    if (!dev || dev->depth == 0 || dev->depth > FW_CFG_BOOT_MAX_DEPTH)
        return -EINVAL;
    for (size_t i = 0; i < dev->depth; i++)
        if (dev->path[i].slot > 31 || dev->path[i].func > 7)
            return -EINVAL;
    switch (dev->kind) {
    case FW_CFG_BOOT_VIRTIO_BLK:
        snprintf(name, sizeof(name), "scsi");
        break;
    case FW_CFG_BOOT_VIRTIO_NET:
        snprintf(name, sizeof(name), "ethernet");
        break;
    case FW_CFG_BOOT_NVME:
        if (dev->nsid == 0)
            return -EINVAL;
        snprintf(name, sizeof(name), "pci%04x,%04x", dev->vendor_id, dev->device_id);
        break;
    default:
        return -EINVAL;
    }
    n += (size_t)snprintf(buf, sizeof(buf), "/pci@i0cf8");
    for (size_t i = 0; i + 1 < dev->depth; i++)
        n = put_node(buf, sizeof(buf), n, "pci-bridge", dev->path[i]);
    n = put_node(buf, sizeof(buf), n, name, dev->path[dev->depth - 1]);
    if (dev->kind == FW_CFG_BOOT_VIRTIO_BLK)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "/disk@0,0");
    else if (dev->kind == FW_CFG_BOOT_VIRTIO_NET)
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "/ethernet-phy@0");
    else
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "/namespace@%" PRIx32 ",0", dev->nsid);
    if (n + 1 > cap) {
        if (cap) {
            memcpy(out, buf, cap - 1);
            out[cap - 1] = '\0';
        }
        return -E2BIG;
    }
    memcpy(out, buf, n + 1);
    return (int)n;
}

int fw_cfg_add_bootorder(struct fw_cfg *fw, const struct fw_cfg_boot_dev *devs, size_t n,
                         bool strict)
{
    enum { PATH_MAX_LEN = 256 };
    size_t pos = 0;
    int rc;

    if (n > FW_CFG_BOOT_MAX_DEVS)
        return -E2BIG;
    if (n == 0 && !strict)
        return 0;
    if (n && !devs)
        return -EINVAL;
    char *buf = malloc(n * PATH_MAX_LEN + sizeof("HALT"));
    if (!buf)
        return -ENOMEM;
    for (size_t i = 0; i < n; i++) {
        rc = fw_cfg_bootorder_path(buf + pos, PATH_MAX_LEN, &devs[i]);
        if (rc < 0) {
            free(buf);
            return rc;
        }
        pos += (size_t)rc;
        buf[pos++] = '\n';
    }
    if (strict) {
        memcpy(buf + pos, "HALT", sizeof("HALT"));
        pos += sizeof("HALT");
    } else {
        buf[pos - 1] = '\0'; /* the last '\n' becomes the terminator */
    }
    rc = fw_cfg_add_file(fw, "bootorder", buf, pos);
    free(buf);
    return rc;
}

/* ---- migration ---------------------------------------------------------- */

int fw_cfg_save(const struct fw_cfg *cfw, struct mig_out *o)
{
    struct fw_cfg *fw = (struct fw_cfg *)cfw; /* for the lock only */
    pthread_mutex_lock(&fw->lock);
    mig_put_u16(o, fw->selector);
    mig_put_u32(o, fw->offset);
    mig_put_u64(o, fw->dma_addr);
    uint16_t nw = 0;
    for (size_t i = 0; i < fw->nfiles; i++)
        nw += fw->files[i].item.writable;
    mig_put_u16(o, nw);
    for (size_t i = 0; i < fw->nfiles; i++) {
        const struct fw_cfg_file *f = &fw->files[i];
        if (!f->item.writable)
            continue;
        mig_put_blob(o, f->name, strlen(f->name));
        mig_put_blob(o, f->item.data, f->item.len);
    }
    pthread_mutex_unlock(&fw->lock);
    return mig_out_ok(o) ? 0 : -ENOMEM;
}

/* Checks the writable files against ours; data[i] points into the input. */
static bool load_files(struct fw_cfg *fw, struct mig_in *in, const uint8_t **data)
{
    uint16_t nw = mig_get_u16(in);
    size_t k = 0;
    for (size_t i = 0; i < fw->nfiles && mig_in_ok(in); i++) {
        const struct fw_cfg_file *f = &fw->files[i];
        if (!f->item.writable)
            continue;
        size_t nlen, dlen;
        const uint8_t *name = mig_get_blob(in, FW_CFG_MAX_NAME, &nlen);
        data[i] = mig_get_blob(in, FW_CFG_MAX_ITEM_LEN, &dlen);
        if (!name || nlen != strlen(f->name) || memcmp(name, f->name, nlen) != 0 ||
            dlen != f->item.len || (dlen && !data[i]))
            return false;
        k++;
    }
    return mig_in_ok(in) && k == nw;
}

int fw_cfg_load(struct fw_cfg *fw, struct mig_in *in, uint32_t version)
{
    if (version != FW_CFG_STATE_VERSION)
        return -EPROTO;
    uint16_t selector = mig_get_u16(in);
    uint32_t offset = mig_get_u32(in);
    uint64_t dma_addr = mig_get_u64(in);
    pthread_mutex_lock(&fw->lock);
    const uint8_t **data = calloc(fw->nfiles ? fw->nfiles : 1, sizeof(*data));
    bool ok = data && load_files(fw, in, data) && mig_in_done(in);
    const struct fw_cfg_item *cur = resolve(fw, selector);
    ok &= cur ? offset <= cur->len : offset == 0;
    if (ok) {
        for (size_t i = 0; i < fw->nfiles; i++) {
            struct fw_cfg_item *it = &fw->files[i].item;
            if (it->writable && it->len)
                memcpy(it->data, data[i], it->len);
        }
        fw->selector = selector;
        fw->cur = cur;
        fw->offset = offset;
        fw->dma_addr = dma_addr;
    }
    pthread_mutex_unlock(&fw->lock);
    int rc = ok ? 0 : data ? -EINVAL : -ENOMEM;
    free(data);
    if (rc < 0)
        mig_in_fail(in);
    return rc;
}
