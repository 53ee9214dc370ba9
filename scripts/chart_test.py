#!/usr/bin/env python3
"""Holds the Helm chart deploy/helm/rkms true to Kubernetes and to the server it deploys.

1. lint: `helm lint --strict` over the default values and each ci/*-values.yaml finds no
   warning or error.
2. render: the default values and each ci/*-values.yaml render, and every manifest validates
   against Kubernetes' own schemas (kubernetes-validate, strict: unknown fields refused) for
   the oldest Kubernetes the chart admits and the newest the package knows. Custom resources
   (ServiceMonitor) have no schema there: they are skipped, and the output says so.
3. wiring: the pod mounts config.toml where its arguments name it; Service, probes and
   ServiceMonitor name ports the container has; every selector selects the pods; a change of
   configuration changes the pod template (so the pods roll). hardened: the pod runs as the
   issue asks (non-root, read-only root, no capabilities, seccomp, limits, probes, spread
   over zones and nodes, a disruption budget).
4. check-config: each rendered config.toml goes to `rkms-server check-config`, which must
   exit 0. Files the Secrets would mount (TLS certificate, key, client CA) are made for the
   run (a throwaway CA and certificate) at the places the Deployment mounts them, and the
   paths in the copy given to the server point there; as a control, check-config must refuse
   the TLS configuration without those files. Without check-config in the binary the step
   fails (the file is still parsed as TOML, and the output says so).
5. refusals: values the chart must refuse (a non-integer replicaCount, unknown or sqlite
   store backends, a principal without a name, ...) raise at render, for the reason given.

Every check prints one line; the exit status is 1 when any failed.

Usage: chart_test.py PATH/TO/rkms-server
Needs helm-python-sdk and kubernetes-validate from PyPI; installs nothing itself.
"""

import copy
import glob
import hashlib
import os
import subprocess
import sys
import tempfile
import tomllib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHART = os.path.join(ROOT, "deploy", "helm", "rkms")
RELEASE = "rkms"
NAMESPACE = "security"

# kubeVersion in Chart.yaml admits 1.25 and later.
KUBERNETES_VERSIONS = ["1.25", kubernetes_validate.latest_version()]
# Kinds that are custom resources: kubernetes-validate has no schema for them.
CUSTOM_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

results = []


def report(ok, check, detail):
    results.append(ok)
    print(f"{'PASS' if ok else 'FAIL'} {check}: {detail}", flush=True)


def skip(check, detail):
    print(f"SKIP {check}: {detail}", flush=True)


def values_files():
    """(label, values) for the default values and each ci file, read by Helm's own parser."""
    files = [("default", {})]
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
        with open(path) as f:
            files.append((os.path.relpath(path, CHART), helm.values_from_yaml(f.read())))
    return files


def render(chart, values):
    """The manifests as (template, object), NOTES.txt and empty documents left out."""
    rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE)
    objects = []
    for template, text in sorted(rendered.items()):
        if template.endswith("NOTES.txt"):
            continue
        objects.extend((template, doc) for doc in yaml.safe_load_all(text) if doc)
    return objects


def find(objects, kind):
    found = [obj for _, obj in objects if obj["kind"] == kind]
    return found[0] if found else None


# 1. lint


def lint(label, values):
    report_ = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = list(report_["errors"]) + [
        f"{m['path']}: {m['error']}" for m in report_["messages"] if m["severity"] >= 2
    ]
    notes = [m["error"] for m in report_["messages"] if m["severity"] < 2]
    detail = "; ".join(problems) if problems else "no warning or error"
    if notes and not problems:
        detail += f" (info: {'; '.join(notes)})"
    report(not problems, f"lint --strict [{label}]", detail)


# 2. render and validate


def validate(label, objects):
    failures, validated = [], 0
    for template, obj in objects:
        kind = (obj.get("apiVersion"), obj.get("kind"))
        if kind in CUSTOM_KINDS:
            skip(
                f"validate [{label}] {obj['kind']}",
                f"{kind[0]} is a custom resource; kubernetes-validate has no schema for it",
            )
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                failures.append(f"{template} ({obj['kind']}) on {version}: {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                failures.append(f"{template}: {e.message}")
        validated += 1
    detail = "; ".join(failures) if failures else (
        f"{validated} manifests valid on Kubernetes {' and '.join(KUBERNETES_VERSIONS)}"
    )
    report(not failures and validated > 0, f"validate [{label}]", detail)


# 3. wiring


def selects(selector, labels):
    return all(labels.get(k) == v for k, v in selector.items())


def wiring(label, objects):
    problems = []
    deployment = find(objects, "Deployment")
    configmap = find(objects, "ConfigMap")
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = container["args"]
    config_path = args[args.index("--config") + 1]
    data_dir = args[args.index("--data-dir") + 1]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mount = mounts.get(config_path)
    if not (mount and mount.get("subPath") == "config.toml"
            and volumes[mount["name"]]["configMap"]["name"] == configmap["metadata"]["name"]
            and "config.toml" in configmap["data"]):
        problems.append(f"--config {config_path} is not the ConfigMap's config.toml")
    if data_dir not in mounts or "emptyDir" not in volumes[mounts[data_dir]["name"]]:
        problems.append(f"--data-dir {data_dir} is not an emptyDir mount")
    ports = {p["name"] for p in container["ports"]}
    service = find(objects, "Service")
    for port in service["spec"]["ports"]:
        if port["targetPort"] not in ports:
            problems.append(f"Service port {port['name']} targets no container port")
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        if container[probe]["httpGet"]["port"] not in ports:
            problems.append(f"{probe} names no container port")
    pod_labels = pod["metadata"]["labels"]
    for _, obj in objects:
        selector = {
            "Deployment": lambda o: o["spec"]["selector"]["matchLabels"],
            "Service": lambda o: o["spec"]["selector"],
            "PodDisruptionBudget": lambda o: o["spec"]["selector"]["matchLabels"],
            "NetworkPolicy": lambda o: o["spec"]["podSelector"]["matchLabels"],
        }.get(obj["kind"])
        if selector and not selects(selector(obj), pod_labels):
            problems.append(f"{obj['kind']} does not select the pods")
    hpa = find(objects, "HorizontalPodAutoscaler")
    if hpa and (hpa["spec"]["scaleTargetRef"]["name"] != deployment["metadata"]["name"]
                or "replicas" in deployment["spec"]):
        problems.append("the HorizontalPodAutoscaler does not own the Deployment's replicas")
    monitor = find(objects, "ServiceMonitor")
    if monitor:
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        if not selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]):
            problems.append("the ServiceMonitor does not select the Service")
        if any(e["port"] not in service_ports for e in monitor["spec"]["endpoints"]):
            problems.append("the ServiceMonitor scrapes a port the Service lacks")
    report(not problems, f"wiring [{label}]", "; ".join(problems) or
           "config, data dir, ports and selectors agree")


def hardened(label, objects):
    """What the issue asks of every pod: non-root, read-only root, no capabilities, the
    runtime's seccomp profile, requests and a memory limit, probes on /healthz and /readyz,
    replicas spread over zones and nodes and kept by a disruption budget."""
    problems = []
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    context = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
    expected = {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    problems += [f"securityContext.{k} is {context.get(k)!r}"
                 for k, v in expected.items() if context.get(k) != v]
    resources = container.get("resources", {})
    if not resources.get("requests") or "memory" not in resources.get("limits", {}):
        problems.append("no requests or no memory limit")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        if container[probe]["httpGet"]["path"] != path:
            problems.append(f"{probe} is not on {path}")
    keys = {c["topologyKey"] for c in pod.get("topologySpreadConstraints", [])}
    if keys != {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}:
        problems.append(f"spread over {sorted(keys)}, not zones and nodes")
    if not find(objects, "PodDisruptionBudget"):
        problems.append("no PodDisruptionBudget")
    report(not problems, f"hardened [{label}]", "; ".join(problems) or
           "non-root, read-only, no capabilities, seccomp, limits, probes, spread, budget")


def config_change_rolls_pods(chart):
    def checksum(values):
        deployment = find(render(chart, values), "Deployment")
        return deployment["spec"]["template"]["metadata"]["annotations"].get("checksum/config")

    before, after = checksum({}), checksum({"logger": {"level": "debug"}})
    report(bool(before) and before != after, "config change rolls pods",
           "checksum/config on the pod template follows config.toml" if before and before != after
           else f"checksum/config did not change ({before!r} -> {after!r})")


# 4. check-config


def has_check_config(binary):
    try:
        run = subprocess.run([binary, "check-config", "--help"], capture_output=True,
                             text=True, timeout=30)
    except OSError as e:
        return False, str(e)
    return run.returncode == 0, (run.stderr or run.stdout).strip().splitlines()[0:1]


def secret_files(objects, work):
    """Makes the files each mounted Secret would hold; returns {mount path: local dir}."""
    pod = find(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    placed = {}
    for mount in pod["containers"][0]["volumeMounts"]:
        secret = volumes[mount["name"]].get("secret")
        if not secret:
            continue
        pki = throwaway_pki(work)
        local = os.path.join(work, mount["name"])
        os.makedirs(local)
        for item in secret["items"]:
            # tls.crt and tls.key of a TLS Secret; any other key is a CA certificate.
            with open(os.path.join(local, item["path"]), "wb") as f:
                f.write(pki.get(item["key"], pki["ca.crt"]))
        placed[mount["mountPath"]] = local
    return placed


def throwaway_pki(work):
    """A CA and a server certificate it signed, by the names of a TLS Secret's keys and
    cert-manager's ca.crt; made once per directory."""
    out = os.path.join(work, "pki")
    if not os.path.isdir(out):
        os.makedirs(out)
        with open(os.path.join(out, "server.ext"), "w") as f:
            f.write("subjectAltName=DNS:rkms.security.svc\n")
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
        for step in [
            ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=chart-test CA", "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign"],
            ["req", *ec, "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=rkms"],
            ["x509", "-req", "-in", "tls.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "tls.crt", "-days", "1", "-extfile", "server.ext"],
        ]:
            subprocess.run(["openssl", *step], cwd=out, check=True, capture_output=True)
    files = {}
    for name in ("ca.crt", "tls.crt", "tls.key"):
        with open(os.path.join(out, name), "rb") as f:
            files[name] = f.read()
    return files


def rendered_config(objects, work, placed):
    """config.toml as rendered, and a copy whose mounted paths point at the local files."""
    text = find(objects, "ConfigMap")["data"]["config.toml"]
    local = text
    for mount_path, directory in placed.items():
        local = local.replace(f'"{mount_path}/', f'"{directory}/')
    path = os.path.join(work, "config.toml")
    with open(path, "w") as f:
        f.write(local)
    return text, path


def check_config(label, objects, binary, available):
    with tempfile.TemporaryDirectory(prefix="rkms-chart-") as work:
        placed = secret_files(objects, work)
        text, path = rendered_config(objects, work, placed)
        data_dir = os.path.join(work, "data")
        os.makedirs(data_dir)
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            report(False, f"config.toml is TOML [{label}]", str(e))
            return
        if available:
            run = subprocess.run([binary, "check-config", "--config", path,
                                  "--data-dir", data_dir],
                                 capture_output=True, text=True, timeout=60)
            said = " ".join(run.stderr.split())[:400]
            mounted = f", Secret files at {', '.join(sorted(placed))}" if placed else ""
            report(run.returncode == 0, f"check-config [{label}]",
                   f"exit {run.returncode}{mounted}" +
                   ("" if run.returncode == 0 else f": {said}"))
            return
        report(False, f"check-config [{label}]",
               "rkms-server has no check-config subcommand (build one from this tree); "
               "config.toml was only parsed as TOML")


def check_config_sees_the_secrets(objects, binary, available):
    """The control of step 4: without the Secrets' files, check-config refuses the file, so
    its exit 0 above is about the files the pod mounts."""
    if not available:
        report(False, "check-config needs the mounted files", "no check-config subcommand")
        return
    with tempfile.TemporaryDirectory(prefix="rkms-chart-") as work:
        _, path = rendered_config(objects, work, {})
        run = subprocess.run([binary, "check-config", "--config", path, "--data-dir", work],
                             capture_output=True, text=True, timeout=60)
        said = " ".join(run.stderr.split())
        ok = run.returncode == 2 and "/etc/rkms/" in said
        report(ok, "check-config needs the mounted files",
               "refused without them (exit 2)" if ok else f"exit {run.returncode}: {said[:300]}")


# 5. refusals

HASH = hashlib.sha256(b"chart-test").hexdigest()
REFUSED = [
    ("replicaCount \"three\"", {"replicaCount": "three"}, "/replicaCount"),
    ("store.backend mongodb", {"store": {"backend": "mongodb"}}, "/store/backend"),
    ("store.backend sqlite", {"store": {"backend": "sqlite"}}, "/store/backend"),
    ("principal without a name",
     {"principals": [{"token_sha256": [HASH], "metrics": True}]}, "'name'"),
    ("principal with a token, not its hash",
     {"principals": [{"name": "app", "token_sha256": ["rkms_a-token-in-clear"],
                      "metrics": True}]}, "token_sha256"),
    ("principal allowed nothing", {"principals": [{"name": "app", "token_sha256": [HASH]}]},
     "/principals/0"),
    ("kms.provider local", {"kms": {"provider": "local"}}, "/kms/provider"),
    ("misspelt store key", {"store": {"backend": "postgres", "postgres": {"urll": "x"}}},
     "urll"),
    ("password in store.postgres.url",
     {"store": {"backend": "postgres",
                "postgres": {"url": "postgres://rkms:secret@db:5432/rkms"}}},
     "store.postgres.url holds a password"),
    ("region without a master key", {"kms": {"regions": ["us-east-1", "eu-west-1"]}},
     "no master key for region \"eu-west-1\""),
    ("plain HTTP not asked for", {"tls": {"enabled": False}}, "allow_insecure_http"),
    ("ServiceMonitor without a token Secret", {"serviceMonitor": {"enabled": True}},
     "bearerTokenSecret"),
]


def refused(chart, check, values, reason):
    try:
        render(chart, values)
    except (helm.HelmValuesError, helm.HelmRenderError) as e:
        message = " ".join(str(e).split())
        report(reason in message, f"refused: {check}",
               "refused at render" if reason in message
               else f"refused, but not for {reason!r}: {message[:300]}")
        return
    report(False, f"refused: {check}", "rendered, but must be refused")


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    binary = os.path.abspath(sys.argv[1])
    chart = helm.Chart.load(CHART)
    available, said = has_check_config(binary)
    if not available:
        print(f"NOTE {binary} check-config --help failed: {' '.join(said)}", flush=True)
    for label, values in values_files():
        lint(label, values)
        try:
            objects = render(chart, values)
        except helm.HelmError as e:
            report(False, f"render [{label}]", " ".join(str(e).split()))
            continue
        report(True, f"render [{label}]", f"{len(objects)} manifests")
        validate(label, objects)
        wiring(label, objects)
        hardened(label, objects)
        check_config(label, objects, binary, available)
    config_change_rolls_pods(chart)
    with open(os.path.join(CHART, "ci", "full-values.yaml")) as f:
        full = render(chart, helm.values_from_yaml(f.read()))
    check_config_sees_the_secrets(full, binary, available)
    for check, values, reason in REFUSED:
        refused(chart, check, copy.deepcopy(values), reason)
    failed = results.count(False)
    print(f"{len(results) - failed} passed, {failed} failed", flush=True)
    sys.exit(1 if failed or not results else 0)


if __name__ == "__main__":
    main()
