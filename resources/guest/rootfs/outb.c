/*
 * outb VALUE [PORT] - write one byte to an x86 I/O port from user space.
 *
 * The guest's /init uses it to report its verdict on the debug-exit port
 * (0xf4 by default; QEMU's isa-debug-exit and ferrite both exit with status
 * (VALUE << 1) | 1). busybox has no port I/O applet, and /dev/port needs
 * CONFIG_PCI or CONFIG_ISA in the kernel, which the guest kernel does not
 * otherwise need. ioperm(2) needs CONFIG_X86_IOPL_IOPERM and CAP_SYS_RAWIO
 * (init runs as root).
 *
 * Built with `gcc -static` by build-rootfs.sh. Numbers are decimal or 0x hex.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>

static int parse(const char *s, unsigned long max, unsigned long *out)
{
	char *end;

	errno = 0;
	*out = strtoul(s, &end, 0);
	return errno == 0 && end != s && *end == '\0' && *out <= max;
}

int main(int argc, char **argv)
{
	unsigned long value, port = 0xf4;

	if (argc < 2 || argc > 3 || !parse(argv[1], 0xff, &value) ||
	    (argc == 3 && !parse(argv[2], 0xffff, &port))) {
		fprintf(stderr, "usage: outb VALUE [PORT]  (VALUE 0..255, PORT default 0xf4)\n");
		return 2;
	}
	if (ioperm(port, 1, 1) != 0) {
		fprintf(stderr, "outb: ioperm(0x%lx): %s\n", port, strerror(errno));
		return 1;
	}
	outb((unsigned char)value, (unsigned short)port);
	return 0;
}
