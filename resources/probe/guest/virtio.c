/*
 * virtio-mmio (version 2 register layout) and one split virtqueue, driven
 * by polling. Feature negotiation follows what Linux's virtio_blk accepts.
 *
 * Descriptors are not allocated dynamically: request slot s owns the
 * descriptors [s*DPS, s*DPS + DPS), so a used entry's id names its slot.
 */
#include "probe.h"

#define REG_MAGIC 0x000
#define REG_VERSION 0x004
#define REG_DEVICE_ID 0x008
#define REG_DEVICE_FEATURES 0x010
#define REG_DEVICE_FEATURES_SEL 0x014
#define REG_DRIVER_FEATURES 0x020
#define REG_DRIVER_FEATURES_SEL 0x024
#define REG_QUEUE_SEL 0x030
#define REG_QUEUE_NUM_MAX 0x034
#define REG_QUEUE_NUM 0x038
#define REG_QUEUE_READY 0x044
#define REG_QUEUE_NOTIFY 0x050
#define REG_INTERRUPT_STATUS 0x060
#define REG_INTERRUPT_ACK 0x064
#define REG_STATUS 0x070
#define REG_QUEUE_DESC_LOW 0x080
#define REG_QUEUE_DESC_HIGH 0x084
#define REG_QUEUE_DRIVER_LOW 0x090
#define REG_QUEUE_DRIVER_HIGH 0x094
#define REG_QUEUE_DEVICE_LOW 0x0a0
#define REG_QUEUE_DEVICE_HIGH 0x0a4
#define REG_CONFIG_GENERATION 0x0fc
#define REG_CONFIG 0x100

#define VIRTIO_MMIO_MAGIC 0x74726976
#define VIRTIO_ID_BLOCK 2

#define STATUS_ACKNOWLEDGE 1
#define STATUS_DRIVER 2
#define STATUS_DRIVER_OK 4
#define STATUS_FEATURES_OK 8
#define STATUS_FAILED 128

#define VRING_USED_F_NO_NOTIFY 1

/* What Linux's virtio_blk (plus the transport) would accept. */
#define ACCEPTED_FEATURES                                                              \
	(VIRTIO_F_VERSION_1 | VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_CONFIG_WCE |           \
	 VIRTIO_BLK_F_BLK_SIZE | VIRTIO_BLK_F_SEG_MAX | VIRTIO_BLK_F_RO |              \
	 VIRTIO_BLK_F_DISCARD | VIRTIO_BLK_F_WRITE_ZEROES | VIRTIO_RING_F_EVENT_IDX)

u64 g_nofeatures;
u64 g_extra_features;

static struct vdesc desc_mem[MAX_DISKS][QMAX] __attribute__((aligned(4096)));
static u16 avail_mem[MAX_DISKS][2 + QMAX + 1 + 3] __attribute__((aligned(8)));
static u8 used_mem[MAX_DISKS][4 + 8 * QMAX + 2 + 6] __attribute__((aligned(8)));

u32 mmio_r32(struct disk *d, u32 off) { return *(volatile u32 *)(d->base + off); }
void mmio_w32(struct disk *d, u32 off, u32 v) { *(volatile u32 *)(d->base + off) = v; }
u8 cfg_r8(struct disk *d, u32 off) { return *(volatile u8 *)(d->base + REG_CONFIG + off); }
void cfg_w8(struct disk *d, u32 off, u8 v) { *(volatile u8 *)(d->base + REG_CONFIG + off) = v; }
u32 cfg_r32(struct disk *d, u32 off) { return mmio_r32(d, REG_CONFIG + off); }

int has(struct disk *d, u64 feature) { return (d->negotiated & feature) != 0; }

static volatile u16 *used_idx(struct disk *d) { return (volatile u16 *)(d->used + 2); }
static volatile u16 *avail_event(struct disk *d) { return (volatile u16 *)(d->used + 4 + 8 * d->qsize); }
static volatile u16 *used_event(struct disk *d) { return (volatile u16 *)&d->avail[2 + d->qsize]; }

static void add_status(struct disk *d, u32 bits)
{
	mmio_w32(d, REG_STATUS, mmio_r32(d, REG_STATUS) | bits);
}

void disk_reset(struct disk *d)
{
	mmio_w32(d, REG_STATUS, 0);
	/* virtio-mmio 4.2.3.1: reset is done when status reads back 0. */
	for (int i = 0; i < 1000000 && mmio_r32(d, REG_STATUS) != 0; i++)
		;
	d->avail_idx = 0;
	d->last_used = 0;
	for (int s = 0; s < NSLOTS; s++)
		d->slots[s].busy = 0;
}

/* 64-bit config fields may tear: re-read until the generation is stable. */
static u64 cfg_r64(struct disk *d, u32 off)
{
	u32 gen, lo, hi;
	do {
		gen = mmio_r32(d, REG_CONFIG_GENERATION);
		lo = cfg_r32(d, off);
		hi = cfg_r32(d, off + 4);
	} while (gen != mmio_r32(d, REG_CONFIG_GENERATION));
	return ((u64)hi << 32) | lo;
}

static const char *setup_queue(struct disk *d)
{
	mmio_w32(d, REG_QUEUE_SEL, 0);
	if (mmio_r32(d, REG_QUEUE_READY) != 0)
		return "queue_already_ready";
	u32 max = mmio_r32(d, REG_QUEUE_NUM_MAX);
	if (max == 0)
		return "queue_unavailable";
	u32 q = QMAX;
	while (q > max)
		q >>= 1;
	if (q < DPS)
		return "queue_too_small";
	d->qsize = q;
	d->nslots = q / DPS;
	d->desc = desc_mem[d->index];
	d->avail = avail_mem[d->index];
	d->used = used_mem[d->index];
	fill_u64(d->desc, 0, sizeof(desc_mem[0]));
	fill_u64(d->avail, 0, sizeof(avail_mem[0]));
	fill_u64(d->used, 0, sizeof(used_mem[0]));
	mmio_w32(d, REG_QUEUE_NUM, q);
	u64 a = (u64)d->desc, b = (u64)d->avail, c = (u64)d->used;
	mmio_w32(d, REG_QUEUE_DESC_LOW, (u32)a);
	mmio_w32(d, REG_QUEUE_DESC_HIGH, (u32)(a >> 32));
	mmio_w32(d, REG_QUEUE_DRIVER_LOW, (u32)b);
	mmio_w32(d, REG_QUEUE_DRIVER_HIGH, (u32)(b >> 32));
	mmio_w32(d, REG_QUEUE_DEVICE_LOW, (u32)c);
	mmio_w32(d, REG_QUEUE_DEVICE_HIGH, (u32)(c >> 32));
	mmio_w32(d, REG_QUEUE_READY, 1);
	return NULL;
}

const char *disk_init(struct disk *d)
{
	if (mmio_r32(d, REG_MAGIC) != VIRTIO_MMIO_MAGIC)
		return "bad_magic";
	if (mmio_r32(d, REG_VERSION) != 2)
		return "not_virtio_mmio_version_2";
	if (mmio_r32(d, REG_DEVICE_ID) != VIRTIO_ID_BLOCK)
		return "not_a_block_device";
	disk_reset(d);
	add_status(d, STATUS_ACKNOWLEDGE);
	add_status(d, STATUS_DRIVER);

	mmio_w32(d, REG_DEVICE_FEATURES_SEL, 0);
	u64 lo = mmio_r32(d, REG_DEVICE_FEATURES);
	mmio_w32(d, REG_DEVICE_FEATURES_SEL, 1);
	u64 hi = mmio_r32(d, REG_DEVICE_FEATURES);
	d->offered = (hi << 32) | lo;
	d->negotiated = d->offered & (ACCEPTED_FEATURES | g_extra_features) & ~g_nofeatures;
	if (!has(d, VIRTIO_F_VERSION_1))
		return "no_version_1";
	mmio_w32(d, REG_DRIVER_FEATURES_SEL, 0);
	mmio_w32(d, REG_DRIVER_FEATURES, (u32)d->negotiated);
	mmio_w32(d, REG_DRIVER_FEATURES_SEL, 1);
	mmio_w32(d, REG_DRIVER_FEATURES, (u32)(d->negotiated >> 32));
	add_status(d, STATUS_FEATURES_OK);
	if (!(mmio_r32(d, REG_STATUS) & STATUS_FEATURES_OK)) {
		add_status(d, STATUS_FAILED);
		return "features_not_ok";
	}

	d->capacity = cfg_r64(d, BLKCFG_CAPACITY);
	d->blk_size = has(d, VIRTIO_BLK_F_BLK_SIZE) ? cfg_r32(d, BLKCFG_BLK_SIZE) : SECTOR;
	d->seg_max = has(d, VIRTIO_BLK_F_SEG_MAX) ? cfg_r32(d, BLKCFG_SEG_MAX) : DPS - 2;
	if (d->seg_max == 0 || d->seg_max > DPS - 2)
		d->seg_max = DPS - 2;
	/* Linux: without CONFIG_WCE the cache is write-back iff FLUSH exists. */
	d->writeback = has(d, VIRTIO_BLK_F_CONFIG_WCE) ? cfg_r8(d, BLKCFG_WRITEBACK)
						       : (u8)has(d, VIRTIO_BLK_F_FLUSH);

	const char *e = setup_queue(d);
	if (e) {
		add_status(d, STATUS_FAILED);
		return e;
	}
	add_status(d, STATUS_DRIVER_OK);
	if (mmio_r32(d, REG_STATUS) & STATUS_NEEDS_RESET)
		return "needs_reset_after_init";
	return NULL;
}

void submit_raw(struct disk *d, int s, const struct vdesc *descs, int n)
{
	u16 head = (u16)(s * DPS);
	for (int i = 0; i < n; i++) {
		struct vdesc v = descs[i];
		if (i + 1 < n) {
			v.flags |= VRING_DESC_F_NEXT;
			v.next = (u16)(head + i + 1);
		}
		d->desc[head + i] = v;
	}
	d->slots[s].busy = 1;
	publish(d, head);
}

void publish(struct disk *d, u16 head)
{
	((volatile u16 *)d->avail)[2 + d->avail_idx % d->qsize] = head;
	cbarrier(); /* x86 keeps stores in order; the compiler must too */
	u16 old = d->avail_idx;
	u16 new = (u16)(old + 1);
	d->avail_idx = new;
	((volatile u16 *)d->avail)[1] = new;
	mb(); /* the idx store must be visible before we read the device's hint */
	int notify;
	if (has(d, VIRTIO_RING_F_EVENT_IDX))
		notify = (u16)(new - *avail_event(d) - 1) < (u16)(new - old);
	else
		notify = !(((volatile u16 *)d->used)[0] & VRING_USED_F_NO_NOTIFY);
	if (notify)
		mmio_w32(d, REG_QUEUE_NOTIFY, 0);
}

void submit_req(struct disk *d, int s, u32 type, u64 sector, const struct seg *segs, int n)
{
	struct slot *sl = &d->slots[s];
	struct vdesc v[DPS];
	sl->hdr.type = type;
	sl->hdr.reserved = 0;
	sl->hdr.sector = sector;
	sl->status = 0xff; /* a device that completes without writing it shows */
	v[0] = (struct vdesc){(u64)&sl->hdr, sizeof(sl->hdr), 0, 0};
	for (int i = 0; i < n; i++)
		v[1 + i] = (struct vdesc){segs[i].addr, segs[i].len,
					  segs[i].dev_writes ? VRING_DESC_F_WRITE : 0, 0};
	v[1 + n] = (struct vdesc){(u64)&sl->status, 1, VRING_DESC_F_WRITE, 0};
	submit_raw(d, s, v, n + 2);
}

/* Consumes the used entry at last_used (the caller saw idx move past it). */
static u32 take_used(struct disk *d)
{
	cbarrier(); /* x86 does not reorder loads; read the entry after idx */
	u32 id = *(volatile u32 *)(d->used + 4 + 8 * (d->last_used % d->qsize));
	d->last_used++;
	if (has(d, VIRTIO_RING_F_EVENT_IDX))
		*used_event(d) = d->last_used;
	return id;
}

/* The slot a used id names, now free again; POLL_BAD_ID when the id is not
 * the head of a request of ours that is in flight. */
static int claim_slot(struct disk *d, u32 id)
{
	u32 s = id / DPS;
	if (id % DPS || s >= d->nslots || !d->slots[s].busy)
		return POLL_BAD_ID;
	d->slots[s].busy = 0;
	return (int)s;
}

int poll_used(struct disk *d, u64 timeout_cycles)
{
	u32 id;
	int r = next_used(d, timeout_cycles, &id);
	if (r < 0)
		return r;
	return claim_slot(d, id);
}

int next_used(struct disk *d, u64 timeout_cycles, u32 *id_out)
{
	u64 start = rdtsc();
	for (u32 i = 1; *used_idx(d) == d->last_used; i++) {
		if ((i & 255) == 0) {
			if (mmio_r32(d, REG_STATUS) & STATUS_NEEDS_RESET)
				return POLL_NEEDS_RESET;
			if (rdtsc() - start > timeout_cycles)
				return POLL_TIMEOUT;
		}
	}
	*id_out = take_used(d);
	ack_interrupt(d);
	return 0;
}

int try_used(struct disk *d)
{
	if (*used_idx(d) == d->last_used)
		return POLL_NONE;
	return claim_slot(d, take_used(d));
}

void ack_interrupt(struct disk *d)
{
	u32 isr = mmio_r32(d, REG_INTERRUPT_STATUS);
	if (isr)
		mmio_w32(d, REG_INTERRUPT_ACK, isr);
}

int do_req(struct disk *d, u32 type, u64 sector, const struct seg *segs, int n)
{
	submit_req(d, 0, type, sector, segs, n);
	int r = poll_used(d, TIMEOUT_IO);
	if (r < 0)
		return r;
	return d->slots[0].status;
}

int free_slot(struct disk *d)
{
	for (u32 s = 0; s < d->nslots; s++)
		if (!d->slots[s].busy)
			return (int)s;
	return -1;
}

u32 device_status(struct disk *d) { return mmio_r32(d, REG_STATUS); }
