/* Hand-written libbpf references: what an expert writes by hand for each
 * benchmark script (vmlinux.h, a hash map, an atomic add). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct comm_key { char comm[16]; };

/* The log2 histogram slot of x, as HookQL and bpftrace number them: 1 for 0, 2 + floor(log2 x) else.
 * Branchless: BPF has no count-leading-zeros instruction. */
static __always_inline __u32 log2_slot(__u64 x)
{
	__u64 v = x;
	__u32 r, s;

	r = (v > 0xFFFFFFFFULL) << 5; v >>= r;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	return x ? 2 + r : 1;
}
