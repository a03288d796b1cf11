/*
 * ackwriter DEV STYLE [ARG] - write numbered 4 KiB blocks to a block device
 * and say on stdout which writes completed, for power-cut tests.
 *
 * Block N (at offset N * 4096) is filled with 512 little-endian 64-bit words
 * of BLOCK_TAG | N, so a block that holds zeros was never written and a
 * block that holds another number was written somewhere else. The writer
 * goes on until the device is full ("done seq=<blocks>") or the VM dies.
 *
 * STYLE:
 *   dsync      O_DIRECT|O_DSYNC writes; "ack seq=N" after each returned.
 *              Every acknowledged block is durable, whatever the disk's
 *              cache (with a write-back cache Linux adds a flush or FUA).
 *   buffered   plain write(2)s into the guest's page cache ("ack seq=N"
 *              means only that the write returned) and fdatasync(2) every
 *              ARG blocks (default 4); "flushed upto=N" after it returned:
 *              every block up to N is durable.
 *   toggle     O_DIRECT writes; after ARG blocks (default 16) it writes
 *              "write through" to /sys/block/<dev>/cache_type, so the disk
 *              no longer has a volatile cache, and prints "wt from=N":
 *              every block acknowledged from N on is durable.
 *
 * Each line is one write(2) to stdout, prefixed with "PC <dev> ", so the
 * lines of several writers on one console stay whole and tell apart.
 * Built with `gcc -static` by build-rootfs.sh.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define BLOCK 4096
/* "FERR" in the high half: a tag no zero-filled or foreign block carries. */
#define BLOCK_TAG 0x4645525200000000ULL

static const char *name;

static void say(const char *fmt, unsigned long n)
{
	char line[128];
	int len = snprintf(line, sizeof(line), "PC %s ", name);

	len += snprintf(line + len, sizeof(line) - len, fmt, n);
	line[len++] = '\n';
	/* One write per line: the tty keeps it whole among other writers. */
	if (write(STDOUT_FILENO, line, len) != len)
		exit(3);
}

static void fail(const char *what)
{
	char line[160];
	int len = snprintf(line, sizeof(line), "PC %s error %s: %s\n", name,
			   what, strerror(errno));

	if (write(STDOUT_FILENO, line, len) < 0)
		exit(3);
	exit(2);
}

static void fill(uint64_t *block, unsigned long seq)
{
	for (int i = 0; i < BLOCK / 8; i++)
		block[i] = BLOCK_TAG | seq;
}

static void write_through(void)
{
	char path[96];
	int fd;

	snprintf(path, sizeof(path), "/sys/block/%s/cache_type", name);
	fd = open(path, O_WRONLY);
	if (fd < 0)
		fail("open cache_type");
	if (write(fd, "write through\n", 14) != 14)
		fail("write cache_type");
	close(fd);
}

int main(int argc, char **argv)
{
	const char *dev, *style;
	unsigned long every, seq, blocks;
	off_t size;
	uint64_t *block;
	int fd, flags;

	if (argc < 3 || argc > 4) {
		fprintf(stderr, "usage: ackwriter DEV dsync|buffered|toggle [N]\n");
		return 2;
	}
	dev = argv[1];
	style = argv[2];
	name = strrchr(dev, '/') ? strrchr(dev, '/') + 1 : dev;
	if (!strcmp(style, "dsync")) {
		flags = O_DIRECT | O_DSYNC;
		every = 0;
	} else if (!strcmp(style, "buffered")) {
		flags = 0;
		every = argc == 4 ? strtoul(argv[3], NULL, 0) : 4;
	} else if (!strcmp(style, "toggle")) {
		flags = O_DIRECT;
		every = argc == 4 ? strtoul(argv[3], NULL, 0) : 16;
	} else {
		fprintf(stderr, "ackwriter: unknown style %s\n", style);
		return 2;
	}
	if (posix_memalign((void **)&block, BLOCK, BLOCK))
		fail("posix_memalign");
	fd = open(dev, O_WRONLY | flags);
	if (fd < 0)
		fail("open");
	size = lseek(fd, 0, SEEK_END);
	if (size < 0)
		fail("lseek");
	blocks = (unsigned long)(size / BLOCK);
	say("start every=%lu", every);
	for (seq = 0; seq < blocks; seq++) {
		fill(block, seq);
		if (pwrite(fd, block, BLOCK, (off_t)seq * BLOCK) != BLOCK)
			fail("pwrite");
		say("ack seq=%lu", seq);
		if (!strcmp(style, "buffered") && every && (seq + 1) % every == 0) {
			if (fdatasync(fd))
				fail("fdatasync");
			say("flushed upto=%lu", seq);
		}
		if (!strcmp(style, "toggle") && seq + 1 == every) {
			write_through();
			say("wt from=%lu", seq + 1);
		}
	}
	say("done seq=%lu", seq);
	return 0;
}
