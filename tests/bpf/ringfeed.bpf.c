/* Feeds a ring buffer from user space's command: each BPF_PROG_TEST_RUN repetition
 * of this XDP program writes one record (a sequence number and a tag). No attach,
 * no traffic: the kernel's own ring buffer, filled at the rate the test asks. */
#include "tk_compat.h"

struct rec {
    u64 seq;
    u32 cpu;
    char tag[12];
};

BPF_RINGBUF_OUTPUT(feed, 1);
BPF_PERF_OUTPUT(feed_perf);
BPF_ARRAY(counts, u64, 2); /* [0] records written, [1] records the buffer refused */

static __always_inline int feed_one(struct xdp_md *ctx, int perf)
{
    u32 zero = 0, one = 1;
    u64 *n = counts.lookup(&zero);
    u64 *lost = counts.lookup(&one);
    if (!n || !lost)
        return XDP_PASS;
    struct rec r = {};
    r.seq = __sync_fetch_and_add(n, 1);
    r.cpu = bpf_get_smp_processor_id();
    __builtin_memcpy(r.tag, "tracekit\0\0\0", 12);
    long rc = perf ? feed_perf.perf_submit(ctx, &r, sizeof(r))
                   : feed.ringbuf_output(&r, sizeof(r), 0);
    if (rc != 0)
        __sync_fetch_and_add(lost, 1);
    return XDP_PASS;
}

TK_SEC("xdp") int tk_feed(struct xdp_md *ctx) { return feed_one(ctx, 0); }

/* A record of another size (12 bytes) into the ring: not one of the reader's. */
TK_SEC("xdp") int tk_feed_small(struct xdp_md *ctx)
{
    char small[12] = "not-a-rec";
    bpf_ringbuf_output(&feed__map, small, sizeof(small), 0);
    return XDP_PASS;
}

/* The same records into a perf buffer (BPF_F_CURRENT_CPU: the ring of the CPU the
 * test run is on). */
TK_SEC("xdp") int tk_feed_perf(struct xdp_md *ctx) { return feed_one(ctx, 1); }
