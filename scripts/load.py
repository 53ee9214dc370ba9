"""Load test: the release rkms-server against three emulated KMS regions, one table of figures.

Usage: python3 scripts/load.py [--duration SECONDS] [--connections N]
                              [--store sqlite|postgres|dynamodb] [--only TEXT] [--keep-alive]
                              [--floor]

Builds the release server, starts the test services (scripts/services.sh), and for each
scenario starts the server with its configuration over one store (a SQLite file, a schema
of the test PostgreSQL with --store postgres, or a table of the moto DynamoDB with --store
dynamodb), drives it with wrk, reads KMS calls from the server's /metrics, and the server's CPU
time (utime + stime from /proc) over the run. Every request authenticates with a bearer token
(a principal without a rate limit) and is written to the audit log, as in production. Prints a Markdown table: requests/s, p50, p99,
error rate, KMS calls and server CPU milliseconds per request. Everything runs on loopback; every run is bounded.

moto's server closes every connection, so each AWS call connects anew; AWS's endpoints keep
connections open. With --keep-alive the KMS regions and DynamoDB are moto processes of this
script's own that keep connections open (scripts/moto_serial.py keep-alive, one request at a
time each), so the figures show the server's cost per call without a connect.

With --floor, after the scenarios, the uncached GET's two calls alone run against the same
emulators and records for as long, as many at once as --kms-connections
(crates/server/examples/uncached_floor.rs: the store read and the KMS unwrap through the
server's own clients, nothing else), and their CPU time per read-and-unwrap is printed: what an
uncached GET costs before any of RKMS's own work. With --store dynamodb, the same requests
follow, posted unsigned by a plain HTTP client (the example's --plain, for the emulators only):
the difference is the AWS SDK's own work.

Scenarios:
  hot cached GET          cache on, 100 existing ids
  hot cached GET, audit sync always   the same, each key handed out after an fsync of its
                          audit line (shared by the requests waiting together)
  hot cached GET, check_state_on_hit  the same, each hit also reads its record from the
                          store ([lifecycle] check_state_on_hit = true)
  GET, cache disabled     every request unwraps in KMS
  create                  every request a new id (generate + 2 wraps + 1 conditional write)
  first region refused    cache off; region 1's endpoint refuses connections
  first region blackholed cache off; region 1's endpoint accepts and never answers
  create, region refused  new ids while region 1 refuses (quorum create, min_regions = 2)
"""
import argparse
import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER = os.path.join(ROOT, "target", "release", "rkms-server")
FLOOR = os.path.join(ROOT, "target", "release", "examples", "uncached_floor")
TOKEN = "rkms_load-test-token"
AUTHORIZATION = f"Authorization: Bearer {TOKEN}"

EXISTING_LUA = """
local ids = {}
init = function(args)
  for line in io.lines(args[1]) do ids[#ids + 1] = line end
end
request = function()
  return wrk.format("GET", "/api/v1/key?id=" .. ids[math.random(#ids)])
end
"""

CREATE_LUA = """
local threads = 0
setup = function(thread)
  threads = threads + 1
  thread:set("tid", tostring(threads))
end
local counter = 0
init = function(args) prefix = args[1] end
request = function()
  counter = counter + 1
  return wrk.format("GET", "/api/v1/key?id=" .. prefix .. "-" .. tid .. "-" .. counter)
end
"""


def run(cmd, **kwargs):
    return subprocess.run(cmd, check=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def blackhole():
    """A listener that accepts connections and never answers; returns its port."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    held = []

    def accept():
        while True:
            conn, _ = listener.accept()
            held.append(conn)

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def services_env():
    env = dict(os.environ)
    with open(os.path.join(ROOT, ".test-services", "env")) as f:
        for line in f:
            name, value = line.strip().removeprefix("export ").split("=", 1)
            env[name] = value
    return env


def keep_alive_emulators(env):
    """Starts moto for each KMS region and for DynamoDB, keeping connections open, with the
    regions' master keys; points env at them. Returns the processes."""
    if subprocess.run([sys.executable, "-c", "import waitress"], capture_output=True).returncode:
        run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "waitress>=3,<4"])
    regions = env["RKMS_TEST_KMS_REGIONS"].split(",")
    ports = [free_port() for _ in range(len(regions) + 1)]
    processes = [
        subprocess.Popen([sys.executable, os.path.join(ROOT, "scripts", "moto_serial.py"), "127.0.0.1", str(port), "keep-alive"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for port in ports
    ]
    for port in ports:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit(f"moto on port {port} did not start")
    endpoints = [f"http://127.0.0.1:{port}" for port in ports]
    run([sys.executable, os.path.join(ROOT, "scripts", "kms_setup.py"), ",".join(regions), ",".join(endpoints[:-1])], env=env)
    env["RKMS_TEST_KMS_ENDPOINTS"] = ",".join(endpoints[:-1])
    env["RKMS_TEST_DYNAMODB_ENDPOINT"] = endpoints[-1]
    return processes


def store_section(env, data_dir, store):
    if store == "postgres":
        return ["[store]", 'backend = "postgres"', f'url = "{env["RKMS_TEST_POSTGRES_URL"]}"',
                f'schema = "rkms_load_{os.getpid()}"']
    if store == "dynamodb":
        return ["[store]", 'backend = "dynamodb"', f'table_name = "rkms_load_{os.getpid()}"',
                'region = "us-east-1"', f'endpoint = "{env["RKMS_TEST_DYNAMODB_ENDPOINT"]}"',
                "create_table = true"]
    return ["[store]", 'backend = "sqlite"', f'path = "{data_dir}/rkms.sqlite3"']


def config(env, data_dir, endpoints, cache, store, audit_sync="os", check_state=False):
    regions = env["RKMS_TEST_KMS_REGIONS"].split(",")
    key_ids = ", ".join(f'{r} = "alias/rkms-{r}"' for r in regions)
    lines = [
        "[logger]", 'level = "warn"',
        "[kms]", 'provider = "aws"', "regions = [" + ", ".join(f'"{r}"' for r in regions) + "]",
        "key_ids = { " + key_ids + " }", "timeout_ms = 1000", "connect_timeout_ms = 300",
        "[kms.endpoints]", *[f'{r} = "{e}"' for r, e in zip(regions, endpoints)],
        *store_section(env, data_dir, store),
        "[cache]", f"enabled = {'true' if cache else 'false'}",
        "[lifecycle]", f"check_state_on_hit = {'true' if check_state else 'false'}",
        "[audit]", f'path = "{data_dir}/audit.log"', f'sync = "{audit_sync}"',
        "[[principals]]", 'name = "load"', f'token_sha256 = ["{hashlib.sha256(TOKEN.encode()).hexdigest()}"]',
        "metrics = true", "rate_limit_per_second = 0",
        'allow = [{ ids = ["*"], operations = ["get", "create"] }]',
    ]
    path = os.path.join(data_dir, "rkms.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


class Server:
    def __init__(self, env, config_path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [SERVER, "--config", config_path, "--listen", f"127.0.0.1:{self.port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("rkms-server did not start")

    def get(self, path):
        request = urllib.request.Request(self.base + path, headers={"Authorization": f"Bearer {TOKEN}"})
        return urllib.request.urlopen(request, timeout=10).read().decode()

    def kms_calls(self):
        text = self.get("/metrics")
        return sum(float(m) for m in re.findall(r"^rkms_kms_calls_total\{[^}]*\} (\S+)$", text, re.M))

    def cpu_seconds(self):
        """utime + stime of the server process so far."""
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


def parse_wrk(output):
    def millis(text):
        value, unit = float(re.match(r"[\d.]+", text).group()), re.search(r"[a-z]+", text).group()
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]

    requests = int(re.search(r"(\d+) requests in", output).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    p50 = millis(re.search(r"^\s+50%\s+(\S+)", output, re.M).group(1))
    p99 = millis(re.search(r"^\s+99%\s+(\S+)", output, re.M).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = int(bad.group(1)) if bad else 0
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if socket_errors:
        errors += sum(int(n) for n in socket_errors.groups())
    return requests, rps, p50, p99, errors


def wrk(server, lua, args, duration, connections):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(lua)
    output = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "5s", "--latency",
         "-H", AUTHORIZATION, "-s", script.name, server.base, "--", *args],
        check=True, capture_output=True, text=True,
    ).stdout
    os.unlink(script.name)
    return parse_wrk(output)


def floor(env, data_dir, endpoints, ids_file, args):
    """The uncached GET's two calls alone (examples/uncached_floor.rs), through the server's
    own clients and, over DynamoDB, posted unsigned by a plain HTTP client; prints a table."""
    kinds = [("the server's own clients (the store's, AWS KMS's)", [])]
    if args.store == "dynamodb":
        kinds.append(("the same requests, unsigned, by a plain HTTP client", ["--plain"]))
    floor_config = config(env, data_dir, endpoints, False, args.store)
    print(f"\nThe uncached GET's two calls alone (examples/uncached_floor.rs), {args.kms_connections} at once\n")
    print("| calls made by | reads and unwraps/s | CPU ms each |")
    print("| --- | ---: | ---: |")
    for label, extra in kinds:
        done = subprocess.run(
            [FLOOR, "--config", floor_config, "--ids", ids_file, "--seconds", str(args.duration),
             "--concurrency", str(args.kms_connections), *extra],
            env=env, capture_output=True, text=True, timeout=args.duration + 120,
        )
        figures = dict(re.findall(r"(\w+)=([\d.]+)", done.stdout))
        if done.returncode != 0 or not {"per_second", "cpu_us"} <= figures.keys():
            raise SystemExit(f"uncached_floor {' '.join(extra)} failed: {done.stderr.strip() or done.stdout.strip()}")
        print(f"| {label} | {float(figures['per_second']):,.0f} | {float(figures['cpu_us']) / 1000:.3f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8, help="for the cached scenario")
    parser.add_argument("--kms-connections", type=int, default=8, help="for scenarios that call KMS")
    parser.add_argument("--only", help="run only the scenarios whose name contains this")
    parser.add_argument("--store", choices=["sqlite", "postgres", "dynamodb"], default="sqlite")
    parser.add_argument("--keep-alive", action="store_true",
                        help="KMS and DynamoDB emulators that keep connections open")
    parser.add_argument("--floor", action="store_true",
                        help="also time the uncached GET's store read and KMS unwrap alone")
    args = parser.parse_args()

    if shutil.which("wrk") is None:
        run(["apt-get", "install", "-y", "-qq", "wrk"])
    features = ["--features", args.store] if args.store != "sqlite" else []
    run(["cargo", "build", "--release", "--locked", "-p", "rkms-server", *features], cwd=ROOT)
    if args.floor:
        run(["cargo", "build", "--release", "--locked", "-p", "rkms-server", *features,
             "--example", "uncached_floor"], cwd=ROOT)
    run([os.path.join(ROOT, "scripts", "services.sh"), "start"])
    emulators = []
    try:
        env = services_env()
        if args.keep_alive:
            emulators = keep_alive_emulators(env)
        endpoints = env["RKMS_TEST_KMS_ENDPOINTS"].split(",")
        refused = [f"http://127.0.0.1:{free_port()}"] + endpoints[1:]
        blackholed = [f"http://127.0.0.1:{blackhole()}"] + endpoints[1:]
        data_dir = tempfile.mkdtemp(prefix="rkms-load-")
        ids_file = os.path.join(data_dir, "ids.txt")

        seed = Server(env, config(env, data_dir, endpoints, cache=False, store=args.store))
        ids = [f"existing-{i}" for i in range(100)]
        for key_id in ids:
            seed.get(f"/api/v1/key?id={key_id}")
        seed.stop()
        with open(ids_file, "w") as f:
            f.write("\n".join(ids) + "\n")

        scenarios = [
            ("hot cached GET", endpoints, True, EXISTING_LUA, [ids_file], args.connections, {}),
            ("hot cached GET, audit sync always", endpoints, True, EXISTING_LUA, [ids_file], args.connections, {"audit_sync": "always"}),
            ("hot cached GET, check_state_on_hit", endpoints, True, EXISTING_LUA, [ids_file], args.connections, {"check_state": True}),
            ("GET, cache disabled", endpoints, False, EXISTING_LUA, [ids_file], args.kms_connections, {}),
            ("create (always-new ids)", endpoints, False, CREATE_LUA, ["new"], args.kms_connections, {}),
            ("first region refused", refused, False, EXISTING_LUA, [ids_file], args.kms_connections, {}),
            ("first region blackholed", blackholed, False, EXISTING_LUA, [ids_file], args.kms_connections, {}),
            ("create, first region refused", refused, False, CREATE_LUA, ["refused"], args.kms_connections, {}),
        ]
        rows = []
        for name, scenario_endpoints, cache, lua, lua_args, connections, extra in scenarios:
            if args.only and args.only not in name:
                continue
            server = Server(env, config(env, data_dir, scenario_endpoints, cache, args.store, **extra))
            before, cpu_before = server.kms_calls(), server.cpu_seconds()
            requests, rps, p50, p99, errors = wrk(server, lua, lua_args, args.duration, connections)
            cpu = server.cpu_seconds() - cpu_before
            calls = server.kms_calls() - before
            server.stop()
            rows.append((name, connections, rps, p50, p99, 100.0 * errors / max(requests, 1),
                         calls / max(requests, 1), 1000.0 * cpu / max(requests, 1)))
            print(f"done: {name}", file=sys.stderr)

        kept = " (connections kept alive)" if args.keep_alive else ""
        print(f"\nwrk, {args.duration} s per scenario, 2 threads; three moto KMS regions{kept}; {args.store} store\n")
        print("| scenario | connections | requests/s | p50 ms | p99 ms | errors % | KMS calls/request | server CPU ms/request |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for name, connections, rps, p50, p99, error_rate, calls, cpu in rows:
            print(f"| {name} | {connections} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {error_rate:.2f} | {calls:.2f} | {cpu:.3f} |")
        sys.stdout.flush()
        if args.floor:
            floor(env, data_dir, endpoints, ids_file, args)
    finally:
        for emulator in emulators:
            emulator.terminate()
            emulator.wait(timeout=10)
        run([os.path.join(ROOT, "scripts", "services.sh"), "stop"])


if __name__ == "__main__":
    main()
