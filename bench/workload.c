/* The benchmark's workload: N getsockopt(2) calls as fast as possible.
 * usage: workload N [KEYS [RATE]]   KEYS > 1 spreads the calls over KEYS
 * distinct `level` values (the calls fail, the tracepoint still fires), so
 * scripts grouping by level see KEYS distinct keys; RATE > 0 paces the calls
 * to RATE per second.  Prints ns per call. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000, keys = argc > 2 ? atol(argv[2]) : 1;
	double rate = argc > 3 ? atof(argv[3]) : 0;
	int s = socket(AF_INET, SOCK_STREAM, 0), v;
	socklen_t len = sizeof(v);
	struct timespec a, b;

	prctl(PR_SET_NAME, "hqbench");
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		if (rate > 0 && (i & 63) == 0) { /* pace: busy-wait until call i is due */
			struct timespec now;
			do
				clock_gettime(CLOCK_MONOTONIC, &now);
			while ((now.tv_sec - a.tv_sec) * 1e9 + (now.tv_nsec - a.tv_nsec) < i * 1e9 / rate);
		}
		len = sizeof(v);
		getsockopt(s, keys > 1 ? 1000 + (int)(i % keys) : SOL_SOCKET, SO_TYPE, &v, &len);
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / (double)n);
	return 0;
}
