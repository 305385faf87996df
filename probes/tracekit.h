/* Shared by every tracekit probe: event output, loss and rate-limit accounting.
 *
 * A probe declares `struct tk_event` (the one declaration of its event layout),
 * includes this header, and emits with tk_emit(ctx, &ev). The loader picks the
 * output at compile time: the BPF ring buffer (-DTK_USE_RINGBUF) where the kernel
 * has it, else a perf buffer.
 */
#ifndef TRACEKIT_H
#define TRACEKIT_H

/* Per-CPU loss counters kept in the kernel, read by the loader:
 *   slot 0: outputs that failed (ring buffer reserve or perf buffer full)
 *   slot 1: events dropped by the --max-events-per-sec limit */
BPF_PERCPU_ARRAY(tk_lost, u64, 2);

/* Never written: its value type is struct tk_event, so BCC describes the struct as
 * clang laid it out (typedefs such as __be16 resolved, holes named __pad_N) and the
 * loader checks the schema against it. Inferring the type from the output call
 * instead fails on typedefs BCC does not know, and on ring buffer outputs. */
BPF_ARRAY(tk_event_layout, struct tk_event, 1);

/* Rate limit: per-CPU token bucket refilled every second. 0 = no limit. */
#ifndef TK_MAX_EVENTS_PER_SEC
#define TK_MAX_EVENTS_PER_SEC 0
#endif
struct tk_rl { u64 window_start; u64 count; };
BPF_PERCPU_ARRAY(tk_ratelimit, struct tk_rl, 1);

static __always_inline int tk_over_limit(void)
{
#if TK_MAX_EVENTS_PER_SEC > 0
    int zero = 0;
    struct tk_rl *rl = tk_ratelimit.lookup(&zero);
    if (!rl)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (now - rl->window_start >= 1000000000ULL) {
        rl->window_start = now;
        rl->count = 0;
    }
    if (rl->count >= TK_MAX_EVENTS_PER_SEC / TK_NCPUS + 1) {
        int slot = 1;
        u64 *lost = tk_lost.lookup(&slot);
        if (lost)
            (*lost)++;
        return 1;
    }
    rl->count++;
#endif
    return 0;
}

/* 1-in-N sampling of streamed events (TK_SAMPLE); counters are never sampled. */
#ifndef TK_SAMPLE
#define TK_SAMPLE 1
#endif
#if TK_SAMPLE > 1
BPF_PERCPU_ARRAY(tk_sample_n, u64, 1);
#endif
static __always_inline int tk_skip_sample(void)
{
#if TK_SAMPLE > 1
    int zero = 0;
    u64 *n = tk_sample_n.lookup(&zero);
    if (!n)
        return 0;
    return (*n)++ % TK_SAMPLE != 0;
#else
    return 0;
#endif
}

/* In-kernel aggregation (TK_AGG): probes count into a BPF hash `tk_agg` keyed by a
 * struct of schema fields, when no sink needs single events. */
#ifndef TK_AGG
#define TK_AGG 0
#endif

static __always_inline void tk_count_lost(int slot)
{
    u64 *lost = tk_lost.lookup(&slot);
    if (lost)
        (*lost)++;
}

/* BCC rewrites map calls only outside macros, so emitting is a function. */
#ifdef TK_USE_RINGBUF
#ifndef TK_RINGBUF_PAGES
#define TK_RINGBUF_PAGES 256
#endif
/* Wake user space every TK_WAKEUP_EVENTS events per CPU, not per event: a wakeup
 * per event costs several microseconds, more than the event itself. The loader's
 * poll timeout picks up whatever is left below the threshold. */
#ifndef TK_WAKEUP_EVENTS
#define TK_WAKEUP_EVENTS 64
#endif
BPF_RINGBUF_OUTPUT(tk_events, TK_RINGBUF_PAGES);
BPF_PERCPU_ARRAY(tk_emitted, u64, 1);
static __always_inline void tk_emit(void *ctx, struct tk_event *ev)
{
    if (tk_skip_sample() || tk_over_limit())
        return;
    int zero = 0;
    u64 flags = BPF_RB_NO_WAKEUP;
    u64 *n = tk_emitted.lookup(&zero);
    if (n && ++(*n) % TK_WAKEUP_EVENTS == 0)
        flags = BPF_RB_FORCE_WAKEUP;
    if (tk_events.ringbuf_output(ev, sizeof(*ev), flags) != 0)
        tk_count_lost(0);
}
#else
BPF_PERF_OUTPUT(tk_events);
static __always_inline void tk_emit(void *ctx, struct tk_event *ev)
{
    if (tk_skip_sample() || tk_over_limit())
        return;
    /* Counted here, not from the perf buffer's PERF_RECORD_LOST: the kernel writes
     * that record only before the next event that fits, so a burst lost at the end
     * of a run would never be reported. -ENOSPC (full) and -ENOENT (no reader on
     * this CPU) are both events lost. */
    if (tk_events.perf_submit(ctx, ev, sizeof(*ev)) != 0)
        tk_count_lost(0);
}
#endif

/* The flow of a socket: IPv4 addresses (network order) and ports (host order).
 * Only where the probe includes <net/sock.h>. */
#ifdef _SOCK_H
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

/* Whether single events are wanted at all: with only aggregating sinks (hist)
 * the loader compiles with TK_STREAM=0 and probes keep counts in maps instead. */
#ifndef TK_STREAM
#define TK_STREAM 1
#endif

#endif /* TRACEKIT_H */
