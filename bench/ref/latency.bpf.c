/* getsockopt latency, enter -> exit, per thread: as libbpf-tools do it (a hash
 * keyed by tid holding the entry timestamp, a log2 histogram in a per-CPU array). */
#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u32);
	__type(value, __u64);
} start SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 66);
	__type(key, __u32);
	__type(value, __u64);
} slots SEC(".maps");

SEC("tp/syscalls/sys_enter_getsockopt")
int latency_enter(struct trace_event_raw_sys_enter *ctx)
{
	static const char want[8] = "hqbench";
	char comm[16];
	__u32 tid;
	__u64 ts;

	bpf_get_current_comm(comm, sizeof(comm));
	for (int i = 0; i < sizeof(want); i++)
		if (comm[i] != want[i])
			return 0;
	tid = (__u32)bpf_get_current_pid_tgid();
	ts = bpf_ktime_get_ns();
	bpf_map_update_elem(&start, &tid, &ts, BPF_ANY);
	return 0;
}

SEC("tp/syscalls/sys_exit_getsockopt")
int latency_exit(struct trace_event_raw_sys_exit *ctx)
{
	__u32 tid = (__u32)bpf_get_current_pid_tgid(), slot;
	__u64 *t0 = bpf_map_lookup_elem(&start, &tid), x, *n;

	if (!t0)
		return 0;
	x = bpf_ktime_get_ns() - *t0;
	bpf_map_delete_elem(&start, &tid);
	slot = log2_slot(x);
	n = bpf_map_lookup_elem(&slots, &slot);
	if (n)
		*n += 1;
	return 0;
}
