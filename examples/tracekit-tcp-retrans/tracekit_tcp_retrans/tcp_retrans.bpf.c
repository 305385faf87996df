/* tcp-retrans: one event per TCP retransmission that left the host.
 *
 * tcp_retransmit_skb(sk, skb) is a tracepoint on kernels that have it (raw, so the
 * socket and skb come as they are) and a kprobe on tcp_retransmit_skb() otherwise.
 * `segs` is tcp_skb_pcount(skb): TcpRetransSegs in /proc/net/snmp counts segments.
 *
 * From 6.17 the tracepoint has a third argument, err, and fires for every attempt,
 * also those that return before anything is sent or counted (the skb still in a
 * host queue, a zero window, no route, no memory). The plugin's prepare() sets
 * TK_RETRANS_ERR there: such attempts are counted apart (`failed`) and sent no
 * event, so `segments` stays what TcpRetransSegs counts.
 */
#include <net/sock.h>
#include <net/tcp.h>

#ifndef TK_RETRANS_ERR
#define TK_RETRANS_ERR 0
#endif

/* The one declaration of the event: tracekit reads its members (types, order, offsets)
 * from here; the Python side only says how they are shown. `pad` members keep every
 * byte initialised and never become fields. */
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

/* Per-CPU counters; tracekit names the slots from this enum (skbs, segments). */
enum retrans_counts {
    RETRANS_COUNTS_SKBS,     /* retransmitted skbs */
    RETRANS_COUNTS_SEGMENTS, /* retransmitted segments (TcpRetransSegs counts these) */
    RETRANS_COUNTS_FAILED,   /* attempts that failed, sent nothing (6.17+ reports them) */
    RETRANS_COUNTS_NSLOTS
};
BPF_PERCPU_ARRAY(retrans_counts, u64, RETRANS_COUNTS_NSLOTS);

static __always_inline void add(int slot, u64 n)
{
    u64 *v = retrans_counts.lookup(&slot);
    if (v)
        *v += n;
}

static __always_inline int handle(void *ctx, struct sock *sk, struct sk_buff *skb, int err)
{
    if (err) {
        add(RETRANS_COUNTS_FAILED, 1);
        return 0;
    }
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    struct tcp_skb_cb *cb = (struct tcp_skb_cb *)&s.cb[0];
    u16 segs = cb->tcp_gso_segs ? cb->tcp_gso_segs : 1;
    add(RETRANS_COUNTS_SKBS, 1);
    add(RETRANS_COUNTS_SEGMENTS, segs);
#if TK_STREAM
    struct tk_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.segs = segs;
    tk_read_flow(sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    bpf_probe_read_kernel(&ev.state, sizeof(ev.state),
                          (const void *)&sk->__sk_common.skc_state);
    tk_emit(ctx, &ev);
#endif
    return 0;
}

int tk_retrans_tp(struct bpf_raw_tracepoint_args *ctx)
{
#if TK_RETRANS_ERR
    int err = (int)ctx->args[2];
#else
    /* Only successes reach the tracepoint, and args[2] does not exist: the kernel
     * refuses to attach a program that reads past the tracepoint's arguments. */
    int err = 0;
#endif
    return handle(ctx, (struct sock *)ctx->args[0], (struct sk_buff *)ctx->args[1], err);
}

int tk_retrans_kprobe(struct pt_regs *ctx, struct sock *sk, struct sk_buff *skb)
{
    return handle(ctx, sk, skb, 0);
}
