/* A fix that adds per-connection state to shadow_server: a request counter kept in a
 * shadow variable, printed with every serve, freed when the connection closes.
 * Build: gcc -c -O2 -ffunction-sections -fdata-sections -I include fix_shadow_count.c */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <upatch.h>

#define SHADOW_REQUESTS 1

struct conn {
	int id;
	int bytes;
};

struct conn_requests {
	unsigned long count;
	int first_bytes; /* bytes when the counter was attached */
};

extern pthread_mutex_t out;

static int start_at(void *obj, void *data, unsigned long size, void *arg)
{
	(void)arg;
	(void)size;
	((struct conn_requests *)data)->first_bytes = ((struct conn *)obj)->bytes;
	return 0;
}

/* Runs when the counter is freed while this patch is in. */
static void forget(void *obj, void *data)
{
	(void)obj;
	((struct conn_requests *)data)->count = 0;
}

void conn_serve_v2(struct conn *c)
{
	struct conn_requests *r = upatch_shadow_get_or_alloc(c, SHADOW_REQUESTS, sizeof *r, start_at, 0, forget);
	c->bytes++;
	pthread_mutex_lock(&out);
	if (r) {
		r->count++;
		printf("conn %d bytes %d requests %lu since %d\n", c->id, c->bytes, r->count, r->first_bytes);
	} else {
		printf("conn %d bytes %d requests none\n", c->id, c->bytes);
	}
	fflush(stdout);
	pthread_mutex_unlock(&out);
}
UPATCH_FUNC(conn_serve, conn_serve_v2);

void conn_close_v2(struct conn *c)
{
	upatch_shadow_free(c, SHADOW_REQUESTS, 0);
	free(c);
}
UPATCH_FUNC(conn_close, conn_close_v2);

#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
