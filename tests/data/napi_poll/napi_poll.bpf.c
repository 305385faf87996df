/* napi-poll: work against budget per CPU and NAPI instance (the napi:napi_poll
 * tracepoint), one source for both loaders: a tracepoint program, a __data_loc
 * string read, and a char array in the in-kernel aggregate's key.
 *
 * BCC makes `struct tracepoint__napi__napi_poll` from the tracepoint's format (a
 * `__data_loc char[] dev_name` field is an int named data_loc_dev_name); the CO-RE
 * build declares the kernel's own `struct trace_event_raw_napi_poll` (its
 * __data_loc member is `u32 __data_loc_dev_name`), relocated against the kernel's
 * BTF. A __data_loc value is (length << 16) | offset from the start of the record.
 */
#include "tk_compat.h"

#ifdef TK_CORE
#pragma clang attribute push(__attribute__((preserve_access_index)), apply_to = record)
struct trace_event_raw_napi_poll {
    u32 __data_loc_dev_name;
    int work;
    int budget;
};
#pragma clang attribute pop
#endif

struct tk_event {
    u64 ts_ns;
    u32 cpu;
    u32 work;
    u32 budget;
    char dev[16];
    u32 pad;
};

struct tk_agg_key {
    u32 cpu;
    char dev[16];
};

#include "tracekit.h"

BPF_HASH(tk_agg, struct tk_agg_key, u64);

#ifdef TK_CORE
TK_SEC("tracepoint") int tk_napi_poll(struct trace_event_raw_napi_poll *args)
#else
int tk_napi_poll(struct tracepoint__napi__napi_poll *args)
#endif
{
    struct tk_event ev = {};
#ifdef TK_CORE
    u32 loc = args->__data_loc_dev_name;
#else
    u32 loc = args->data_loc_dev_name;
#endif
    bpf_probe_read_kernel_str(ev.dev, sizeof(ev.dev), (void *)args + (loc & 0xFFFF));
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.work = args->work;
    ev.budget = args->budget;
    if (tk_cfg_agg) {
        struct tk_agg_key key = {};
        key.cpu = ev.cpu;
        __builtin_memcpy(key.dev, ev.dev, sizeof(key.dev));
        tk_agg.increment(key);
    }
    if (!tk_cfg_stream)
        return 0;
    tk_emit(args, &ev);
    return 0;
}
