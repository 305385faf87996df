/* Benchmark probe: one event per getppid() call (syscalls:sys_enter_getppid). */
struct tk_event {
    u64 ts_ns;
    u32 cpu;
    u32 pid;
};

#include "tracekit.h"

BPF_PERCPU_ARRAY(bench_counts, u64, 1);

int tk_bench(void *ctx)
{
    int zero = 0;
    u64 *n = bench_counts.lookup(&zero);
    if (n)
        (*n)++;
#if TK_STREAM
    struct tk_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    tk_emit(ctx, &ev);
#endif
    return 0;
}
