/* Port I/O, the COM1 console, number formatting and small memory helpers. */
#include "probe.h"

#define COM1 0x3f8
#define COM1_LSR (COM1 + 5)
#define LSR_THR_EMPTY 0x20

void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" ::"a"(v), "Nd"(port)); }

u8 inb(u16 port)
{
	u8 v;
	__asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port));
	return v;
}

void putc(char c)
{
	/* Bounded wait: a console without an LSR must not hang the probe. */
	for (int i = 0; i < 100000 && !(inb(COM1_LSR) & LSR_THR_EMPTY); i++)
		;
	outb(COM1, (u8)c);
}

void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

void put_dec(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(&buf[i]);
}

void put_hex(u64 v)
{
	char buf[17];
	int i = 16;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	puts("0x");
	puts(&buf[i]);
}

static void key(const char *k)
{
	putc(' ');
	puts(k);
	putc('=');
}

void kv_dec(const char *k, u64 v)
{
	key(k);
	put_dec(v);
}

void kv_hex(const char *k, u64 v)
{
	key(k);
	put_hex(v);
}

void kv_str(const char *k, const char *s)
{
	key(k);
	puts(s);
}

void endl(void) { putc('\n'); }

/* gcc may emit calls to these even when freestanding. */
void *memset(void *d, int c, unsigned long n)
{
	u8 *p = d;
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	u8 *p = d;
	const u8 *q = s;
	while (n--)
		*p++ = *q++;
	return d;
}

unsigned long strlen(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

int streq_n(const char *a, const char *b, unsigned long n)
{
	for (unsigned long i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

const char *parse_num(const char *s, u64 *out)
{
	u64 v = 0;
	const char *start;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		s += 2;
		start = s;
		for (;; s++) {
			char c = *s;
			u64 dgt;
			if (c >= '0' && c <= '9')
				dgt = (u64)(c - '0');
			else if (c >= 'a' && c <= 'f')
				dgt = (u64)(c - 'a' + 10);
			else if (c >= 'A' && c <= 'F')
				dgt = (u64)(c - 'A' + 10);
			else
				break;
			v = (v << 4) | dgt;
		}
	} else {
		start = s;
		for (; *s >= '0' && *s <= '9'; s++)
			v = v * 10 + (u64)(*s - '0');
	}
	if (s == start)
		return NULL;
	switch (*s) {
	case 'k': case 'K': v <<= 10; s++; break;
	case 'm': case 'M': v <<= 20; s++; break;
	case 'g': case 'G': v <<= 30; s++; break;
	default: break;
	}
	*out = v;
	return s;
}

/* Word-sized loops: every guest instruction may be emulated. */
void fill_u64(void *buf, u64 v, u32 bytes)
{
	u64 *p = buf;
	for (u32 i = 0; i < bytes / 8; i++)
		p[i] = v;
}

void fill_pattern(void *buf, u64 seed, u32 bytes)
{
	u64 *p = buf;
	for (u32 i = 0; i < bytes / 8; i++)
		p[i] = (seed + i) * 0x9e3779b97f4a7c15UL;
}

i64 cmp_u64(const void *a, const void *b, u32 bytes)
{
	const u64 *p = a, *q = b;
	for (u32 i = 0; i < bytes / 8; i++)
		if (p[i] != q[i])
			return (i64)i * 8;
	return -1;
}

i64 find_nonzero(const void *a, u32 bytes)
{
	const u64 *p = a;
	for (u32 i = 0; i < bytes / 8; i++)
		if (p[i])
			return (i64)i * 8;
	return -1;
}

u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}
