/* Loads a BPF object, attaches every program, prints "attached", waits for
 * SIGINT/SIGTERM; with a ring buffer named "events", consumes and counts it. */
#include <bpf/libbpf.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

static volatile sig_atomic_t stop;
static unsigned long long received;

static void on_signal(int sig) { stop = 1; }
static int on_event(void *ctx, void *data, size_t size) { received++; return 0; }

int main(int argc, char **argv)
{
	struct bpf_object *obj = bpf_object__open_file(argv[1], NULL);
	struct bpf_program *prog;
	struct ring_buffer *rb = NULL;
	struct bpf_map *events;

	if (!obj || bpf_object__load(obj)) {
		fprintf(stderr, "load failed\n");
		return 1;
	}
	bpf_object__for_each_program(prog, obj)
		if (!bpf_program__attach(prog)) {
			fprintf(stderr, "attach failed\n");
			return 1;
		}
	events = bpf_object__find_map_by_name(obj, "events");
	if (events)
		rb = ring_buffer__new(bpf_map__fd(events), on_event, NULL, NULL);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	fprintf(stderr, "attached\n");
	while (!stop) {
		if (rb)
			ring_buffer__poll(rb, 100);
		else
			usleep(100000);
	}
	if (rb) {
		ring_buffer__consume(rb);
		printf("received %llu\n", received);
	}
	bpf_object__close(obj);
	return 0;
}
