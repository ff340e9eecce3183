/* A second fix for shadow_server, applied after fix_shadow_count: its report prints
 * the request counters the first patch attached, from the same per-process table,
 * then resets the first connection's: its counter is freed (the first patch's
 * destructor runs while that patch is in; none once it is gone).
 * Build: gcc -c -O2 -ffunction-sections -fdata-sections -I include fix_shadow_report.c */
#include <pthread.h>
#include <stdio.h>
#include <upatch.h>

#define SHADOW_REQUESTS 1

struct conn {
	int id;
	int bytes;
};

struct conn_requests {
	unsigned long count;
	int first_bytes;
};

extern pthread_mutex_t out;

void report_v2(struct conn **cs, int n)
{
	pthread_mutex_lock(&out);
	printf("report %d conns:", n);
	for (int i = 0; i < n; i++) {
		struct conn_requests *r = upatch_shadow_get(cs[i], SHADOW_REQUESTS);
		if (r)
			printf(" %d=%lu", cs[i]->id, r->count);
		else
			printf(" %d=-", cs[i]->id);
	}
	printf("\n");
	fflush(stdout);
	upatch_shadow_free(cs[0], SHADOW_REQUESTS, 0);
	pthread_mutex_unlock(&out);
}
UPATCH_FUNC(report, report_v2);

#ifdef TARGET_BUILD_ID
UPATCH_TARGET_BUILD_ID(TARGET_BUILD_ID);
#endif
