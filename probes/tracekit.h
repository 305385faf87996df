/* Shared by every tracekit probe: event output, loss and rate-limit accounting.
 *
 * A probe declares `struct tk_event` (the one declaration of its event layout),
 * includes this header, and emits with tk_emit(ctx, &ev). The output is the BPF
 * ring buffer where the kernel has it, else a perf buffer.
 *
 * The same text serves both loaders (see tk_compat.h): under BCC every setting is
 * a -D constant; in the CO-RE object it is a read-only global set at load time.
 * Code here tests settings with `if`, never `#if`, so one object serves all values.
 */
#ifndef TRACEKIT_H
#define TRACEKIT_H

#include "tk_compat.h"

/* Defaults of the BCC constants (the loader passes every one of them). */
#ifndef TK_STREAM
#define TK_STREAM 1
#endif
#ifndef TK_AGG
#define TK_AGG 0
#endif
#ifndef TK_SAMPLE
#define TK_SAMPLE 1
#endif
#ifndef TK_MAX_EVENTS_PER_SEC
#define TK_MAX_EVENTS_PER_SEC 0
#endif
#ifndef TK_NCPUS
#define TK_NCPUS 1
#endif
#ifndef TK_RINGBUF_PAGES
#define TK_RINGBUF_PAGES 256
#endif
#ifndef TK_WAKEUP_EVENTS
#define TK_WAKEUP_EVENTS 64
#endif
#ifdef TK_USE_RINGBUF
#define TK__RINGBUF 1
#else
#define TK__RINGBUF 0
#endif

/* Whether single events are wanted (with only aggregating sinks, such as hist, the
 * probe keeps counts in maps instead), and whether it also counts in the `tk_agg` map. */
TK_SETTING(u32, tk_cfg_stream, TK_STREAM, 1);
TK_SETTING(u32, tk_cfg_agg, TK_AGG, 0);
/* 1-in-N sampling of streamed events; counters are never sampled. */
TK_SETTING(u32, tk_cfg_sample, TK_SAMPLE, 1);
/* --max-events-per-sec (0: no limit), spread over this many CPUs. */
TK_SETTING(u32, tk_cfg_max_events_per_sec, TK_MAX_EVENTS_PER_SEC, 0);
TK_SETTING(u32, tk_cfg_ncpus, TK_NCPUS, 1);
TK_SETTING(u32, tk_cfg_use_ringbuf, TK__RINGBUF, 1);
/* Wake user space every this many events per CPU, not per event: a wakeup per
 * event costs several microseconds, more than the event itself. The loader's poll
 * timeout picks up whatever is left below the threshold. */
TK_SETTING(u32, tk_cfg_wakeup_events, TK_WAKEUP_EVENTS, 64);

/* Per-CPU loss counters kept in the kernel, read by the loader:
 *   slot 0: outputs that failed (ring buffer reserve or perf buffer full)
 *   slot 1: events dropped by the --max-events-per-sec limit */
BPF_PERCPU_ARRAY(tk_lost, u64, 2);

/* Never written: its value type is struct tk_event, so BCC describes the struct as
 * clang laid it out (typedefs such as __be16 resolved, holes named __pad_N) and the
 * loader checks the schema against it. Inferring the type from the output call
 * instead fails on typedefs BCC does not know, and on ring buffer outputs. (The
 * CO-RE loader reads the struct from the object's own BTF.) */
BPF_ARRAY(tk_event_layout, struct tk_event, 1);

/* Rate limit: per-CPU token bucket refilled every second. */
struct tk_rl { u64 window_start; u64 count; };
BPF_PERCPU_ARRAY(tk_ratelimit, struct tk_rl, 1);

static __always_inline int tk_over_limit(void)
{
    if (tk_cfg_max_events_per_sec == 0)
        return 0;
    int zero = 0;
    struct tk_rl *rl = tk_ratelimit.lookup(&zero);
    if (!rl)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (now - rl->window_start >= 1000000000ULL) {
        rl->window_start = now;
        rl->count = 0;
    }
    if (rl->count >= tk_cfg_max_events_per_sec / tk_cfg_ncpus + 1) {
        int slot = 1;
        u64 *lost = tk_lost.lookup(&slot);
        if (lost)
            (*lost)++;
        return 1;
    }
    rl->count++;
    return 0;
}

BPF_PERCPU_ARRAY(tk_sample_n, u64, 1);
static __always_inline int tk_skip_sample(void)
{
    if (tk_cfg_sample <= 1)
        return 0;
    int zero = 0;
    u64 *n = tk_sample_n.lookup(&zero);
    if (!n)
        return 0;
    return (*n)++ % tk_cfg_sample != 0;
}

static __always_inline void tk_count_lost(int slot)
{
    u64 *lost = tk_lost.lookup(&slot);
    if (lost)
        (*lost)++;
}

/* The event output. BCC declares the one this run uses (a ring buffer needs 5.8);
 * the CO-RE object has both and picks with a setting (its ring buffer's size is set
 * by the loader). BCC rewrites map calls only outside macros, so emitting is a
 * function. */
#ifdef TK_CORE
BPF_RINGBUF_OUTPUT(tk_events, 1);
BPF_PERF_OUTPUT(tk_events_perf);
#define TK__HAS_RINGBUF 1
#elif defined(TK_USE_RINGBUF)
BPF_RINGBUF_OUTPUT(tk_events, TK_RINGBUF_PAGES);
#define TK__HAS_RINGBUF 1
#else
BPF_PERF_OUTPUT(tk_events);
#endif
BPF_PERCPU_ARRAY(tk_emitted, u64, 1);

static __always_inline void tk_emit(void *ctx, struct tk_event *ev)
{
    if (tk_skip_sample() || tk_over_limit())
        return;
#ifdef TK__HAS_RINGBUF
    if (tk_cfg_use_ringbuf) {
        int zero = 0;
        u64 flags = BPF_RB_NO_WAKEUP;
        u64 *n = tk_emitted.lookup(&zero);
        if (n && ++(*n) % tk_cfg_wakeup_events == 0)
            flags = BPF_RB_FORCE_WAKEUP;
        if (tk_events.ringbuf_output(ev, sizeof(*ev), flags) != 0)
            tk_count_lost(0);
        return;
    }
#endif
    /* Counted here, not from the perf buffer's PERF_RECORD_LOST: the kernel writes
     * that record only before the next event that fits, so a burst lost at the end
     * of a run would never be reported. -ENOSPC (full) and -ENOENT (no reader on
     * this CPU) are both events lost. */
#ifdef TK_CORE
    if (tk_events_perf.perf_submit(ctx, ev, sizeof(*ev)) != 0)
        tk_count_lost(0);
#elif !defined(TK_USE_RINGBUF)
    if (tk_events.perf_submit(ctx, ev, sizeof(*ev)) != 0)
        tk_count_lost(0);
#endif
}

/* The flow of a socket: IPv4 addresses (network order) and ports (host order).
 * Only where the probe includes <net/sock.h> (or builds for CO-RE). */
#if defined(_SOCK_H) || defined(TK_CORE)
static __always_inline void tk_read_flow(struct sock *sk, u32 *saddr, u32 *daddr, u16 *sport,
                                         u16 *dport)
{
    u16 port = 0;
    bpf_probe_read_kernel(saddr, sizeof(*saddr), &sk->__sk_common.skc_rcv_saddr);
    bpf_probe_read_kernel(daddr, sizeof(*daddr), &sk->__sk_common.skc_daddr);
    bpf_probe_read_kernel(sport, sizeof(*sport), &sk->__sk_common.skc_num);
    bpf_probe_read_kernel(&port, sizeof(port), &sk->__sk_common.skc_dport);
    *dport = ntohs(port);
}
#endif

/* The IPv4 flow of an skb, read from its headers: for a packet with no socket yet
 * (receive before demux) or one that is not this host's. Needs skb->protocol, head
 * and network_header set (true from netif_receive_skb on, and on transmit).
 * Addresses are in network order (display="ipv4"), ports in host order, proto is the
 * IP protocol. Ports only for TCP and UDP, and only in the first fragment (later
 * ones carry no transport header): 0 otherwise. Returns 1 for an IPv4 packet, 0
 * (nothing written) for anything else. Where the probe includes <linux/skbuff.h>
 * (or builds for CO-RE). */
#if defined(_LINUX_SKBUFF_H) || defined(TK_CORE)
struct tk__iphdr {
    u8 version_ihl;
    u8 tos;
    u16 tot_len;
    u16 id;
    u16 frag_off;
    u8 ttl;
    u8 protocol;
    u16 check;
    u32 saddr;
    u32 daddr;
};

static __always_inline int tk_read_skb_flow(struct sk_buff *skb, u32 *saddr, u32 *daddr,
                                            u16 *sport, u16 *dport, u8 *proto)
{
    u16 l3 = 0, nh = 0;
    unsigned char *head = NULL;
    bpf_probe_read_kernel(&l3, sizeof(l3), &skb->protocol);
    if (ntohs(l3) != 0x0800) /* ETH_P_IP */
        return 0;
    bpf_probe_read_kernel(&nh, sizeof(nh), &skb->network_header);
    bpf_probe_read_kernel(&head, sizeof(head), &skb->head);
    struct tk__iphdr ip = {};
    if (bpf_probe_read_kernel(&ip, sizeof(ip), head + nh) != 0 || (ip.version_ihl >> 4) != 4)
        return 0;
    *saddr = ip.saddr;
    *daddr = ip.daddr;
    *proto = ip.protocol;
    *sport = *dport = 0;
    /* 6: TCP, 17: UDP; the low 13 bits of frag_off are the fragment's offset. */
    if ((ip.protocol == 6 || ip.protocol == 17) && (ntohs(ip.frag_off) & 0x1fff) == 0) {
        u16 ports[2] = {};
        bpf_probe_read_kernel(&ports, sizeof(ports), head + nh + (ip.version_ihl & 0xf) * 4);
        *sport = ntohs(ports[0]);
        *dport = ntohs(ports[1]);
    }
    return 1;
}
#endif

#endif /* TRACEKIT_H */
