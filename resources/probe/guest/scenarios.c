/*
 * The scenarios. Each prints one or more `PROBE <name> disk=N ...` lines
 * and returns 0 on pass; a failure records the first reason for the verdict.
 */
#include "probe.h"

static const char *g_fail;

int fail(const char *reason)
{
	if (!g_fail)
		g_fail = reason;
	return 1;
}

const char *first_failure(void) { return g_fail; }

static void head(const char *name, struct disk *d)
{
	puts("PROBE ");
	puts(name);
	kv_dec("disk", (u64)d->index);
}

/* Prints " result=ok" or " result=fail reason=R" and ends the line. */
static int result(const char *reason)
{
	if (!reason) {
		kv_str("result", "ok");
		endl();
		return 0;
	}
	kv_str("result", "fail");
	kv_str("reason", reason);
	endl();
	return fail(reason);
}

/* Maps a do_req/poll result that is not the expected status to a reason. */
static const char *status_reason(int st, int want, const char *mismatch)
{
	if (st == want)
		return NULL;
	if (st == POLL_TIMEOUT)
		return "timeout";
	if (st == POLL_NEEDS_RESET)
		return "device_needs_reset";
	if (st == POLL_BAD_ID)
		return "bad_used_id";
	return mismatch;
}

static struct seg one(void *buf, u32 len, int dev_writes)
{
	return (struct seg){(u64)buf, len, dev_writes};
}

/* Writes `len` bytes of pattern `seed` at `sector`, reads them back, compares. */
static const char *write_read(struct disk *d, u64 sector, u32 len, u64 seed)
{
	struct seg s = one(bufs[0], len, 0);
	fill_pattern(bufs[0], seed, len);
	const char *e = status_reason(do_req(d, VIRTIO_BLK_T_OUT, sector, &s, 1), 0, "write_status");
	if (e)
		return e;
	s = one(bufs[1], len, 1);
	fill_u64(bufs[1], ~0UL, len);
	if ((e = status_reason(do_req(d, VIRTIO_BLK_T_IN, sector, &s, 1), 0, "read_status")))
		return e;
	return cmp_u64(bufs[0], bufs[1], len) < 0 ? NULL : "readback_mismatch";
}

static int blk_size_ok(struct disk *d)
{
	u32 b = d->blk_size;
	return b >= SECTOR && b <= BUF_SIZE && !(b & (b - 1));
}

static int scen_rw(struct disk *d)
{
	head("rw", d);
	if (!blk_size_ok(d))
		return result("unsupported_blk_size");
	if (d->capacity < 64)
		return result("disk_too_small");
	u64 spb = d->blk_size / SECTOR;
	/* One logical block, one data descriptor. */
	const char *e = write_read(d, spb, d->blk_size, 0x1000);
	/* 4 KiB written as three descriptors, read back as two. */
	if (!e) {
		struct seg w[3] = {one(bufs[0], 512, 0), one(bufs[0] + 512, 1536, 0),
				   one(bufs[0] + 2048, 2048, 0)};
		struct seg r[2] = {one(bufs[1], 2560, 1), one(bufs[1] + 2560, 1536, 1)};
		int nw = d->seg_max >= 3 ? 3 : 1, nr = d->seg_max >= 2 ? 2 : 1;
		if (nw == 1)
			w[0].len = BUF_SIZE;
		if (nr == 1)
			r[0].len = BUF_SIZE;
		fill_pattern(bufs[0], 0x2000, BUF_SIZE);
		fill_u64(bufs[1], ~0UL, BUF_SIZE);
		e = status_reason(do_req(d, VIRTIO_BLK_T_OUT, 8, w, nw), 0, "chain_write_status");
		if (!e)
			e = status_reason(do_req(d, VIRTIO_BLK_T_IN, 8, r, nr), 0, "chain_read_status");
		if (!e && cmp_u64(bufs[0], bufs[1], BUF_SIZE) >= 0)
			e = "chain_readback_mismatch";
		kv_dec("chain_segments", (u64)nw);
	}
	/* The last 4 KiB of the disk. */
	if (!e)
		e = write_read(d, (d->capacity / 8 - 1) * 8, BUF_SIZE, 0x3000);
	/* One block past the end: the device must refuse it with IOERR. */
	if (!e) {
		struct seg s = one(bufs[1], d->blk_size, 1);
		int st = do_req(d, VIRTIO_BLK_T_IN, d->capacity, &s, 1);
		kv_dec("beyond_end_status", (u64)(st & 0xff));
		e = status_reason(st, VIRTIO_BLK_S_IOERR, "beyond_end_not_ioerr");
	}
	return result(e);
}

static int scen_flush(struct disk *d)
{
	head("flush", d);
	if (!has(d, VIRTIO_BLK_F_FLUSH)) {
		kv_str("skipped", "flush_not_negotiated");
		return result(NULL);
	}
	struct seg s = one(bufs[0], BUF_SIZE, 0);
	fill_pattern(bufs[0], 0x4000, BUF_SIZE);
	int st = do_req(d, VIRTIO_BLK_T_OUT, 16, &s, 1);
	kv_dec("write_status", (u64)(st & 0xff));
	const char *e = status_reason(st, 0, "write_status");
	if (!e) {
		st = do_req(d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
		kv_dec("flush_status", (u64)(st & 0xff));
		e = status_reason(st, 0, "flush_status");
	}
	return result(e);
}

static int scen_wce(struct disk *d)
{
	if (!has(d, VIRTIO_BLK_F_CONFIG_WCE)) {
		head("wce", d);
		kv_str("skipped", "config_wce_not_negotiated");
		return result(NULL);
	}
	u8 orig = cfg_r8(d, BLKCFG_WRITEBACK);
	int bad = 0;
	for (u8 v = 0; v <= 1; v++) {
		cfg_w8(d, BLKCFG_WRITEBACK, v);
		u8 rd = cfg_r8(d, BLKCFG_WRITEBACK);
		head("wce", d);
		kv_dec("writeback_set", v);
		kv_dec("writeback_read", rd);
		/* A write in each cache state exercises the device's switch. */
		const char *e = rd == v ? write_read(d, 16, BUF_SIZE, 0x5000 + v) : "writeback_readback";
		bad |= result(e);
	}
	cfg_w8(d, BLKCFG_WRITEBACK, orig);
	d->writeback = orig;
	return bad;
}

static int scen_getid(struct disk *d)
{
	char id[24];
	struct seg s = one(bufs[1], 20, 1);
	fill_u64(bufs[1], 0, 24);
	int st = do_req(d, VIRTIO_BLK_T_GET_ID, 0, &s, 1);
	int n = 0;
	for (; n < 20 && bufs[1][n]; n++) {
		char c = (char)bufs[1][n];
		id[n] = c > ' ' && c < 127 ? c : '?'; /* keep key=value parsable */
	}
	id[n] = 0;
	head("getid", d);
	kv_dec("status", (u64)(st & 0xff));
	kv_str("id", id);
	return result(status_reason(st, 0, "getid_status"));
}

/* Fills slot 0's discard/write-zeroes payload and returns it as a segment. */
static struct seg range(struct disk *d, u64 sector, u32 n, u32 flags)
{
	d->slots[0].range.sector = sector;
	d->slots[0].range.num_sectors = n;
	d->slots[0].range.flags = flags;
	return one(&d->slots[0].range, sizeof(d->slots[0].range), 0);
}

static int scen_discard(struct disk *d)
{
	head("discard", d);
	if (!has(d, VIRTIO_BLK_F_DISCARD)) {
		kv_str("skipped", "discard_not_negotiated");
		return result(NULL);
	}
	u64 sector = d->capacity >= 8192 ? 2048 : 8;
	u32 n = d->capacity >= 8192 ? 2048 : 8;
	u32 max = cfg_r32(d, BLKCFG_MAX_DISCARD_SECTORS);
	if (max && n > max)
		n = max;
	struct seg w = one(bufs[0], BUF_SIZE, 0);
	fill_pattern(bufs[0], 0x6000, BUF_SIZE);
	const char *e = status_reason(do_req(d, VIRTIO_BLK_T_OUT, sector, &w, 1), 0, "write_status");
	if (!e) {
		struct seg r = range(d, sector, n, 0);
		int st = do_req(d, VIRTIO_BLK_T_DISCARD, 0, &r, 1);
		kv_dec("sectors", n);
		kv_dec("status", (u64)(st & 0xff));
		e = status_reason(st, 0, "discard_status");
	}
	if (!e) {
		/* Discarded data is unspecified: report, do not judge. */
		struct seg r = one(bufs[1], BUF_SIZE, 1);
		e = status_reason(do_req(d, VIRTIO_BLK_T_IN, sector, &r, 1), 0, "read_status");
		if (!e)
			kv_dec("zeroed", find_nonzero(bufs[1], BUF_SIZE) < 0);
	}
	return result(e);
}

static int scen_zeroes(struct disk *d)
{
	head("zeroes", d);
	if (!has(d, VIRTIO_BLK_F_WRITE_ZEROES)) {
		kv_str("skipped", "write_zeroes_not_negotiated");
		return result(NULL);
	}
	struct seg w = one(bufs[0], BUF_SIZE, 0);
	fill_pattern(bufs[0], 0x7000, BUF_SIZE);
	const char *e = status_reason(do_req(d, VIRTIO_BLK_T_OUT, 24, &w, 1), 0, "write_status");
	if (!e) {
		struct seg r = range(d, 24, 8, 0);
		int st = do_req(d, VIRTIO_BLK_T_WRITE_ZEROES, 0, &r, 1);
		kv_dec("status", (u64)(st & 0xff));
		e = status_reason(st, 0, "write_zeroes_status");
	}
	if (!e) {
		struct seg r = one(bufs[1], BUF_SIZE, 1);
		fill_u64(bufs[1], ~0UL, BUF_SIZE);
		e = status_reason(do_req(d, VIRTIO_BLK_T_IN, 24, &r, 1), 0, "read_status");
		if (!e && find_nonzero(bufs[1], BUF_SIZE) >= 0)
			e = "not_zeroed";
	}
	return result(e);
}

static int scen_readonly(struct disk *d)
{
	head("readonly", d);
	kv_dec("ro", (u64)has(d, VIRTIO_BLK_F_RO));
	if (!has(d, VIRTIO_BLK_F_RO))
		return result("ro_not_offered");
	struct seg s = one(bufs[0], BUF_SIZE, 0);
	fill_pattern(bufs[0], 0x8000, BUF_SIZE);
	int st = do_req(d, VIRTIO_BLK_T_OUT, 0, &s, 1);
	kv_dec("write_status", (u64)(st & 0xff));
	const char *e = status_reason(st, VIRTIO_BLK_S_IOERR, "write_not_refused");
	if (!e && has(d, VIRTIO_BLK_F_FLUSH)) {
		st = do_req(d, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
		kv_dec("flush_status", (u64)(st & 0xff));
		e = status_reason(st, 0, "flush_status");
	}
	if (!e) {
		s = one(bufs[1], BUF_SIZE, 1);
		st = do_req(d, VIRTIO_BLK_T_IN, 0, &s, 1);
		kv_dec("read_status", (u64)(st & 0xff));
		e = status_reason(st, 0, "read_status");
	}
	return result(e);
}

/*
 * A malformed chain must not complete normally: the device should set
 * DEVICE_NEEDS_RESET (or at least leave it unanswered). The driver then
 * resets and re-initialises the device, and I/O must work again.
 */
static int badchain_kind(struct disk *d, const char *kind, int ro_status)
{
	struct slot *sl = &d->slots[0];
	sl->hdr = (struct blk_hdr){VIRTIO_BLK_T_IN, 0, 0};
	sl->status = 0xff;
	struct vdesc v[3] = {
		{(u64)&sl->hdr, ro_status ? 16 : 8, 0, 0},
		{(u64)bufs[1], SECTOR, VRING_DESC_F_WRITE, 0},
		{(u64)&sl->status, 1, ro_status ? 0 : VRING_DESC_F_WRITE, 0},
	};
	submit_raw(d, 0, v, 3);
	int r = poll_used(d, TIMEOUT_SHORT);
	const char *how = "no_completion", *e = NULL;
	if (r == POLL_NEEDS_RESET || (device_status(d) & STATUS_NEEDS_RESET))
		how = "needs_reset";
	else if (r >= 0 || r == POLL_BAD_ID)
		how = "completed", e = "badchain_completed";
	head("badchain", d);
	kv_str("kind", kind);
	kv_str("outcome", how);
	if (!e) {
		disk_reset(d);
		e = disk_init(d);
		if (!e)
			e = write_read(d, 32, BUF_SIZE, 0x9000);
		kv_dec("recovered", !e);
	}
	return result(e);
}

static int scen_badchain(struct disk *d)
{
	int bad = badchain_kind(d, "short_header", 0);
	return bad | badchain_kind(d, "readonly_status", 1);
}

/*
 * Chains a hostile guest might craft, one case after another. Each is a
 * 512-byte-or-more write to HOSTILE_SECTOR whose data or links are bad: the
 * device must refuse it (DEVICE_NEEDS_RESET, or no answer) without touching
 * the disk, then work again after a reset. The host checks the image.
 */
#define HOSTILE_SECTOR 64   /* where a wrongly accepted write would land */
#define HOSTILE_RECOVERY 40 /* the write + read after each reset */

enum { H_MMIO, H_PAST_RAM, H_WRAP, H_LONG_CHAIN, H_LOOP, H_BAD_NEXT, H_CASES };

static const char *const hostile_names[H_CASES] = {
	"mmio_hole", "past_ram", "wrap", "long_chain", "loop", "bad_next",
};

/*
 * Writes case c's descriptors from index 0 and publishes head 0; *data gets
 * the data descriptor (the first one for the link cases).
 */
static const char *hostile_submit(struct disk *d, int c, struct vdesc *out)
{
	struct slot *sl = &d->slots[0];
	struct vdesc *t = d->desc;
	u16 q = (u16)d->qsize;
	sl->hdr = (struct blk_hdr){VIRTIO_BLK_T_OUT, 0, HOSTILE_SECTOR};
	sl->status = 0xff;
	fill_pattern(bufs[0], 0xb000, BUF_SIZE);
	struct vdesc hdr = {(u64)&sl->hdr, sizeof(sl->hdr), VRING_DESC_F_NEXT, 1};
	struct vdesc data = {(u64)bufs[0], SECTOR, VRING_DESC_F_NEXT, 2};
	struct vdesc status = {(u64)&sl->status, 1, VRING_DESC_F_WRITE, 0};
	switch (c) {
	case H_MMIO: /* the disk's own register window: not RAM */
		data.addr = d->base;
		break;
	case H_PAST_RAM: /* starts in RAM, ends 3840 bytes past it */
		if (!g_ram_end)
			return "ram_size_unknown";
		data.addr = g_ram_end - 256;
		data.len = BUF_SIZE;
		break;
	case H_WRAP: /* addr + len overflows 64 bits */
		data.addr = 0xfffffffffffff000UL;
		data.len = 0x2000;
		break;
	case H_LONG_CHAIN: /* 0 -> 1 -> ... -> q-1 -> 0: more than q links */
		for (u16 i = 1; i < q; i++)
			t[i] = (struct vdesc){(u64)bufs[0], SECTOR, VRING_DESC_F_NEXT,
					      (u16)((i + 1) % q)};
		break;
	case H_LOOP: /* 0 -> 1 -> 0 */
		data.next = 0;
		break;
	case H_BAD_NEXT: /* the first index past the table */
		data.next = q;
		break;
	}
	*out = data;
	if (c != H_LONG_CHAIN) {
		t[1] = data;
		t[2] = status;
	}
	/* One descriptor keeps its flags and next as given: our links stand. */
	submit_raw(d, 0, &hdr, 1);
	return NULL;
}

/* One case: submit, wait about a second, reset, re-initialise, write+read. */
static int hostile_case(struct disk *d, int c, int *recovered)
{
	struct vdesc data = {0, 0, 0, 0};
	const char *e = hostile_submit(d, c, &data), *how = "not_submitted";
	int st = -1;
	if (!e) {
		int r = poll_used(d, TIMEOUT_SHORT);
		how = "no_completion";
		if (r == POLL_NEEDS_RESET || (device_status(d) & STATUS_NEEDS_RESET))
			how = "needs_reset";
		else if (r >= 0 || r == POLL_BAD_ID)
			how = "completed", e = "hostile_completed", st = d->slots[0].status;
	}
	head("hostile", d);
	kv_str("case", hostile_names[c]);
	kv_str("outcome", how);
	if (c <= H_WRAP) {
		kv_hex("addr", data.addr);
		kv_hex("len", data.len);
	} else if (c == H_BAD_NEXT) {
		kv_dec("next", data.next);
	}
	if (st >= 0)
		kv_dec("status", (u64)st);
	/* Reset whatever happened: the next case needs a clean queue. */
	disk_reset(d);
	const char *r = disk_init(d);
	if (!r)
		r = write_read(d, HOSTILE_RECOVERY, BUF_SIZE, 0xa000 + (u64)c);
	*recovered = !r;
	kv_dec("recovered", (u64)*recovered);
	return result(e ? e : r);
}

static int scen_hostile(struct disk *d)
{
	int bad = 0, recovered = 1;
	for (int c = 0; c < H_CASES && recovered; c++)
		bad |= hostile_case(d, c, &recovered);
	return bad;
}

static int scen_info(struct disk *d)
{
	(void)d;
	return 0; /* the info line is printed for every disk at start */
}

static const struct {
	const char *name;
	int (*run)(struct disk *d);
} table[] = {
	{"info", scen_info},       {"rw", scen_rw},           {"flush", scen_flush},
	{"wce", scen_wce},         {"getid", scen_getid},     {"discard", scen_discard},
	{"zeroes", scen_zeroes},   {"readonly", scen_readonly}, {"badchain", scen_badchain},
	{"hostile", scen_hostile}, {"bounce", scen_bounce},
};

int scenario_known(const char *name)
{
	if (strlen(name) == 6 && streq_n(name, "stream", 6))
		return 1;
	if (strlen(name) == 4 && streq_n(name, "soak", 4))
		return 1;
	for (unsigned long i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (strlen(name) == strlen(table[i].name) &&
		    streq_n(name, table[i].name, strlen(name)))
			return 1;
	return 0;
}

int run_scenario(const char *name, struct disk *d, struct config *cfg)
{
	if (strlen(name) == 6 && streq_n(name, "stream", 6))
		return stream(d, cfg);
	for (unsigned long i = 0; i < sizeof(table) / sizeof(table[0]); i++)
		if (strlen(name) == strlen(table[i].name) &&
		    streq_n(name, table[i].name, strlen(name)))
			return table[i].run(d);
	return fail("unknown_scenario");
}
