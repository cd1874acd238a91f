#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 131072);
	__type(key, __u64);
	__type(value, __u64);
} counts SEC(".maps");

SEC("tp/syscalls/sys_enter_getsockopt")
int count_by_level(struct trace_event_raw_sys_enter *ctx)
{
	__u64 k = ctx->args[1], one = 1, *v;

	v = bpf_map_lookup_elem(&counts, &k);
	if (v)
		__sync_fetch_and_add(v, 1);
	else
		bpf_map_update_elem(&counts, &k, &one, BPF_NOEXIST);
	return 0;
}
