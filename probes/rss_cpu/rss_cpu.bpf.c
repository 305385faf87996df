/* rss-cpu: which CPU does the receive work for which flow.
 *
 * The net:netif_receive_skb tracepoint fires in __netif_receive_skb_core(), on the
 * CPU that processes the packet: the CPU the NIC's RSS (or RPS) steered it to. The
 * same function counts /proc/net/softnet_stat's `processed` column, which is the
 * oracle the tests compare our per-CPU counts with.
 */
#include "tk_compat.h"
#ifndef TK_CORE
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#endif

/* The one declaration of the event: tracekit reads it (its Python side only says how
 * fields are shown) and checks it against the compiler's layout. */
struct tk_event {
    u64 ts_ns;
    u32 cpu;
    u32 ifindex;
    u32 hash;
    u32 saddr;
    u32 daddr;
    u32 len;
    u16 sport;
    u16 dport;
    u16 rx_queue;
    u8 proto;
    u8 l4_hash;
    char ifname[16];
};

#include "tracekit.h"

TK_PARAM(ifindex); /* events only for this interface (0: all) */

/* Per-CPU counters, one slot each; tracekit names them from this enum (packets, ipv4). */
enum rss_counts {
    RSS_COUNTS_PACKETS, /* packets received (all devices) */
    RSS_COUNTS_IPV4,    /* IPv4 among them */
    RSS_COUNTS_NSLOTS
};
BPF_PERCPU_ARRAY(rss_counts, u64, RSS_COUNTS_NSLOTS);

/* The hash and whether it covers ports are in the key: the findings tell a NIC that
 * hashes addresses only (many flows, one hash) from the aggregate too. */
struct tk_agg_key {
    u32 cpu;
    u32 ifindex;
    u32 hash;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u16 rx_queue;
    u8 proto;
    u8 l4_hash;
};
BPF_HASH(tk_agg, struct tk_agg_key, u64, 16384);

static __always_inline void count(int slot)
{
    u64 *v = rss_counts.lookup(&slot);
    if (v)
        (*v)++;
}

/* A raw tracepoint: its first argument is the skb itself, and no per-event copy
 * of the tracepoint's formatted fields is made. */
TK_SEC("raw_tp") int tk_netif_receive_skb(struct bpf_raw_tracepoint_args *ctx)
{
    count(RSS_COUNTS_PACKETS);
    struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
    struct net_device *dev = NULL;
    bpf_probe_read_kernel(&dev, sizeof(dev), &skb->dev);
    int ifindex = 0;
    bpf_probe_read_kernel(&ifindex, sizeof(ifindex), &dev->ifindex);
    if (tk_param_ifindex > 0 && ifindex != tk_param_ifindex)
        return 0;
    struct tk_event ev = {};
    ev.cpu = bpf_get_smp_processor_id();
    ev.ifindex = ifindex;
    bpf_probe_read_kernel(&ev.hash, sizeof(ev.hash), &skb->hash);
    bpf_probe_read_kernel(&ev.len, sizeof(ev.len), &skb->len);
#ifdef TK_CORE
    ev.l4_hash = BPF_CORE_READ_BITFIELD_PROBED(skb, l4_hash);
#else
    {
        /* A probe read cannot take a bitfield's address: copy, let clang extract. */
        struct sk_buff s = {};
        bpf_probe_read_kernel(&s, sizeof(s), skb);
        ev.l4_hash = s.l4_hash;
    }
#endif
    /* skb_record_rx_queue() stores queue + 1; 0 means none was recorded. */
    u16 queue = 0;
    bpf_probe_read_kernel(&queue, sizeof(queue), &skb->queue_mapping);
    ev.rx_queue = queue ? queue - 1 : 0xffff;
    if (tk_read_skb_flow(skb, &ev.saddr, &ev.daddr, &ev.sport, &ev.dport, &ev.proto))
        count(RSS_COUNTS_IPV4);
    if (tk_cfg_agg) {
        struct tk_agg_key key = {};
        key.cpu = ev.cpu;
        key.ifindex = ev.ifindex;
        key.hash = ev.hash;
        key.l4_hash = ev.l4_hash;
        key.saddr = ev.saddr;
        key.daddr = ev.daddr;
        key.sport = ev.sport;
        key.dport = ev.dport;
        key.rx_queue = ev.rx_queue;
        key.proto = ev.proto;
        tk_agg.increment(key);
    }
    if (!tk_cfg_stream)
        return 0;
    ev.ts_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel_str(&ev.ifname, sizeof(ev.ifname), dev->name);
    tk_emit(ctx, &ev);
    return 0;
}
