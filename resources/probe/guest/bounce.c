/*
 * The bounce scenario: what a guest can make the host allocate. Requests of
 * the largest size a chain allows (254 data descriptors, each 64 KiB, in an
 * indirect table) whose every data descriptor points at the same buffer at
 * an odd address, so an O_DIRECT host must copy them through bounce
 * buffers: BW writes in flight, then BR reads in flight, all into the same
 * odd buffer. Without a bound the host would hold a bounce buffer of each
 * request's full size (16 MiB) at once; the host test measures ferrite's
 * peak memory and checks the image, this side that every request
 * succeeded and the bytes read are the bytes written.
 *   PROBE bounce disk=N writes=4 reads=32 bytes_each=16646144 result=ok
 */
#include "probe.h"

#define BW 4                     /* writes in flight */
#define BR 32                    /* reads in flight */
#define BSEG 254                 /* data descriptors per request (seg_max) */
#define BLEN (64u << 10)         /* bytes per data descriptor */
#define BSEED 0xb0b0             /* pattern of the written bytes */
#define REQ_BYTES ((u64)BSEG * BLEN)
#define REQ_STRIDE (32768UL)     /* sectors between the writes: 16 MiB */

/* Guest-physical layout, identity-mapped, above the probe's image. */
#define R_BASE 0x1000000UL
#define R_TABLES R_BASE                              /* BR tables of 256 */
#define R_HDRS (R_TABLES + BR * 256 * sizeof(struct vdesc))
#define R_WBUF (R_HDRS + 0x1000UL)
#define R_RBUF (R_WBUF + BLEN + 0x1000UL)
#define R_END (R_RBUF + BLEN + 0x1000UL)

struct bhdr {
	struct blk_hdr hdr;
	u8 status;
	u8 pad[15];
};

static struct vdesc *table(int i) { return (struct vdesc *)(R_TABLES + (u64)i * 256 * sizeof(struct vdesc)); }
static struct bhdr *bhdr(int i) { return (struct bhdr *)(R_HDRS + (u64)i * sizeof(struct bhdr)); }

/* Builds request i's indirect table (header, BSEG x the odd buffer, status)
 * and publishes it on descriptor i. */
static void submit_big(struct disk *d, int i, u32 type, u64 sector, u64 buf)
{
	struct vdesc *t = table(i);
	struct bhdr *h = bhdr(i);
	u16 data = type == VIRTIO_BLK_T_IN ? VRING_DESC_F_WRITE : 0;
	h->hdr = (struct blk_hdr){type, 0, sector};
	h->status = 0xff;
	t[0] = (struct vdesc){(u64)&h->hdr, sizeof(h->hdr), VRING_DESC_F_NEXT, 1};
	for (int k = 1; k <= BSEG; k++)
		t[k] = (struct vdesc){buf, BLEN, (u16)(data | VRING_DESC_F_NEXT), (u16)(k + 1)};
	t[BSEG + 1] = (struct vdesc){(u64)&h->status, 1, VRING_DESC_F_WRITE, 0};
	d->desc[i] = (struct vdesc){(u64)t, (BSEG + 2) * sizeof(struct vdesc), VRING_DESC_F_INDIRECT, 0};
	publish(d, (u16)i);
}

/* Waits for n completions; returns NULL or a reason. */
static const char *wait_all(struct disk *d, int n)
{
	for (int k = 0; k < n; k++) {
		u32 id;
		int r = next_used(d, TIMEOUT_IO, &id);
		if (r == POLL_TIMEOUT)
			return "timeout";
		if (r < 0)
			return "device_needs_reset";
		if (id >= (u32)n)
			return "bad_used_id";
		if (bhdr((int)id)->status != VIRTIO_BLK_S_OK)
			return "request_failed";
	}
	return NULL;
}

static const char *bounce_run(struct disk *d)
{
	if (g_ram_end < R_END)
		return "ram_too_small";
	if (d->capacity < BW * REQ_STRIDE)
		return "disk_too_small";
	g_extra_features = VIRTIO_RING_F_INDIRECT_DESC;
	const char *e = disk_init(d);
	g_extra_features = 0;
	if (e)
		return e;
	if (!has(d, VIRTIO_RING_F_INDIRECT_DESC))
		return "no_indirect_desc";
	if (d->qsize < BR)
		return "queue_too_small";
	u8 *wbuf = (u8 *)R_WBUF + 1, *rbuf = (u8 *)R_RBUF + 1;
	fill_pattern(wbuf, BSEED, BLEN);
	for (int i = 0; i < BW; i++)
		submit_big(d, i, VIRTIO_BLK_T_OUT, (u64)i * REQ_STRIDE, (u64)wbuf);
	if ((e = wait_all(d, BW)))
		return e;
	for (int i = 0; i < BR; i++)
		submit_big(d, i, VIRTIO_BLK_T_IN, 0, (u64)rbuf);
	if ((e = wait_all(d, BR)))
		return e;
	/* Every 64 KiB of the range read holds the pattern, whichever
	 * descriptor's copy landed last. */
	if (cmp_u64(rbuf, wbuf, BLEN) >= 0)
		return "read_back_differs";
	return NULL;
}

int scen_bounce(struct disk *d)
{
	const char *e = bounce_run(d);
	puts("PROBE bounce");
	kv_dec("disk", (u64)d->index);
	kv_dec("writes", BW);
	kv_dec("reads", BR);
	kv_dec("bytes_each", REQ_BYTES);
	if (e) {
		kv_str("result", "fail");
		kv_str("reason", e);
		endl();
		return fail(e);
	}
	kv_str("result", "ok");
	endl();
	return 0;
}
