"""Checks of the operations assets in deploy/ (Prometheus, Grafana, compose, Kubernetes).

What runs for real:

* ``promtool check config`` / ``check rules`` / ``test rules`` when promtool is on PATH
  (Debian package ``prometheus``); skipped with a reason otherwise.
* Every alert has a promtool unit test in which it fires and one in which it must not.
* Every metric queried by the dashboard and the rules is in the metric contract
  (``EXPECTED_METRICS``), and the dashboard covers the whole contract.
* The Prometheus Operator copy of the rules equals the rules file.
* Compose: ``docker compose config`` when the compose plugin works, and always a
  structural check of the services and their cross-references.
* Kubernetes: ``kubeconform`` / ``kubectl kustomize`` when installed, and always a
  structural check of every manifest.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from streamqueue.metrics import DEPRECATED, METRIC_NAMES
from streamqueue.worker import EXIT_MARGIN

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
PROM_DIR = DEPLOY / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES_FILE = PROM_DIR / "rules" / "streamqueue.rules.yml"
RULES_TEST_FILE = PROM_DIR / "tests" / "streamqueue.rules.test.yml"
GRAFANA_DIR = DEPLOY / "grafana"
DASHBOARD = GRAFANA_DIR / "streamqueue-dashboard.json"
GRAFANA_DS = GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASH_PROVIDER = GRAFANA_DIR / "provisioning" / "dashboards" / "streamqueue.yml"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
K8S_DIR = DEPLOY / "kubernetes"

# The metric contract: every name streamqueue exports to Prometheus (histograms by
# base name). tests/unit/test_metrics.py checks it against a live registry.
EXPECTED_METRICS: frozenset[str] = METRIC_NAMES
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
WORKER_JOB = "streamqueue-worker"
REAPER_JOB = "streamqueue-reaper"
WORKER_METRICS_PORT = 9100
REAPER_METRICS_PORT = 9101
SHUTDOWN_GRACE_SECONDS = 30
TOOL_TIMEOUT = 60
#: The sample handler the compose and Kubernetes workers run; it ships in the package.
DEMO_HANDLER = "streamqueue.demo.handlers:handle"

# A streamqueue metric name, not part of a recording-rule name (level:metric:op).
METRIC_RE = re.compile(r"(?<![\w:])(streamqueue_\w+)\b(?!:)")


# --------------------------------------------------------------------------- helpers


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return yaml.safe_load(f)


def load_yaml_docs(path: Path) -> list[Any]:
    with path.open(encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


def metric_names(expr: str) -> set[str]:
    """Metric base names referenced by a PromQL expression."""
    names = set()
    for name in METRIC_RE.findall(expr):
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
                break
        names.add(name)
    return names


def duration_seconds(value: str) -> float:
    """Parse a Prometheus/compose duration such as ``40s``, ``1m30s`` or ``1h``."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", value)
    assert parts, f"not a duration: {value!r}"
    assert "".join(n + u for n, u in parts) == value, f"not a duration: {value!r}"
    return sum(float(n) * units[u] for n, u in parts)


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False, cwd=ROOT
    )


def require_promtool() -> str:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not on PATH (install the Debian package 'prometheus')")
    return promtool


def alert_rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = []
    for group in load_yaml(RULES_FILE)["groups"]:
        rules.extend(r for r in group["rules"] if "alert" in r)
    return rules


def all_rules() -> Iterator[dict[str, Any]]:
    for group in load_yaml(RULES_FILE)["groups"]:
        yield from group["rules"]


def dashboard() -> dict[str, Any]:
    with DASHBOARD.open(encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def dashboard_panels() -> Iterator[dict[str, Any]]:
    for panel in dashboard()["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows nest their panels


def dashboard_exprs() -> list[str]:
    return [t["expr"] for p in dashboard_panels() for t in p.get("targets", []) if "expr" in t]


def grafana_to_promql(expr: str) -> str:
    """Replace Grafana's template variables so promtool can parse the query."""
    for var, value in (
        ("$__rate_interval", "5m"),
        ("$__interval", "1m"),
        ("$__range", "1h"),
        ("$queue", ".*"),
    ):
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unhandled template variable in {expr!r}"
    return expr


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services


def option_value(args: list[str], option: str) -> str:
    """The value after ``option`` in an argument list (``--opt value`` or ``--opt=value``)."""
    for i, arg in enumerate(args):
        if arg == option:
            return args[i + 1]
        if arg.startswith(option + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{option} not in {args}")


def k8s_manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.glob("*.yaml") if p.name not in {"kustomization.yaml"})


def k8s_objects(include_examples: bool = False) -> list[tuple[Path, dict[str, Any]]]:
    objects: list[tuple[Path, dict[str, Any]]] = []
    for path in k8s_manifest_files():
        if not include_examples and path.name.endswith(".example.yaml"):
            continue
        objects.extend((path, doc) for doc in load_yaml_docs(path))
    return objects


def k8s_by_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for _, o in k8s_objects() if o["kind"] == kind}


def env_var(container: dict[str, Any], name: str) -> dict[str, Any]:
    for var in container.get("env", []):
        if var["name"] == name:
            found: dict[str, Any] = var
            return found
    raise AssertionError(f"{container['name']}: no env var {name}")


def expand_k8s_args(container: dict[str, Any], configmap: dict[str, Any]) -> list[str]:
    """Container args with $(VAR) references resolved from literal env / the ConfigMap."""
    values: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            values[var["name"]] = var["value"]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            assert ref["name"] == configmap["metadata"]["name"], ref
            values[var["name"]] = configmap["data"][ref["key"]]
    expanded = []
    for arg in container["args"]:
        for name, value in values.items():
            arg = arg.replace(f"$({name})", value)
        assert "$(" not in arg, f"unresolved reference in {arg!r}"
        expanded.append(arg)
    return expanded


# --------------------------------------------------------------------------- Prometheus


def test_promtool_check_config() -> None:
    promtool = require_promtool()
    result = run_tool(promtool, "check", "config", str(PROM_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_rules() -> None:
    promtool = require_promtool()
    result = run_tool(promtool, "check", "rules", str(RULES_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(list(all_rules()))} rules found" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    promtool = require_promtool()
    result = run_tool(promtool, "test", "rules", str(RULES_TEST_FILE))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_prometheus_config_scrapes_worker_and_reaper() -> None:
    config = load_yaml(PROM_CONFIG)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {WORKER_JOB, REAPER_JOB} <= jobs.keys()

    rule_files = config["rule_files"]
    assert [(PROM_CONFIG.parent / f).resolve() for f in rule_files] == [RULES_FILE.resolve()]

    # Targets point at the compose services and their metrics ports.
    services = compose_services()
    worker_sd = jobs[WORKER_JOB]["dns_sd_configs"]
    assert [(sd["names"], sd["port"]) for sd in worker_sd] == [(["worker"], WORKER_METRICS_PORT)]
    reaper_targets = [t for sc in jobs[REAPER_JOB]["static_configs"] for t in sc["targets"]]
    assert reaper_targets == [f"reaper:{REAPER_METRICS_PORT}"]
    assert "worker" in services
    assert "reaper" in services


def test_every_alert_has_annotations_and_severity() -> None:
    alerts = alert_rules()
    assert len(alerts) >= 6
    names = [a["alert"] for a in alerts]
    assert len(names) == len(set(names)), "duplicate alert names"
    for alert in alerts:
        name = alert["alert"]
        assert name.startswith("Streamqueue"), name
        assert alert["labels"]["severity"] in {"info", "warning", "critical"}, name
        annotations = alert["annotations"]
        assert len(annotations.get("summary", "")) > 10, f"{name}: summary"
        # The description is the runbook: it must say what to do, not just restate the expr.
        assert len(annotations.get("description", "")) > 150, f"{name}: description too short"
        if "for" in alert:
            duration_seconds(alert["for"])


def test_required_alerts_present() -> None:
    exprs = {a["alert"]: " ".join(a["expr"].split()) for a in alert_rules()}
    joined = "\n".join(exprs.values())
    assert "increase(streamqueue_jobs_dead_total[15m])" in joined
    assert 'streamqueue_queue_jobs{state=~"dead|failed"}' in joined
    assert "rate(streamqueue_attempts_failed_total[10m])" in joined
    assert "rate(streamqueue_leases_expired_total[10m])" in joined
    assert "streamqueue_queue_oldest_available_age_seconds) > 300" in joined
    assert f'absent(up{{job="{REAPER_JOB}"}} == 1)' in joined
    assert "increase(streamqueue_changestream_restarts_total[10m]) > 3" in joined
    assert "streamqueue_worker_busy_slots" in joined
    assert "streamqueue_worker_slots" in joined


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    tests = load_yaml(RULES_TEST_FILE)
    assert [(RULES_TEST_FILE.parent / f).resolve() for f in tests["rule_files"]] == [
        RULES_FILE.resolve()
    ]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            (fires if expected else quiet).add(check["alertname"])
            for alert in expected:
                # promtool compares annotations exactly; spelling them out also proves
                # that the templates render.
                annotations = alert.get("exp_annotations", {})
                assert {"summary", "description"} <= annotations.keys(), check["alertname"]
    alerts = {a["alert"] for a in alert_rules()}
    assert not alerts - fires, f"alerts never shown to fire: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts never shown to stay quiet: {sorted(alerts - quiet)}"
    unknown = (fires | quiet) - alerts
    assert not unknown, f"unit tests for alerts that do not exist: {sorted(unknown)}"


def test_recording_rules_are_unit_tested() -> None:
    tests = load_yaml(RULES_TEST_FILE)
    tested = {
        check["expr"] for case in tests["tests"] for check in case.get("promql_expr_test", [])
    }
    records = {r["record"] for r in all_rules() if "record" in r}
    assert tested, "no recording rule is unit tested"
    assert tested <= records


def test_rules_only_query_contract_metrics() -> None:
    used: set[str] = set()
    for rule in all_rules():
        used |= metric_names(rule["expr"])
    assert used, "no streamqueue metric found in the rules"
    assert not used - EXPECTED_METRICS, (
        f"unknown metrics in rules: {sorted(used - EXPECTED_METRICS)}"
    )


def test_deprecated_names_are_only_read_beside_their_replacements() -> None:
    """Rules and panels read a renamed metric's old name only as a fallback for the
    previous release's processes (``new or old``), never alone."""
    old_counter, new_counter = "streamqueue_jobs_failed_total", "streamqueue_attempts_failed_total"
    assert DEPRECATED[old_counter] == new_counter
    exprs = [" ".join(r["expr"].split()) for r in all_rules()]
    exprs += [" ".join(e.split()) for e in dashboard_exprs()]
    readers = [e for e in exprs if old_counter in e]
    assert readers, "the rules no longer read the deprecated name: drop it from METRIC_NAMES"
    for expr in readers:
        assert expr.count(old_counter) == expr.count(new_counter), expr
        assert " or rate(" + old_counter in expr, expr
    for expr in exprs:
        if "streamqueue_queue_jobs" in expr and "failed" in expr:
            assert 'state=~"dead|failed"' in expr, expr


def test_prometheusrule_matches_rules_file() -> None:
    (rule,) = load_yaml_docs(K8S_DIR / "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"]["groups"] == load_yaml(RULES_FILE)["groups"], (
        "deploy/kubernetes/prometheusrule.yaml differs from the rules file: copy the groups over"
    )


# --------------------------------------------------------------------------- Grafana


def test_dashboard_metrics_are_in_contract() -> None:
    exprs = dashboard_exprs()
    assert exprs
    used: set[str] = set()
    for expr in exprs:
        used |= metric_names(expr)
    for var in dashboard()["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        used |= metric_names(str(query or ""))
    unknown = used - EXPECTED_METRICS
    assert not unknown, f"dashboard queries metrics outside the contract: {sorted(unknown)}"
    missing = EXPECTED_METRICS - used
    assert not missing, f"contract metrics with no dashboard panel: {sorted(missing)}"


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] == "streamqueue"
    assert 36 <= dash["schemaVersion"] <= 41
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["queue"]["multi"] is True

    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert 'queue=~"$queue"' in target["expr"] or "up{" in target["expr"], (
                f"{panel['title']}: query ignores the queue variable"
            )


def test_dashboard_has_required_panels() -> None:
    exprs = [" ".join(e.split()) for e in dashboard_exprs()]
    joined = "\n".join(exprs)
    for metric in ("streamqueue_job_wait_seconds", "streamqueue_job_run_seconds"):
        for quantile in ("0.50", "0.95", "0.99"):
            assert f"histogram_quantile({quantile}, sum by (queue, le) (rate({metric}_bucket" in (
                joined
            ), (metric, quantile)
    for counter in ("jobs_enqueued", "jobs_claimed", "jobs_completed", "attempts_failed",
                    "jobs_dead"):
        assert f"rate(streamqueue_{counter}_total" in joined, counter
    assert "max by (queue, state) (streamqueue_queue_jobs" in joined
    assert 'streamqueue_queue_jobs{queue=~"$queue", state=~"dead|failed"}' in joined
    assert "streamqueue_job_attempts_bucket" in joined
    titles = {p["title"] for p in dashboard_panels()}
    assert "Busy worker slots" in titles
    assert "Change stream restarts" in titles


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL (checked by promtool as recording rules)."""
    promtool = require_promtool()
    rules = [
        {"record": f"dashboard:query_{i}:check", "expr": grafana_to_promql(expr)}
        for i, expr in enumerate(dashboard_exprs())
    ]
    rules_file = tmp_path / "dashboard-queries.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run_tool(promtool, "check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning() -> None:
    ds = load_yaml(GRAFANA_DS)
    assert ds["apiVersion"] == 1
    (prom,) = ds["datasources"]
    assert prom["type"] == "prometheus"
    assert prom["url"] == "http://prometheus:9090"

    provider_cfg = load_yaml(GRAFANA_DASH_PROVIDER)
    assert provider_cfg["apiVersion"] == 1
    (provider,) = provider_cfg["providers"]
    assert provider["type"] == "file"
    dash_dir = provider["options"]["path"]

    # The compose file mounts the provisioning dir and the dashboard where Grafana looks.
    mounts = {}
    for volume in compose_services()["grafana"]["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve() == (
        GRAFANA_DIR / "provisioning"
    ).resolve()
    dashboard_mount = f"{dash_dir}/{DASHBOARD.name}"
    assert (COMPOSE_DIR / mounts[dashboard_mount]).resolve() == DASHBOARD.resolve()


# --------------------------------------------------------------------------- compose


def docker_compose_works() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        return run_tool("docker", "compose", "version").returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def test_docker_compose_config() -> None:
    if not docker_compose_works():
        pytest.skip("docker compose plugin not available; structure is checked by YAML below")
    result = run_tool("docker", "compose", "-f", str(COMPOSE_FILE), "config", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services() -> None:
    services = compose_services()
    required = {"mongo1", "mongo2", "mongo3", "mongo-init"}
    required |= {"worker", "reaper", "prometheus", "grafana"}
    assert required <= services.keys()
    for name, service in services.items():
        assert "image" in service or "build" in service, name

    for name in ("mongo1", "mongo2", "mongo3"):
        mongo = services[name]
        assert mongo["image"] == "mongo:7"
        command = mongo["command"]
        assert option_value(command, "--replSet") == "rs0"
        assert "--bind_ip_all" in command
        assert "healthcheck" in mongo

    init = services["mongo-init"]
    assert init["image"] == "mongo:7"
    assert init["restart"] == "no"
    assert set(init["depends_on"]) == {"mongo1", "mongo2", "mongo3"}
    assert "mongosh" in init["command"]
    scripts = [v.split(":")[0] for v in init["volumes"]]
    script_text = "".join((COMPOSE_DIR / s).read_text() for s in scripts)
    assert "rs.initiate" in script_text
    for host in ("mongo1:27017", "mongo2:27017", "mongo3:27017"):
        assert host in script_text


def test_compose_worker_and_reaper() -> None:
    services = compose_services()
    worker, reaper = services["worker"], services["reaper"]

    # A worker exits at most EXIT_MARGIN after its grace, even with MongoDB down.
    assert duration_seconds(worker["stop_grace_period"]) >= SHUTDOWN_GRACE_SECONDS + EXIT_MARGIN
    assert worker["deploy"]["replicas"] == 2
    assert "container_name" not in worker, "container_name breaks replicas"
    assert "ports" not in worker, "published ports clash between replicas"

    for service in (worker, reaper):
        assert service["depends_on"]["mongo-init"]["condition"] == (
            "service_completed_successfully"
        )
        assert "replicaSet=rs0" in option_value(service["command"], "--uri")
        assert option_value(service["command"], "--db") == "app"
        assert option_value(service["command"], "--queue") == "jobs"
        build = service["build"]
        assert (COMPOSE_DIR / build["context"] / build["dockerfile"]).resolve() == (
            DOCKERFILE.resolve()
        )

    assert worker["command"][:2] == ["worker", DEMO_HANDLER]
    assert option_value(worker["command"], "--concurrency") == "4"
    assert option_value(worker["command"], "--metrics-port") == str(WORKER_METRICS_PORT)
    assert reaper["command"][0] == "reaper"
    assert option_value(reaper["command"], "--interval") == "5"
    assert option_value(reaper["command"], "--metrics-port") == str(REAPER_METRICS_PORT)

    prometheus = services["prometheus"]
    sources = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    assert (COMPOSE_DIR / sources["/etc/prometheus"]).resolve() == PROM_DIR.resolve()
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, re.M) or re.search(
        r"^FROM python:3\.11-slim", text, re.M
    )
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "pip install" in final_stage
    user = re.findall(r"^USER (\S+)", final_stage, re.M)
    assert user, "the image must not run as root"
    assert user[-1].split(":")[0] not in {"root", "0"}
    assert 'ENTRYPOINT ["python", "-m", "streamqueue"]' in final_stage
    ignore = (COMPOSE_DIR / "Dockerfile.dockerignore").read_text()
    for needed in ("pyproject.toml", "streamqueue/"):
        assert f"!{needed}" in ignore
    # The repository has no top-level examples/: the sample handler is in the package.
    assert "examples/" not in text and "!examples/" not in ignore


# --------------------------------------------------------------------------- Kubernetes


def test_kubeconform() -> None:
    kubeconform = shutil.which("kubeconform")
    if kubeconform is None:
        pytest.skip("kubeconform not installed; manifests are checked structurally below")
    files = [str(p) for p in k8s_manifest_files() if p.name != "secret.example.yaml"]
    result = run_tool(kubeconform, "-strict", "-summary", "-ignore-missing-schemas", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_kustomize_build() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; kustomization is checked structurally below")
    result = run_tool(kubectl, "kustomize", str(K8S_DIR))
    assert result.returncode == 0, result.stdout + result.stderr
    built = [d for d in yaml.safe_load_all(result.stdout) if d]
    kinds = sorted(d["kind"] for d in built)
    assert kinds.count("Deployment") == 2
    assert "Secret" not in kinds, "the Secret must not be generated from the repository"
    for doc in built:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "streamqueue", doc["metadata"]["name"]
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert not container["image"].startswith("streamqueue:"), "images: not applied"


def test_kustomization_lists_every_manifest() -> None:
    kustomization = load_yaml(K8S_DIR / "kustomization.yaml")
    resources = kustomization["resources"]
    assert len(resources) == len(set(resources))
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), resource
    expected = {p.name for p in k8s_manifest_files() if not p.name.endswith(".example.yaml")}
    assert set(resources) == expected
    assert "secret.example.yaml" not in resources


def test_k8s_manifests_are_well_formed() -> None:
    objects = k8s_objects(include_examples=True)
    assert objects
    seen = set()
    for path, obj in objects:
        assert isinstance(obj.get("apiVersion"), str), path
        assert isinstance(obj.get("kind"), str), path
        name = obj.get("metadata", {}).get("name")
        assert isinstance(name, str), path
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        key = (obj["kind"], name)
        assert key not in seen, f"duplicate {key}"
        seen.add(key)


def test_k8s_deployments() -> None:
    deployments = k8s_by_kind("Deployment")
    assert set(deployments) == {"streamqueue-worker", "streamqueue-reaper"}
    (configmap,) = k8s_by_kind("ConfigMap").values()

    for name, deployment in deployments.items():
        assert deployment["apiVersion"] == "apps/v1"
        spec = deployment["spec"]
        template_labels = spec["template"]["metadata"]["labels"]
        match_labels = spec["selector"]["matchLabels"]
        assert match_labels
        assert match_labels.items() <= template_labels.items(), name
        pod = spec["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for container in pod["containers"]:
            assert container.get("image"), f"{name}/{container['name']}: no image"
            assert "memory" in container["resources"]["limits"], name
            assert "cpu" in container["resources"]["requests"], name
            uri = env_var(container, "STREAMQUEUE_URI")["valueFrom"]["secretKeyRef"]
            assert uri == {"name": "streamqueue-mongodb", "key": "uri"}, name
            assert not any("mongodb://" in a for a in container["args"]), "URI in args"

    worker_pod = deployments["streamqueue-worker"]["spec"]["template"]["spec"]
    assert worker_pod["terminationGracePeriodSeconds"] >= SHUTDOWN_GRACE_SECONDS + EXIT_MARGIN
    (worker,) = worker_pod["containers"]
    args = expand_k8s_args(worker, configmap)
    assert args[:2] == ["worker", DEMO_HANDLER]
    assert option_value(args, "--db") == "app"
    assert option_value(args, "--queue") == "jobs"
    assert int(option_value(args, "--concurrency")) >= 1
    assert option_value(args, "--metrics-port") == str(WORKER_METRICS_PORT)
    assert worker["ports"] == [
        {"name": "metrics", "containerPort": WORKER_METRICS_PORT, "protocol": "TCP"}
    ]

    reaper_pod = deployments["streamqueue-reaper"]["spec"]["template"]["spec"]
    assert deployments["streamqueue-reaper"]["spec"]["replicas"] >= 1
    (reaper,) = reaper_pod["containers"]
    args = expand_k8s_args(reaper, configmap)
    assert args[0] == "reaper"
    assert option_value(args, "--metrics-port") == str(REAPER_METRICS_PORT)
    assert float(option_value(args, "--interval")) > 0
    assert reaper["ports"] == [
        {"name": "metrics", "containerPort": REAPER_METRICS_PORT, "protocol": "TCP"}
    ]


def pods_selected(selector: dict[str, str]) -> list[dict[str, Any]]:
    """Pod templates of the Deployments whose labels match ``selector``."""
    return [
        d["spec"]["template"]
        for d in k8s_by_kind("Deployment").values()
        if selector.items() <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


def test_k8s_podmonitors_and_services_select_the_right_pods() -> None:
    expected = {"streamqueue-worker": WORKER_JOB, "streamqueue-reaper": REAPER_JOB}
    monitors = k8s_by_kind("PodMonitor")
    assert set(monitors) == set(expected)
    for name, monitor in monitors.items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        (pod,) = pods_selected(monitor["spec"]["selector"]["matchLabels"])
        assert pod["metadata"]["labels"]["app.kubernetes.io/component"] in name
        port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in port_names, name
            jobs = [
                r["replacement"]
                for r in endpoint.get("relabelings", [])
                if r.get("targetLabel") == "job"
            ]
            assert jobs == [expected[name]], f"{name}: job label must be {expected[name]}"

    services = k8s_by_kind("Service")
    assert services
    for name, service in services.items():
        (pod,) = pods_selected(service["spec"]["selector"])
        port_names = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names, name


def test_k8s_secret_is_only_an_example() -> None:
    assert "Secret" not in {o["kind"] for _, o in k8s_objects()}
    (secret,) = load_yaml_docs(K8S_DIR / "secret.example.yaml")
    assert secret["kind"] == "Secret"
    assert secret["metadata"]["name"] == "streamqueue-mongodb"
    uri = secret["stringData"]["uri"]
    assert uri.startswith("mongodb")
    assert "CHANGE-ME" in uri, "the example must carry a placeholder, not a password"


def test_the_deployed_handler_is_importable() -> None:
    """Compose and Kubernetes run DEMO_HANDLER from the installed package: it must load."""
    from streamqueue.handlers import load_handler

    assert callable(load_handler(DEMO_HANDLER))
