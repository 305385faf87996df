/* One probe source, two loaders.
 *
 * Probes are written in BCC's dialect (BPF_PERCPU_ARRAY(...), map.lookup(&key),
 * events.ringbuf_output(...)) plus the few macros below, and compile both ways:
 *   - BCC, at run time, against the running kernel's headers: the fallback where
 *     the kernel has no BTF, and the path for probes that ship only BCC C;
 *   - clang, once, into a CO-RE object (-DTK_CORE) that libbpf relocates against
 *     the running kernel's BTF when it loads it: no headers, no compile per run.
 *
 * For the CO-RE build this header makes BCC's dialect plain C: each BPF_* map
 * declaration defines a libbpf map (`NAME__map` in .maps) and a static const struct
 * `NAME` whose members point at inline functions; clang -O2 turns `NAME.lookup(k)`
 * into a direct bpf_map_lookup_elem() call (checked: no indirect call survives, the
 * BPF backend would refuse one).
 *
 * What BCC's dialect cannot say the same way for both is spelled by a macro here:
 * the program's type (TK_SEC) and settings (TK_SETTING, TK_PARAM: -D constants folded at
 * compile time under BCC; read-only globals the loader sets before load under
 * CO-RE, which the verifier then treats as constants, so one object serves every
 * value). Settings are tested with `if`, never `#if`.
 *
 * BCC refuses map calls written inside macros ("cannot use map function inside a
 * macro") and mangles a program whose signature comes from one, so probe code keeps
 * BCC's method syntax for maps and literal signatures taking only `ctx`:
 *
 *     TK_SEC("kprobe") int tk_fn(struct pt_regs *ctx)
 *     {
 *         struct sk_buff *skb = (struct sk_buff *)PT_REGS_PARM2(ctx);
 *
 * (PT_REGS_PARMn and PT_REGS_RC exist in both BCC and libbpf's bpf_tracing.h.)
 * BCC also rewrites kernel reads inside macros wrongly, so the one read that needs
 * each toolchain's own idiom, a bitfield, is written under #ifdef TK_CORE in the
 * probe: BPF_CORE_READ_BITFIELD_PROBED there, a copy of the struct under BCC.
 */
#ifndef TK_COMPAT_H
#define TK_COMPAT_H

#ifdef TK_CORE

#include <linux/types.h>
#include <linux/bpf.h>
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s16 s16;
typedef __s32 s32;
typedef __s64 s64;
#include "tk_kernel_types.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#ifndef AF_INET
#define AF_INET 2
#endif
#define ntohs(x) bpf_ntohs(x)
#define ntohl(x) bpf_ntohl(x)

#define TK__MAPDEF(name, maptype, ktype, vtype, n)                                         \
    struct {                                                                              \
        __uint(type, maptype);                                                            \
        __uint(max_entries, n);                                                           \
        __type(key, ktype);                                                               \
        __type(value, vtype);                                                             \
    } name##__map SEC(".maps")

/* lookup/update/increment, as BCC's table methods. */
#define TK__METHODS(name, ktype, vtype)                                                   \
    static __always_inline vtype *name##__lookup(const void *key)                         \
    {                                                                                     \
        return bpf_map_lookup_elem(&name##__map, key);                                    \
    }                                                                                     \
    static __always_inline int name##__update(const void *key, const void *value)         \
    {                                                                                     \
        return bpf_map_update_elem(&name##__map, key, value, BPF_ANY);                    \
    }                                                                                     \
    /* BCC allows increment on integer values only; written for any value type so   \
     * that declaring a map of structs compiles (this is never called for one). */   \
    static __always_inline void name##__increment(ktype key)                              \
    {                                                                                     \
        vtype *v = bpf_map_lookup_elem(&name##__map, &key);                               \
        if (v) {                                                                          \
            if (sizeof(vtype) == 8)                                                       \
                __sync_fetch_and_add((u64 *)v, 1);                                        \
            else                                                                          \
                __sync_fetch_and_add((u32 *)v, 1);                                        \
        } else {                                                                          \
            vtype one;                                                                    \
            __builtin_memset(&one, 0, sizeof(one));                                       \
            *(u8 *)&one = 1; /* little-endian: the integer 1 */                           \
            /* Another CPU may have inserted the key meanwhile: count on its entry. */   \
            if (bpf_map_update_elem(&name##__map, &key, &one, BPF_NOEXIST) != 0) {        \
                v = bpf_map_lookup_elem(&name##__map, &key);                              \
                if (v && sizeof(vtype) == 8)                                              \
                    __sync_fetch_and_add((u64 *)v, 1);                                    \
                else if (v)                                                               \
                    __sync_fetch_and_add((u32 *)v, 1);                                    \
            }                                                                             \
        }                                                                                 \
    }                                                                                     \
    static const struct {                                                                 \
        vtype *(*lookup)(const void *);                                                   \
        int (*update)(const void *, const void *);                                        \
        void (*increment)(ktype);                                                         \
    } name = {name##__lookup, name##__update, name##__increment}

#define TK__ARRAY3(name, vtype, n)                                                        \
    TK__MAPDEF(name, BPF_MAP_TYPE_ARRAY, u32, vtype, n);                                  \
    TK__METHODS(name, u32, vtype)
#define TK__PERCPU_ARRAY3(name, vtype, n)                                                 \
    TK__MAPDEF(name, BPF_MAP_TYPE_PERCPU_ARRAY, u32, vtype, n);                           \
    TK__METHODS(name, u32, vtype)
#define TK__HASH4(name, ktype, vtype, n)                                                  \
    TK__MAPDEF(name, BPF_MAP_TYPE_HASH, ktype, vtype, n);                                 \
    TK__METHODS(name, ktype, vtype)

/* BCC's optional arguments, with BCC's defaults: a u64 key and value, 10240
 * entries. BPF_HASH(name[, key[, value[, entries]]]), BPF_ARRAY(name[, value[,
 * entries]]), the same for BPF_PERCPU_ARRAY. */
#define TK__DEFAULT_ENTRIES 10240
#define TK__PICK4(_1, _2, _3, _4, chosen, ...) chosen
#define TK__PICK3(_1, _2, _3, chosen, ...) chosen
#define TK__HASH3(name, ktype, vtype) TK__HASH4(name, ktype, vtype, TK__DEFAULT_ENTRIES)
#define TK__HASH2(name, ktype) TK__HASH4(name, ktype, u64, TK__DEFAULT_ENTRIES)
#define TK__HASH1(name) TK__HASH4(name, u64, u64, TK__DEFAULT_ENTRIES)
#define BPF_HASH(...) TK__PICK4(__VA_ARGS__, TK__HASH4, TK__HASH3, TK__HASH2, TK__HASH1)(__VA_ARGS__)
#define TK__ARRAY2(name, vtype) TK__ARRAY3(name, vtype, TK__DEFAULT_ENTRIES)
#define TK__ARRAY1(name) TK__ARRAY3(name, u64, TK__DEFAULT_ENTRIES)
#define BPF_ARRAY(...) TK__PICK3(__VA_ARGS__, TK__ARRAY3, TK__ARRAY2, TK__ARRAY1)(__VA_ARGS__)
#define TK__PERCPU_ARRAY2(name, vtype) TK__PERCPU_ARRAY3(name, vtype, TK__DEFAULT_ENTRIES)
#define TK__PERCPU_ARRAY1(name) TK__PERCPU_ARRAY3(name, u64, TK__DEFAULT_ENTRIES)
#define BPF_PERCPU_ARRAY(...)                                                             \
    TK__PICK3(__VA_ARGS__, TK__PERCPU_ARRAY3, TK__PERCPU_ARRAY2, TK__PERCPU_ARRAY1)(__VA_ARGS__)

#define BPF_STACK_TRACE(name, n)                                                          \
    struct {                                                                              \
        __uint(type, BPF_MAP_TYPE_STACK_TRACE);                                           \
        __uint(max_entries, n);                                                           \
        __uint(key_size, sizeof(u32));                                                    \
        __uint(value_size, 127 * sizeof(u64));                                            \
    } name##__map SEC(".maps");                                                           \
    static __always_inline int name##__get_stackid(void *ctx, u64 flags)                  \
    {                                                                                     \
        return bpf_get_stackid(ctx, &name##__map, flags);                                 \
    }                                                                                     \
    static const struct {                                                                 \
        int (*get_stackid)(void *, u64);                                                  \
    } name = {name##__get_stackid}

/* The size is the loader's to set (bpf_map__set_max_entries), from --buffer-pages. */
#define BPF_RINGBUF_OUTPUT(name, pages)                                                   \
    struct {                                                                              \
        __uint(type, BPF_MAP_TYPE_RINGBUF);                                               \
        __uint(max_entries, (pages) * 4096);                                              \
    } name##__map SEC(".maps");                                                           \
    static __always_inline int name##__ringbuf_output(void *data, u64 size, u64 flags)    \
    {                                                                                     \
        return bpf_ringbuf_output(&name##__map, data, size, flags);                       \
    }                                                                                     \
    static const struct {                                                                 \
        int (*ringbuf_output)(void *, u64, u64);                                          \
    } name = {name##__ringbuf_output}

#define BPF_PERF_OUTPUT(name)                                                             \
    struct {                                                                              \
        __uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);                                      \
        __uint(key_size, sizeof(u32));                                                    \
        __uint(value_size, sizeof(u32));                                                  \
    } name##__map SEC(".maps");                                                           \
    static __always_inline int name##__perf_submit(void *ctx, void *data, u64 size)       \
    {                                                                                     \
        return bpf_perf_event_output(ctx, &name##__map, BPF_F_CURRENT_CPU, data, size);   \
    }                                                                                     \
    static const struct {                                                                 \
        int (*perf_submit)(void *, void *, u64);                                          \
    } name = {name##__perf_submit}

/* The program's type (kprobe, kretprobe, raw_tp); where it attaches comes from the
 * probe's Python declaration. */
#define TK_SEC(kind) SEC(kind)

/* A setting: a read-only global the loader writes before load. `dflt` is what an
 * object loaded without it uses. */
#define TK_SETTING(type, name, macro, dflt) const volatile type name = dflt

char LICENSE[] SEC("license") = "GPL";

#else /* BCC */

#define TK_SEC(kind)

/* BCC compiles per run: the setting is the -D constant the loader passed. */
#define TK_SETTING(type, name, macro, dflt) static const type name = (macro)

#endif /* TK_CORE */

/* A probe parameter (ProbeSpec.params): TK_PARAM(ifindex) declares the setting
 * tk_param_ifindex (BCC: the -DTK_PARAM_ifindex the loader passes). */
#define TK_PARAM(name) TK_SETTING(s64, tk_param_##name, TK_PARAM_##name, 0)

#endif /* TK_COMPAT_H */
