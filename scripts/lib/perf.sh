# perf of the Conclave node processes for the profile scripts. Sourced after servers.sh (uses
# its `work` directory).
#
#   require_perf                    exits with a clear message when perf is missing
#   record_nodes NAME SECONDS PIDS  perf record -F 999 of PIDS (comma-separated) for SECONDS
#   perf_event NAME                 the event perf sampled (cpu-clock on a VM without a PMU)
#   perf_components NAME            self time per component, symbol and thread (markdown)
#   perf_top NAME                   perf report's 60 biggest lines

require_perf() {
    command -v perf >/dev/null || { echo "perf is not installed (Debian: linux-perf)" >&2; exit 1; }
}

record_nodes() { # name seconds pids
    perf record -F 999 -o "$work/perf-$1.data" -p "$3" -- sleep "$2" >/dev/null 2>"$work/perf-$1.log"
    perf report -i "$work/perf-$1.data" --stdio --no-children --sort comm,dso,sym -g none \
        --percent-limit 0 2>/dev/null >"$work/perf-$1.report"
}

perf_event() { perf evlist -i "$work/perf-$1.data" 2>/dev/null | grep -v dummy | head -1; }

perf_components() { python3 scripts/perf-components.py <"$work/perf-$1.report"; }

perf_top() { grep -v -e '^#' -e '^$' "$work/perf-$1.report" | sed -n 1,60p; }
