#!/usr/bin/env python3
"""Holds openapi.yaml true to the built server.

1. Routes and statuses: one request per documented (path, method, status) makes the server
   answer that status, with the documented content type; every answer seen is documented;
   a method a path does not document is answered 405 with exactly the documented methods in
   `Allow`. Statuses that only a failing store, KMS or concurrent writer produce are listed
   in UNREACHABLE with the reason, and are covered by the Rust end-to-end tests.
2. schemathesis generates requests from the description: every answer must be a documented
   status with a body matching its schema, and never a 5xx.

Usage: openapi_check.py PATH/TO/rkms-server
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

import built_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPEC = os.path.join(ROOT, "openapi.yaml")
METHODS = ["GET", "POST", "DELETE", "PUT", "PATCH"]

TOKENS = {
    "app": "rkms_openapi-check-app-token-0123456789",
    "limited": "rkms_openapi-check-limited-token-0123456",
    "reader": "rkms_openapi-check-reader-token-01234567",
}

# The deletion window: short, so that an id deleted for good can be asked for.
WINDOW_SECONDS = 3

# Documented statuses no request from outside can cause on a healthy server, by status
# (any path) or by (path, status).
UNREACHABLE = {
    "409": "a concurrent change winning the compare-and-set (core and lifecycle tests)",
    "500": "an unreadable record, an integrity failure or an audit write failure (e2e, e2e_audit)",
    "503": "no KMS region or store answering, or the connection limit (e2e_aws, chaos, connections)",
    ("/metrics", "404"): "a server started without metrics (the in-process API tests)",
}


def config(data_dir):
    def principal(name, extra):
        digest = hashlib.sha256(TOKENS[name].encode()).hexdigest()
        return f'[[principals]]\nname = "{name}"\ntoken_sha256 = ["{digest}"]\n{extra}\n'

    everything = '["get", "create", "rotate", "delete", "restore", "describe", "list"]'
    return (
        '[kms]\nprovider = "local"\nregions = ["local-1", "local-2"]\n'
        f'keyring_path = "{data_dir}/keyring.json"\n'
        f'[store]\nbackend = "sqlite"\npath = "{data_dir}/keys.db"\n'
        f'[audit]\npath = "{data_dir}/audit.log"\n'
        f'[lifecycle]\ndeletion_window_seconds = {WINDOW_SECONDS}\n'
        + principal("app", f'metrics = true\nrate_limit_per_second = 0\nallow = [{{ ids = ["*"], operations = {everything} }}]')
        + principal("limited", f'rate_limit_per_second = 1\nrate_limit_burst = 1\nallow = [{{ ids = ["*"], operations = {everything} }}]')
        + principal("reader", 'allow = [{ ids = ["r/*"], operations = ["get"] }]')
    )


def start(binary, data_dir):
    path = os.path.join(data_dir, "rkms.toml")
    with open(path, "w") as f:
        f.write(config(data_dir))
    server, address = built_server.start(binary, "--config", path, "--data-dir", data_dir)
    if server is None:
        sys.exit("rkms-server did not start")
    return server, "http://" + address


def call(base, method, path, token="app", headers=None, body=None):
    request = urllib.request.Request(base + path, method=method, data=body)
    if token:
        request.add_header("Authorization", "Bearer " + TOKENS.get(token, token))
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, dict(answer.headers), answer.read()


def documented(spec):
    pairs = {}
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status in operation["responses"]:
                content = operation["responses"][status]
                if "$ref" in content:
                    content = spec["components"]["responses"][content["$ref"].split("/")[-1]]
                types = list(content.get("content", {}))
                pairs[(path, method.upper(), status)] = types
    return pairs


def probes(base):
    """(path, method, status) -> the request that makes the server answer it."""
    key, keys = "/api/v1/key", "/api/v1/keys"
    long_query = "?id=" + "a" * 5000
    big = {"x-filler": "f" * 17000}
    cases = []
    for path, method, good in [
        (key, "GET", "?id=o/1"),
        (key + "/rotate", "POST", "?id=o/1"),
        (key + "/info", "GET", "?id=o/1"),
        (keys, "GET", "?prefix=o/"),
        (key, "DELETE", "?id=o/deleted"),
        (key + "/restore", "POST", "?id=o/deleted"),
        ("/metrics", "GET", ""),
        ("/healthz", "GET", ""),
        ("/readyz", "GET", ""),
    ]:
        cases.append((path, method, "200", dict(query=good)))
        cases.append((path, method, "413", dict(query=good, body=b"x")))
        cases.append((path, method, "414", dict(query=long_query)))
        cases.append((path, method, "431", dict(query=good, headers=big)))
        if path.startswith("/api"):
            cases.append((path, method, "400", dict(query="?id=no%20spaces&prefix=%20")))
            cases.append((path, method, "401", dict(query=good, token="rkms_unknown")))
            cases.append((path, method, "403", dict(query="?id=o/1&prefix=o/", token="reader")))
            cases.append((path, method, "429", dict(query=good, token="limited", repeat=3)))
        if path == "/metrics":
            cases.append((path, method, "401", dict(token="rkms_unknown")))
            cases.append((path, method, "403", dict(token="reader")))
            cases.append((path, method, "429", dict(token="limited", repeat=3)))
    cases += [
        (key, "GET", "404", dict(query="?id=o/1&version=99")),
        (key, "GET", "410", dict(query="?id=o/gone")),
        (key, "DELETE", "404", dict(query="?id=o/never")),
        (key + "/rotate", "POST", "404", dict(query="?id=o/never")),
        (key + "/rotate", "POST", "410", dict(query="?id=o/gone")),
        (key + "/restore", "POST", "404", dict(query="?id=o/never")),
        (key + "/info", "GET", "404", dict(query="?id=o/never")),
    ]
    return cases


def probes_once_deleted():
    """The answers about an id deleted for good, once its window has passed, and the
    health checks' rate limit."""
    key = "/api/v1/key"
    return [
        (key, "DELETE", "410", dict(query="?id=o/gone")),
        (key + "/restore", "POST", "410", dict(query="?id=o/gone")),
        # Last: the health checks' per-address budget, once spent, refuses them all. Asked until
        # refused (at most `repeat` times): the budget refills while the requests go out, so a
        # fixed count fails whenever they go out slowly.
        ("/healthz", "GET", "429", dict(token=None, repeat=400, until=True)),
        ("/readyz", "GET", "429", dict(token=None, repeat=400, until=True)),
    ]


def check_routes(base, spec):
    pairs = documented(spec)
    for id in ["o/1", "o/gone", "o/deleted"]:
        call(base, "GET", "/api/v1/key?id=" + id)
    call(base, "DELETE", "/api/v1/key?id=o/gone")
    deleted_at = time.time() + WINDOW_SECONDS + 1
    failures, seen = [], set()
    # Methods a path does not document are refused with the ones it does.
    for path, item in spec["paths"].items():
        allowed = sorted(m.upper() for m in item)
        for method in METHODS:
            if method in allowed:
                continue
            got, headers, _ = call(base, method, path + "?id=o/1")
            allow = sorted(m.strip() for m in headers.get("allow", headers.get("Allow", "")).split(","))
            if got != 405 or allow != allowed:
                failures.append(f"{method} {path}: expected 405 allowing {allowed}, got {got} allowing {allow}")
    for phase, cases in [(0, probes(base)), (deleted_at, probes_once_deleted())]:
        time.sleep(max(0, phase - time.time()))
        for path, method, status, how in cases:
            answer = None
            for _ in range(how.get("repeat", 1)):
                answer = call(base, method, path + how.get("query", ""), how.get("token", "app"),
                              how.get("headers"), how.get("body"))
                if how.get("until") and str(answer[0]) == status:
                    break
            got, headers, body = answer
            seen.add((path, method, str(got)))
            if str(got) != status:
                failures.append(f"{method} {path} {how}: expected {status}, got {got} {body[:200]!r}")
                continue
            if (path, method, status) not in pairs:
                failures.append(f"{method} {path} answered {status}, which openapi.yaml does not document")
                continue
            kind = headers.get("Content-Type", headers.get("content-type", "")).split(";")[0]
            if kind not in pairs[(path, method, status)]:
                failures.append(f"{method} {path} {status}: content type {kind!r} is not documented")
            if kind == "application/json" and got >= 400:
                error = json.loads(body)
                if set(error) != {"error_type", "error_message"}:
                    failures.append(f"{method} {path} {status}: error body {error}")
    for (path, method, status) in pairs:
        if (path, method, status) not in seen and status not in UNREACHABLE and (path, status) not in UNREACHABLE:
            failures.append(f"{method} {path} {status} is documented but was never answered")
    return failures


def schemathesis(base):
    command = [
        sys.executable, "-m", "schemathesis.cli", "run", SPEC,
        "--url", base,
        "--header", f"Authorization: Bearer {TOKENS['app']}",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance,response_headers_conformance,negative_data_rejection",
        "--max-examples", os.environ.get("SCHEMATHESIS_EXAMPLES", "40"),
        "--phases", "examples,coverage,fuzzing",
        "--seed", "1",
        "--workers", "2",
    ]
    return subprocess.call(command)


def main():
    binary = sys.argv[1]
    with open(SPEC) as f:
        spec = yaml.safe_load(f)
    with tempfile.TemporaryDirectory() as data_dir:
        server, base = start(binary, data_dir)
        try:
            failures = check_routes(base, spec)
            for failure in failures:
                print("openapi:", failure)
            if failures:
                sys.exit(1)
            print(f"openapi: every documented route and status answered as documented ({base})")
            if schemathesis(base) != 0:
                sys.exit("openapi: schemathesis found answers openapi.yaml does not describe")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
