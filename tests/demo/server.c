/* The demo's sample server: answers every TCP connection on 127.0.0.1:PORT with one
 * line built by make_reply(). Build: gcc -O2 -g server.c -o demo-server */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned long requests;

/* noipa keeps the call a real call, so the hot patch of make_reply is visible. */
__attribute__((noipa)) int make_reply(char *buf, size_t len, const char *peer)
{
	return snprintf(buf, len, "Hello %s, this is demo-server 1.0 (request %lu)\n", peer, requests);
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
	printf("demo-server: listening on 127.0.0.1:%d\n", port);
	fflush(stdout);
	for (;;) {
		struct sockaddr_in peer;
		socklen_t pl = sizeof peer;
		char buf[256], name[64];
		int c = accept(s, (struct sockaddr *)&peer, &pl);
		if (c < 0)
			continue;
		requests++;
		inet_ntop(AF_INET, &peer.sin_addr, name, sizeof name);
		int n = make_reply(buf, sizeof buf, name);
		if (n > 0)
			(void)!write(c, buf, (size_t)n);
		close(c);
	}
}
