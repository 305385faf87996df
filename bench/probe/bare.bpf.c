/* The same probe for a bare BCC loop: perf buffer, one wakeup per event (BCC's default). */
struct bare_event {
    u64 ts_ns;
    u32 cpu;
    u32 pid;
};

BPF_PERF_OUTPUT(bare_events);

int bare_bench(void *ctx)
{
    struct bare_event ev = {};
    ev.ts_ns = bpf_ktime_get_ns();
    ev.cpu = bpf_get_smp_processor_id();
    ev.pid = bpf_get_current_pid_tgid() >> 32;
    bare_events.perf_submit(ctx, &ev, sizeof(ev));
    return 0;
}
