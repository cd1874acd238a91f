#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 66);
	__type(key, __u32);
	__type(value, __u64);
} slots SEC(".maps");

SEC("tp/syscalls/sys_enter_getsockopt")
int hist(struct trace_event_raw_sys_enter *ctx)
{
	__u32 slot = log2_slot(ctx->args[2]);
	__u64 *n = bpf_map_lookup_elem(&slots, &slot);

	if (n)
		*n += 1;
	return 0;
}
