/*
 * The probe guest: shared types and declarations.
 *
 * Everything runs at ring 0 with interrupts off, integer-only (built with
 * -mgeneral-regs-only): on hosts whose KVM emulates ring-0 code, SSE,
 * popcnt, xsave, int3, clac and stac are not available.
 */
#ifndef PROBE_H
#define PROBE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;

#define NULL ((void *)0)

/* ---- util.c: ports, serial, formatting, strings, time ---- */
void outb(u16 port, u8 v);
u8 inb(u16 port);
void putc(char c);
void puts(const char *s);
void put_dec(u64 v);
void put_hex(u64 v);
/* Prints " key=<decimal>" / " key=0x<hex>" / " key=<str>". */
void kv_dec(const char *key, u64 v);
void kv_hex(const char *key, u64 v);
void kv_str(const char *key, const char *s);
void endl(void);
void *memset(void *d, int c, unsigned long n);
void *memcpy(void *d, const void *s, unsigned long n);
int streq_n(const char *a, const char *b, unsigned long n);
unsigned long strlen(const char *s);
/* Parses a number (decimal or 0x hex) with an optional K/M/G suffix. */
const char *parse_num(const char *s, u64 *out);
void fill_u64(void *buf, u64 v, u32 bytes);
void fill_pattern(void *buf, u64 seed, u32 bytes);
/* Returns the byte offset of the first difference, or -1 when equal. */
i64 cmp_u64(const void *a, const void *b, u32 bytes);
i64 find_nonzero(const void *a, u32 bytes);
u64 rdtsc(void);
/* Full memory barrier (a locked RMW; mfence is SSE2). */
static inline void mb(void) { __asm__ volatile("lock orq $0,(%%rsp)" ::: "memory", "cc"); }
static inline void cbarrier(void) { __asm__ volatile("" ::: "memory"); }

/* ---- cmdline.c ---- */
#define MAX_DISKS 8
struct mmio_entry {
	u64 addr;
	u64 size;
	u64 irq;
};
struct config {
	char scenarios[128];
	int disk;               /* -1: every disk */
	u64 nofeatures;         /* feature bits the driver must not accept */
	u64 stream_count;
	u64 stream_depth;
	u64 stream_flush_every;
	u64 stream_keep_going;   /* report failed requests and go on */
	u64 soak_depth;         /* soak: requests in flight per disk */
	u64 soak_seed;
	u64 soak_count;         /* soak: random-mix requests per disk (0: no limit) */
	u64 soak_seconds;       /* soak: TSC seconds from its start (0: no limit) */
	u64 soak_blocks;        /* soak: 4 KiB blocks per disk under test */
	u64 soak_progress;      /* soak: seconds between progress lines (0: none) */
	int ndisks;
	struct mmio_entry mmio[MAX_DISKS];
	const char *error;      /* first parse error, or NULL */
};
void parse_cmdline(const char *cmdline, struct config *cfg);
/* Walks a comma list: copies the next item into buf, returns the rest. */
const char *next_item(const char *list, char *buf, unsigned long cap);

/* ---- virtio.c: the virtio-mmio transport and the split virtqueue ---- */
/* ferrite's queue maximum (and QEMU's): 32 request slots, so a scenario can
 * keep 32 requests in flight per disk. */
#define QMAX 256                /* queue size we ask for at most */
#define DPS 8                   /* descriptors owned by each request slot */
#define NSLOTS (QMAX / DPS)

#define VIRTIO_F_VERSION_1 (1UL << 32)
#define VIRTIO_RING_F_EVENT_IDX (1UL << 29)
#define VIRTIO_RING_F_INDIRECT_DESC (1UL << 28)
#define VIRTIO_BLK_F_SEG_MAX (1UL << 2)
#define VIRTIO_BLK_F_RO (1UL << 5)
#define VIRTIO_BLK_F_BLK_SIZE (1UL << 6)
#define VIRTIO_BLK_F_FLUSH (1UL << 9)
#define VIRTIO_BLK_F_CONFIG_WCE (1UL << 11)
#define VIRTIO_BLK_F_DISCARD (1UL << 13)
#define VIRTIO_BLK_F_WRITE_ZEROES (1UL << 14)

#define VIRTIO_BLK_T_IN 0
#define VIRTIO_BLK_T_OUT 1
#define VIRTIO_BLK_T_FLUSH 4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_T_DISCARD 11
#define VIRTIO_BLK_T_WRITE_ZEROES 13

#define VIRTIO_BLK_S_OK 0
#define VIRTIO_BLK_S_IOERR 1
#define VIRTIO_BLK_S_UNSUPP 2

#define STATUS_NEEDS_RESET 64

/* Blk config offsets (virtio spec 5.2.4). */
#define BLKCFG_CAPACITY 0
#define BLKCFG_SEG_MAX 12
#define BLKCFG_BLK_SIZE 20
#define BLKCFG_WRITEBACK 32
#define BLKCFG_MAX_DISCARD_SECTORS 36
#define BLKCFG_MAX_WRITE_ZEROES_SECTORS 48

#define VRING_DESC_F_NEXT 1
#define VRING_DESC_F_WRITE 2
#define VRING_DESC_F_INDIRECT 4

struct vdesc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

struct slot {
	struct blk_hdr hdr;
	struct {
		u64 sector;
		u32 num_sectors;
		u32 flags;
	} range;                /* discard / write-zeroes payload */
	u8 status;
	u8 busy;
	u64 tag;                /* caller's data, e.g. a stream sequence */
};

struct disk {
	int index;
	u64 base;
	u64 offered;
	u64 negotiated;
	u64 capacity;
	u32 blk_size;
	u32 seg_max;
	u8 writeback;
	u32 qsize;
	u32 nslots;
	u16 avail_idx;
	u16 last_used;
	struct vdesc *desc;
	u16 *avail;             /* flags, idx, ring[qsize], used_event */
	u8 *used;               /* flags, idx, ring[qsize] {id,len}, avail_event */
	struct slot slots[NSLOTS];
};

/* A data segment of a request: guest address, length, device-writable? */
struct seg {
	u64 addr;
	u32 len;
	int dev_writes;
};

extern u64 g_nofeatures;
/* Features accepted on top of what Linux's virtio_blk takes (scenarios
 * that need them set this and call disk_init again). */
extern u64 g_extra_features;
u32 mmio_r32(struct disk *d, u32 off);
void mmio_w32(struct disk *d, u32 off, u32 v);
u8 cfg_r8(struct disk *d, u32 off);
void cfg_w8(struct disk *d, u32 off, u8 v);
u32 cfg_r32(struct disk *d, u32 off);
/* Resets the device and brings it up to DRIVER_OK; returns NULL or a reason. */
const char *disk_init(struct disk *d);
void disk_reset(struct disk *d);
int has(struct disk *d, u64 feature);
/* Raw chain submission: links n descriptors of slot s, publishes, notifies. */
void submit_raw(struct disk *d, int s, const struct vdesc *descs, int n);
/* Builds header + segments + status for slot s and submits it. */
void submit_req(struct disk *d, int s, u32 type, u64 sector, const struct seg *segs, int n);
#define POLL_TIMEOUT (-1)
#define POLL_NEEDS_RESET (-2)
#define POLL_BAD_ID (-3)
#define POLL_NONE (-4)
u32 device_status(struct disk *d);
/* Waits for the next used entry; returns its slot or POLL_*. */
int poll_used(struct disk *d, u64 timeout_cycles);
/* Publishes descriptor `head` in the available ring and notifies. */
void publish(struct disk *d, u16 head);
/* Waits for the next used entry and stores its id; 0 or POLL_*. */
int next_used(struct disk *d, u64 timeout_cycles, u32 *id);
/* Takes the next used entry if there is one, without waiting: its slot,
 * POLL_NONE, or POLL_BAD_ID. Leaves the interrupt status to the caller. */
int try_used(struct disk *d);
/* Acknowledges whatever the interrupt status shows. */
void ack_interrupt(struct disk *d);
/* Submits on slot 0, waits; returns the status byte or POLL_*. */
int do_req(struct disk *d, u32 type, u64 sector, const struct seg *segs, int n);
int free_slot(struct disk *d);
#define TIMEOUT_IO (1UL << 36)     /* TSC cycles: ~20-30 s at 2-3 GHz */
#define TIMEOUT_SHORT (1UL << 31)  /* ~1 s: how long badchain waits */

/* ---- main.c ---- */
/* End of guest RAM from the PVH memory map (0 when there is none). */
extern u64 g_ram_end;

/* ---- scenarios.c ---- */
/* Each returns 0 on pass; on failure it records a reason with fail(). */
int fail(const char *reason);
const char *first_failure(void);
int scenario_known(const char *name);
int run_scenario(const char *name, struct disk *d, struct config *cfg);
int stream(struct disk *d, struct config *cfg);
int scen_bounce(struct disk *d);

/* ---- soak.c ---- */
/* Drives the n disks at once; returns 0 when every one passed. */
int soak(struct disk *const *disks, int n, struct config *cfg);

#define SECTOR 512
#define BUF_SIZE 4096
extern u8 bufs[NSLOTS][BUF_SIZE];

#endif
