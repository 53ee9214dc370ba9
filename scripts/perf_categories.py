"""Where an AWS SDK client's CPU goes, from `perf script` output with call graphs.

Usage: perf record -F 999 --call-graph dwarf,16384 -p PID -- sleep 10
       perf script | python3 scripts/perf_categories.py

Each sample counts once, under the first part below whose pattern one of its frames matches
(so a sample inside signing, itself inside the orchestrator, counts as signing). The last parts
are remainders: "rest of the SDK's orchestrator" is whatever ran under the orchestrator and
matched nothing before it (reading the answer's body, the connector adapter, allocation and
wake-ups there), "the caller's code" whatever ran under the caller's frames and matched nothing
else (record decoding, building the requests, the tasks), and
samples that match none are the runtime's, the allocator's or the kernel's, or have stacks cut
short by perf's copy of the stack (16 KB with the command above). Prints a Markdown table of
shares, the share of samples whose own function is in the kernel, and which interceptors the
"interceptors" part ran. Used for BENCHMARKS.md, "Uncached
GET" (`scripts/load.py --floor` runs the process to profile: examples/uncached_floor.rs).
"""
import collections
import re
import sys

PARTS = [
    ("SigV4 signing", r"orchestrator::auth::sign_request"),
    ("credentials (identity cache)", r"resolve_identity|identity::cache"),
    ("endpoint resolution", r"orchestrate_endpoint|resolve_endpoint|ResolveEndpoint"),
    ("per-call configuration (apply_configuration)", r"orchestrator::apply_configuration"),
    ("request serialization", r"ser_get_item|ser_decrypt|serialize_input|SerializeRequest"),
    ("response deserialization", r"deserialize_nonstreaming|de_get_item|de_decrypt|DeserializeResponse"),
    ("interceptors", r"interceptors::Interceptors"),
    ("retry strategy and classifiers", r"retries::|RetryStrategy|classify"),
    ("HTTP/1 connection (hyper's dispatcher)", r"hyper::proto::h1|UpgradeableConnection"),
    ("HTTP client (hyper-util's pool)", r"hyper_util::client::legacy"),
    ("reqwest", r"reqwest::"),
    ("rest of the SDK's orchestrator", r"orchestrator::try_op|orchestrator::invoke"),
    # Around the orchestrator: the operation's tracing span (only the SDK instruments futures in
    # the processes this profiles) and the context's final drop.
    ("the SDK's operation around the orchestrator (span, finalize)",
     r"tracing::instrument::Instrumented|InterceptorContext<I,O,E>::finalize"),
    ("the caller's code", r"\buncached_floor::|\brkms_\w+::"),
]
OTHER = "runtime, allocator, kernel (none of the above)"

# The interceptor a sample counted as "interceptors" ran, to say which ones cost.
INTERCEPTOR = re.compile(r"<([\w:]+) as aws_smithy_runtime_api::client::interceptors::Intercept>")


def samples(lines):
    """Yields each sample's frames, innermost first."""
    frames = []
    for line in lines:
        if not line.strip():
            if frames:
                yield frames
            frames = []
        elif line[0] in " \t":
            frames.append(line.strip())
    if frames:
        yield frames


def main():
    counts = collections.Counter()
    interceptors = collections.Counter()
    kernel = total = 0
    for frames in samples(sys.stdin):
        total += 1
        kernel += "[kernel.kallsyms]" in frames[0]
        stack = "\n".join(frames)
        part = next((name for name, pattern in PARTS if re.search(pattern, stack)), OTHER)
        counts[part] += 1
        if part == "interceptors":
            named = INTERCEPTOR.search(stack)
            interceptors[named.group(1).rsplit("::", 1)[-1] if named else "(the loop over them)"] += 1
    if not total:
        sys.exit("no samples with call graphs in the input (perf record --call-graph dwarf)")
    print(f"{total} samples\n")
    print("| part | share of samples |")
    print("| --- | ---: |")
    for name in [name for name, _ in PARTS] + [OTHER]:
        if counts[name]:
            print(f"| {name} | {100 * counts[name] / total:.1f}% |")
    print(f"| (samples whose own function is in the kernel, any part) | {100 * kernel / total:.1f}% |")
    if interceptors:
        print("\ninterceptors: " + ", ".join(
            f"{name} {100 * n / total:.1f}%" for name, n in interceptors.most_common(10)))


if __name__ == "__main__":
    main()
