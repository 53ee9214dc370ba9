#!/usr/bin/env python3
"""Checks the Prometheus rules, Grafana dashboard and systemd unit under deploy/, and holds
them true to the built server.

1. Prometheus rules (deploy/prometheus): `promtool check rules` (lint errors fatal) and
   `promtool test rules`; every alert has a severity, a summary and a description, and unit
   tests that fire it and tests where it stays quiet.
2. The systemd unit (deploy/systemd/rkms.service): `systemd-analyze verify` of a copy whose
   ExecStart names the given binary; a non-zero exit or any line about the unit fails. The
   sandboxing the issue asks for is checked to be there.
3. The Grafana dashboard (deploy/grafana/rkms.json): parses; a `datasource` variable of type
   prometheus, `job` and `instance` variables; every panel has PromQL targets on
   `${datasource}`, and each expression parses (promtool, Grafana's variables substituted).
4. The server (development default, loopback): a short run over HTTP (create, cached gets, a
   version read, rotate, info, list, a bad id, delete then get), then a scrape of /metrics.
   Every metric name the rules and the dashboard use must be in the scrape, every label a
   selector names must be on its metric, and every series a selector names exactly
   (`result="stale"`) must be there. What is missing is listed one by one and fails the run:
   an alert or panel over a series that does not exist yet stays silent or empty, and a
   counter first exported at 1 hides its first event from `increase() > 0`, so the server
   must export each from start, counters at zero.

Prints one line per check; exits 1 if any failed.

Usage: observability_test.py PATH/TO/rkms-server
Needs promtool (Debian: apt-get install prometheus; no Prometheus server is started) and
systemd-analyze (Debian: systemd).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml

import built_server

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RULES = os.path.join(ROOT, "deploy", "prometheus", "rkms-rules.yaml")
RULE_TESTS = os.path.join(ROOT, "deploy", "prometheus", "rkms-rules.test.yaml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana", "rkms.json")
UNIT = os.path.join(ROOT, "deploy", "systemd", "rkms.service")

# What the issue asks of the unit, by directive (ExecStart is checked by verify instead).
UNIT_SETTINGS = {
    "Type": "exec",
    "DynamicUser": "yes",
    "StateDirectory": "rkms",
    "ConfigurationDirectory": "rkms",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "CapabilityBoundingSet": "",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
    "SystemCallFilter": "@system-service",
    "MemoryDenyWriteExecute": "yes",
    "LimitNOFILE": "65536",
    "ExecReload": "/bin/kill -HUP $MAINPID",
    "Restart": "on-failure",
}
EXEC_START = "/usr/local/bin/rkms-server --config /etc/rkms/rkms.toml --data-dir /var/lib/rkms"

# Grafana's variables, as the dashboard's expressions are checked by promtool.
GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "${datasource}": "prometheus",
    "$job": ".*",
    "$instance": ".*",
}

failures = []


def check(ok, what, detail=""):
    """Prints one line for a check and remembers a failure."""
    line = ("ok:   " if ok else "FAIL: ") + what
    if detail:
        line += ": " + detail
    print(line, flush=True)
    if not ok:
        failures.append(what)
    return ok


def run(command):
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return result.returncode, (result.stdout + result.stderr).strip()


def tool(name, package):
    path = shutil.which(name)
    check(path is not None, f"{name} available", path or f"not found; install Debian's {package}")
    return path


# ---------------------------------------------------------------- PromQL names and labels


def without_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)


def metric_names(expr):
    """The rkms_ metric names an expression reads (recording rules' names have colons)."""
    return {
        token
        for token in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", without_strings(expr))
        if token.startswith("rkms_") and ":" not in token
    }


def selectors(expr):
    """(metric, label, operator, value) for every matcher of a selector such as
    `rkms_x{a="b"}`."""
    found = set()
    for name, matchers in re.findall(r"(rkms_[A-Za-z0-9_]+)\s*\{([^}]*)\}", expr):
        for label, operator, value in re.findall(
            r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', matchers
        ):
            found.add((name, label, operator, value))
    return found


# ---------------------------------------------------------------- 1. rules


def check_rules(promtool):
    with open(RULES) as f:
        groups = yaml.safe_load(f)["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    alerts = [rule for rule in rules if "alert" in rule]
    if promtool:
        code, out = run([promtool, "check", "rules", "--lint=all", "--lint-fatal", RULES])
        check(code == 0, "promtool check rules rkms-rules.yaml", out.splitlines()[-1] if code == 0 else out)
        code, out = run([promtool, "test", "rules", RULE_TESTS])
        check(code == 0, "promtool test rules rkms-rules.test.yaml", "SUCCESS" if code == 0 else out)

    incomplete = [
        rule["alert"]
        for rule in alerts
        if not rule.get("labels", {}).get("severity")
        or not rule.get("annotations", {}).get("summary")
        or not rule.get("annotations", {}).get("description")
    ]
    check(not incomplete, f"all {len(alerts)} alerts carry severity, summary and description",
          ", ".join(incomplete))

    with open(RULE_TESTS) as f:
        tests = yaml.safe_load(f)["tests"]
    fired, quiet = set(), set()
    for test in tests:
        for case in test.get("alert_rule_test", []):
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    untested = [
        f"{rule['alert']} ({'never fired' if rule['alert'] not in fired else 'never quiet'})"
        for rule in alerts
        if rule["alert"] not in fired or rule["alert"] not in quiet
    ]
    check(not untested, "every alert has unit tests that fire it and tests where it is quiet",
          ", ".join(untested))
    return {rule.get("alert") or rule.get("record"): rule["expr"] for rule in rules}


# ---------------------------------------------------------------- 2. systemd unit


def unit_settings(text):
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def check_unit(binary, analyze):
    with open(UNIT) as f:
        text = f.read()
    settings = unit_settings(text)
    wrong = [
        f"{key}={value!r} (has {settings.get(key)})"
        for key, value in UNIT_SETTINGS.items()
        if settings.get(key, [None])[-1] != value
    ]
    if settings.get("ExecStart") != [EXEC_START]:
        wrong.append(f"ExecStart={EXEC_START!r} (has {settings.get('ExecStart')})")
    check(not wrong, "rkms.service has the settings asked for", "; ".join(wrong))
    if not analyze:
        return
    with tempfile.TemporaryDirectory(prefix="rkms-unit-") as directory:
        copy = os.path.join(directory, "rkms.service")
        rewritten, count = re.subn(
            r"^ExecStart=/usr/local/bin/rkms-server ",
            lambda _: f"ExecStart={os.path.abspath(binary)} ",
            text,
            flags=re.M,
        )
        if not check(count == 1, "ExecStart rewritten to the binary under test", os.path.abspath(binary)):
            return
        with open(copy, "w") as f:
            f.write(rewritten)
        code, out = run([analyze, "verify", copy])
        about_unit = [line for line in out.splitlines() if "rkms.service" in line]
        passed = code == 0 and not about_unit
        detail = "no warnings" if passed else f"exit {code}: " + " | ".join(about_unit or out.splitlines())
        check(passed, "systemd-analyze verify rkms.service", detail)
        for line in out.splitlines():
            if line not in about_unit:
                print(f"note: systemd-analyze, not about rkms.service: {line}")


# ---------------------------------------------------------------- 3. dashboard


def panels_of(panels):
    for panel in panels:
        yield panel
        yield from panels_of(panel.get("panels", []))


def check_dashboard(promtool):
    try:
        with open(DASHBOARD) as f:
            dashboard = json.load(f)
    except (OSError, ValueError) as e:
        check(False, "rkms.json parses", str(e))
        return {}
    check(True, "rkms.json parses")

    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    source = variables.get("datasource", {})
    check(source.get("type") == "datasource" and source.get("query") == "prometheus",
          "a datasource variable of type prometheus", "" if source else "none")
    check("job" in variables and "instance" in variables, "job and instance variables",
          "has " + ", ".join(sorted(variables)) if not {"job", "instance"} <= set(variables) else "")

    expressions = {}
    for name in ("job", "instance"):
        query = variables.get(name, {}).get("query", "")
        query = query.get("query", "") if isinstance(query, dict) else query
        found = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", query)
        if found:
            expressions[f"variable {name}"] = found.group(1)

    panels = [p for p in panels_of(dashboard.get("panels", [])) if p.get("type") != "row"]
    ids = [p.get("id") for p in panels_of(dashboard.get("panels", []))]
    check(len(ids) == len(set(ids)), "panel ids unique")
    bad = []
    for panel in panels:
        targets = [t for t in panel.get("targets", []) if t.get("expr", "").strip()]
        sources = [panel.get("datasource")] + [t.get("datasource") for t in panel.get("targets", [])]
        if not targets:
            bad.append(f"{panel.get('title')!r}: no PromQL target")
        elif any((s or {}).get("uid") != "${datasource}" for s in sources):
            bad.append(f"{panel.get('title')!r}: not on ${{datasource}}")
        for i, target in enumerate(targets):
            expressions[f"panel {panel.get('title')!r} target {target.get('refId', i)}"] = target["expr"]
    check(not bad, f"all {len(panels)} panels have PromQL targets on ${{datasource}}", "; ".join(bad))

    if promtool:
        rules = []
        for i, expr in enumerate(expressions.values()):
            for variable, value in sorted(GRAFANA_VARIABLES.items(), key=lambda kv: -len(kv[0])):
                expr = expr.replace(variable, value)
            rules.append({"record": f"dashboard:expr_{i}", "expr": expr})
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        try:
            code, out = run([promtool, "check", "rules", f.name])
        finally:
            os.unlink(f.name)
        check(code == 0, f"all {len(rules)} dashboard expressions parse (promtool)", "" if code == 0 else out)
    return expressions


# ---------------------------------------------------------------- 4. the server


def start(binary, data_dir):
    server, address = built_server.start(binary, "--data-dir", data_dir)
    return server, address and "http://" + address


def call(base, method, path):
    request = urllib.request.Request(base + path, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as answer:
        return answer.code, answer.read()


def parse_scrape(text):
    """{name: [labels dict]} of the samples in Prometheus text."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        found = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)(?:\{(.*)\})?\s+\S+", line)
        if found:
            labels = dict(re.findall(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', found.group(2) or ""))
            samples.setdefault(found.group(1), []).append(labels)
    return samples


def exercise(base):
    """A short, varied run; returns the scrape text (or None)."""
    deadline = time.time() + 15
    status = None
    while time.time() < deadline:
        status, _ = call(base, "GET", "/readyz")
        if status == 200:
            break
        time.sleep(0.2)
    check(status == 200, "GET /readyz -> 200", "" if status == 200 else f"got {status}")

    def step(method, path, expected, what=""):
        status, body = call(base, method, path)
        check(status == expected, f"{method} {path} -> {expected}" + (f" ({what})" if what else ""),
              "" if status == expected else f"got {status}: {body[:200]!r}")
        return body

    body = step("GET", "/api/v1/key?id=obs-a", 200, "created")
    first = json.loads(body or b"{}").get("key")
    same = [json.loads(step("GET", "/api/v1/key?id=obs-a", 200, f"cached, {i} of 5") or b"{}").get("key")
            for i in range(1, 6)]
    check(first is not None and all(key == first for key in same), "the same key answered every time")
    step("GET", "/api/v1/key?id=obs-a&version=1", 200, "version read")
    step("POST", "/api/v1/key/rotate?id=obs-a", 200, "rotate")
    step("GET", "/api/v1/key?id=obs-a", 200, "the new version")
    step("GET", "/api/v1/key/info?id=obs-a", 200, "info")
    step("GET", "/api/v1/keys", 200, "list")
    step("GET", "/api/v1/key?id=" + urllib.parse.quote("bad id"), 400, "bad id")
    step("GET", "/api/v1/key?id=obs-b", 200, "created")
    step("DELETE", "/api/v1/key?id=obs-b", 200, "delete")
    step("GET", "/api/v1/key?id=obs-b", 410, "pending deletion")

    status, body = call(base, "GET", "/metrics")
    check(status == 200, "GET /metrics -> 200", "" if status == 200 else f"got {status}")
    return body.decode() if status == 200 else None


def check_scrape(text, used, matchers):
    """`used`: {metric: {where used}}; `matchers`: {(metric, label, operator, value): {where used}}."""
    samples = parse_scrape(text)
    check(bool(samples), "scrape holds samples", f"{len(samples)} metric names")
    hits = [s for s in samples.get("rkms_cache_requests_total", []) if s.get("result") == "hit"]
    check(bool(hits), 'rkms_cache_requests_total{result="hit"} counted')
    outcomes = {s.get("outcome") for s in samples.get("rkms_requests_total", [])}
    check({"ok", "KeyPendingDeletion"} <= outcomes,
          "rkms_requests_total's outcome is ok or the error_type answered (the 5xx rules rely on it)",
          ", ".join(sorted(o for o in outcomes if o)))

    for name in sorted(used):
        where = sorted(used[name])
        check(name in samples, f"exported: {name}",
              "" if name in samples else "missing; used by " + "; ".join(where[:3])
              + (f"; and {len(where) - 3} more" if len(where) > 3 else ""))
    missing = sorted(name for name in used if name not in samples)
    print(f"{len(used) - len(missing)} of {len(used)} metric names used by the rules and the dashboard"
          f" are exported; missing: {' '.join(missing) or 'none'}")

    wrong = []
    for (name, label, operator, value), where in sorted(matchers.items()):
        present = samples.get(name)
        if present and label not in ("job", "instance") and not any(label in s for s in present):
            wrong.append(f"{name} has no label {label} ({'; '.join(sorted(where))})")
    check(not wrong, "every label a selector names is on its metric (where exported)", "; ".join(wrong))

    # A series that is first exported at 1 hides its first increase from increase() and
    # rate(): the alerts on `increase(...) > 0` would miss the first event. Exact matchers
    # must find their series; the values of a regex of alternatives are shown, not required
    # (the rules over them compare rates with thresholds).
    for (name, label, operator, value), where in sorted(matchers.items()):
        if label in ("job", "instance") or name not in samples:
            continue
        values = {s.get(label) for s in samples[name]}
        if operator == "=":
            check(value in values, f'exported: {name}{{{label}="{value}"}}',
                  "" if value in values else "missing; used by " + "; ".join(sorted(where)))
        elif operator == "=~" and re.fullmatch(r"[A-Za-z0-9_]+(\|[A-Za-z0-9_]+)*", value):
            absent = [v for v in value.split("|") if v not in values]
            if absent:
                print(f"note: {name}{{{label}=~\"{value}\"}}: no series yet for " + ", ".join(absent))


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = sys.argv[1]
    check(os.access(binary, os.X_OK), "server binary executable", binary)

    promtool = tool("promtool", "prometheus package")
    analyze = tool("systemd-analyze", "systemd package")
    rule_exprs = check_rules(promtool)
    check_unit(binary, analyze)
    dashboard_exprs = check_dashboard(promtool)

    used, matchers = {}, {}
    for source, exprs in (("rule", rule_exprs), ("dashboard", dashboard_exprs)):
        for name_of_expr, expr in exprs.items():
            where = f"{source} {name_of_expr}"
            for name in metric_names(expr):
                used.setdefault(name, set()).add(where)
            for matcher in selectors(expr):
                matchers.setdefault(matcher, set()).add(where)

    if os.access(binary, os.X_OK):
        with tempfile.TemporaryDirectory(prefix="rkms-observability-") as data_dir:
            server, base = start(binary, data_dir)
            if check(server is not None, "rkms-server started (development default, loopback)", base or ""):
                try:
                    text = exercise(base)
                finally:
                    server.terminate()
                    try:
                        server.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        server.kill()
                        server.wait()
                if text is not None:
                    check_scrape(text, used, matchers)

    if failures:
        print(f"{len(failures)} check(s) failed")
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
