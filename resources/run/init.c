/*
 * ferrite-init: PID 1 of a `ferrite run` guest.
 *
 * ferrite puts this program at /init of a small initramfs, next to
 * /ferrite/argv (the command, each argument NUL-terminated) and
 * /ferrite/conf (one `key=value` a line: root=, rootfstype=, out=, quiet=).
 * It mounts the root disk, chroots into it, runs the command with its
 * stdout and stderr on two pipes, and frames what comes out of them on the
 * console so that the host can tell them from kernel messages:
 *
 *   ESC 'F' KIND PAYLOAD '\n'
 *
 * KIND is 'S' (the command starts now), '1' (stdout bytes), '2' (stderr
 * bytes), 'X' (the command's exit status, decimal) or 'E' (init failed;
 * PAYLOAD says why). In PAYLOAD, '\\' is "\\\\", '\n' is "\\n" and any other
 * byte below 0x20 or 0x7f is "\\xHH"; everything else passes unchanged, so
 * a frame is one console line whatever the command prints. Then init syncs
 * the disks and writes the status to the debug-exit port 0xf4 (ferrite run
 * maps it back to the exact status); if that port is not usable it reboots
 * and the host takes the status from the 'X' frame.
 *
 * Every system call is emulated kernel code on some hosts (see HOST-KVM),
 * so this program makes as few as it can. Built with `gcc -static` by
 * vmm/build.rs and embedded in the ferrite binary.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/io.h>
#include <sys/klog.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_ARGS 4096
#define CHUNK 2048

static char frame_buf[4 * CHUNK + 16];

/* Writes one frame to the console (fd 1) with a single write. */
static void frame(char kind, const unsigned char *data, size_t len)
{
	static const char hex[] = "0123456789abcdef";
	size_t n = 0;

	frame_buf[n++] = 0x1b;
	frame_buf[n++] = 'F';
	frame_buf[n++] = kind;
	for (size_t i = 0; i < len; i++) {
		unsigned char c = data[i];
		if (c == '\\') {
			frame_buf[n++] = '\\';
			frame_buf[n++] = '\\';
		} else if (c == '\n') {
			frame_buf[n++] = '\\';
			frame_buf[n++] = 'n';
		} else if (c < 0x20 || c == 0x7f) {
			frame_buf[n++] = '\\';
			frame_buf[n++] = 'x';
			frame_buf[n++] = hex[c >> 4];
			frame_buf[n++] = hex[c & 15];
		} else {
			frame_buf[n++] = (char)c;
		}
	}
	frame_buf[n++] = '\n';
	for (size_t off = 0; off < n;) {
		ssize_t w = write(1, frame_buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

static void frame_str(char kind, const char *s)
{
	frame(kind, (const unsigned char *)s, strlen(s));
}

/* Reports the status and stops the machine; never returns. */
static void finish(int status)
{
	char num[16];

	snprintf(num, sizeof(num), "%d", status);
	frame_str('X', num);
	sync();
	if (ioperm(0xf4, 1, 1) == 0)
		outb((unsigned char)status, 0xf4);
	reboot(RB_AUTOBOOT);
	for (;;)
		pause();
}

static void fail(const char *what, const char *detail)
{
	char msg[512];

	snprintf(msg, sizeof(msg), "%s: %s", what, detail);
	frame_str('E', msg);
	finish(125);
}

/* Reads a whole (small) file into a NUL-terminated heap buffer. */
static char *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap + 1);

	if (fd < 0 || !buf)
		fail(path, strerror(errno));
	for (;;) {
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
			if (!buf)
				fail(path, "out of memory");
		}
		ssize_t r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			fail(path, strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = '\0';
	*len = n;
	return buf;
}

/* Copies the value of `key=` in conf into `value` ("" if absent). */
static const char *conf_get(const char *conf, size_t len, const char *key,
			    char *value, size_t size)
{
	size_t klen = strlen(key);

	value[0] = '\0';
	for (size_t i = 0; i < len;) {
		const char *line = conf + i;
		const char *end = memchr(line, '\n', len - i);
		size_t llen = end ? (size_t)(end - line) : len - i;
		if (llen > klen && strncmp(line, key, klen) == 0 && line[klen] == '=') {
			size_t vlen = llen - klen - 1;
			if (vlen >= size)
				vlen = size - 1;
			memcpy(value, line + klen + 1, vlen);
			value[vlen] = '\0';
			break;
		}
		i += llen + 1;
	}
	return value;
}

/* mkdir + mount, ignoring a directory that already exists. */
static int mount_at(const char *src, const char *dir, const char *type,
		    unsigned long flags)
{
	mkdir(dir, 0755);
	return mount(src, dir, type, flags, NULL);
}

/* Copies what is waiting in `fd` to the console as `kind` frames;
 * returns 0 at end of file. */
static int pump(int fd, char kind)
{
	unsigned char buf[CHUNK];
	ssize_t r = read(fd, buf, sizeof(buf));

	if (r < 0)
		return errno == EINTR || errno == EAGAIN;
	if (r > 0)
		frame(kind, buf, (size_t)r);
	return r > 0;
}

/* SIGCHLD wakes poll through this pipe (signalfd needs CONFIG_SIGNALFD,
 * which small kernels leave out). */
static int child_pipe[2];

static void on_child(int sig)
{
	int saved = errno;
	(void)sig;
	(void)!write(child_pipe[1], "", 1);
	errno = saved;
}

static int run(char **argv)
{
	int out[2], err[2];
	struct sigaction sa = { .sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART };
	pid_t pid;

	if (pipe2(out, O_CLOEXEC) || pipe2(err, O_CLOEXEC) ||
	    pipe2(child_pipe, O_CLOEXEC | O_NONBLOCK))
		fail("pipe", strerror(errno));
	sigaction(SIGCHLD, &sa, NULL);
	frame_str('S', "");
	pid = fork();
	if (pid < 0)
		fail("fork", strerror(errno));
	if (pid == 0) {
		int null = open("/dev/null", O_RDONLY);
		signal(SIGCHLD, SIG_DFL);
		dup2(null >= 0 ? null : 0, 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		setsid();
		execvp(argv[0], argv);
		int e = errno;
		dprintf(2, "ferrite run: %s: %s\n", argv[0], strerror(e));
		_exit(e == ENOENT ? 127 : 126);
	}
	close(out[1]);
	close(err[1]);

	struct pollfd fds[3] = {
		{ .fd = out[0], .events = POLLIN },
		{ .fd = err[0], .events = POLLIN },
		{ .fd = child_pipe[0], .events = POLLIN },
	};
	int status = -1;
	while (status < 0 || fds[0].fd >= 0 || fds[1].fd >= 0) {
		/* Once the command is gone, its pipes may stay open in a
		 * background child: take what is there and stop. */
		int timeout = status < 0 ? -1 : 0;
		int n = poll(fds, 3, timeout);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		for (int i = 0; i < 2; i++) {
			if (fds[i].fd >= 0 && fds[i].revents && !pump(fds[i].fd, i ? '2' : '1'))
				fds[i].fd = -1;
		}
		if (fds[2].revents) {
			char drain[64];
			while (read(child_pipe[0], drain, sizeof(drain)) > 0)
				;
			int ws;
			pid_t w;
			/* PID 1 reaps every orphan; only the command counts. */
			while ((w = waitpid(-1, &ws, WNOHANG)) > 0) {
				if (w == pid)
					status = WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
			}
		}
	}
	return status;
}

int main(void)
{
	size_t conf_len, argv_len;
	char *conf, *args;
	char *argv[MAX_ARGS + 1];
	int argc = 0;

	/* The kernel opened /dev/console from the initramfs as fds 0-2. */
	if (fcntl(1, F_GETFD) < 0)
		return 1;
	if (mount("devtmpfs", "/dev", "devtmpfs", 0, NULL))
		fail("mount devtmpfs on /dev", strerror(errno));
	conf = slurp("/ferrite/conf", &conf_len);
	args = slurp("/ferrite/argv", &argv_len);
	for (size_t i = 0; i < argv_len && argc < MAX_ARGS; i += strlen(args + i) + 1)
		argv[argc++] = args + i;
	argv[argc] = NULL;
	if (argc == 0)
		fail("/ferrite/argv", "no command");

	char root_dev[64], fstype[32], out_dev[64], quiet[4];
	conf_get(conf, conf_len, "root", root_dev, sizeof(root_dev));
	conf_get(conf, conf_len, "rootfstype", fstype, sizeof(fstype));
	conf_get(conf, conf_len, "out", out_dev, sizeof(out_dev));
	conf_get(conf, conf_len, "quiet", quiet, sizeof(quiet));
	if (mount_at(root_dev, "/newroot", fstype, 0)) {
		char why[160];
		snprintf(why, sizeof(why), "cannot mount %s (%s) on /: %s", root_dev, fstype,
			 strerror(errno));
		fail("root", why);
	}
	if (*out_dev) {
		if (mount_at(out_dev, "/newroot/out", "ext4", 0))
			fail("mount the --out disk on /out", strerror(errno));
	}
	/* Missing mount points are made; a file system without them still runs. */
	mount_at("proc", "/newroot/proc", "proc", 0);
	mount_at("sysfs", "/newroot/sys", "sysfs", 0);
	mount_at("devtmpfs", "/newroot/dev", "devtmpfs", 0);
	mount_at("tmpfs", "/newroot/tmp", "tmpfs", 0);
	if (chroot("/newroot") || chdir("/"))
		fail("chroot", strerror(errno));
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);
	setenv("HOME", "/root", 1);
	setenv("TERM", "dumb", 1);
	/* Only emergency messages (a panic) may cut into the frames. */
	if (strcmp(quiet, "1") == 0)
		klogctl(8 /* SYSLOG_ACTION_CONSOLE_LEVEL */, NULL, 1);

	int status = run(argv);
	if (status < 0)
		fail("wait", "the command's status was lost");
	if (*out_dev)
		umount("/out");
	finish(status);
	return 0;
}
