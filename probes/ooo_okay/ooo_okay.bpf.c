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
#include "tk_compat.h"
#ifdef TK_CORE
#include <linux/in.h> /* IPPROTO_TCP: user-space API, the same on every kernel */
/* SKB_TRUESIZE(1) of the running kernel: both struct sizes come from its BTF
 * (relocated at load), each rounded up to the cache line as SKB_DATA_ALIGN does. */
#define TK_CACHE_ALIGN(x) (((x) + 63) & ~63)
#define SKB_TRUESIZE(x)                                                                   \
    ((x) + TK_CACHE_ALIGN(bpf_core_type_size(struct sk_buff)) +                           \
     TK_CACHE_ALIGN(bpf_core_type_size(struct skb_shared_info)))
#else
#include <linux/skbuff.h>
#include <net/sock.h>
#endif

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

TK_PARAM(all); /* 1: stream every TCP skb, not only those with ooo_okay */

/* Per-CPU counters (slot i is enumerator i; tracekit names them from this enum). */
enum ooo_counts {
    OOO_COUNTS_TRANSMITTED, /* TCP skbs transmitted */
    OOO_COUNTS_OOO_OKAY,    /* with ooo_okay */
    OOO_COUNTS_WMEM_LOW,    /* ooo_okay with wmem low (condition 1) */
    OOO_COUNTS_RTX_EMPTY,   /* ooo_okay with the rtx queue empty (condition 2) */
};
BPF_PERCPU_ARRAY(ooo_counts, u64, 4);
BPF_STACK_TRACE(tk_stacks, 2048);

struct tk_agg_key {
    u32 cpu;
    s32 stack_id;
    u8 ooo_okay;
    u8 wmem_low;
    u8 rtx_empty;
    u8 pad;
};
BPF_HASH(tk_agg, struct tk_agg_key, u64, 4096);

static __always_inline void count(int slot)
{
    u64 *v = ooo_counts.lookup(&slot);
    if (v)
        (*v)++;
}

TK_SEC("kprobe") int tk_queue_xmit(struct pt_regs *ctx)
{
    struct sock *sk = (struct sock *)PT_REGS_PARM1(ctx);
    struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
    u16 proto = 0;
    u8 ooo = 0;
    unsigned int truesize = 0;
#ifdef TK_CORE
    proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
    ooo = BPF_CORE_READ_BITFIELD_PROBED(skb, ooo_okay);
    bpf_probe_read_kernel(&truesize, sizeof(truesize), &skb->truesize);
#else
    /* A probe read cannot take a bitfield's address: copy the skb, let clang extract. */
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    bpf_probe_read_kernel(&proto, sizeof(proto), &sk->sk_protocol);
    ooo = s.ooo_okay;
    truesize = s.truesize;
#endif
    if (proto != IPPROTO_TCP)
        return 0;
    count(0);
    if (!tk_param_all && !ooo)
        return 0;
    int wmem = 0;
    bpf_probe_read_kernel(&wmem, sizeof(wmem), &sk->sk_wmem_alloc.refs.counter);
    wmem -= truesize;
    void *rtx = NULL;
    bpf_probe_read_kernel(&rtx, sizeof(rtx), &sk->tcp_rtx_queue.rb_node);
    u32 threshold = SKB_TRUESIZE(1);
    u8 wmem_low = wmem < (int)threshold;
    u8 rtx_empty = rtx == NULL;
    if (ooo) {
        count(1);
        if (wmem_low)
            count(2);
        if (rtx_empty)
            count(3);
    }
    s32 stack_id = tk_stacks.get_stackid(ctx, 0);
    if (tk_cfg_agg && ooo) {
        struct tk_agg_key key = {};
        key.cpu = bpf_get_smp_processor_id();
        key.stack_id = stack_id;
        key.ooo_okay = ooo;
        key.wmem_low = wmem_low;
        key.rtx_empty = rtx_empty;
        tk_agg.increment(key);
    }
    if (!tk_cfg_stream)
        return 0;
    struct tk_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.sk = (u64)sk;
    ev.cpu = bpf_get_smp_processor_id();
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    tk_read_flow(sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    ev.wmem = wmem;
    ev.threshold = threshold;
    ev.stack_id = stack_id;
    ev.ooo_okay = ooo;
    ev.wmem_low = wmem_low;
    ev.rtx_empty = rtx_empty;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    tk_emit(ctx, &ev);
    return 0;
}
