/* The demo's hand-written hot patch: a new reply, counting requests of the running
 * server (its static `requests`) and refusing to echo an unexpected peer address. */
#include <stdio.h>
#include <string.h>
#include <upatch.h>

extern unsigned long requests; /* a static of the running server, resolved at load time */

static const char *safe_peer(const char *peer)
{
	return strcmp(peer, "127.0.0.1") == 0 ? peer : "stranger";
}

int make_reply_v2(char *buf, size_t len, const char *peer)
{
	return snprintf(buf, len, "Hello %s, this is demo-server 1.0 + HOTPATCH (request %lu)\n",
			safe_peer(peer), requests);
}

UPATCH_FUNC(make_reply, make_reply_v2);
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
