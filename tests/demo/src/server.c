/* demo-server: a tiny greeting service. It answers every TCP connection on
 * 127.0.0.1:PORT: the client sends its name on one line and gets one greeting line. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define VERSION "1.0"

struct reply {
	char buf[512];
	size_t len;
};

static unsigned long requests;

/* reply_add appends printf-style text to the reply, truncating at the buffer end. */
static void reply_add(struct reply *r, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(r->buf + r->len, sizeof r->buf - r->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		r->len += (size_t)n < sizeof r->buf - r->len ? (size_t)n : sizeof r->buf - r->len - 1;
}

/* make_reply builds the greeting for one request. It stays a function of its own
 * (noipa): fixes to the protocol are shipped as hot patches of whole functions. */
__attribute__((noipa)) void make_reply(struct reply *r, const char *name)
{
	reply_add(r, "demo-server " VERSION " (request %lu): hello, ", requests);
	reply_add(r, name);
	reply_add(r, "\n");
}

/* read_name reads the client's line, without its line end, into name. */
static void read_name(int c, char *name, size_t len)
{
	ssize_t n = read(c, name, len - 1);

	name[n > 0 ? n : 0] = '\0';
	name[strcspn(name, "\r\n")] = '\0';
}

int main(int argc, char **argv)
{
	int port = argc > 1 ? atoi(argv[1]) : 8765;
	int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };

	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
	if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 16)) {
		perror("demo-server");
		return 1;
	}
	printf("demo-server " VERSION ": listening on 127.0.0.1:%d\n", port);
	fflush(stdout);
	for (;;) {
		struct reply r = { .len = 0 };
		char name[128];
		int c = accept(s, NULL, NULL);

		if (c < 0)
			continue;
		requests++;
		read_name(c, name, sizeof name);
		make_reply(&r, name);
		(void)!write(c, r.buf, r.len);
		close(c);
	}
}
