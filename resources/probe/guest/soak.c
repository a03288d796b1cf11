/*
 * The soak scenario: every chosen disk at once, `soak.depth` requests in
 * flight on each, for `soak.count` requests or `soak.seconds`, then every
 * block read back and checked.
 *
 * Each disk's area (its first `soak.blocks` 4 KiB blocks) is first written
 * in full (generation 1). Then a random mix: writes of random blocks (the
 * next generation), reads of random blocks checked against the generation
 * the guest expects, FLUSHes where negotiated, and write-cache toggles (the
 * `writeback` config byte) where CONFIG_WCE is negotiated, made while the
 * other requests are in flight. A block with a request in flight is neither
 * read nor written again until that request completes, so the expected
 * contents are always known. At the end every block of the area is read
 * back and compared.
 *
 * Sector s of block b at generation g holds the u64 (b << 32 | s << 28 | g)
 * 64 times: a stale, misplaced or torn block shows. The host can check an
 * image the same way; `gen_sum` (the sum of the expected generations) lets
 * it check that the image holds the very generations the guest expects.
 *
 * Output (see README.md):
 *   PROBE soak_start disks=N tsc_khz=K clock=pit|assumed
 *   PROBE soak disk=N depth=D blocks=B seed=S count=C seconds=T flush=0|1 config_wce=0|1
 *   PROBE soak disk=N t=SEC phase=P requests=... (every soak.progress s)
 *   PROBE soak disk=N requests=R writes=W reads=Rd flushes=F wce_toggles=T
 *         peak_inflight=P blocks=B blocks_verified=V gen_sum=G writeback=V
 *         seconds=S result=ok|fail ...
 */
#include "probe.h"

#define SB 4096                 /* bytes per soak block */
#define SPB (SB / SECTOR)       /* sectors per soak block */
#define WPS (SECTOR / 8)        /* u64 words per sector */
#define GEN_BITS 28
#define GEN_MAX ((1U << GEN_BITS) - 1)
/* Read buffers hold this until the device fills them: a read that
 * completes without data shows (it is no block's pattern: it would be
 * block 0xdeadbeef). */
#define POISON 0xdeadbeefdeadbeefUL
#define DEFAULT_COUNT 10000     /* random-mix requests when no limit is given */

/* The mix: one random request in FLUSH_ONE_IN is a FLUSH, the rest half
 * reads, half writes; before one in TOGGLE_ONE_IN the write cache flips. */
#define FLUSH_ONE_IN 32
#define TOGGLE_ONE_IN 128

/* PIT channel 2 counts at 1.193182 MHz; 59659 ticks are 50 ms. */
#define PIT_HZ 1193182UL
#define PIT_LATCH 59659UL
#define PIT_CMD 0x43
#define PIT_CH2 0x42
#define PORT_B 0x61             /* bit 0: channel 2 gate, 1: speaker, 5: OUT2 */
#define ASSUMED_TSC_HZ 2500000000UL

/* The usual MMIO hole starts at 3 GiB; the identity map ends at 4 GiB. */
#define LOW_RAM_END 0xc0000000UL

extern u8 __bss_end[];

enum phase { P_FILL, P_RUN, P_DRAIN, P_VERIFY, P_DONE };
static const char *const phase_names[] = {"fill", "run", "drain", "verify", "done"};

struct soak_disk {
	struct disk *d;
	enum phase phase;
	u64 blocks;
	u64 depth;
	u32 *gen;               /* the shadow: expected generation of each block */
	u8 *busy;               /* 1 while a request on the block is in flight */
	u8 *buf;                /* one 4 KiB buffer per request slot */
	u64 inflight;
	u64 peak;               /* the most requests in flight at once */
	u64 cursor;             /* next block to fill or verify */
	u64 mix;                /* random-mix requests submitted */
	u64 requests, writes, reads, flushes, toggles, verified;
	u64 rng;
	u64 last_done;          /* TSC of the last completion (or submission from idle) */
	u32 idle;               /* sweeps without a completion */
	const char *reason;     /* the first failure */
	int mismatch;           /* a block read back wrong: which, where, what */
	u64 bad_block, bad_offset, want, got;
};

static struct soak_disk sds[MAX_DISKS];

/* rep stosq / repe scasq: where KVM emulates ring 0, each repetition still
 * costs about one emulated step, but a C loop costs four or five per word
 * (measured here: 3000 `stream` writes took 2.5 s with rep stosq filling
 * their buffers, 4.4 s with fill_u64's loop). */
static void stosq(void *p, u64 v, u64 n)
{
	__asm__ volatile("rep stosq" : "+D"(p), "+c"(n) : "a"(v) : "memory");
}

/* Index of the first of the n words at p that is not v, or -1 (n > 0). */
static i64 scasq(const void *p, u64 v, u64 n)
{
	u64 left = n;
	int ne;
	__asm__ volatile("repe scasq" : "=@ccne"(ne), "+D"(p), "+c"(left) : "a"(v) : "memory");
	return ne ? (i64)(n - left - 1) : -1;
}

static u64 word(u64 b, u64 s, u32 g) { return b << 32 | s << GEN_BITS | g; }

static void fill_block(u8 *buf, u64 b, u32 g)
{
	for (u64 s = 0; s < SPB; s++)
		stosq(buf + s * SECTOR, word(b, s, g), WPS);
}

/* splitmix64 spreads the seed; xorshift64* makes the stream. */
static u64 splitmix(u64 x)
{
	x += 0x9e3779b97f4a7c15UL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9UL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebUL;
	return x ^ (x >> 31);
}

static u64 rnd(struct soak_disk *sd)
{
	u64 x = sd->rng;
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	sd->rng = x;
	return x * 0x2545f4914f6cdd1dUL;
}

/* TSC ticks per second, timed against PIT channel 2 as Linux does;
 * *measured is 0 when the PIT did not answer and a guess is returned. */
static u64 tsc_hz(int *measured)
{
	u8 portb = inb(PORT_B);
	outb(PORT_B, (u8)((portb & ~0x02) | 0x01)); /* gate on, speaker off */
	outb(PIT_CMD, 0xb0);                         /* channel 2, lo/hi, mode 0 */
	outb(PIT_CH2, (u8)(PIT_LATCH & 0xff));
	outb(PIT_CH2, (u8)(PIT_LATCH >> 8));
	u64 t0 = rdtsc(), t1 = t0;
	*measured = 0;
	while (t1 - t0 < (1UL << 33)) { /* about 3 s: the PIT is not there */
		if (inb(PORT_B) & 0x20) {
			*measured = 1;
			break;
		}
		t1 = rdtsc();
	}
	outb(PORT_B, portb);
	u64 hz = (t1 - t0) * PIT_HZ / PIT_LATCH;
	/* Outside 100 MHz..20 GHz the measurement is not believable. */
	if (!*measured || hz < 100000000UL || hz > 20000000000UL) {
		*measured = 0;
		return ASSUMED_TSC_HZ;
	}
	return hz;
}

/* Stops submitting on this disk; whatever is in flight is still awaited. */
static void fail_disk(struct soak_disk *sd, const char *reason)
{
	if (!sd->reason)
		sd->reason = reason;
	if (sd->phase != P_DONE)
		sd->phase = P_DRAIN;
}

/* Stops the disk at once: its requests in flight will not come back. */
static void abandon(struct soak_disk *sd, const char *reason)
{
	if (!sd->reason)
		sd->reason = reason;
	sd->phase = P_DONE;
}

static void submit_io(struct soak_disk *sd, u32 type, u64 b, u64 now)
{
	struct disk *d = sd->d;
	int s = free_slot(d); /* inflight < depth <= nslots: there is one */
	u8 *buf = sd->buf + (u64)s * SB;
	if (type == VIRTIO_BLK_T_OUT)
		fill_block(buf, b, sd->gen[b]);
	else
		stosq(buf, POISON, SB / 8);
	struct seg seg = {(u64)buf, SB, type == VIRTIO_BLK_T_IN};
	d->slots[s].tag = b;
	sd->busy[b] = 1;
	if (!sd->inflight++)
		sd->last_done = now;
	submit_req(d, s, type, b * SPB, &seg, 1);
}

static void submit_flush(struct soak_disk *sd, u64 now)
{
	int s = free_slot(sd->d);
	if (!sd->inflight++)
		sd->last_done = now;
	submit_req(sd->d, s, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
}

/* A random block with nothing in flight (blocks > depth: one exists). */
static u64 pick_idle(struct soak_disk *sd)
{
	u64 b = rnd(sd) % sd->blocks;
	while (sd->busy[b])
		b = b + 1 == sd->blocks ? 0 : b + 1;
	return b;
}

/* Flips the write cache while requests are in flight, and reads it back. */
static void toggle(struct soak_disk *sd)
{
	struct disk *d = sd->d;
	u8 v = !d->writeback;
	cfg_w8(d, BLKCFG_WRITEBACK, v);
	d->writeback = v;
	sd->toggles++;
	if (cfg_r8(d, BLKCFG_WRITEBACK) != v)
		fail_disk(sd, "writeback_readback");
}

/* One request of the random mix. */
static void mix_one(struct soak_disk *sd, u64 now)
{
	u64 r = rnd(sd);
	sd->mix++;
	if (has(sd->d, VIRTIO_BLK_F_CONFIG_WCE) && r % TOGGLE_ONE_IN == 0) {
		toggle(sd);
		if (sd->phase != P_RUN)
			return;
	}
	r >>= 16;
	if (has(sd->d, VIRTIO_BLK_F_FLUSH) && r % FLUSH_ONE_IN == 0) {
		submit_flush(sd, now);
		return;
	}
	u64 b = pick_idle(sd);
	if ((r >> 8) & 1) {
		submit_io(sd, VIRTIO_BLK_T_IN, b, now);
		return;
	}
	/* 2^28 writes of one block would wrap: start again at 1 (0 is never
	 * written, so a block that was never written cannot pass). */
	sd->gen[b] = sd->gen[b] == GEN_MAX ? 1 : sd->gen[b] + 1;
	submit_io(sd, VIRTIO_BLK_T_OUT, b, now);
}

/* Submits what the phase asks for, up to the depth. */
static void feed(struct soak_disk *sd, u64 count, u64 now)
{
	while (sd->inflight < sd->depth) {
		if (sd->phase == P_FILL && sd->cursor < sd->blocks) {
			sd->gen[sd->cursor] = 1;
			submit_io(sd, VIRTIO_BLK_T_OUT, sd->cursor++, now);
		} else if (sd->phase == P_RUN && (!count || sd->mix < count)) {
			mix_one(sd, now);
		} else if (sd->phase == P_VERIFY && sd->cursor < sd->blocks) {
			submit_io(sd, VIRTIO_BLK_T_IN, sd->cursor++, now);
		} else {
			return;
		}
	}
}

/* Compares a block read back with what the shadow expects; the run's first
 * mismatch is kept for the final line. */
static int check(struct soak_disk *sd, u64 b, const u8 *buf)
{
	for (u64 s = 0; s < SPB; s++) {
		u64 want = word(b, s, sd->gen[b]);
		i64 at = scasq(buf + s * SECTOR, want, WPS);
		if (at < 0)
			continue;
		if (!sd->mismatch) {
			sd->mismatch = 1;
			sd->bad_block = b;
			sd->bad_offset = s * SECTOR + (u64)at * 8;
			sd->want = want;
			sd->got = *(const u64 *)(buf + sd->bad_offset);
		}
		return 0;
	}
	return 1;
}

static void complete(struct soak_disk *sd, int s)
{
	struct slot *sl = &sd->d->slots[s];
	u32 type = sl->hdr.type;
	u64 b = sl->tag;
	sd->inflight--;
	if (type != VIRTIO_BLK_T_FLUSH)
		sd->busy[b] = 0;
	if (sl->status != VIRTIO_BLK_S_OK) {
		fail_disk(sd, type == VIRTIO_BLK_T_OUT  ? "write_status"
			      : type == VIRTIO_BLK_T_IN ? "read_status"
							: "flush_status");
		return;
	}
	if (type == VIRTIO_BLK_T_IN && !check(sd, b, sd->buf + (u64)s * SB)) {
		fail_disk(sd, sd->phase == P_VERIFY ? "verify_mismatch" : "read_mismatch");
		return;
	}
	if (type == VIRTIO_BLK_T_IN && sd->phase == P_VERIFY) {
		sd->verified++;
		return;
	}
	sd->requests++;
	if (type == VIRTIO_BLK_T_OUT)
		sd->writes++;
	else if (type == VIRTIO_BLK_T_IN)
		sd->reads++;
	else
		sd->flushes++;
}

/* Takes every completion there is; watches for a stuck or broken device. */
static void reap(struct soak_disk *sd, u64 now)
{
	int got = 0;
	for (;;) {
		int s = try_used(sd->d);
		if (s == POLL_NONE)
			break;
		if (s < 0) {
			abandon(sd, "bad_used_id");
			return;
		}
		got = 1;
		complete(sd, s);
	}
	if (got) {
		ack_interrupt(sd->d);
		sd->last_done = now;
		sd->idle = 0;
		return;
	}
	if (!sd->inflight)
		return;
	if (now - sd->last_done > TIMEOUT_IO)
		abandon(sd, "timeout");
	/* The status register is an exit to the VMM: look only now and then. */
	else if ((++sd->idle & 4095) == 0 && (device_status(sd->d) & STATUS_NEEDS_RESET))
		abandon(sd, "device_needs_reset");
}

static u64 gen_sum(struct soak_disk *sd)
{
	u64 sum = 0;
	for (u64 b = 0; b < sd->blocks; b++)
		sum += sd->gen[b];
	return sum;
}

static void counts(struct soak_disk *sd)
{
	kv_dec("requests", sd->requests);
	kv_dec("writes", sd->writes);
	kv_dec("reads", sd->reads);
	kv_dec("flushes", sd->flushes);
	kv_dec("wce_toggles", sd->toggles);
}

static void progress(struct soak_disk *sd, u64 secs)
{
	puts("PROBE soak");
	kv_dec("disk", (u64)sd->d->index);
	kv_dec("t", secs);
	kv_str("phase", phase_names[sd->phase]);
	counts(sd);
	kv_dec("writeback", sd->d->writeback);
	kv_dec("inflight", sd->inflight);
	endl();
}

static int final_line(struct soak_disk *sd, u64 secs)
{
	puts("PROBE soak");
	kv_dec("disk", (u64)sd->d->index);
	counts(sd);
	kv_dec("peak_inflight", sd->peak);
	kv_dec("blocks", sd->blocks);
	kv_dec("blocks_verified", sd->verified);
	if (sd->gen)
		kv_dec("gen_sum", gen_sum(sd));
	kv_dec("writeback", sd->d->writeback);
	kv_dec("seconds", secs);
	if (sd->mismatch) {
		kv_dec("block", sd->bad_block);
		kv_dec("offset", sd->bad_offset);
		kv_hex("want", sd->want);
		kv_hex("got", sd->got);
	}
	if (!sd->reason) {
		kv_str("result", "ok");
		endl();
		return 0;
	}
	kv_str("result", "fail");
	kv_str("reason", sd->reason);
	endl();
	return fail(sd->reason);
}

/* Checks the disk can be soaked and sizes its area; NULL or a reason. */
static const char *setup(struct soak_disk *sd, struct disk *d, struct config *cfg, u64 count)
{
	u32 bs = d->blk_size;
	sd->d = d;
	sd->phase = P_FILL;
	sd->rng = splitmix(cfg->soak_seed + (u64)d->index * 0x9e3779b97f4a7c15UL) | 1;
	sd->depth = cfg->soak_depth ? cfg->soak_depth : 1;
	if (sd->depth > d->nslots)
		sd->depth = d->nslots;
	sd->blocks = d->capacity / SPB;
	if (cfg->soak_blocks && sd->blocks > cfg->soak_blocks)
		sd->blocks = cfg->soak_blocks;
	puts("PROBE soak");
	kv_dec("disk", (u64)d->index);
	kv_dec("depth", sd->depth);
	kv_dec("blocks", sd->blocks);
	kv_dec("seed", cfg->soak_seed);
	kv_dec("count", count);
	kv_dec("seconds", cfg->soak_seconds);
	kv_dec("flush", (u64)has(d, VIRTIO_BLK_F_FLUSH));
	kv_dec("config_wce", (u64)has(d, VIRTIO_BLK_F_CONFIG_WCE));
	endl();
	if (bs < SECTOR || bs > SB || (bs & (bs - 1)))
		return "unsupported_blk_size";
	if (has(d, VIRTIO_BLK_F_RO))
		return "read_only";
	/* pick_idle needs a block with nothing in flight. */
	if (sd->blocks <= sd->depth)
		return "disk_too_small";
	return NULL;
}

/* Places each disk's buffers and shadow in RAM past .bss; NULL or a reason. */
static const char *carve(struct soak_disk *list, int n)
{
	u64 at = ((u64)__bss_end + 4095) & ~4095UL;
	u64 end = g_ram_end < LOW_RAM_END ? g_ram_end : LOW_RAM_END;
	if (!g_ram_end)
		return "ram_size_unknown";
	for (int i = 0; i < n; i++) {
		struct soak_disk *sd = &list[i];
		if (sd->phase == P_DONE)
			continue;
		u64 gen_bytes = (sd->blocks * 4 + 7) & ~7UL, busy_bytes = (sd->blocks + 7) & ~7UL;
		if (at + sd->d->nslots * SB + gen_bytes + busy_bytes > end)
			return "ram_too_small";
		sd->buf = (u8 *)at;
		at += sd->d->nslots * SB;
		sd->gen = (u32 *)at;
		at += gen_bytes;
		sd->busy = (u8 *)at;
		at += busy_bytes;
		stosq(sd->gen, 0, gen_bytes / 8);
		stosq(sd->busy, 0, busy_bytes / 8);
	}
	return NULL;
}

/* Moves a disk on when its phase is over. */
static void advance(struct soak_disk *sd, u64 count, u64 limit, u64 elapsed)
{
	if (sd->phase == P_FILL && sd->cursor == sd->blocks && !sd->inflight)
		sd->phase = P_RUN;
	if (sd->phase == P_RUN && ((count && sd->mix >= count) || (limit && elapsed >= limit)))
		sd->phase = P_DRAIN;
	if (sd->phase == P_DRAIN && !sd->inflight) {
		sd->phase = sd->reason ? P_DONE : P_VERIFY;
		sd->cursor = 0;
	}
	if (sd->phase == P_VERIFY && sd->cursor == sd->blocks && !sd->inflight)
		sd->phase = P_DONE;
}

int soak(struct disk *const *disks, int n, struct config *cfg)
{
	int measured;
	u64 hz = tsc_hz(&measured);
	puts("PROBE soak_start");
	kv_dec("disks", (u64)n);
	kv_dec("tsc_khz", hz / 1000);
	kv_str("clock", measured ? "pit" : "assumed");
	endl();
	u64 count = cfg->soak_count, limit = cfg->soak_seconds * hz;
	if (!count && !limit)
		count = DEFAULT_COUNT;
	int bad = 0;
	for (int i = 0; i < n; i++) {
		struct soak_disk *sd = &sds[i];
		*sd = (struct soak_disk){0};
		const char *e = setup(sd, disks[i], cfg, count);
		if (e) {
			abandon(sd, e);
			bad |= final_line(sd, 0);
		}
	}
	const char *e = carve(sds, n);
	for (int i = 0; e && i < n; i++)
		if (sds[i].phase != P_DONE) {
			abandon(&sds[i], e);
			bad |= final_line(&sds[i], 0);
		}

	u64 t0 = rdtsc(), every = cfg->soak_progress * hz, next = t0 + every;
	for (;;) {
		u64 now = rdtsc();
		int active = 0;
		for (int i = 0; i < n; i++) {
			struct soak_disk *sd = &sds[i];
			if (sd->phase == P_DONE)
				continue;
			feed(sd, count, now);
			if (sd->inflight > sd->peak)
				sd->peak = sd->inflight;
			reap(sd, now);
			advance(sd, count, limit, now - t0);
			if (sd->phase == P_DONE)
				bad |= final_line(sd, (now - t0) / hz);
			else
				active = 1;
		}
		if (!active)
			break;
		if (every && now >= next) {
			for (int i = 0; i < n; i++)
				progress(&sds[i], (now - t0) / hz);
			next += every;
		}
	}
	return bad;
}
