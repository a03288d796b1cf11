/* The probe guest's C entry: read the command line, bring up the disks, run. */
#include "probe.h"

#define HVM_START_MAGIC 0x336ec578
#define DEBUG_EXIT_PORT 0xf4

/* xen/include/public/arch-x86/hvm/start_info.h, the fields we use. */
struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	u64 memmap_paddr;       /* version >= 1 */
	u32 memmap_entries;
	u32 reserved;
};

/* One hvm_memmap_table_entry (an E820 entry). */
struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type;
	u32 reserved;
};

#define MEMMAP_RAM 1

u64 g_ram_end;

u8 bufs[NSLOTS][BUF_SIZE] __attribute__((aligned(4096)));
static struct config cfg;
static struct disk disks[MAX_DISKS];
static int disk_ok[MAX_DISKS];

static void __attribute__((noreturn)) verdict(void)
{
	const char *why = first_failure();
	puts("PROBE verdict=");
	puts(why ? "fail" : "pass");
	kv_str("reason", why ? why : "ok");
	endl();
	outb(DEBUG_EXIT_PORT, why ? 1 : 0);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* The end of the highest RAM range of the PVH memory map (0: no map). */
static u64 ram_end(const struct hvm_start_info *si)
{
	if (si->version < 1 || !si->memmap_paddr)
		return 0;
	const struct hvm_memmap_entry *m = (const void *)si->memmap_paddr;
	u64 end = 0;
	for (u32 i = 0; i < si->memmap_entries && i < 128; i++)
		if (m[i].type == MEMMAP_RAM && m[i].addr + m[i].size > end)
			end = m[i].addr + m[i].size;
	return end;
}

static void print_info(struct disk *d)
{
	puts("PROBE info");
	kv_dec("disk", (u64)d->index);
	kv_hex("features", d->offered);
	kv_dec("capacity", d->capacity);
	kv_dec("blk_size", d->blk_size);
	kv_dec("writeback", d->writeback);
	kv_hex("negotiated", d->negotiated);
	kv_dec("queue_size", d->qsize);
	endl();
}

static void init_disks(void)
{
	for (int i = 0; i < cfg.ndisks; i++) {
		struct disk *d = &disks[i];
		d->index = i;
		d->base = cfg.mmio[i].addr;
		const char *e = cfg.mmio[i].addr + 0x200 > (1UL << 32) ? "mmio_above_4g" : disk_init(d);
		if (e) {
			puts("PROBE info");
			kv_dec("disk", (u64)i);
			kv_hex("addr", cfg.mmio[i].addr);
			kv_str("error", e);
			endl();
			fail(e);
			continue;
		}
		disk_ok[i] = 1;
		print_info(d);
	}
}

void probe_main(u64 start_info)
{
	const struct hvm_start_info *si = (const void *)start_info;
	int have_si = si && si->magic == HVM_START_MAGIC;
	parse_cmdline(have_si && si->cmdline_paddr ? (const char *)si->cmdline_paddr : NULL, &cfg);
	g_nofeatures = cfg.nofeatures;
	if (have_si)
		g_ram_end = ram_end(si);
	if (have_si && si->cmdline_paddr) {
		puts("PROBE cmdline ");
		puts((const char *)si->cmdline_paddr);
		endl();
	}
	puts("PROBE start");
	kv_dec("disks", (u64)cfg.ndisks);
	kv_str("scenarios", cfg.scenarios);
	endl();
	if (!have_si)
		fail("no_hvm_start_info");
	if (cfg.error)
		fail(cfg.error);
	if (cfg.ndisks == 0)
		fail("no_disks");
	if (cfg.disk >= cfg.ndisks)
		fail("no_such_disk");
	char name[32];
	for (const char *p = cfg.scenarios; *p;) {
		p = next_item(p, name, sizeof(name));
		if (!scenario_known(name))
			fail("unknown_scenario");
	}
	if (first_failure())
		verdict();

	init_disks();
	struct disk *chosen[MAX_DISKS];
	int nchosen = 0;
	for (int i = 0; i < cfg.ndisks; i++)
		if (disk_ok[i] && (cfg.disk < 0 || cfg.disk == i))
			chosen[nchosen++] = &disks[i];
	for (const char *p = cfg.scenarios; *p;) {
		p = next_item(p, name, sizeof(name));
		/* The soak drives its disks at once, not one after another. */
		if (strlen(name) == 4 && streq_n(name, "soak", 4)) {
			soak(chosen, nchosen, &cfg);
			continue;
		}
		for (int i = 0; i < nchosen; i++)
			run_scenario(name, chosen[i], &cfg);
	}
	verdict();
}
