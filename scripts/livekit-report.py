"""Writes the report of scripts/bench-livekit.sh from the run's JSON files: the results table
(livekit-results.tsv), livekit.md (rooms x system: deadline misses, errors, p99s, RSS and CPU
per server process, the bench's own CPU; where each system first misses a deadline) and
livekit.png (deadline misses and psrpc claim p99 against room count, one line per system).

    .test-env/bin/python scripts/livekit-report.py OUT_DIR "COMMAND THAT RAN"
"""
import glob
import json
import os
import sys

KINDS_WITH_DEADLINES = ["claim", "rpc", "signal_ack", "lock", "keepalive"]


def load(out):
    runs = []
    for path in glob.glob(os.path.join(out, "livekit-*-*.json")):
        with open(path) as f:
            r = json.load(f)
        ops = {o["kind"]: o for o in r["operations"]}
        servers = [p for p in r["processes"] if p["role"] == "server"]
        bench = [p for p in r["processes"] if p["role"] == "bench"]
        proxies = [p for p in r["processes"] if p["role"] == "proxy"]
        runs.append({
            "rooms": r["rooms"],
            "system": r["label"],
            "misses": r["deadline_misses"],
            "errors": r["error_count"],
            "error_kinds": r["errors"],
            "storage_p99": ops["storage"]["p99_ms"],
            "pubsub_p99": ops["delivery"]["p99_ms"],
            "claim_p99": ops["claim"]["p99_ms"],
            "rpc_p99": ops["rpc"]["p99_ms"],
            "signal_ack_p99": ops["signal_ack"]["p99_ms"],
            "publish_per_s": ops["publish"]["count"] / max(r["measured_s"], 1e-9),
            "misses_by_kind": {k: ops[k]["misses"] for k in KINDS_WITH_DEADLINES if ops[k]["misses"]},
            "signal_retries": ops["signal_ack"]["retries"],
            "media_nodes": r["media_nodes"],
            "rss": [p["max_rss_mib"] for p in servers],
            "cpu": [p["cpu_percent"] for p in servers],
            "bench_cpu": bench[0]["cpu_percent"] if bench else 0.0,
            "proxy_cpu": sum(p["cpu_percent"] for p in proxies) if proxies else None,
        })
    def key(system):
        base, _, delay = system.partition("+")
        return (0 if base == "conclave" else 1, float(delay.rstrip("ms") or 0))

    systems = sorted({r["system"] for r in runs}, key=key)
    runs.sort(key=lambda r: (r["rooms"], key(r["system"])))
    return runs, systems


def first_misses(runs, systems):
    first = {}
    for system in systems:
        failing = [r["rooms"] for r in runs if r["system"] == system and (r["misses"] or r["errors"])]
        passing = [r["rooms"] for r in runs if r["system"] == system and not (r["misses"] or r["errors"])]
        first[system] = (min(failing) if failing else None, max(passing) if passing else None)
    return first


def write_tsv(out, runs):
    with open(os.path.join(out, "livekit-results.tsv"), "w") as f:
        f.write("rooms\tsystem\tdeadline_misses\terrors\tstorage_p99_ms\tpubsub_p99_ms\tclaim_p99_ms\tmax_rss_mib\n")
        for r in runs:
            f.write(f"{r['rooms']}\t{r['system']}\t{r['misses']}\t{r['errors']}\t{r['storage_p99']:.2f}\t"
                    f"{r['pubsub_p99']:.2f}\t{r['claim_p99']:.2f}\t{max(r['rss'] or [0]):.0f}\n")


def write_md(out, runs, systems, command):
    ms = lambda v: f"{v:,.1f}" if v < 100 else f"{v:,.0f}"
    lines = [
        "# LiveKit room workload: Conclave vs Redis",
        "",
        "Written by `scripts/livekit-report.py` from the JSON reports of one run of",
        f"`{command}` on this project's 2-core machine: every figure below is from that run.",
        "The workload, its rates and its deadlines: `conclave bench livekit --help` and",
        "`crates/livekit/src/lib.rs`; what each system is: `scripts/bench-livekit.sh`. The profile",
        "and what it says: [livekit-profile.md](livekit-profile.md).",
        "",
        "![deadline misses and claim p99 against rooms](livekit.png)",
        "",
        "## Where each system first misses a deadline",
        "",
    ]
    for system, (fail, passing) in first_misses(runs, systems).items():
        held = ""
        if passing and (fail is None or passing < fail):
            r = next(r for r in runs if r["system"] == system and r["rooms"] == passing)
            held = (f"held every deadline at {passing} rooms (storage p99 {r['storage_p99']:.1f} ms, "
                    f"pub/sub p99 {r['pubsub_p99']:.1f} ms, claim p99 {r['claim_p99']:.1f} ms)")
        if fail is None:
            lines.append(f"- **{system}**: no deadline missed at any room count run; {held}.")
        else:
            lines.append(f"- **{system}**: first miss or error at **{fail} rooms**" + (f"; {held}." if held else "."))
    lines += [
        "",
        "## Results",
        "",
        "Misses count every operation past its LiveKit deadline (claim 1 s, RPC 3 s, signal ack",
        "500 ms for the first attempt, lock 5 s, keepalive 2 s) or never completed, per kind: an RPC",
        "whose claim is late counts under claim, and under rpc too if the whole call is late.",
        "Signal retries: relay messages sent again for want of an ack (after 500 ms, then 1 s and",
        "2 s more), load that a slow server brings on itself. Only operations scheduled in the",
        "measured part count. p99s in ms; RSS is the maximum per server process, CPU its average",
        "over the measured part in % of one core (the machine has two cores in all, shared by the",
        "servers, the bench and the delay proxies; the last column adds them up: near 200 the",
        "machine, not the system under test, sets the pace).",
        "",
        "| rooms | system | misses | errors | misses by kind | signal retries | storage p99 | pub/sub p99 | claim p99 | RPC p99 | PUBLISH/s | RSS MiB per server | CPU % per server | bench CPU % | delay proxies CPU % | all CPU % of 200 |",
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for r in runs:
        kinds = ", ".join(f"{k} {v:,}" for k, v in r["misses_by_kind"].items()) or "-"
        lines.append(
            f"| {r['rooms']:,} | {r['system']} | {r['misses']:,} | {r['errors']:,} | {kinds} | {r['signal_retries']:,} | "
            f"{ms(r['storage_p99'])} | {ms(r['pubsub_p99'])} | {ms(r['claim_p99'])} | {ms(r['rpc_p99'])} | "
            f"{r['publish_per_s']:,.0f} | {' / '.join(f'{v:.0f}' for v in r['rss'])} | "
            f"{' / '.join(f'{v:.0f}' for v in r['cpu'])} | {r['bench_cpu']:.0f} | "
            f"{'-' if r['proxy_cpu'] is None else format(r['proxy_cpu'], '.0f')} | "
            f"{sum(r['cpu']) + r['bench_cpu'] + (r['proxy_cpu'] or 0):.0f} |")
    errors = [(r, k, v) for r in runs for k, v in r["error_kinds"].items()]
    if errors:
        lines += ["", "## Errors", ""]
        for r, k, v in errors:
            lines.append(f"- {r['rooms']:,} rooms, {r['system']}: {v:,} x `{k}`")
    largest = max((r["rooms"] for r in runs if r["system"] == "conclave"), default=None)
    if largest:
        r = next(r for r in runs if r["system"] == "conclave" and r["rooms"] == largest)
        lines += ["", f"RSS per Conclave node at {largest:,} rooms (colocated, no added round trip): "
                  + ", ".join(f"{v:.0f} MiB" for v in r["rss"]) + "."]
    with open(os.path.join(out, "livekit.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def plot(out, runs, systems):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (misses, claims) = plt.subplots(1, 2, figsize=(12, 4.8))
    for system in systems:
        rows = [r for r in runs if r["system"] == system]
        rooms = [r["rooms"] for r in rows]
        style = "-" if system.startswith("conclave") else "--"
        misses.plot(rooms, [r["misses"] + r["errors"] for r in rows], style, marker="o", label=system)
        claims.plot(rooms, [max(r["claim_p99"], 0.01) for r in rows], style, marker="o", label=system)
    misses.set_yscale("symlog", linthresh=1)
    misses.set_ylim(bottom=0)
    misses.set_title("deadline misses and errors (measured part of the run)")
    claims.set_yscale("log")
    claims.axhline(1000, color="grey", linewidth=0.8, linestyle=":")
    claims.set_title("psrpc claim p99, ms (deadline 1 s dotted)")
    for ax in (misses, claims):
        ax.set_xscale("log")
        ax.set_xlabel("rooms")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
    media = sorted({r["media_nodes"] for r in runs})
    fig.suptitle(f"conclave bench livekit: {'/'.join(map(str, media))} simulated media nodes; "
                 "Conclave (3 nodes) vs redis-server")
    fig.tight_layout()
    fig.savefig(os.path.join(out, "livekit.png"), dpi=100)


def main(out, command):
    runs, systems = load(out)
    write_tsv(out, runs)
    write_md(out, runs, systems, command)
    plot(out, runs, systems)
    for system, (fail, passing) in first_misses(runs, systems).items():
        print(f"{system}: " + (f"first deadline miss or error at {fail} rooms" if fail
                               else "no deadline missed at any room count run"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "scripts/bench-livekit.sh")
