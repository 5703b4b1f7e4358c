"""The deploy recipes (issue 16, item 5), checked offline against what reads them:

- every Kubernetes object in deploy/kubernetes/ against the Kubernetes OpenAPI schemas (`kubernetes-validate
  --strict`, which bundles them: unknown fields are errors), and the InferencePool against the v1 CRD schema of the
  Gateway API Inference Extension v1.5.0, vendored in tests/deploy/crds/ (its source URL is in its header);
- the supervisor's ConfigMap with the binary's own `--check-config`, and the DaemonSet's probes and grace period
  against that config's drain_delay and shutdown_grace;
- every vLLM Router flag in the Deployment and the systemd unit with the real router's own argument parser
  (vllm-router 0.1.17), and the systemd unit with `systemd-analyze verify`;
- the endpoint picker's configuration: the metric names it is told to read are served by a running supervisor's
  /metrics with the type and labels the EPP needs, and none of the flags that EPP v1.5.0 refuses is set.
A control case each (a misspelt field, an unknown router flag) shows the checks can fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from harness import REPO

DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
KUBE_VERSIONS = ["1.33.0", "1.37.0"]  # the oldest these manifests target (grpc probes GA), and the newest bundled
CRD = REPO / "tests/deploy/crds/inference.networking.k8s.io_inferencepools.yaml"


def fleet_bin() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "dmr-supervisor/fleet-env/bin"
    tool = Path(os.environ.get("DMR_KUBERNETES_VALIDATE") or default / "kubernetes-validate")
    if not (tool.is_file() and os.access(tool, os.X_OK)):
        pytest.fail(f"kubernetes-validate not found at {tool} (DMR_KUBERNETES_VALIDATE): run "
                    f"`{REPO}/scripts/fleet-env.sh`", pytrace=False)
    return tool.parent


def manifests() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def objects() -> dict[tuple[str, str], dict]:
    out = {}
    for path in manifests():
        for d in documents(path):
            out[(d["kind"], d["metadata"]["name"])] = d
    return out


def kubernetes_validate(paths: list[Path], version: str = KUBE_VERSIONS[0]) -> subprocess.CompletedProcess:
    return subprocess.run([str(fleet_bin() / "kubernetes-validate"), "--strict", "-k", version,
                           *map(str, paths)], capture_output=True, text=True)


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_every_kubernetes_object_validates_against_the_openapi_schemas(version):
    paths = manifests()
    assert len(paths) >= 7, paths
    p = kubernetes_validate(paths, version)
    out = p.stdout + p.stderr
    passed = re.findall(r"passed for resource (\S+)", out)
    builtin = [(d["kind"], d["metadata"]["name"]) for path in paths for d in documents(path)
               if d["apiVersion"] != "inference.networking.k8s.io/v1"]
    assert p.returncode == 0 and "ERROR" not in out, out
    assert len(passed) == len(builtin), f"{len(passed)} passed of {len(builtin)}:\n{out}"


def test_a_misspelt_field_is_refused(tmp_path):
    """Control: the validator is strict (a typo in the DaemonSet fails)."""
    broken = tmp_path / "daemonset.yaml"
    broken.write_text((K8S / "20-supervisor-daemonset.yaml").read_text()
                      .replace("readinessProbe:", "readinesProbe:"))
    p = kubernetes_validate([broken])
    assert p.returncode != 0 and "readinesProbe" in p.stdout + p.stderr, p.stdout + p.stderr


def inferencepool_schema() -> dict:
    crd = yaml.safe_load(CRD.read_text())
    assert crd["spec"]["group"] == "inference.networking.k8s.io" and crd["spec"]["names"]["kind"] == "InferencePool"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    return v1["schema"]["openAPIV3Schema"]


def test_the_inferencepool_validates_against_its_crd():
    schema = inferencepool_schema()
    (pool,) = documents(K8S / "gateway-api-inference-extension/inferencepool.yaml")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1" and pool["kind"] == "InferencePool"
    jsonschema.Draft7Validator(schema).validate(pool)
    # Control: the CRD's required fields are enforced.
    without = json.loads(json.dumps(pool))
    del without["spec"]["endpointPickerRef"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft7Validator(schema).validate(without)
    # It selects the DaemonSet's pods on the port they serve, and names the picker's Service and port.
    objs = objects()
    pod = objs[("DaemonSet", "dmr-supervisor")]["spec"]["template"]
    assert pool["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert pool["spec"]["targetPorts"] == [{"number": 12434}]
    svc = objs[("Service", pool["spec"]["endpointPickerRef"]["name"])]
    assert pool["spec"]["endpointPickerRef"]["port"]["number"] in [p["port"] for p in svc["spec"]["ports"]]


def duration_s(text: str) -> float:
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in re.findall(r"(\d+)(ms|s|m|h)", text))


def test_the_supervisor_config_is_valid_and_the_pod_outlives_its_drain(prereqs, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(objects()[("ConfigMap", "dmr-supervisor-config")]["data"]["config.toml"])
    p = subprocess.run([str(prereqs.supervisor), "--check-config", "--config", str(config)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "configuration OK" in p.stdout, p.stdout + p.stderr

    text = config.read_text()
    drain = duration_s(re.search(r'^drain_delay = "([^"]+)"', text, re.M).group(1))
    grace = duration_s(re.search(r'^shutdown_grace = "([^"]+)"', text, re.M).group(1))
    assert re.search(r'^listen = "0\.0\.0\.0:12434"', text, re.M), "pods must listen on their pod IP"
    ds = objects()[("DaemonSet", "dmr-supervisor")]["spec"]["template"]["spec"]
    (c,) = ds["containers"]
    assert ds["terminationGracePeriodSeconds"] > drain + grace
    assert ds["runtimeClassName"] == "nvidia" and "nvidia.com/gpu" in c["resources"]["limits"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Kubernetes takes a draining pod out of its endpoints within a probe period: well inside drain_delay.
    rp = c["readinessProbe"]
    assert rp["periodSeconds"] * rp["failureThreshold"] < drain
    assert any(v.get("hostPath") and m["mountPath"] == "/var/lib/dmr-supervisor"
               for v in ds["volumes"] for m in c["volumeMounts"] if m["name"] == v["name"])


def router_parse(args: list[str]) -> subprocess.CompletedProcess:
    """The real vllm-router's own parser and validation, without starting it."""
    code = ("import sys; from vllm_router.launch_router import parse_router_args; "
            "a = parse_router_args(sys.argv[1:]); a._validate_router_args(); "
            "import json; print(json.dumps({k: v for k, v in vars(a).items() "
            "if isinstance(v, (str, int, bool, list, dict, type(None)))}))")
    return subprocess.run([str(fleet_bin() / "python"), "-c", code, *args], capture_output=True, text=True)


def test_the_router_deployment_uses_flags_vllm_router_accepts():
    objs = objects()
    dep = objs[("Deployment", "vllm-router")]["spec"]["template"]["spec"]
    (c,) = dep["containers"]
    p = router_parse(c["args"])
    assert p.returncode == 0, p.stderr[-3000:]
    parsed = json.loads(p.stdout.splitlines()[-1])
    assert parsed["service_discovery"] is True and parsed["service_discovery_port"] == 12434
    assert parsed["selector"] == {"app.kubernetes.io/name": "dmr-supervisor"}
    assert parsed["service_discovery_namespace"] == "dmr" and parsed["health_check_endpoint"] == "/readyz"
    # The selector finds the supervisor pods; RBAC lets the router list and watch them.
    pod_labels = objs[("DaemonSet", "dmr-supervisor")]["spec"]["template"]["metadata"]["labels"]
    assert parsed["selector"].items() <= pod_labels.items()
    rules = objs[("Role", "vllm-router-pod-reader")]["rules"]
    assert any("pods" in r["resources"] and {"list", "watch"} <= set(r["verbs"]) for r in rules)
    assert dep["serviceAccountName"] == "vllm-router"
    # It takes a draining pod out before the pod stops listening.
    drain = duration_s(re.search(r'^drain_delay = "([^"]+)"',
                                 objs[("ConfigMap", "dmr-supervisor-config")]["data"]["config.toml"], re.M).group(1))
    assert parsed["health_check_interval_secs"] * parsed["health_failure_threshold"] < drain
    # Control: the parser refuses what it does not know.
    assert router_parse(c["args"] + ["--worker-url-typo", "x"]).returncode != 0


def unit_exec_args(unit: str) -> list[str]:
    exec_line = re.search(r"^ExecStart=(.*?)(?<!\\)$", unit, re.M | re.S).group(1)
    return exec_line.replace("\\\n", " ").split()


def test_the_router_systemd_unit_verifies_and_its_flags_parse(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not found: install Debian's systemd package (scripts/test.sh does)", pytrace=False)
    unit = (DEPLOY / "systemd/vllm-router.service").read_text()
    argv = unit_exec_args(unit)
    assert argv[0] == "/opt/vllm-router/bin/vllm-router"
    p = router_parse(argv[1:])
    assert p.returncode == 0, p.stderr[-3000:]
    parsed = json.loads(p.stdout.splitlines()[-1])
    assert len(parsed["worker_urls"]) == 3 and parsed["health_check_endpoint"] == "/readyz"

    # systemd-analyze verify, with ExecStart pointed at the real router (the unit names the installed path).
    path = tmp_path / "vllm-router.service"
    path.write_text(unit.replace("/opt/vllm-router/bin/vllm-router", str(fleet_bin() / "vllm-router")))
    p = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True, text=True)
    problems = [line for line in (p.stdout + p.stderr).splitlines() if "vllm-router.service" in line]
    assert p.returncode == 0 and not problems, p.stdout + p.stderr


# What the EPP of GAIE v1.5.0 reads, from its source (pkg/epp/framework/plugins/datalayer/extractor/metrics/
# extractor.go, pkg/epp/server/options.go): a gauge per spec; the LoRA info gauge's labels; the cache info
# gauge's labels; and the flags it refuses to start with.
EPP_LORA_LABELS = {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}
EPP_CACHE_LABELS = {"block_size", "num_gpu_blocks"}
EPP_REFUSED_FLAGS = ["--total-queued-requests-metric", "--total-running-requests-metric",
                     "--kv-cache-usage-percentage-metric", "--lora-info-metric", "--cache-info-metric"]


def prom_families(text: str) -> dict[str, dict]:
    fams: dict[str, dict] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            fams.setdefault(name, {"type": kind, "samples": []})["type"] = kind
        elif line and not line.startswith("#"):
            m = re.match(r"([^{\s]+)(\{(.*)\})?\s+(\S+)$", line)
            if m:
                labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
                fam = fams.setdefault(m.group(1), {"type": None, "samples": []})
                fam["samples"].append((labels, float(m.group(4))))
    return fams


def test_the_endpoint_picker_reads_series_our_nodes_serve(sup):
    objs = objects()
    config = yaml.safe_load(objs[("ConfigMap", "dmr-supervisor-epp")]["data"]["epp-config.yaml"])
    assert config["apiVersion"] == "inference.networking.x-k8s.io/v1alpha1"
    assert config["kind"] == "EndpointPickerConfig"
    declared = {p.get("name", p["type"]) for p in config["plugins"]}
    for profile in config["schedulingProfiles"]:
        assert {r["pluginRef"] for r in profile["plugins"]} <= declared
    (extractor,) = [p for p in config["plugins"] if p["type"] == "core-metrics-extractor"]
    (engine,) = [e for e in extractor["parameters"]["engineConfigs"] if e["name"] == "vllm"]
    (source,) = [p for p in config["plugins"] if p["type"] == "metrics-data-source"]
    assert source["parameters"]["path"] == "/metrics"
    # The pods carry the label the extractor keys engines on, with this engine's name.
    pod_labels = objs[("DaemonSet", "dmr-supervisor")]["spec"]["template"]["metadata"]["labels"]
    assert pod_labels[extractor["parameters"]["engineLabelKey"]] == engine["name"]
    (epp,) = objs[("Deployment", "dmr-supervisor-epp")]["spec"]["template"]["spec"]["containers"]
    refused = [a for a in epp["args"] if a.split("=")[0] in EPP_REFUSED_FLAGS]
    assert not refused, f"EPP v1.5.0 refuses to start with {refused}"

    assert sup.chat(max_tokens=2).status_code == 200
    fams = prom_families(sup.get("/metrics").text)
    for key in ("queuedRequestsSpec", "runningRequestsSpec", "kvUsageSpec"):
        name = engine[key]
        assert fams.get(name, {}).get("type") == "gauge", (key, name, sorted(f for f in fams if "vllm" in f))
        first_labels, value = fams[name]["samples"][0]
        assert first_labels == {}, f"{name}: the EPP takes the first sample; it must be the node total"
        if key == "kvUsageSpec":
            assert 0 <= value <= 1
    lora = fams[engine["loraSpec"]]
    assert lora["type"] == "gauge" and EPP_LORA_LABELS <= set(lora["samples"][0][0])
    cache = fams[engine["cacheInfoSpec"]]
    assert cache["type"] == "gauge" and all(EPP_CACHE_LABELS <= set(labels) and int(labels["block_size"]) > 0
                                            for labels, _ in cache["samples"])
