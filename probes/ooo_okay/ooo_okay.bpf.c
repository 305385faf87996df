/* ooo-okay: which transmitted TCP skbs may change TX queue, where and why.
 *
 * __tcp_transmit_skb() (net/ipv4/tcp_output.c) sets skb->ooo_okay when
 *   1) sk_wmem_alloc_get(sk) < SKB_TRUESIZE(1): nothing of this socket is in the
 *      qdisc/device queues, or (since 6.6)
 *   2) tcp_rtx_queue_empty(sk): every byte sent has been acknowledged.
 * We look at each skb as it reaches ip_queue_xmit()/inet6_csk_xmit(), just after:
 * by then the skb's own truesize has been charged to sk_wmem_alloc, so we subtract
 * it to see the value the kernel tested. The retransmit queue is unchanged until
 * after the transmit, so reading it here gives the value the kernel tested too.
 */
#include <linux/skbuff.h>
#include <net/sock.h>

struct tk_event {
    u64 ts_ns;
    u64 sk;
    u32 cpu;
    u32 pid;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u32 wmem;
    u32 threshold;
    s32 stack_id;
    u8 ooo_okay;
    u8 wmem_low;
    u8 rtx_empty;
    u8 path;
    char comm[16];
    u32 pad;
};

#include "tracekit.h"

/* Per-CPU counters (slot i is enumerator i; tracekit names them from this enum). */
enum ooo_counts {
    OOO_COUNTS_TRANSMITTED, /* TCP skbs transmitted */
    OOO_COUNTS_OOO_OKAY,    /* with ooo_okay */
    OOO_COUNTS_WMEM_LOW,    /* ooo_okay with wmem low (condition 1) */
    OOO_COUNTS_RTX_EMPTY,   /* ooo_okay with the rtx queue empty (condition 2) */
};
BPF_PERCPU_ARRAY(ooo_counts, u64, 4);
BPF_STACK_TRACE(tk_stacks, 2048);

#if TK_AGG
struct tk_agg_key {
    u32 cpu;
    s32 stack_id;
    u8 ooo_okay;
    u8 wmem_low;
    u8 rtx_empty;
    u8 pad;
};
BPF_HASH(tk_agg, struct tk_agg_key, u64, 4096);
#endif

static __always_inline void count(int slot)
{
    u64 *v = ooo_counts.lookup(&slot);
    if (v)
        (*v)++;
}

int tk_queue_xmit(struct pt_regs *ctx, struct sock *sk, struct sk_buff *skb)
{
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    u16 proto = 0;
    bpf_probe_read_kernel(&proto, sizeof(proto), &sk->sk_protocol);
    if (proto != IPPROTO_TCP)
        return 0;
    count(0);
    u8 ooo = s.ooo_okay;
#if !TK_PARAM_ALL
    if (!ooo)
        return 0;
#endif
    int wmem = 0;
    bpf_probe_read_kernel(&wmem, sizeof(wmem), &sk->sk_wmem_alloc);
    wmem -= s.truesize;
    void *rtx = NULL;
    bpf_probe_read_kernel(&rtx, sizeof(rtx), &sk->tcp_rtx_queue.rb_node);
    u8 wmem_low = wmem < (int)SKB_TRUESIZE(1);
    u8 rtx_empty = rtx == NULL;
    if (ooo) {
        count(1);
        if (wmem_low)
            count(2);
        if (rtx_empty)
            count(3);
    }
    s32 stack_id = tk_stacks.get_stackid(ctx, 0);
#if TK_AGG
    if (ooo) {
        struct tk_agg_key key = {};
        key.cpu = bpf_get_smp_processor_id();
        key.stack_id = stack_id;
        key.ooo_okay = ooo;
        key.wmem_low = wmem_low;
        key.rtx_empty = rtx_empty;
        tk_agg.increment(key);
    }
#endif
#if TK_STREAM
    struct tk_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.sk = (u64)sk;
    ev.cpu = bpf_get_smp_processor_id();
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    tk_read_flow(sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    ev.wmem = wmem;
    ev.threshold = SKB_TRUESIZE(1);
    ev.stack_id = stack_id;
    ev.ooo_okay = ooo;
    ev.wmem_low = wmem_low;
    ev.rtx_empty = rtx_empty;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    tk_emit(ctx, &ev);
#endif
    return 0;
}
