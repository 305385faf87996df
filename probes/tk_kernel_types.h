/* Kernel types for probes built once with clang (CO-RE), not against one kernel.
 *
 * Only the members the probes read are declared, in any order: every access is
 * recorded as a relocation (preserve_access_index) that libbpf resolves against
 * the running kernel's BTF when it loads the object, so a member that moved
 * between kernels is found where it is. Names must be the kernel's; a member
 * renamed in some kernels gets a second declaration with a ___flavour suffix.
 *
 * The BCC path never sees this file: it compiles against the kernel's headers.
 */
#ifndef TK_KERNEL_TYPES_H
#define TK_KERNEL_TYPES_H
/* These are the kernel's own types, as in a vmlinux.h: bpf_tracing.h then names
 * pt_regs members the kernel's way (di, not rdi). */
#define __VMLINUX_H__ 1

#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)

/* x86-64's register frame (arch/x86/include/asm/ptrace.h), which bpf_tracing.h's
 * PT_REGS_* macros read. */
struct pt_regs {
    unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8, ax, cx, dx, si, di;
    unsigned long orig_ax, ip, cs, flags, sp, ss;
};

/* Several sock members are macros for sock_common ones (sk_tx_queue_mapping is
 * __sk_common.skc_tx_queue_mapping): declare and use the real names, which BCC's
 * headers also have. */
struct sock_common {
    __be32 skc_daddr;
    __be32 skc_rcv_saddr;
    __be16 skc_dport;
    __u16 skc_num;
    unsigned short skc_family;
    volatile unsigned char skc_state;
    unsigned short skc_tx_queue_mapping;
    struct {
        struct net *net;
    } skc_net; /* possible_net_t */
};

/* 6.19+ (the TX-queue reselection): absent before, tested with bpf_core_field_exists. */
struct netns_core {
    int sysctl_txq_reselection;
};

struct net {
    struct netns_core core;
};

typedef struct {
    int counter;
} atomic_t;

typedef struct refcount_struct {
    atomic_t refs;
} refcount_t;

struct rb_node {
    unsigned long __rb_parent_color;
    struct rb_node *rb_right;
    struct rb_node *rb_left;
};
struct rb_root {
    struct rb_node *rb_node;
};

/* sk_protocol and sk_type were bitfields before 5.6 (read them with
 * BPF_CORE_READ_BITFIELD_PROBED, which serves both layouts); tcp_rtx_queue sits in an anonymous union, which
 * relocation finds by name. */
struct sock {
    struct sock_common __sk_common;
    u16 sk_protocol;
    u16 sk_type;
    refcount_t sk_wmem_alloc;
    struct rb_root tcp_rtx_queue;
    unsigned long sk_tx_queue_mapping_jiffies;
};

struct netdev_queue;

struct net_device {
    char name[16];
    int ifindex;
    struct netdev_queue *_tx;
    unsigned int real_num_tx_queues;
};

struct netdev_queue {
    struct net_device *dev;
};

struct sk_buff {
    struct sock *sk;
    struct net_device *dev;
    unsigned int len;
    unsigned int truesize;
    __u32 hash;
    __u16 queue_mapping;
    __u8 ooo_okay : 1;
    __u8 l4_hash : 1;
    __be16 protocol;
    __u16 network_header;
    unsigned char *head;
};

/* Only its size is used (SKB_TRUESIZE): bpf_core_type_size() relocates it. */
struct skb_shared_info {
    __u8 flags;
};

/* The qdisc (include/net/sch_generic.h); its private data (qdisc_priv()) is the
 * flexible array at its end, `privdata` in every kernel of the matrix (5.10+). */
struct qdisc_skb_head {
    __u32 qlen;
};

struct Qdisc {
    struct netdev_queue *dev_queue;
    struct qdisc_skb_head q;
    long privdata[];
};

/* sch_fq's private data (net/sched/sch_fq.c): in no header, only in the sch_fq
 * module's BTF, which libbpf relocates against like vmlinux's. Widths are the
 * kernel's business: read with BPF_CORE_READ_BITFIELD_PROBED, which takes the
 * member's size from BTF too. */
struct fq_sched_data {
    struct rb_root delayed; /* throttled flows, by time_next_packet */
    __u32 flow_plimit;      /* flow_limit */
    __u32 flow_max_rate;    /* maxrate, bytes/s (unsigned long in some kernels) */
    __u64 stat_throttled;
    __u64 stat_flows_plimit;
    __u64 time_next_delayed_flow;
};

/* One fq flow: its socket (or a hash with bit 0 set for traffic not of this host),
 * its node in the delayed tree, and when it may send again. */
struct fq_flow {
    struct sock *sk;
    struct fq_flow *next; /* in a list of flows; a marker when throttled */
    struct rb_node rate_node;
    __u64 time_next_packet;
};

#pragma clang attribute pop

#endif /* TK_KERNEL_TYPES_H */
