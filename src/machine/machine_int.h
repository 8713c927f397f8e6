/* SPDX-License-Identifier: MPL-2.0 */
/* Private to src/machine: the machine's parts. */
#ifndef CELLA_MACHINE_MACHINE_INT_H
#define CELLA_MACHINE_MACHINE_INT_H

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>

#include "devices/io.h"
#include "machine/bus.h"
#include "machine/cpuid.h"
#include "machine/guest_mem.h"
#include "machine/machine.h"
#include "machine/vcpu.h"

/* Signal that interrupts KVM_RUN so a vCPU thread notices a stop request. */
#define MACHINE_KICK_SIGNAL SIGUSR1

struct machine_devices; /* machine_devices.c */

struct machine {
    int kvm_fd, vm_fd;
    struct guest_mem mem;
    unsigned ncpus;
    struct vcpu *vcpus;
    struct bus pio, mmio;
    struct irq_sink irq;
    struct cpuid_table cpuid; /* the template; vCPUs add their APIC ids */
    struct machine_callbacks cb;
    atomic_bool stopping;
    atomic_bool event_sent; /* only the first terminal event is reported */
    bool started;
    struct machine_devices *dev;
    struct backend_set *backends; /* not owned */

    /*
     * Pausing (machine_pause): while `pausing` is set every vCPU thread
     * completes its pending exit and parks in vcpu_park() until it is
     * cleared or the machine stops. `parked` and `exited` count the vCPU
     * threads parked and gone; both under run_lock, and run_cond is
     * broadcast whenever one of them or `pausing` changes.
     */
    pthread_mutex_t run_lock;
    pthread_cond_t run_cond;
    atomic_bool pausing;
    unsigned parked, exited;
    unsigned nthreads;       /* vCPU threads machine_start created */
    bool paused;             /* owner's thread: machine_pause returned */
    bool devices_quiesced;   /* owner's thread */
    struct machine_mig *mig; /* machine_mig.c: dirty log, MSR list, load bookkeeping */

    /*
     * Throttling (machine_throttle): throttle_pct is read by the vCPU
     * threads; the throttle thread sets each vCPU's throttle_due and kicks
     * it once per period. throttle_lock serializes machine_throttle and
     * guards throttle_started; throttle_cond (with it) wakes the thread.
     */
    pthread_mutex_t throttle_lock;
    pthread_cond_t throttle_cond;
    atomic_uint throttle_pct;
    pthread_t throttle_thread;
    bool throttle_started;
};

/* The time a vCPU thread sleeps per throttle period (vcpu.c), in nanoseconds. */
#define MACHINE_THROTTLE_SLICE_NS 10000000ull

/* Reports an event to the owner; terminal events also stop the vCPUs. */
void machine_event(struct machine *m, enum machine_event ev, const char *detail);
void machine_eventf(struct machine *m, enum machine_event ev, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Asks every vCPU thread to leave KVM_RUN. Any thread. */
void machine_kick(struct machine *m);

/* Parks the calling vCPU thread while m->pausing (vcpu.c calls it). */
void machine_vcpu_parked_wait(struct machine *m);
/* The calling vCPU thread is about to return. */
void machine_vcpu_exited(struct machine *m);

/* machine_mig.c: frees the migration state; accepts m->mig == NULL. */
void machine_mig_free(struct machine *m);

/* machine_devices.c: the platform devices and the boot source. */
int machine_devices_create(struct machine *m, const struct instance_spec *spec,
                           const struct machine_host *host, struct cella_errors *errs);
void machine_devices_destroy(struct machine *m);
size_t machine_devices_serial_input(struct machine *m, unsigned com, const uint8_t *buf,
                                    size_t len);

/* ---- live migration (machine_mig.c, machine_devices.c) ---- */

struct mig_out;
struct mig_in;

/*
 * How one type of device state becomes a payload: its kind, the versions
 * this build writes (version) and still reads/writes (min_version), and
 * the functions that write and read the bytes. save runs with the machine
 * paused; load on a machine that is not running, with untrusted bytes:
 * it validates everything and returns -EINVAL (reason in errs) for bad
 * input. Both return 0 or -errno.
 */
struct machine_mig_ops {
    const char *kind;
    uint32_t version, min_version;
    int (*save)(void *dev, uint32_t version, struct mig_out *o);
    int (*load)(void *dev, uint32_t version, struct mig_in *in, struct cella_errors *errs);
};

#define MACHINE_MIG_ID_MAX 64

/* One device instance that carries state: its ops, the device and its id. */
struct machine_mig_dev {
    const struct machine_mig_ops *ops;
    void *dev;
    char id[MACHINE_MIG_ID_MAX];
};

/* machine_mig.c: the device payload types machine_devices.c lists. */
extern const struct machine_mig_ops machine_mig_uart_ops;
extern const struct machine_mig_ops machine_mig_cmos_ops;
extern const struct machine_mig_ops machine_mig_pm_ops;
extern const struct machine_mig_ops machine_mig_virtio_blk_ops;
extern const struct machine_mig_ops machine_mig_virtio_net_ops;
extern const struct machine_mig_ops machine_mig_i8042_ops;
extern const struct machine_mig_ops machine_mig_pvpanic_ops;
extern const struct machine_mig_ops machine_mig_fw_cfg_ops;
extern const struct machine_mig_ops machine_mig_nvme_ops;
extern const struct machine_mig_ops machine_mig_pci_config_ops;

/*
 * machine_devices.c: the devices with migration state into out[0..max),
 * in a stable order; returns how many there are (may exceed max).
 */
size_t machine_devices_mig_list(struct machine *m, struct machine_mig_dev *out, size_t max);
/*
 * Quiesces the devices: in-flight I/O completes, queues and NIC receive
 * stop, so nothing but the vCPUs writes guest RAM. Owner's thread, vCPUs
 * parked. 0 or -errno.
 */
int machine_devices_quiesce(struct machine *m);
/* Logs every virtio function's and NVMe controller's state (machine_debug_dump). */
void machine_devices_debug(struct machine *m);
/* Undoes machine_devices_quiesce. */
void machine_devices_resume(struct machine *m);
/* Maps every BAR where the (loaded) PCI config says it is; re-arms ioeventfds. */
void machine_devices_remap(struct machine *m);

#endif
