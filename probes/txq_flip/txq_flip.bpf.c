/* txq-flip: when netdev_pick_tx() moves a socket to another transmit queue, and why.
 *
 * netdev_pick_tx() (net/core/dev.c) keeps a socket on the queue stored in
 * sk->sk_tx_queue_mapping unless sk_tx_queue_get() gives none, the skb has
 * ooo_okay set, or the queue is out of range; then XPS (or the tx hash) picks
 * again, and the socket may move. sk_tx_queue_get() gives none for a socket never
 * mapped and, from 6.19, for a full socket whose mapping is older than
 * net.core.txq_reselection_ms (sk_tx_queue_mapping_jiffies + the netns's
 * sysctl_txq_reselection, in jiffies, before now). We read those at entry, compare
 * the socket's queue with the queue returned, and emit an event only when they
 * differ, with the condition that let it move (CAUSE_*).
 */
#include "tk_compat.h"
#ifndef TK_CORE
#include <linux/version.h>
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <net/sock.h>
#endif

/* Why the socket could move (the schema's CAUSES, same order). ooo_okay comes
 * before the timer: with it set the move was safe whatever the timer said, so
 * "reselect" means the timer alone moved a socket that could have packets in flight. */
#define CAUSE_OTHER 0    /* none of netdev_pick_tx's conditions: not its choice */
#define CAUSE_FIRST 1    /* the socket had no queue yet */
#define CAUSE_OOO_OKAY 2 /* skb->ooo_okay */
#define CAUSE_RESELECT 3 /* 6.19+: the mapping outlived net.core.txq_reselection_ms */
#define CAUSE_RANGE 4    /* the queue is beyond the device's real_num_tx_queues */
#define NO_QUEUE 0xffff

/* The one declaration of the event: tracekit reads it (its Python side only says how
 * fields are shown) and checks it against the compiler's layout. No holes: every
 * byte copied out is initialised. */
struct tk_event {
    u64 ts_ns;
    u64 sk;
    u32 cpu;
    u32 pid;
    u32 ifindex;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u16 family;
    u16 queue_before;
    u16 queue_after;
    u8 ooo_okay;
    u8 cause;
    char ifname[16];
    char comm[16];
};

#include "tracekit.h"

TK_PARAM(ifindex); /* only this interface (0: all) */

/* Per-CPU counters, one slot each; tracekit names them from this enum. */
enum txq_counts {
    TXQ_COUNTS_CALLS,     /* netdev_pick_tx calls */
    TXQ_COUNTS_CHANGES,   /* calls that moved the socket to another queue */
    TXQ_COUNTS_NO_SOCKET, /* skbs without a socket */
    TXQ_COUNTS_NSLOTS
};
BPF_PERCPU_ARRAY(txq_counts, u64, TXQ_COUNTS_NSLOTS);

/* State between entry and return. The transmit path runs with bottom halves
 * disabled, so one call per CPU is in flight at a time: a per-CPU slot is enough
 * and cheaper than a hash keyed by thread (which is 0 for every idle CPU). */
struct entry_state {
    struct sock *sk;
    struct net_device *dev;
    u16 before;
    u8 ooo_okay;
    u8 cause;
    u8 valid;
};
BPF_PERCPU_ARRAY(txq_entry, struct entry_state, 1);

static __always_inline void count(int slot)
{
    u64 *v = txq_counts.lookup(&slot);
    if (v)
        (*v)++;
}

/* 6.19+: would sk_tx_queue_get() drop this socket's mapping for its age? */
static __always_inline int mapping_expired(struct sock *sk)
{
    unsigned char state = 0;
    bpf_probe_read_kernel(&state, sizeof(state), (void *)&sk->__sk_common.skc_state);
    if (state == 6 || state == 12) /* TCP_TIME_WAIT, TCP_NEW_SYN_RECV: not full sockets */
        return 0;
    unsigned long set_at = 0;
    int resel = 0;
#ifdef TK_CORE
    if (!bpf_core_field_exists(sk->sk_tx_queue_mapping_jiffies))
        return 0;
    set_at = BPF_CORE_READ(sk, sk_tx_queue_mapping_jiffies);
    resel = BPF_CORE_READ(sk, __sk_common.skc_net.net, core.sysctl_txq_reselection);
#elif LINUX_VERSION_CODE >= KERNEL_VERSION(6, 19, 0)
    struct net *net = NULL;
    bpf_probe_read_kernel(&set_at, sizeof(set_at), &sk->sk_tx_queue_mapping_jiffies);
    bpf_probe_read_kernel(&net, sizeof(net), &sk->__sk_common.skc_net.net);
    if (net)
        bpf_probe_read_kernel(&resel, sizeof(resel), &net->core.sysctl_txq_reselection);
#else
    return 0;
#endif
    /* time_is_before_jiffies(set_at + resel), with the same wrap-safe compare. */
    return resel > 0 && (long)(set_at + resel - bpf_jiffies64()) < 0;
}

static __always_inline u8 pick_cause(struct sock *sk, struct net_device *dev, u16 before, u8 ooo)
{
    if (before == NO_QUEUE)
        return CAUSE_FIRST;
    if (ooo)
        return CAUSE_OOO_OKAY;
    if (mapping_expired(sk))
        return CAUSE_RESELECT;
    unsigned int real = 0;
    bpf_probe_read_kernel(&real, sizeof(real), &dev->real_num_tx_queues);
    if (before >= real)
        return CAUSE_RANGE;
    return CAUSE_OTHER;
}

TK_SEC("kprobe") int tk_pick_tx_entry(struct pt_regs *ctx)
{
    struct net_device *dev = (struct net_device *)PT_REGS_PARM1(ctx);
    struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
    int zero = 0;
    struct entry_state *st = txq_entry.lookup(&zero);
    if (!st)
        return 0;
    st->valid = 0;
    if (tk_param_ifindex > 0) {
        int ifindex = 0;
        bpf_probe_read_kernel(&ifindex, sizeof(ifindex), &dev->ifindex);
        if (ifindex != tk_param_ifindex)
            return 0;
    }
    count(TXQ_COUNTS_CALLS);
    struct sock *sk = NULL;
    bpf_probe_read_kernel(&sk, sizeof(sk), &skb->sk);
    if (!sk) {
        count(TXQ_COUNTS_NO_SOCKET);
        return 0;
    }
    u16 before = 0xffff;
    bpf_probe_read_kernel(&before, sizeof(before), &sk->__sk_common.skc_tx_queue_mapping);
    st->sk = sk;
    st->dev = dev;
    st->before = before;
#ifdef TK_CORE
    st->ooo_okay = BPF_CORE_READ_BITFIELD_PROBED(skb, ooo_okay);
#else
    /* A probe read cannot take a bitfield's address: copy the skb, let clang extract. */
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    st->ooo_okay = s.ooo_okay;
#endif
    st->cause = pick_cause(sk, dev, before, st->ooo_okay);
    st->valid = 1;
    return 0;
}

TK_SEC("kretprobe") int tk_pick_tx_return(struct pt_regs *ctx)
{
    int zero = 0;
    struct entry_state *st = txq_entry.lookup(&zero);
    if (!st || !st->valid)
        return 0;
    st->valid = 0;
    u16 after = PT_REGS_RC(ctx) & 0xffff;
    if (after == st->before)
        return 0;
    count(TXQ_COUNTS_CHANGES);
    if (!tk_cfg_stream)
        return 0;
    struct tk_event ev = {};
    struct sock *sk = st->sk;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.sk = (u64)sk;
    ev.cpu = bpf_get_smp_processor_id();
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    ev.queue_before = st->before;
    ev.queue_after = after;
    ev.ooo_okay = st->ooo_okay;
    ev.cause = st->cause;
    bpf_probe_read_kernel(&ev.ifindex, sizeof(ev.ifindex), &st->dev->ifindex);
    bpf_probe_read_kernel_str(&ev.ifname, sizeof(ev.ifname), st->dev->name);
    bpf_probe_read_kernel(&ev.family, sizeof(ev.family), &sk->__sk_common.skc_family);
    tk_read_flow(sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    if (ev.family != AF_INET)
        ev.saddr = ev.daddr = 0; /* IPv6: addresses are not in these fields */
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    tk_emit(ctx, &ev);
    return 0;
}
