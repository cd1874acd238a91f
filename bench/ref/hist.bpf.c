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
	__u64 x = ctx->args[2], v = x;
	__u32 r, s;

	/* branchless log2: BPF has no count-leading-zeros instruction */
	r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	__u32 slot = x ? 2 + r : 1;
	__u64 *n = bpf_map_lookup_elem(&slots, &slot);

	if (n)
		*n += 1;
	return 0;
}
