/* rss-cpu: which CPU does the receive work for which flow.
 *
 * The net:netif_receive_skb tracepoint fires in __netif_receive_skb_core(), on the
 * CPU that processes the packet: the CPU the NIC's RSS (or RPS) steered it to. The
 * same function counts /proc/net/softnet_stat's `processed` column, which is the
 * oracle the tests compare our per-CPU counts with.
 */
#include "tk_compat.h"
#ifdef TK_CORE
#include <linux/in.h> /* user-space API headers: the same layout on every kernel */
#include <linux/ip.h>
#include <linux/if_ether.h>
#define htons(x) bpf_htons(x)
#else
#include <linux/skbuff.h>
#include <linux/netdevice.h>
#include <linux/ip.h>
#include <linux/if_ether.h>
#endif

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

/* Per-CPU counters: [0] packets received (all devices), [1] IPv4 packets. */
BPF_PERCPU_ARRAY(rss_counts, u64, 2);

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
    count(0);
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
    u16 queue = 0, proto = 0, nh = 0;
    unsigned char *head = NULL;
    bpf_probe_read_kernel(&queue, sizeof(queue), &skb->queue_mapping);
    bpf_probe_read_kernel(&proto, sizeof(proto), &skb->protocol);
    bpf_probe_read_kernel(&nh, sizeof(nh), &skb->network_header);
    bpf_probe_read_kernel(&head, sizeof(head), &skb->head);
    ev.rx_queue = queue ? queue - 1 : 0xffff;
    if (proto == htons(ETH_P_IP)) {
        count(1);
        struct iphdr ip = {};
        bpf_probe_read_kernel(&ip, sizeof(ip), head + nh);
        ev.saddr = ip.saddr;
        ev.daddr = ip.daddr;
        ev.proto = ip.protocol;
        if (ip.protocol == IPPROTO_TCP || ip.protocol == IPPROTO_UDP) {
            u16 ports[2] = {};
            bpf_probe_read_kernel(&ports, sizeof(ports), head + nh + ip.ihl * 4);
            ev.sport = ntohs(ports[0]);
            ev.dport = ntohs(ports[1]);
        }
    }
    if (tk_cfg_agg) {
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
    }
    if (!tk_cfg_stream)
        return 0;
    ev.ts_ns = bpf_ktime_get_ns();
    bpf_probe_read_kernel_str(&ev.ifname, sizeof(ev.ifname), dev->name);
    tk_emit(ctx, &ev);
    return 0;
}
