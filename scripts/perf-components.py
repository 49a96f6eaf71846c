"""Summarises a `perf record` of Conclave nodes by component: where the CPU time went.

    perf report -i perf.data --stdio --no-children --sort comm,dso,sym -g none --percent-limit 0 \\
        | python3 scripts/perf-components.py

Reads `perf report`'s lines (percent, thread name, object, [k] or [.], symbol) and prints three
tables: self time per component (the crate a Rust symbol belongs to, the kernel, libc), the
three biggest symbols of each, and self time per thread name (Tokio workers, sled's threads,
openraft's). A generic Rust function counts for the crate of its outermost path segment
(`<sled::Tree as ...>::insert` is sled's).
"""
import collections
import re
import sys

LINE = re.compile(r"^\s*([\d.]+)%\s+(\S.*?)\s{2,}(\S+)\s+\[([k.])\]\s+(.*)$")

# Crate names as they appear at the head of a demangled path, and the component they belong to.
COMPONENTS = [
    ("openraft", "openraft (Raft core, replication)"),
    ("sled", "sled (log and state storage)"),
    ("tokio", "tokio (runtime, timers, channels)"),
    ("h2", "gRPC transport (h2, hyper, tonic, tower)"),
    ("hyper", "gRPC transport (h2, hyper, tonic, tower)"),
    ("tonic", "gRPC transport (h2, hyper, tonic, tower)"),
    ("tower", "gRPC transport (h2, hyper, tonic, tower)"),
    ("prost", "encoding (prost, bincode, serde)"),
    ("bincode", "encoding (prost, bincode, serde)"),
    ("serde", "encoding (prost, bincode, serde)"),
    ("serde_json", "encoding (prost, bincode, serde)"),
    ("conclave_resp", "conclave RESP front end"),
    ("conclave_pubsub", "conclave pub/sub"),
    ("conclave_state", "conclave state machine"),
    ("conclave_consensus", "conclave consensus glue"),
    ("conclave_storage", "conclave storage glue"),
    ("conclave_api", "conclave gRPC services"),
    ("conclave", "conclave (other)"),
    ("hashbrown", "std and collections (alloc, hashbrown, core)"),
    ("alloc", "std and collections (alloc, hashbrown, core)"),
    ("core", "std and collections (alloc, hashbrown, core)"),
    ("std", "std and collections (alloc, hashbrown, core)"),
    ("bytes", "std and collections (alloc, hashbrown, core)"),
    ("crossbeam_epoch", "sled (log and state storage)"),
    ("crossbeam_utils", "sled (log and state storage)"),
    ("parking_lot_core", "locks (parking_lot)"),
    ("parking_lot", "locks (parking_lot)"),
    ("futures_util", "tokio (runtime, timers, channels)"),
    ("tracing", "logging (tracing)"),
    ("tracing_core", "logging (tracing)"),
    ("tracing_subscriber", "logging (tracing)"),
]
CRATE = re.compile(r"^[<&\s]*(?:dyn\s+|mut\s+)?([A-Za-z_][A-Za-z0-9_]*)::")


KERNEL = [
    ("kernel: scheduling and wake-ups", re.compile(
        r"finish_task_switch|_raw_spin_unlock_irq|try_to_wake_up|schedule|futex|wake_up|"
        r"select_task_rq|enqueue_task|dequeue_task|update_curr|pick_next|psi_|ttwu|sched")),
    ("kernel: network (TCP over loopback, netfilter)", re.compile(
        r"tcp|ip_|ipt_|nf_|skb|sock|net_|__dev_|loopback|inet|sk_|softirq|napi|__netif|csum")),
    ("kernel: files and disk (sled's writes, fsync)", re.compile(
        r"ext4|jbd2|iomap|filemap|file_|blk|bio|writeback|sync|page_cache|folio|vfs_|fdatasync|"
        r"xfs|copy_page|generic_perform_write")),
    ("kernel: system call entry and exit, epoll", re.compile(
        r"syscall|entry_|irqentry|exit_to_user|epoll|ep_|do_sys|__x64_sys|fput|fget")),
    ("kernel: memory (faults, page allocation)", re.compile(
        r"page_fault|handle_mm|alloc_pages|__rmqueue|clear_page|mem_cgroup|do_anonymous|zap_|"
        r"free_pages|kmem_cache|kmalloc|kfree|memcg|lru")),
]


def component(dso, kernel, symbol):
    if kernel == "k":
        for label, pattern in KERNEL:
            if pattern.search(symbol):
                return label
        return "kernel: other"
    if dso.startswith("libc") or "libc.so" in dso or dso.startswith("ld-linux"):
        return "libc (malloc, memcpy, syscalls)"
    match = CRATE.match(symbol)
    if match:
        crate = match.group(1)
        for name, label in COMPONENTS:
            if crate == name:
                return label
        return f"other crates ({crate})"
    if symbol.startswith("0x"):
        return "unresolved"
    return "other"


def main():
    by_component = collections.Counter()
    by_thread = collections.Counter()
    symbols = collections.defaultdict(collections.Counter)
    total = 0.0
    for line in sys.stdin:
        m = LINE.match(line)
        if not m:
            continue
        percent, comm, dso, kernel, symbol = float(m.group(1)), m.group(2).strip(), m.group(3), m.group(4), m.group(5).strip()
        label = component(dso, kernel, symbol)
        by_component[label] += percent
        by_thread[re.sub(r"[-_]?\d+$", "", comm)] += percent
        symbols[label][symbol[:110]] += percent
        total += percent
    print(f"| component | self time % of the nodes' samples | biggest symbols (% of all) |")
    print("|---|---:|---|")
    for label, percent in by_component.most_common():
        if percent < 0.5:
            continue
        top = "; ".join(f"`{s}` {p:.1f}" for s, p in symbols[label].most_common(3))
        print(f"| {label} | {percent:.1f} | {top} |")
    print()
    print("| thread | self time % |")
    print("|---|---:|")
    for comm, percent in by_thread.most_common(12):
        print(f"| {comm} | {percent:.1f} |")
    print()
    print(f"(sum of the lines read: {total:.1f}%)")


if __name__ == "__main__":
    main()
