/* fq-throttle: sch_fq throttling, empty dequeues and flow_limit drops.
 *
 * fq_flow_set_throttled() is inlined into fq_dequeue() on Debian's kernels, and
 * the drop for flow_limit is a branch inside fq_enqueue(); both bump counters in
 * the qdisc's private struct fq_sched_data (stat_throttled, stat_flows_plimit),
 * the ones `tc -s qdisc` prints as `throttled` and `flows_plimit`. We read them on
 * entry and return of fq_dequeue()/fq_enqueue() and report each change with its
 * context. struct fq_sched_data is in no header, only in the sch_fq module's BTF:
 * the CO-RE object declares it (tk_kernel_types.h) and libbpf relocates each read
 * against the module's BTF at load; under BCC its member offsets come from that BTF
 * too (TK_FQ_OFF_*, passed by the probe's prepare()).
 */
#include "tk_compat.h"
#ifndef TK_CORE
#include <net/sch_generic.h>
#include <net/pkt_sched.h>
#include <linux/netdevice.h>
#include <net/sock.h>
#endif

struct tk_event {
    u64 ts_ns;
    u64 sk;
    u64 delay_us;
    u64 maxrate; /* the qdisc's maxrate, bytes/s (~0: none) */
    u32 cpu;
    u32 ifindex;
    u32 saddr;
    u32 daddr;
    u32 count;
    u32 qlen;
    u32 flow_limit; /* the qdisc's flow_limit, packets */
    u16 sport;
    u16 dport;
    u16 queue;
    u8 kind;
    u8 pad;
    char ifname[16];
    u32 pad2;
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

/* fq's lists of flows with packets to send (new and old; per band from 6.8): the
 * offset in struct fq_sched_data of each list's first flow, from the sch_fq module's
 * BTF (prepare()), for both loaders. A flow fq throttles is taken off the head of one
 * of them and put in the qdisc's tree of throttled flows. */
#define FQ_LISTS 6
#define FQ_PER_LIST 2
#define FQ_SLOTS (FQ_LISTS * FQ_PER_LIST)
TK_SETTING(u32, tk_fq_nlists, TK_FQ_NLISTS, 0);
TK_SETTING(u32, tk_fq_list0, TK_FQ_LIST0, 0);
TK_SETTING(u32, tk_fq_list1, TK_FQ_LIST1, 0);
TK_SETTING(u32, tk_fq_list2, TK_FQ_LIST2, 0);
TK_SETTING(u32, tk_fq_list3, TK_FQ_LIST3, 0);
TK_SETTING(u32, tk_fq_list4, TK_FQ_LIST4, 0);
TK_SETTING(u32, tk_fq_list5, TK_FQ_LIST5, 0);

struct call_state {
    struct Qdisc *sch;
    struct sock *sk;
    u64 stat;
    /* The first FQ_PER_LIST flows of each list as fq_dequeue starts: the flows it may
     * throttle (a flow it unthrottles and throttles again in one call is not here). */
    u64 flows[FQ_SLOTS];
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

/* One member of struct fq_sched_data as a u64 (0 if the read fails). */
#ifdef TK_CORE
#define FQ_STAT(priv, member)                                                             \
    ((u64)BPF_CORE_READ_BITFIELD_PROBED((struct fq_sched_data *)(priv), member))
#else
static __always_inline u64 read_u64(void *base, u64 off)
{
    u64 v = 0;
    bpf_probe_read_kernel(&v, sizeof(v), base + off);
    return v;
}
#define FQ_STAT_stat_throttled TK_FQ_OFF_STAT_THROTTLED
#define FQ_STAT_stat_flows_plimit TK_FQ_OFF_STAT_FLOWS_PLIMIT
#define FQ_STAT_time_next_delayed_flow TK_FQ_OFF_TIME_NEXT_DELAYED_FLOW
#define FQ_STAT(priv, member) read_u64((priv), FQ_STAT_##member)
#endif

/* The qdisc's flow_limit and maxrate, and the throttled flow's socket and departure
 * time; under BCC from the offsets (and maxrate's width) prepare() read from BTF. */
#ifdef TK_CORE
#define FQ_DELAYED(priv) ((void *)(priv) + bpf_core_field_offset(struct fq_sched_data, delayed))
#define FQ_FLOW_NODE(f) ((void *)(f) + bpf_core_field_offset(struct fq_flow, rate_node))
#define FQ_FLOW_LINK(f) ((u64)BPF_CORE_READ((struct fq_flow *)(f), next))
#define FQ_FLOW_SK(f) ((u64)BPF_CORE_READ((struct fq_flow *)(f), sk))
#define FQ_FLOW_NEXT(f) ((u64)BPF_CORE_READ((struct fq_flow *)(f), time_next_packet))
#define FQ_PLIMIT(priv) ((u32)FQ_STAT(priv, flow_plimit))
#define FQ_MAXRATE(priv) ((u64)FQ_STAT(priv, flow_max_rate))
#else
static __always_inline u64 read_sized(void *base, u64 off, u32 size)
{
    u64 v = 0;
    if (size == 4)
        bpf_probe_read_kernel(&v, 4, base + off);
    else
        bpf_probe_read_kernel(&v, 8, base + off);
    return v;
}
#define FQ_DELAYED(priv) ((void *)(priv) + TK_FQ_OFF_DELAYED)
#define FQ_FLOW_NODE(f) ((void *)(f) + TK_FQ_FLOW_OFF_RATE_NODE)
#define FQ_FLOW_LINK(f) read_u64((void *)(f), TK_FQ_FLOW_OFF_NEXT)
#define FQ_FLOW_SK(f) read_u64((void *)(f), TK_FQ_FLOW_OFF_SK)
#define FQ_FLOW_NEXT(f) read_u64((void *)(f), TK_FQ_FLOW_OFF_TIME_NEXT_PACKET)
#define FQ_PLIMIT(priv) ((u32)read_sized((priv), TK_FQ_OFF_FLOW_PLIMIT, 4))
#define FQ_MAXRATE(priv) read_sized((priv), TK_FQ_OFF_FLOW_MAX_RATE, TK_FQ_SIZE_FLOW_MAX_RATE)
#endif

/* qdisc_priv(): the qdisc's private data, the flexible array at its end. */
static __always_inline void *fq_priv(struct Qdisc *sch)
{
#ifdef TK_CORE
    return (void *)sch + bpf_core_field_offset(struct Qdisc, privdata);
#else
    return qdisc_priv(sch);
#endif
}

static __always_inline u64 netdev_queue_size(void)
{
#ifdef TK_CORE
    return bpf_core_type_size(struct netdev_queue);
#else
    return sizeof(struct netdev_queue);
#endif
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
        ev->queue = ((u64)txq - (u64)tx0) / netdev_queue_size();
    bpf_probe_read_kernel(&ev->qlen, sizeof(ev->qlen), &sch->q.qlen);
    void *priv = fq_priv(sch);
    ev->flow_limit = FQ_PLIMIT(priv);
    ev->maxrate = FQ_MAXRATE(priv);
    if (ev->maxrate == 0xffffffff)
        ev->maxrate = ~0ULL; /* ~0U: no maxrate where the member is 32 bits wide */
    ev->ts_ns = bpf_ktime_get_ns();
    ev->cpu = bpf_get_smp_processor_id();
}

static __always_inline u32 list_off(int l)
{
    switch (l) {
    case 0:
        return tk_fq_list0;
    case 1:
        return tk_fq_list1;
    case 2:
        return tk_fq_list2;
    case 3:
        return tk_fq_list3;
    case 4:
        return tk_fq_list4;
    default:
        return tk_fq_list5;
    }
}

/* Is this rb_node in the tree whose root node is `root`? Its parent (or the root)
 * points back to it. A node erased earlier keeps a stale parent, whose children no
 * longer point to it; a node never inserted is all zeros. */
static __always_inline int in_tree(void *node, u64 root)
{
    struct rb_node *n = (struct rb_node *)node;
    unsigned long pc = 0;
    bpf_probe_read_kernel(&pc, sizeof(pc), &n->__rb_parent_color);
    struct rb_node *parent = (struct rb_node *)(pc & ~3UL);
    if (!parent)
        return root == (u64)node;
    u64 left = 0, right = 0;
    bpf_probe_read_kernel(&left, sizeof(left), &parent->rb_left);
    bpf_probe_read_kernel(&right, sizeof(right), &parent->rb_right);
    return left == (u64)node || right == (u64)node;
}

/* One throttle of flow f: its socket's flow, and how long fq holds it. */
static __always_inline void emit_throttle(struct pt_regs *ctx, struct Qdisc *sch, u64 f)
{
    u64 sk = FQ_FLOW_SK(f);
    u64 next = FQ_FLOW_NEXT(f);
    struct tk_event ev = {};
    fill_common(&ev, sch);
    ev.kind = KIND_THROTTLE;
    ev.count = 1;
    ev.delay_us = next > ev.ts_ns ? (next - ev.ts_ns) / 1000 : 0;
    /* Bit 0 set: not a socket but the hash fq keys traffic not of this host by. */
    if (sk && !(sk & 1)) {
        ev.sk = sk;
        tk_read_flow((struct sock *)sk, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport);
    }
    tk_emit(ctx, &ev);
}

TK_SEC("kprobe") int tk_fq_enqueue(struct pt_regs *ctx)
{
    struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM1(ctx);
    struct Qdisc *sch = (struct Qdisc *)PT_REGS_PARM2(ctx);
    int zero = 0;
    struct call_state *st = fq_enq_state.lookup(&zero);
    if (!st)
        return 0;
    count(4, 1);
    st->sch = sch;
    st->sk = NULL;
    bpf_probe_read_kernel(&st->sk, sizeof(st->sk), &skb->sk);
    st->stat = FQ_STAT(fq_priv(sch), stat_flows_plimit);
    st->valid = 1;
    return 0;
}

TK_SEC("kretprobe") int tk_fq_enqueue_ret(struct pt_regs *ctx)
{
    int zero = 0;
    struct call_state *st = fq_enq_state.lookup(&zero);
    if (!st || !st->valid)
        return 0;
    st->valid = 0;
    u64 now = FQ_STAT(fq_priv(st->sch), stat_flows_plimit);
    if (now == st->stat)
        return 0;
    count(1, now - st->stat);
    if (!tk_cfg_stream)
        return 0;
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
    return 0;
}

TK_SEC("kprobe") int tk_fq_dequeue(struct pt_regs *ctx)
{
    struct Qdisc *sch = (struct Qdisc *)PT_REGS_PARM1(ctx);
    int zero = 0;
    struct call_state *st = fq_deq_state.lookup(&zero);
    if (!st)
        return 0;
    count(3, 1);
    st->sch = sch;
    void *priv = fq_priv(sch);
    st->stat = FQ_STAT(priv, stat_throttled);
#pragma unroll
    for (int l = 0; l < FQ_LISTS; l++) {
        u64 f = 0;
        if (l < tk_fq_nlists)
            bpf_probe_read_kernel(&f, sizeof(f), priv + list_off(l));
#pragma unroll
        for (int k = 0; k < FQ_PER_LIST; k++) {
            st->flows[l * FQ_PER_LIST + k] = f;
            if (f)
                f = FQ_FLOW_LINK(f);
        }
    }
    st->valid = 1;
    return 0;
}

TK_SEC("kretprobe") int tk_fq_dequeue_ret(struct pt_regs *ctx)
{
    int zero = 0;
    struct call_state *st = fq_deq_state.lookup(&zero);
    if (!st || !st->valid)
        return 0;
    st->valid = 0;
    void *priv = fq_priv(st->sch);
    u64 now_stat = FQ_STAT(priv, stat_throttled);
    u32 qlen = 0;
    bpf_probe_read_kernel(&qlen, sizeof(qlen), &st->sch->q.qlen);
    int empty = PT_REGS_RC(ctx) == 0 && qlen > 0;
    if (now_stat != st->stat)
        count(0, now_stat - st->stat);
    if (empty)
        count(2, 1);
    if (!tk_cfg_stream)
        return 0;
    u64 attributed = 0;
    if (now_stat != st->stat) {
        /* Each flow that was in a list and is now in the tree of throttled flows was
         * throttled by this call: one event each, with its flow and delay. */
        u64 root = 0;
        bpf_probe_read_kernel(&root, sizeof(root), FQ_DELAYED(priv));
#pragma unroll
        for (int i = 0; i < FQ_SLOTS; i++) {
            u64 f = st->flows[i];
            if (f && attributed < now_stat - st->stat && in_tree(FQ_FLOW_NODE(f), root)) {
                attributed++;
                emit_throttle(ctx, st->sch, f);
            }
        }
    }
    /* Throttles of flows not recorded at entry (more than FQ_PER_LIST in a list, or
     * unthrottled and throttled again in this call): one event without a flow, with
     * the time the qdisc's watchdog fires. */
    if (now_stat - st->stat > attributed) {
        struct tk_event ev = {};
        fill_common(&ev, st->sch);
        ev.kind = KIND_THROTTLE;
        ev.count = now_stat - st->stat - attributed;
        u64 next = FQ_STAT(priv, time_next_delayed_flow);
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
    return 0;
}

/* Drops by the reason the kernel gives them. sch_fq names its drops from 6.14
 * (Debian's 6.12 has it too) in skb:kfree_skb's reason (SKB_DROP_REASON_FQ_*), and
 * from 7.x in qdisc:qdisc_drop's (QDISC_DROP_*, an enum of its own); the loader
 * attaches whichever the kernel has (qdisc_drop first). The values differ between
 * kernels: prepare() reads them from the kernel's BTF (NO_REASON: this kernel has
 * no such reason, nothing is counted). Slots: flow_limit, band_limit, horizon. */
#define NO_REASON 0xffffffff
TK_SETTING(u32, tk_skb_fq_flow, TK_SKB_FQ_FLOW_LIMIT, NO_REASON);
TK_SETTING(u32, tk_skb_fq_band, TK_SKB_FQ_BAND_LIMIT, NO_REASON);
TK_SETTING(u32, tk_skb_fq_horizon, TK_SKB_FQ_HORIZON_LIMIT, NO_REASON);
TK_SETTING(u32, tk_qdisc_fq_flow, TK_QDISC_FQ_FLOW_LIMIT, NO_REASON);
TK_SETTING(u32, tk_qdisc_fq_band, TK_QDISC_FQ_BAND_LIMIT, NO_REASON);
TK_SETTING(u32, tk_qdisc_fq_horizon, TK_QDISC_FQ_HORIZON_LIMIT, NO_REASON);
/* fq's drops by the kernel's reason (slot i is enumerator i; tracekit names them). */
enum fq_drops {
    FQ_DROPS_FLOW_LIMIT,
    FQ_DROPS_BAND_LIMIT,
    FQ_DROPS_HORIZON,
    FQ_DROPS_NSLOTS
};
BPF_PERCPU_ARRAY(fq_drops, u64, FQ_DROPS_NSLOTS);

static __always_inline void count_drop(u32 reason, u32 flow, u32 band, u32 horizon)
{
    int slot = reason == flow      ? FQ_DROPS_FLOW_LIMIT
               : reason == band    ? FQ_DROPS_BAND_LIMIT
               : reason == horizon ? FQ_DROPS_HORIZON
                                   : -1;
    if (slot < 0 || reason == NO_REASON)
        return;
    u64 *v = fq_drops.lookup(&slot);
    if (v)
        (*v)++;
}

/* skb:kfree_skb(skb, location, reason, ...) */
TK_SEC("raw_tp") int tk_fq_kfree_skb(struct bpf_raw_tracepoint_args *ctx)
{
    count_drop((u32)ctx->args[2], tk_skb_fq_flow, tk_skb_fq_band, tk_skb_fq_horizon);
    return 0;
}

/* qdisc:qdisc_drop(qdisc, txq, dev, skb, reason) */
TK_SEC("raw_tp") int tk_fq_qdisc_drop(struct bpf_raw_tracepoint_args *ctx)
{
    count_drop((u32)ctx->args[4], tk_qdisc_fq_flow, tk_qdisc_fq_band, tk_qdisc_fq_horizon);
    return 0;
}
