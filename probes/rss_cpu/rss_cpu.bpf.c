/* rss-cpu: which CPU does the receive work for which flow.
 *
 * The net:netif_receive_skb tracepoint fires in __netif_receive_skb_core(), on the
 * CPU that processes the packet: the CPU the NIC's RSS (or RPS) steered it to. The
 * same function counts /proc/net/softnet_stat's `processed` column, which is the
 * oracle the tests compare our per-CPU counts with.
 */
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <linux/ip.h>
#include <linux/if_ether.h>

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

/* Per-CPU counters: [0] packets received (all devices), [1] IPv4 packets. */
BPF_PERCPU_ARRAY(rss_counts, u64, 2);

#if TK_AGG
struct tk_agg_key {
    u32 cpu;
    u32 ifindex;
    u32 saddr;
    u32 daddr;
    u16 sport;
    u16 dport;
    u16 rx_queue;
    u8 proto;
    u8 pad;
};
BPF_HASH(tk_agg, struct tk_agg_key, u64, 16384);
#endif

static __always_inline void count(int slot)
{
    u64 *v = rss_counts.lookup(&slot);
    if (v)
        (*v)++;
}

/* A raw tracepoint: its first argument is the skb itself, and no per-event copy
 * of the tracepoint's formatted fields is made. */
int tk_netif_receive_skb(struct bpf_raw_tracepoint_args *ctx)
{
    count(0);
    struct sk_buff *skb = (struct sk_buff *)ctx->args[0];
    struct sk_buff s = {};
    bpf_probe_read_kernel(&s, sizeof(s), skb);
    int ifindex = 0;
    bpf_probe_read_kernel(&ifindex, sizeof(ifindex), &s.dev->ifindex);
#if TK_PARAM_IFINDEX > 0
    if (ifindex != TK_PARAM_IFINDEX)
        return 0;
#endif
    struct tk_event ev = {};
    ev.cpu = bpf_get_smp_processor_id();
    ev.ifindex = ifindex;
    ev.hash = s.hash;
    ev.l4_hash = s.l4_hash;
    ev.len = s.len;
    /* skb_record_rx_queue() stores queue + 1; 0 means none was recorded. */
    ev.rx_queue = s.queue_mapping ? s.queue_mapping - 1 : 0xffff;
    if (s.protocol == htons(ETH_P_IP)) {
        count(1);
        struct iphdr ip = {};
        bpf_probe_read_kernel(&ip, sizeof(ip), s.head + s.network_header);
        ev.saddr = ip.saddr;
        ev.daddr = ip.daddr;
        ev.proto = ip.protocol;
        if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
            u16 ports[2] = {};
            bpf_probe_read_kernel(&ports, sizeof(ports), s.head + s.network_header + ip.ihl * 4);
            ev.sport = ntohs(ports[0]);
            ev.dport = ntohs(ports[1]);
        }
    }
#if TK_AGG
    struct tk_agg_key key = {};
    key.cpu = ev.cpu;
    key.ifindex = ev.ifindex;
    key.saddr = ev.saddr;
    key.daddr = ev.daddr;
    key.sport = ev.sport;
    key.dport = ev.dport;
    key.rx_queue = ev.rx_queue;
    key.proto = ev.proto;
    tk_agg.increment(key);
#endif
#if TK_STREAM
    ev.ts_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel_str(&ev.ifname, sizeof(ev.ifname), s.dev->name);
    tk_emit(ctx, &ev);
#endif
    return 0;
}
