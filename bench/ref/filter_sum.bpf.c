#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, struct comm_key);
	__type(value, __s64);
} sums SEC(".maps");

SEC("tp/syscalls/sys_enter_getsockopt")
int filter_sum(struct trace_event_raw_sys_enter *ctx)
{
	struct comm_key k = {};
	__s64 *v, x = ctx->args[2];

	if (ctx->args[1] != 1 /* SOL_SOCKET */)
		return 0;
	bpf_get_current_comm(k.comm, sizeof(k.comm));
	v = bpf_map_lookup_elem(&sums, &k);
	if (v)
		__sync_fetch_and_add(v, x);
	else
		bpf_map_update_elem(&sums, &k, &x, BPF_NOEXIST);
	return 0;
}
