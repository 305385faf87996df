/* ooo-okay: which transmitted skbs may change TX queue, the rule the kernel
 * applied, and the inputs it used.
 *
 * skb->ooo_okay lets netdev_pick_tx() move a socket to another TX queue. Who sets
 * it, and how, depends on the kernel (enum ooo_rule; docs/kernels.md):
 *   - TCP, __tcp_transmit_skb() (net/ipv4/tcp_output.c), every kernel:
 *       up to 6.5  sk_wmem_alloc_get(sk) < SKB_TRUESIZE(1)
 *       6.6+       ... || tcp_rtx_queue_empty(sk)   ("tcp: refine skb->ooo_okay setting")
 *     TCP charges its clone itself (refcount_add), never through skb_set_owner_w().
 *   - every other transport, 6.19+: skb_set_owner_w() (net/core/sock.c) sets it
 *     when sk_wmem_alloc was at its bias (SK_WMEM_ALLOC_BIAS, 1) before this skb's
 *     truesize was added: no other skb of the socket in a qdisc or NIC queue. Full
 *     sockets only (request and timewait sockets keep it clear). Before 6.19 no
 *     one sets it for them: their skbs never carry it.
 *
 * TCP: each skb as it reaches ip_queue_xmit()/inet6_csk_xmit(), just after. By then
 * the skb's own truesize has been charged to sk_wmem_alloc, so it is subtracted (and
 * the bias) to see the value the kernel tested. The retransmit queue is unchanged
 * until after the transmit, so reading it here gives the value the kernel tested.
 * Other transports (attached on 6.19+ only, see the ProbeSpec): skb_set_owner_w()
 * itself, sk_wmem_alloc read at entry (the value its atomic add returns as old)
 * and the flag read at return.
 */
#include "tk_compat.h"
#ifdef TK_CORE
#include <linux/in.h> /* IPPROTO_*: user-space API, the same on every kernel */
/* SKB_TRUESIZE(1) of the running kernel: both struct sizes come from its BTF
 * (relocated at load), each rounded up to the cache line as SKB_DATA_ALIGN does. */
#define TK_CACHE_ALIGN(x) (((x) + 63) & ~63)
#define SKB_TRUESIZE(x)                                                                   \
    ((x) + TK_CACHE_ALIGN(bpf_core_type_size(struct sk_buff)) +                           \
     TK_CACHE_ALIGN(bpf_core_type_size(struct skb_shared_info)))
/* The running kernel's version, which libbpf fills in at load. */
extern unsigned int LINUX_KERNEL_VERSION __kconfig;
#define TK_KERNEL_AT_LEAST(a, b) (LINUX_KERNEL_VERSION >= KERNEL_VERSION(a, b, 0))
#else
#include <linux/version.h>
#include <linux/skbuff.h>
#include <net/sock.h>
/* BCC compiles against the running kernel's headers: their version is its version. */
#define TK_KERNEL_AT_LEAST(a, b) (LINUX_VERSION_CODE >= KERNEL_VERSION(a, b, 0))
#endif

#define TK_SOCK_RAW 3
#define TK_TCP_TIME_WAIT 6
#define TK_TCP_NEW_SYN_RECV 12

/* The rule that decided an skb's ooo_okay (the schema's `rule` names, same order). */
enum ooo_rule {
    OOO_RULE_TCP_WMEM,     /* TCP up to 6.5: wmem < SKB_TRUESIZE(1) */
    OOO_RULE_TCP_WMEM_RTX, /* TCP from 6.6: wmem < SKB_TRUESIZE(1) or rtx queue empty */
    OOO_RULE_OWNER_W,      /* other transports from 6.19: wmem == 0 (skb_set_owner_w) */
};

/* The socket's transport (the schema's `transport` names, same order). */
enum ooo_transport {
    OOO_TRANSPORT_TCP,
    OOO_TRANSPORT_UDP,
    OOO_TRANSPORT_UDPLITE,
    OOO_TRANSPORT_PING, /* ICMP echo sockets (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6) */
    OOO_TRANSPORT_RAW,  /* SOCK_RAW, any protocol */
    OOO_TRANSPORT_OTHER,
};

/* The one declaration of the event (tracekit reads it). No holes. */
struct tk_event {
    u64 ts_ns;
    u64 sk;
    u32 cpu;
    u32 pid;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u32 wmem;      /* sk_wmem_alloc_get(sk) the rule tested: this skb excluded */
    u32 threshold; /* the rule's bound: wmem_low is wmem < threshold */
    s32 stack_id;
    u8 ooo_okay;  /* the flag as the kernel set it */
    u8 wmem_low;  /* wmem < threshold */
    u8 rtx_empty; /* TCP: the retransmit queue was empty */
    u8 path;
    u8 rule;      /* enum ooo_rule */
    u8 transport; /* enum ooo_transport */
    u16 pad;
    char comm[16];
};

#include "tracekit.h"

TK_PARAM(all); /* 1: stream every skb, not only those with ooo_okay */

/* Per-CPU counters (slot i is enumerator i; tracekit names them from this enum). */
enum ooo_counts {
    OOO_COUNTS_TRANSMITTED,       /* skbs seen (TCP transmits; other transports' on 6.19+) */
    OOO_COUNTS_OOO_OKAY,          /* with ooo_okay */
    OOO_COUNTS_WMEM_LOW,          /* ooo_okay with wmem below the threshold */
    OOO_COUNTS_RTX_EMPTY,         /* ooo_okay TCP skbs with the rtx queue empty */
    OOO_COUNTS_RULE_TCP_WMEM,     /* skbs decided by each rule, enum ooo_rule's order */
    OOO_COUNTS_RULE_TCP_WMEM_RTX, /*   " */
    OOO_COUNTS_RULE_OWNER_W,      /*   " */
    OOO_COUNTS_NOT_AS_RULE,       /* the flag differs from the rule applied to what was read */
    OOO_COUNTS_NSLOTS
};
BPF_PERCPU_ARRAY(ooo_counts, u64, OOO_COUNTS_NSLOTS);
BPF_STACK_TRACE(tk_stacks, 2048);

struct tk_agg_key {
    u32 cpu;
    s32 stack_id;
    u8 ooo_okay;
    u8 wmem_low;
    u8 rtx_empty;
    u8 rule;
    u8 transport;
    u8 pad[3];
};
BPF_HASH(tk_agg, struct tk_agg_key, u64, 4096);

/* skb_set_owner_w() between entry and return. Transmit paths run it with bottom
 * halves enabled, so a softirq may run another call on this CPU in between: the
 * inner call's return consumes the slot, and the outer one, finding it empty, is
 * counted nowhere and emits nothing (a loss, never a wrong pairing). */
struct owner_state {
    struct sock *sk;
    struct sk_buff *skb;
    u32 wmem;
    s32 stack_id;
    u8 transport;
    u8 valid;
    u8 pad[6];
};
BPF_PERCPU_ARRAY(ooo_owner, struct owner_state, 1);

static __always_inline void count(int slot)
{
    u64 *v = ooo_counts.lookup(&slot);
    if (v)
        (*v)++;
}

static __always_inline u8 transport_of(u16 type, u16 proto)
{
    if (type == TK_SOCK_RAW)
        return OOO_TRANSPORT_RAW;
    if (proto == IPPROTO_TCP)
        return OOO_TRANSPORT_TCP;
    if (proto == IPPROTO_UDP)
        return OOO_TRANSPORT_UDP;
    if (proto == IPPROTO_UDPLITE)
        return OOO_TRANSPORT_UDPLITE;
    if (proto == IPPROTO_ICMP || proto == 58 /* IPPROTO_ICMPV6 */)
        return OOO_TRANSPORT_PING;
    return OOO_TRANSPORT_OTHER;
}

/* Counters, the in-kernel aggregate and the event, for one skb the rule decided. */
static __always_inline void record(struct pt_regs *ctx, struct sock *sk, s32 stack_id, u32 wmem,
                                   u32 threshold, u8 ooo, u8 rtx_empty, u8 rule, u8 transport)
{
    u8 wmem_low = wmem < threshold;
    u8 expected = wmem_low;
    if (rule == OOO_RULE_TCP_WMEM_RTX)
        expected = wmem_low || rtx_empty;
    count(OOO_COUNTS_TRANSMITTED);
    count(OOO_COUNTS_RULE_TCP_WMEM + rule);
    if (ooo != expected)
        count(OOO_COUNTS_NOT_AS_RULE);
    if (ooo) {
        count(OOO_COUNTS_OOO_OKAY);
        if (wmem_low)
            count(OOO_COUNTS_WMEM_LOW);
        if (rtx_empty)
            count(OOO_COUNTS_RTX_EMPTY);
    }
    if (!tk_param_all && !ooo)
        return;
    if (tk_cfg_agg && ooo) {
        struct tk_agg_key key = {};
        key.cpu = bpf_get_smp_processor_id();
        key.stack_id = stack_id;
        key.ooo_okay = ooo;
        key.wmem_low = wmem_low;
        key.rtx_empty = rtx_empty;
        key.rule = rule;
        key.transport = transport;
        tk_agg.increment(key);
    }
    if (!tk_cfg_stream)
        return;
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
    ev.rule = rule;
    ev.transport = transport;
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    tk_emit(ctx, &ev);
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
    int refs = 0;
    bpf_probe_read_kernel(&refs, sizeof(refs), &sk->sk_wmem_alloc.refs.counter);
    /* sk_wmem_alloc_get(): the count less its bias of 1, then less this skb. */
    int wmem = refs - 1 - (int)truesize;
    void *rtx = NULL;
    bpf_probe_read_kernel(&rtx, sizeof(rtx), &sk->tcp_rtx_queue.rb_node);
    u8 rule = TK_KERNEL_AT_LEAST(6, 6) ? OOO_RULE_TCP_WMEM_RTX : OOO_RULE_TCP_WMEM;
    s32 stack_id = -1;
    if (tk_param_all || ooo)
        stack_id = tk_stacks.get_stackid(ctx, 0);
    record(ctx, sk, stack_id, wmem < 0 ? 0 : wmem, SKB_TRUESIZE(1), ooo, rtx == NULL, rule,
           OOO_TRANSPORT_TCP);
    return 0;
}

/* skb_set_owner_w(skb, sk), 6.19+ (attached there only): the socket's state and
 * sk_wmem_alloc before the add. TCP's data never comes here, and what does (a
 * listener's SYN-ACK) is not the TCP rule: TCP sockets are left out. */
TK_SEC("kprobe") int tk_owner_w(struct pt_regs *ctx)
{
    struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM1(ctx);
    struct sock *sk = (struct sock *)PT_REGS_PARM2(ctx);
    int zero = 0;
    struct owner_state *st = ooo_owner.lookup(&zero);
    if (!st)
        return 0;
    st->valid = 0;
    unsigned short family = 0;
    unsigned char state = 0;
    bpf_probe_read_kernel(&family, sizeof(family), &sk->__sk_common.skc_family);
    if (family != AF_INET && family != 10 /* AF_INET6 */)
        return 0; /* AF_UNIX and the like: never transmitted on a device */
    bpf_probe_read_kernel(&state, sizeof(state), (void *)&sk->__sk_common.skc_state);
    if (state == TK_TCP_TIME_WAIT || state == TK_TCP_NEW_SYN_RECV)
        return 0; /* not a full socket: the kernel applies no rule */
    u16 type = 0, proto = 0;
#ifdef TK_CORE
    type = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_type);
    proto = BPF_CORE_READ_BITFIELD_PROBED(sk, sk_protocol);
#else
    bpf_probe_read_kernel(&type, sizeof(type), &sk->sk_type);
    bpf_probe_read_kernel(&proto, sizeof(proto), &sk->sk_protocol);
#endif
    u8 transport = transport_of(type, proto);
    if (transport == OOO_TRANSPORT_TCP)
        return 0;
    int refs = 0;
    bpf_probe_read_kernel(&refs, sizeof(refs), &sk->sk_wmem_alloc.refs.counter);
    st->sk = sk;
    st->skb = skb;
    st->wmem = refs > 1 ? refs - 1 : 0;
    st->transport = transport;
    st->stack_id = tk_stacks.get_stackid(ctx, 0);
    st->valid = 1;
    return 0;
}

TK_SEC("kretprobe") int tk_owner_w_return(struct pt_regs *ctx)
{
    int zero = 0;
    struct owner_state *st = ooo_owner.lookup(&zero);
    if (!st || !st->valid)
        return 0;
    st->valid = 0;
    struct sk_buff *skb = st->skb;
    u8 ooo = 0;
#ifdef TK_CORE
    ooo = BPF_CORE_READ_BITFIELD_PROBED(skb, ooo_okay);
#else
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    ooo = s.ooo_okay;
#endif
    /* The kernel's test is old == SK_WMEM_ALLOC_BIAS: wmem 0, below a threshold of 1. */
    record(ctx, st->sk, st->stack_id, st->wmem, 1, ooo, 0, OOO_RULE_OWNER_W, st->transport);
    return 0;
}
