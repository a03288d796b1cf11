/*
 * Kernel command line parsing.
 *
 * Recognised words (everything else is ignored, as a kernel would):
 *   probe=A,B,...              scenarios, run in order on each disk
 *   probe.disk=N               run the scenarios on disk N only
 *   probe.nofeatures=a,b       feature names the driver refuses
 *   stream.count=N stream.depth=D stream.flush_every=K stream.keep_going=0|1
 *   soak.depth=D soak.seed=S soak.count=N soak.seconds=T soak.blocks=B
 *   soak.progress=P
 *   virtio_mmio.device=SIZE@ADDR:IRQ[:ID]   one per disk, in order
 */
#include "probe.h"

static const struct {
	const char *name;
	u64 bit;
} feature_names[] = {
	{"flush", VIRTIO_BLK_F_FLUSH},
	{"wce", VIRTIO_BLK_F_CONFIG_WCE},
	{"config_wce", VIRTIO_BLK_F_CONFIG_WCE},
	{"event_idx", VIRTIO_RING_F_EVENT_IDX},
	{"discard", VIRTIO_BLK_F_DISCARD},
	{"write_zeroes", VIRTIO_BLK_F_WRITE_ZEROES},
	{"blk_size", VIRTIO_BLK_F_BLK_SIZE},
	{"seg_max", VIRTIO_BLK_F_SEG_MAX},
	{"ro", VIRTIO_BLK_F_RO},
};

const char *next_item(const char *list, char *buf, unsigned long cap)
{
	unsigned long n = 0;
	while (*list && *list != ',' && *list != ' ') {
		if (n + 1 < cap)
			buf[n++] = *list;
		list++;
	}
	buf[n] = 0;
	if (*list == ',')
		list++;
	return list;
}

/* Matches "name=" at the start of a word; returns the value or NULL. */
static const char *param(const char *word, unsigned long len, const char *name)
{
	unsigned long n = strlen(name);
	if (len > n && streq_n(word, name, n) && word[n] == '=')
		return word + n + 1;
	return NULL;
}

static void set_error(struct config *cfg, const char *e)
{
	if (!cfg->error)
		cfg->error = e;
}

static void parse_mmio(const char *v, struct config *cfg)
{
	struct mmio_entry e;
	const char *p = parse_num(v, &e.size);
	if (!p || *p != '@' || !(p = parse_num(p + 1, &e.addr)) || *p != ':' ||
	    !(p = parse_num(p + 1, &e.irq))) {
		set_error(cfg, "bad_virtio_mmio_device");
		return;
	}
	if (cfg->ndisks == MAX_DISKS) {
		set_error(cfg, "too_many_disks");
		return;
	}
	cfg->mmio[cfg->ndisks++] = e;
}

static void parse_features(const char *v, struct config *cfg)
{
	char item[32];
	while (*v && *v != ' ') {
		v = next_item(v, item, sizeof(item));
		unsigned long i;
		for (i = 0; i < sizeof(feature_names) / sizeof(feature_names[0]); i++) {
			unsigned long n = strlen(feature_names[i].name);
			if (strlen(item) == n && streq_n(item, feature_names[i].name, n))
				break;
		}
		if (i == sizeof(feature_names) / sizeof(feature_names[0]))
			set_error(cfg, "unknown_feature_name");
		else
			cfg->nofeatures |= feature_names[i].bit;
	}
}

static void parse_u64(const char *v, u64 *out, struct config *cfg)
{
	const char *end = parse_num(v, out);
	if (!end || (*end && *end != ' '))
		set_error(cfg, "bad_number");
}

/* The words whose value is one number, and where it goes. */
static const struct {
	const char *name;
	unsigned long offset;
} number_words[] = {
	{"stream.count", __builtin_offsetof(struct config, stream_count)},
	{"stream.depth", __builtin_offsetof(struct config, stream_depth)},
	{"stream.flush_every", __builtin_offsetof(struct config, stream_flush_every)},
	{"stream.keep_going", __builtin_offsetof(struct config, stream_keep_going)},
	{"soak.depth", __builtin_offsetof(struct config, soak_depth)},
	{"soak.seed", __builtin_offsetof(struct config, soak_seed)},
	{"soak.count", __builtin_offsetof(struct config, soak_count)},
	{"soak.seconds", __builtin_offsetof(struct config, soak_seconds)},
	{"soak.blocks", __builtin_offsetof(struct config, soak_blocks)},
	{"soak.progress", __builtin_offsetof(struct config, soak_progress)},
};

/* A number word: parsed into its field; false if `w` is not one. */
static int parse_number_word(const char *w, unsigned long len, struct config *cfg)
{
	for (unsigned long i = 0; i < sizeof(number_words) / sizeof(number_words[0]); i++) {
		const char *v = param(w, len, number_words[i].name);
		if (v) {
			parse_u64(v, (u64 *)((char *)cfg + number_words[i].offset), cfg);
			return 1;
		}
	}
	return 0;
}

static void parse_word(const char *w, unsigned long len, struct config *cfg)
{
	const char *v;
	u64 n;
	if ((v = param(w, len, "probe"))) {
		unsigned long l = len - (unsigned long)(v - w);
		if (l >= sizeof(cfg->scenarios))
			l = sizeof(cfg->scenarios) - 1;
		memcpy(cfg->scenarios, v, l);
		cfg->scenarios[l] = 0;
	} else if ((v = param(w, len, "probe.disk"))) {
		parse_u64(v, &n, cfg);
		cfg->disk = (int)n;
	} else if ((v = param(w, len, "probe.nofeatures"))) {
		parse_features(v, cfg);
	} else if (parse_number_word(w, len, cfg)) {
		/* done */
	} else if ((v = param(w, len, "virtio_mmio.device"))) {
		parse_mmio(v, cfg);
	}
}

void parse_cmdline(const char *cmdline, struct config *cfg)
{
	memcpy(cfg->scenarios, "info", 5);
	cfg->disk = -1;
	cfg->stream_depth = 1;
	cfg->soak_depth = 32;
	cfg->soak_seed = 1;
	cfg->soak_blocks = 4096;
	cfg->soak_progress = 10;
	if (!cmdline)
		return;
	const char *p = cmdline;
	while (*p) {
		while (*p == ' ' || *p == '\t' || *p == '\n')
			p++;
		const char *w = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\n')
			p++;
		if (p > w)
			parse_word(w, (unsigned long)(p - w), cfg);
	}
}
