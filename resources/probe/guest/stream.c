/*
 * The stream scenario: 4 KiB writes of consecutive blocks from sector 0,
 * block `seq` filled with seq as a little-endian u64, `stream.depth`
 * requests in flight, optionally a FLUSH after every `stream.flush_every`
 * acks. Crash tests kill the VMM mid-stream and compare the image with the
 * acks and flushes printed here:
 *   PROBE ack seq=N       write N completed
 *   PROBE flushed seq=N   a FLUSH completed that was submitted after every
 *                         write 0..N had completed, so all of them are durable
 * With stream.keep_going=1 a failed request is reported and the stream goes
 * on (host fault tests: a full or failing disk must not stop the device):
 *   PROBE ioerr seq=N status=S        write N completed with status S
 *   PROBE flush_failed seq=N status=S that FLUSH completed with status S
 */
#include "probe.h"

static void line(const char *what, u64 seq)
{
	puts("PROBE ");
	puts(what);
	kv_dec("seq", seq);
	endl();
}

static int stream_fail(struct disk *d, const char *reason)
{
	puts("PROBE stream");
	kv_dec("disk", (u64)d->index);
	kv_str("result", "fail");
	kv_str("reason", reason);
	endl();
	return fail(reason);
}

static const char *poll_reason(int r)
{
	return r == POLL_TIMEOUT ? "timeout" : r == POLL_NEEDS_RESET ? "device_needs_reset" : "bad_used_id";
}

int stream(struct disk *d, struct config *cfg)
{
	u64 blocks = d->capacity / 8;
	u64 count = cfg->stream_count, k = cfg->stream_flush_every;
	u64 depth = cfg->stream_depth ? cfg->stream_depth : 1;
	puts("PROBE stream");
	kv_dec("disk", (u64)d->index);
	if (!blocks)
		return stream_fail(d, "disk_too_small");
	if (k && !has(d, VIRTIO_BLK_F_FLUSH)) {
		kv_str("note", "flush_not_negotiated_writes_are_durable");
		k = 0;
	}
	u64 max = d->nslots - (k ? 1 : 0); /* keep a slot for the flush */
	if (depth > max)
		depth = max;
	kv_dec("count", count);
	kv_dec("depth", depth);
	kv_dec("flush_every", k);
	endl();

	/* done_base: lowest seq not yet acked; bit i of window: done_base+i acked. */
	u64 next = 0, done_base = 0, window = 0, inflight = 0, since_flush = 0, acks = 0;
	u64 errors = 0;
	u64 flushed = 0; /* done_base covered by the last completed flush */
	int flush_busy = 0;
	for (;;) {
		while (inflight < depth && (count == 0 || next < count)) {
			int s = free_slot(d);
			if (s < 0)
				break;
			struct seg seg = {(u64)bufs[s], BUF_SIZE, 0};
			fill_u64(bufs[s], next, BUF_SIZE);
			d->slots[s].tag = next;
			submit_req(d, s, VIRTIO_BLK_T_OUT, (next % blocks) * 8, &seg, 1);
			next++;
			inflight++;
		}
		int want_flush = k && (since_flush >= k || (inflight == 0 && done_base > flushed));
		if (want_flush && !flush_busy && done_base > flushed) {
			int s = free_slot(d);
			if (s >= 0) {
				d->slots[s].tag = done_base;
				submit_req(d, s, VIRTIO_BLK_T_FLUSH, 0, NULL, 0);
				flush_busy = 1;
				since_flush = 0;
			}
		}
		if (!inflight && !flush_busy)
			break;
		int r = poll_used(d, TIMEOUT_IO);
		if (r < 0)
			return stream_fail(d, poll_reason(r));
		struct slot *sl = &d->slots[r];
		int is_flush = sl->hdr.type == VIRTIO_BLK_T_FLUSH;
		int ok = sl->status == VIRTIO_BLK_S_OK;
		if (!ok && !cfg->stream_keep_going)
			return stream_fail(d, is_flush ? "flush_status" : "write_status");
		if (!ok) {
			errors++;
			puts(is_flush ? "PROBE flush_failed" : "PROBE ioerr");
			kv_dec("seq", is_flush ? sl->tag - 1 : sl->tag);
			kv_dec("status", sl->status);
			endl();
		}
		if (is_flush) {
			/* A failed flush is not retried: the next one comes after
			 * K more acks (or none, at the end). */
			flush_busy = 0;
			flushed = sl->tag;
			if (ok)
				line("flushed", sl->tag - 1);
			continue;
		}
		if (ok) {
			line("ack", sl->tag);
			acks++;
		}
		inflight--;
		since_flush++;
		window |= 1UL << (sl->tag - done_base);
		while (window & 1) {
			window >>= 1;
			done_base++;
		}
	}
	puts("PROBE stream");
	kv_dec("disk", (u64)d->index);
	kv_dec("acks", acks);
	if (cfg->stream_keep_going)
		kv_dec("errors", errors);
	kv_str("result", "ok");
	endl();
	return 0;
}
