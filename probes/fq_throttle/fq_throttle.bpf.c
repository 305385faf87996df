/* fq-throttle: sch_fq throttling, empty dequeues and flow_limit drops.
 *
 * fq_flow_set_throttled() is inlined into fq_dequeue() on Debian's kernels, and
 * the drop for flow_limit is a branch inside fq_enqueue(); both bump counters in
 * the qdisc's private struct fq_sched_data (stat_throttled, stat_flows_plimit),
 * the ones `tc -s qdisc` prints as `throttled` and `flows_plimit`. We read them on
 * entry and return of fq_dequeue()/fq_enqueue() and report each change with its
 * context. struct fq_sched_data is in no header: its member offsets come from the
 * running kernel's BTF for sch_fq (TK_FQ_OFF_* below, checked by the loader).
 */
#include <net/sch_generic.h>
#include <net/pkt_sched.h>
#include <linux/netdevice.h>
#include <net/sock.h>

struct tk_event {
    u64 ts_ns;
    u64 sk;
    u64 delay_us;
    u32 cpu;
    u32 ifindex;
    u32 saddr;
    u32 daddr;
    u32 count;
    u32 qlen;
    u16 sport;
    u16 dport;
    u16 queue;
    u8 kind;
    u8 pad;
    char ifname[16];
};

#include "tracekit.h"

#define KIND_THROTTLE 1
#define KIND_FLOW_LIMIT_DROP 2
#define KIND_EMPTY_DEQUEUE 3

/* Per-CPU counters (slot i is enumerator i; tracekit names them from this enum). */
enum fq_counts {
    FQ_COUNTS_THROTTLED,        /* flows throttled */
    FQ_COUNTS_FLOW_LIMIT_DROPS, /* flow_limit drops */
    FQ_COUNTS_EMPTY_DEQUEUES,   /* dequeues that returned nothing with packets queued */
    FQ_COUNTS_DEQUEUES,         /* dequeue calls */
    FQ_COUNTS_ENQUEUES,         /* enqueue calls */
};
BPF_PERCPU_ARRAY(fq_counts, u64, 5);

struct call_state {
    struct Qdisc *sch;
    struct sock *sk;
    u64 stat;
    u8 valid;
};
BPF_PERCPU_ARRAY(fq_enq_state, struct call_state, 1);
BPF_PERCPU_ARRAY(fq_deq_state, struct call_state, 1);

static __always_inline void count(int slot, u64 n)
{
    u64 *v = fq_counts.lookup(&slot);
    if (v)
        *v += n;
}

static __always_inline u64 read_u64(void *base, u64 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), base + off);
    return v;
}

static __always_inline void *fq_priv(struct Qdisc *sch)
{
    return qdisc_priv(sch);
}

static __always_inline void fill_common(struct tk_event *ev, struct Qdisc *sch)
{
    struct netdev_queue *txq = NULL;
    struct net_device *dev = NULL;
    struct netdev_queue *tx0 = NULL;
    bpf_probe_read_kernel(&txq, sizeof(txq), &sch->dev_queue);
    if (txq)
        bpf_probe_read_kernel(&dev, sizeof(dev), &txq->dev);
    if (dev) {
        bpf_probe_read_kernel(&tx0, sizeof(tx0), &dev->_tx);
        bpf_probe_read_kernel(&ev->ifindex, sizeof(ev->ifindex), &dev->ifindex);
        bpf_probe_read_kernel_str(&ev->ifname, sizeof(ev->ifname), dev->name);
    }
    if (txq && tx0)
        ev->queue = ((u64)txq - (u64)tx0) / sizeof(struct netdev_queue);
    bpf_probe_read_kernel(&ev->qlen, sizeof(ev->qlen), &sch->q.qlen);
    ev->ts_ns = bpf_ktime_get_ns();
    ev->cpu = bpf_get_smp_processor_id();
}

int tk_fq_enqueue(struct pt_regs *ctx, struct sk_buff *skb, struct Qdisc *sch)
{
    int zero = 0;
    struct call_state *st = fq_enq_state.lookup(&zero);
    if (!st)
        return 0;
    count(4, 1);
    st->sch = sch;
    st->sk = NULL;
    bpf_probe_read_kernel(&st->sk, sizeof(st->sk), &skb->sk);
    st->stat = read_u64(fq_priv(sch), TK_FQ_OFF_STAT_FLOWS_PLIMIT);
    st->valid = 1;
    return 0;
}

int tk_fq_enqueue_ret(struct pt_regs *ctx)
{
    int zero = 0;
    struct call_state *st = fq_enq_state.lookup(&zero);
    if (!st || !st->valid)
        return 0;
    st->valid = 0;
    u64 now = read_u64(fq_priv(st->sch), TK_FQ_OFF_STAT_FLOWS_PLIMIT);
    if (now == st->stat)
        return 0;
    count(1, now - st->stat);
#if TK_STREAM
    struct tk_event ev = {};
    fill_common(&ev, st->sch);
    ev.kind = KIND_FLOW_LIMIT_DROP;
    ev.count = now - st->stat;
    struct sock *sk = st->sk;
    ev.sk = (u64)sk;
    if (sk) {
        tk_read_flow(sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    }
    tk_emit(ctx, &ev);
#endif
    return 0;
}

int tk_fq_dequeue(struct pt_regs *ctx, struct Qdisc *sch)
{
    int zero = 0;
    struct call_state *st = fq_deq_state.lookup(&zero);
    if (!st)
        return 0;
    count(3, 1);
    st->sch = sch;
    st->stat = read_u64(fq_priv(sch), TK_FQ_OFF_STAT_THROTTLED);
    st->valid = 1;
    return 0;
}

int tk_fq_dequeue_ret(struct pt_regs *ctx)
{
    int zero = 0;
    struct call_state *st = fq_deq_state.lookup(&zero);
    if (!st || !st->valid)
        return 0;
    st->valid = 0;
    void *priv = fq_priv(st->sch);
    u64 now_stat = read_u64(priv, TK_FQ_OFF_STAT_THROTTLED);
    u32 qlen = 0;
    bpf_probe_read_kernel(&qlen, sizeof(qlen), &st->sch->q.qlen);
    int empty = PT_REGS_RC(ctx) == 0 && qlen > 0;
    if (now_stat != st->stat)
        count(0, now_stat - st->stat);
    if (empty)
        count(2, 1);
#if TK_STREAM
    if (now_stat != st->stat) {
        struct tk_event ev = {};
        fill_common(&ev, st->sch);
        ev.kind = KIND_THROTTLE;
        ev.count = now_stat - st->stat;
        /* The earliest time a throttled flow may send again: when the qdisc's
         * watchdog fires. fq keeps no per-event record of which flow it was. */
        u64 next = read_u64(priv, TK_FQ_OFF_TIME_NEXT_DELAYED_FLOW);
        u64 t = bpf_ktime_get_ns();
        ev.delay_us = next > t ? (next - t) / 1000 : 0;
        tk_emit(ctx, &ev);
    }
    if (empty) {
        struct tk_event ev = {};
        fill_common(&ev, st->sch);
        ev.kind = KIND_EMPTY_DEQUEUE;
        ev.count = 1;
        tk_emit(ctx, &ev);
    }
#endif
    return 0;
}
