/* Hand-written libbpf references: what an expert writes by hand for each
 * benchmark script (vmlinux.h, a hash map, an atomic add). */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "GPL";

struct comm_key { char comm[16]; };
