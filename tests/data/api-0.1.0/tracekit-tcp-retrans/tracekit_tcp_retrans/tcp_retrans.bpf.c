/* tcp-retrans: one event per TCP retransmission that left the host.
 *
 * tcp_retransmit_skb(sk, skb) is a tracepoint on kernels that have it (raw, so the
 * socket and skb come as they are) and a kprobe on tcp_retransmit_skb() otherwise.
 * `segs` is tcp_skb_pcount(skb): TcpRetransSegs in /proc/net/snmp counts segments.
 */
#include <net/sock.h>
#include <net/tcp.h>

struct tk_event {
    u64 ts_ns;
    u32 cpu;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u16 segs;
    u8 state;
    u8 pad;
    u32 pad2;
};

#include "tracekit.h"

/* Per-CPU counters: [0] retransmitted skbs, [1] retransmitted segments. */
BPF_PERCPU_ARRAY(retrans_counts, u64, 2);

static __always_inline void add(int slot, u64 n)
{
    u64 *v = retrans_counts.lookup(&slot);
    if (v)
        *v += n;
}

static __always_inline int handle(void *ctx, struct sock *sk, struct sk_buff *skb)
{
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    struct tcp_skb_cb *cb = (struct tcp_skb_cb *)&s.cb[0];
    u16 segs = cb->tcp_gso_segs ? cb->tcp_gso_segs : 1;
    add(0, 1);
    add(1, segs);
#if TK_STREAM
    struct tk_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.segs = segs;
    tk_read_flow(sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    bpf_probe_read_kernel(&ev.state, sizeof(ev.state), &sk->__sk_common.skc_state);
    tk_emit(ctx, &ev);
#endif
    return 0;
}

int tk_retrans_tp(struct bpf_raw_tracepoint_args *ctx)
{
    return handle(ctx, (struct sock *)ctx->args[0], (struct sk_buff *)ctx->args[1]);
}

int tk_retrans_kprobe(struct pt_regs *ctx, struct sock *sk, struct sk_buff *skb)
{
    return handle(ctx, sk, skb);
}
