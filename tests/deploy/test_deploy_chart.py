"""The helm chart: strict lint, schema-valid manifests (Kubernetes 1.30, strict), and the wiring the
code relies on (SYLLABUS_* names from syllabus/config.py, gRPC probes, GPUs only in the GPU overlay,
secrets only in Secrets)."""

from __future__ import annotations

import re

import pytest
import yaml
from deploy_render import CHART, NAMESPACE, OVERLAYS, manifests, overlay_values, render

from syllabus.config import Config

pytestmark = pytest.mark.unit

KUBE_VERSION = "1.30.0"
SECRET_FIELDS = {"database_url", "s3_access_key", "s3_secret_key", "service_token"}
# Fields a role must not get: the gateway never holds the service token the services accept.
WITHHELD = {"gateway": {"SYLLABUS_SERVICE_TOKEN"}}
GRPC_ROLES = {
    "teacher": "syllabus.teacher.v1.TeacherService",
    "student": "syllabus.student.v1.StudentService",
    "trainer": "syllabus.trainer.v1.TrainerService",
    "gateway": "syllabus.jobs.v1.JobService",
}
SYLLABUS_ROLES = {*GRPC_ROLES, "worker"}
GPU_ROLES = {"teacher", "trainer"}


def config_env_names() -> set[str]:
    return {f"SYLLABUS_{name.upper()}" for name in Config.model_fields}


def of_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o["kind"] == kind]


def component(obj: dict) -> str:
    return obj["metadata"]["labels"]["app.kubernetes.io/component"]


def role_deployments(objs: list[dict]) -> dict[str, dict]:
    return {component(d): d for d in of_kind(objs, "Deployment") if component(d) in SYLLABUS_ROLES}


def containers(deployment: dict) -> list[dict]:
    return deployment["spec"]["template"]["spec"]["containers"]


@pytest.mark.parametrize("overlay", list(OVERLAYS))
def test_lint_strict(overlay: str) -> None:
    import helm_python as helm

    report = helm.lint(
        str(CHART),
        values=overlay_values(overlay),
        strict=True,
        namespace=NAMESPACE,
        kube_version=f"v{KUBE_VERSION}",
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


def test_manifests_validate_against_kubernetes_schemas(rendered: tuple[str, list[dict]]) -> None:
    from kubernetes_validate import utils

    overlay, objs = rendered
    assert objs, overlay
    for obj in objs:
        # raises ValidationError (unknown field in strict mode, wrong type, missing required field)
        utils.validate(obj, KUBE_VERSION, strict=True)


def test_every_role_has_its_workloads(by_overlay: dict[str, list[dict]]) -> None:
    for overlay, objs in by_overlay.items():
        assert set(role_deployments(objs)) == SYLLABUS_ROLES, overlay
        services = {component(s) for s in of_kind(objs, "Service")}
        assert set(GRPC_ROLES) <= services, overlay
        assert "worker" not in services
        assert {component(h) for h in of_kind(objs, "HorizontalPodAutoscaler")} == {
            "gateway",
            "worker",
            "student",
        }
        assert SYLLABUS_ROLES <= {component(p) for p in of_kind(objs, "PodDisruptionBudget")}
        assert len(of_kind(objs, "ServiceAccount")) == 1


def test_env_names_exist_in_the_config_model(rendered: tuple[str, list[dict]]) -> None:
    overlay, objs = rendered
    known = config_env_names()
    cm_names = {cm["metadata"]["name"]: set(cm["data"]) for cm in of_kind(objs, "ConfigMap")}
    for role, dep in role_deployments(objs).items():
        for c in containers(dep):
            names = {e["name"] for e in c.get("env", [])}
            for src in c.get("envFrom", []):
                names |= cm_names[src["configMapRef"]["name"]]
            syllabus = {n for n in names if n.startswith("SYLLABUS_")}
            assert syllabus <= known, (
                f"{overlay}/{role}: {sorted(syllabus - known)} not in syllabus.config.Config"
            )
            # every config field reaches every role (one config model, mapped 1:1), but what it must not hold
            expected = known - WITHHELD.get(role, set())
            assert syllabus == expected, f"{overlay}/{role}: {sorted(expected ^ syllabus)}"


def test_secret_fields_come_from_secrets_only(rendered: tuple[str, list[dict]]) -> None:
    overlay, objs = rendered
    secret_env = {f"SYLLABUS_{f.upper()}" for f in SECRET_FIELDS}
    for cm in of_kind(objs, "ConfigMap"):
        assert not secret_env & set(cm["data"]), overlay
    for role, dep in role_deployments(objs).items():
        for c in containers(dep):
            for e in c.get("env", []):
                if e["name"] in secret_env:
                    assert "secretKeyRef" in e.get("valueFrom", {}), f"{overlay}/{role}: {e['name']} inline"


def test_secret_values_never_reach_a_configmap() -> None:
    values = {
        "secrets": {
            "databaseUrl": "postgresql+psycopg://syl:pg-Pa55-xyz@db:5432/syllabus",
            "s3AccessKey": "AKIA-access-k3y",
            "s3SecretKey": "s3cr3t-k3y-value",
        },
        "postgresql": {"enabled": False},
        "minio": {"enabled": False},
        "config": {"artifactUrl": "s3://b/a", "s3Endpoint": "s3:9000"},
    }
    objs = manifests(render(values))
    for cm in of_kind(objs, "ConfigMap"):
        text = yaml.safe_dump(cm)
        for needle in ("pg-Pa55-xyz", "AKIA-access-k3y", "s3cr3t-k3y-value"):
            assert needle not in text
    (secret,) = [
        s for s in of_kind(objs, "Secret") if "helm.sh/hook" not in s["metadata"].get("annotations", {})
    ]
    assert secret["stringData"]["SYLLABUS_DATABASE_URL"] == values["secrets"]["databaseUrl"]
    assert secret["stringData"]["SYLLABUS_S3_SECRET_KEY"] == "s3cr3t-k3y-value"


def test_grpc_roles_probe_with_grpc_health(rendered: tuple[str, list[dict]]) -> None:
    overlay, objs = rendered
    deps = role_deployments(objs)
    for role, service in GRPC_ROLES.items():
        c = containers(deps[role])[0]  # the role's own container; a service pod's worker follows
        port = c["ports"][0]["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert c[probe]["grpc"] == {"port": port, "service": service}, f"{overlay}/{role}/{probe}"
        # the server binds the port the probes and the Service use
        assert c["args"][:2] == ["--address", f"0.0.0.0:{port}"]
    (worker,) = containers(deps["worker"])
    for probe in ("readinessProbe", "livenessProbe"):
        assert worker[probe]["exec"]["command"][-2:] == ["/usr/local/bin/syllabus-healthcheck", "--temporal"]


def _gpus(c: dict) -> dict:
    res = c.get("resources", {})
    return {
        k: res.get(k, {}).get("nvidia.com/gpu")
        for k in ("requests", "limits")
        if "nvidia.com/gpu" in res.get(k, {})
    }


def test_gpus_only_for_gpu_roles_and_only_in_the_gpu_overlay(by_overlay: dict[str, list[dict]]) -> None:
    for overlay, objs in by_overlay.items():
        for obj in objs:
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("containers", []):
                gpus = _gpus(c)
                role = component(obj)
                if overlay == "gpu" and role in GPU_ROLES and c["name"] == role:  # not its worker container
                    assert gpus == {"requests": 1, "limits": 1}, (overlay, role)
                    assert pod["nodeSelector"] and pod["tolerations"]
                else:
                    assert gpus == {}, (overlay, role)


def test_external_overlay_uses_no_in_chart_dependencies(by_overlay: dict[str, list[dict]]) -> None:
    objs = by_overlay["external"]
    assert not {"temporal", "minio", "postgresql"} & {component(o) for o in objs}
    (cm,) = of_kind(objs, "ConfigMap")
    ext = overlay_values("external")["config"]
    assert cm["data"]["SYLLABUS_TEMPORAL_ADDRESS"] == ext["temporalAddress"]
    assert cm["data"]["SYLLABUS_S3_ENDPOINT"] == ext["s3Endpoint"]
    # credentials come from the user's Secret; the chart renders none of its own
    assert not [s for s in of_kind(objs, "Secret")]
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for d in role_deployments(objs).values()
        for c in containers(d)
        for e in c["env"]
        if "valueFrom" in e
    }
    assert refs == {"syllabus-credentials"}


@pytest.mark.parametrize(
    "overlay, hook", [("default", "post-install,pre-upgrade"), ("external", "pre-install,pre-upgrade")]
)
def test_migration_job_is_a_hook_running_db_upgrade(
    by_overlay: dict[str, list[dict]], overlay: str, hook: str
) -> None:
    (job,) = [j for j in of_kind(by_overlay[overlay], "Job") if component(j) == "migrations"]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == hook
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["syllabus", "db", "upgrade"]
    assert {e["name"] for e in c["env"]} <= config_env_names()


def test_default_install_wires_in_chart_dependencies(by_overlay: dict[str, list[dict]]) -> None:
    objs = by_overlay["default"]
    (cm,) = of_kind(objs, "ConfigMap")
    assert cm["data"]["SYLLABUS_TEMPORAL_ADDRESS"] == "syl-syllabus-temporal:7233"
    assert cm["data"]["SYLLABUS_S3_ENDPOINT"] == "syl-syllabus-minio:9000"
    assert cm["data"]["SYLLABUS_TEACHER_ADDRESS"] == "syl-syllabus-teacher:50061"
    (secret,) = of_kind(objs, "Secret")
    data = secret["stringData"]
    assert data["SYLLABUS_DATABASE_URL"].startswith("postgresql+psycopg://syllabus:")
    assert f":{data['POSTGRES_PASSWORD']}@syl-syllabus-postgresql:5432/" in data["SYLLABUS_DATABASE_URL"]


def test_missing_external_endpoints_fail_with_a_message() -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="config.temporalAddress is required"):
        render({"temporal": {"enabled": False}})
    with pytest.raises(helm.HelmError, match="secrets.databaseUrl"):
        render({"postgresql": {"enabled": False}})


def test_every_value_is_commented() -> None:
    # Each mapping key has a comment on the line above (or inline); the fields inside a list item
    # (e.g. one toleration) are data described by the comment above the item.
    for name in ("values.yaml", "values-gpu.yaml", "values-external.yaml"):
        lines = (CHART / name).read_text().splitlines()
        item_indent = None
        for i, line in enumerate(lines):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            indent = len(line) - len(line.lstrip())
            if item_indent is not None and indent > item_indent:
                continue
            item_indent = indent if line.lstrip().startswith("- ") else None
            if re.match(r"^\s*(- )?[\w.\-/]+:(\s|$)", line) and "#" not in line:
                prev = next((p for p in reversed(lines[:i]) if p.strip()), "")
                assert prev.strip().startswith("#"), f"{name}:{i + 1} {line!r} has no comment"


def test_notes_tell_how_to_reach_gateway_and_temporal_ui() -> None:
    notes = render()["syllabus/templates/NOTES.txt"]
    assert "port-forward svc/syl-syllabus-gateway 50060:50060" in notes
    assert "port-forward svc/syl-syllabus-temporal 8233:8233" in notes
    external = render(overlay_values("external"))["syllabus/templates/NOTES.txt"]
    assert "https://temporal.example.com/namespaces/syllabus/workflows" in external


def _env(dep: dict) -> dict[str, dict]:
    c = containers(dep)[0]  # the role's own container; a service pod's worker follows
    return {e["name"]: e for e in c.get("env", [])}


def test_tokens_come_from_the_secret(rendered: tuple[str, list[dict]]) -> None:
    """The service token reaches the worker and the three services (secretKeyRef), never the gateway;
    the gateway mounts the Secret's tokens.json where SYLLABUS_TOKENS_FILE points."""
    overlay, objs = rendered
    deps = role_deployments(objs)
    for role in SYLLABUS_ROLES - {"gateway"}:
        ref = _env(deps[role])["SYLLABUS_SERVICE_TOKEN"]["valueFrom"]["secretKeyRef"]
        assert ref["key"] == "SYLLABUS_SERVICE_TOKEN", f"{overlay}/{role}"
    gateway = deps["gateway"]
    assert "SYLLABUS_SERVICE_TOKEN" not in _env(gateway)
    (cm,) = of_kind(objs, "ConfigMap")
    tokens_file = cm["data"]["SYLLABUS_TOKENS_FILE"]
    c = containers(gateway)[0]  # the role's own container; a service pod's worker follows
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "auth-tokens"]
    assert mount["readOnly"] and tokens_file == f"{mount['mountPath']}/tokens.json"
    (vol,) = [v for v in gateway["spec"]["template"]["spec"]["volumes"] if v["name"] == "auth-tokens"]
    assert vol["secret"]["items"] == [{"key": "tokens.json", "path": "tokens.json"}]
    for role in SYLLABUS_ROLES - {"gateway"}:
        c = containers(deps[role])[0]  # the role's own container; a service pod's worker follows
        assert all(m["name"] != "auth-tokens" for m in c["volumeMounts"]), f"{overlay}/{role}"


def test_secret_holds_the_tokens() -> None:
    import json

    objs = manifests(render({"auth": {"serviceToken": "svc-t0ken", "tokens": {"tok-a": "tenant-a", "tok-root": "*"}}}))
    (secret,) = [s for s in of_kind(objs, "Secret") if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
    data = secret["stringData"]
    assert data["SYLLABUS_SERVICE_TOKEN"] == "svc-t0ken"
    assert json.loads(data["tokens.json"]) == {"tok-a": "tenant-a", "tok-root": "*"}
    assert "SYLLABUS_ADMIN_TOKEN" not in data
    for cm in of_kind(objs, "ConfigMap"):
        assert "svc-t0ken" not in yaml.safe_dump(cm) and "tok-a" not in yaml.safe_dump(cm)
    # Defaults: a generated service token and one generated admin token, named in tokens.json.
    (secret,) = [s for s in of_kind(manifests(render()), "Secret") if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
    data = secret["stringData"]
    assert len(data["SYLLABUS_SERVICE_TOKEN"]) >= 32
    assert json.loads(data["tokens.json"]) == {data["SYLLABUS_ADMIN_TOKEN"]: "*"}


DEPENDENCY_CALLERS = {  # in-chart dependency -> port -> the components that may reach it
    # serviceQueues (the default): each service pod's worker container reaches Temporal and PostgreSQL
    "temporal": {"grpc": {"gateway", "worker", "teacher", "student", "trainer"}},
    "minio": {"s3": {"gateway", "worker", "teacher", "student", "trainer", "minio-bucket"}},
    "postgresql": {"postgresql": {"gateway", "worker", "migrations", "teacher", "student", "trainer"}},
}


def test_each_service_pod_runs_a_worker_on_its_service_queue_only_with_service_queues() -> None:
    """config.serviceQueues: a `worker` container beside each teacher, student and trainer container,
    polling that service's queue and calling the replica in its own pod; off, no such container, and
    Temporal and PostgreSQL admit only the gateway, the worker (and the migrations)."""
    deps = role_deployments(manifests(render()))
    for role, dep in deps.items():
        names = [c["name"] for c in containers(dep)]
        if role not in ("teacher", "student", "trainer"):
            assert "worker" not in names[1:], role
            continue
        assert names == [role, "worker"], role
        side = containers(dep)[1]
        env = {e["name"]: e.get("value") for e in side["env"]}
        port = containers(dep)[0]["ports"][0]["containerPort"]
        assert side["args"] == ["--service", role]
        assert env[f"SYLLABUS_{role.upper()}_ADDRESS"] == f"127.0.0.1:{port}"
        assert side["image"].endswith(f"syllabus/worker:{side['image'].rsplit(':', 1)[1]}")
        assert "SYLLABUS_DATABASE_URL" in env and "SYLLABUS_SERVICE_TOKEN" in env
    off = manifests(render({"config": {"serviceQueues": False}}))
    assert all(len(containers(d)) == 1 for d in role_deployments(off).values())
    policies = {component(p): p for p in of_kind(off, "NetworkPolicy") if component(p) in ("temporal", "postgresql")}
    admitted = {dep: {f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                      for f in p["spec"]["ingress"][0]["from"]} for dep, p in policies.items()}  # fmt: skip
    assert admitted == {"temporal": {"gateway", "worker"}, "postgresql": {"gateway", "worker", "migrations"}}


def test_only_the_worker_reaches_the_services(rendered: tuple[str, list[dict]]) -> None:
    overlay, objs = rendered
    allowed = {"teacher": {"worker"}, "student": {"worker"}, "trainer": {"worker"}}
    policies = {component(p): p for p in of_kind(objs, "NetworkPolicy") if component(p) in allowed}
    assert set(policies) == set(allowed), overlay
    for role, callers in allowed.items():
        spec = policies[role]["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == role
        assert spec["policyTypes"] == ["Ingress"]
        # the gRPC port from the worker only; the metrics port (only it) from any peer, for Prometheus
        rule, metrics = spec["ingress"]
        peers = {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]}
        assert peers == callers and "gateway" not in peers, f"{overlay}/{role}"
        assert rule["ports"] == [{"port": "grpc", "protocol": "TCP"}]
        assert metrics == {"ports": [{"port": "metrics", "protocol": "TCP"}]}, f"{overlay}/{role}"
    assert not of_kind(manifests(render({"networkPolicy": {"enabled": False}})), "NetworkPolicy")


def test_the_in_chart_temporal_minio_and_postgresql_admit_only_their_clients(rendered: tuple[str, list[dict]]) -> None:
    """Whoever reaches Temporal's frontend can start or terminate any workflow; MinIO and PostgreSQL
    hold every tenant's data. Each admits only the components that use it, on its one port; the
    Temporal UI and the MinIO console admit nobody in-cluster unless named."""
    overlay, objs = rendered
    deployed = {component(d) for d in of_kind(objs, "Deployment") if component(d) in DEPENDENCY_CALLERS}
    policies = {component(p): p for p in of_kind(objs, "NetworkPolicy") if component(p) in DEPENDENCY_CALLERS}
    assert set(policies) == deployed, overlay  # the external overlay deploys none of them
    for dep, policy in policies.items():
        spec = policy["spec"]
        assert spec["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == dep and spec["policyTypes"] == ["Ingress"]
        got = {rule["ports"][0]["port"]: {p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in rule["from"]}
               for rule in spec["ingress"]}  # fmt: skip
        assert got == DEPENDENCY_CALLERS[dep], f"{overlay}/{dep}"
    # the migration job and the bucket job carry the component labels the policies name
    jobs = {component(j) for j in of_kind(objs, "Job")}
    assert jobs <= {"migrations", "minio-bucket"}
    ui = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}]
    (temporal,) = [p for p in of_kind(manifests(render({"networkPolicy": {"temporalUiFrom": ui}})), "NetworkPolicy")
                   if component(p) == "temporal"]  # fmt: skip
    assert {"from": ui, "ports": [{"port": "http-ui", "protocol": "TCP"}]} in temporal["spec"]["ingress"]


def test_temporal_tls_points_the_two_clients_at_their_certificate_and_no_one_else_mounts_it() -> None:
    objs = manifests(render({"temporalTls": {"enabled": True, "secretName": "temporal-client", "serverName": "temporal.ops"}}))
    (cm,) = [c for c in of_kind(objs, "ConfigMap") if "SYLLABUS_TEMPORAL_TLS_CA_FILE" in c["data"]]
    data = cm["data"]
    assert data["SYLLABUS_TEMPORAL_TLS_CA_FILE"] == "/etc/syllabus/temporal-tls/ca.crt"
    assert data["SYLLABUS_TEMPORAL_TLS_CERT_FILE"] == "/etc/syllabus/temporal-tls/tls.crt"
    assert data["SYLLABUS_TEMPORAL_TLS_KEY_FILE"] == "/etc/syllabus/temporal-tls/tls.key"
    assert data["SYLLABUS_TEMPORAL_TLS_SERVER_NAME"] == "temporal.ops"
    for role, dep in role_deployments(objs).items():
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        mounts = {m["name"] for c in containers(dep) for m in c.get("volumeMounts", [])}
        if role in ("gateway", "worker"):
            assert volumes["temporal-tls"]["secret"]["secretName"] == "temporal-client" and "temporal-tls" in mounts, role
        else:  # a service pod: only its worker container (service queues) talks to Temporal
            assert volumes["temporal-tls"]["secret"]["secretName"] == "temporal-client", role
            by_container = {c["name"]: {m["name"] for m in c.get("volumeMounts", [])} for c in containers(dep)}
            assert "temporal-tls" in by_container["worker"] and "temporal-tls" not in by_container[role], role
    off = manifests(render())
    (cm,) = [c for c in of_kind(off, "ConfigMap") if "SYLLABUS_TEMPORAL_TLS_CA_FILE" in c["data"]]
    assert cm["data"]["SYLLABUS_TEMPORAL_TLS_CA_FILE"] == "" and cm["data"]["SYLLABUS_TEMPORAL_TLS_CERT_FILE"] == ""
    import helm_python as helm

    with pytest.raises(helm.HelmError, match="temporalTls.enabled needs temporalTls.secretName"):
        render({"temporalTls": {"enabled": True}})


def test_tls_on_mounts_the_secret_points_the_config_at_it_and_probes_over_tls() -> None:
    values = overlay_values("default") or {}
    values = {**values, "tls": {"enabled": True, "secretName": "syllabus-grpc-tls", "mountPath": "/etc/syllabus/tls"}}
    objs = manifests(render(values))
    (cm,) = [o for o in of_kind(objs, "ConfigMap") if "SYLLABUS_TASK_QUEUE" in o.get("data", {})]
    assert cm["data"]["SYLLABUS_TLS_CERT_FILE"] == "/etc/syllabus/tls/tls.crt"
    assert cm["data"]["SYLLABUS_TLS_KEY_FILE"] == "/etc/syllabus/tls/tls.key"
    assert cm["data"]["SYLLABUS_TLS_CA_FILE"] == "/etc/syllabus/tls/ca.crt"
    deps = role_deployments(objs)
    for role in SYLLABUS_ROLES:  # servers present the certificate, the worker verifies with the CA
        spec = deps[role]["spec"]["template"]["spec"]
        (vol,) = [v for v in spec["volumes"] if v["name"] == "tls"]
        assert vol["secret"]["secretName"] == "syllabus-grpc-tls"
        for c in spec["containers"]:  # a service pod's worker container verifies its replica with the CA
            assert {"name": "tls", "mountPath": "/etc/syllabus/tls", "readOnly": True} in c["volumeMounts"]
    for role, service in GRPC_ROLES.items():
        c = containers(deps[role])[0]  # the role's own container; a service pod's worker follows
        port = c["ports"][0]["containerPort"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "grpc" not in c[probe], f"{role}/{probe}: the kubelet's gRPC probe cannot do TLS"
            assert c[probe]["exec"]["command"] == ["/usr/local/bin/syllabus-healthcheck", f"127.0.0.1:{port}", service]
    with pytest.raises(Exception, match="tls.secretName"):
        render({**values, "tls": {"enabled": True, "secretName": ""}})


METRICS_PORTS = {"gateway": 9460, "teacher": 9461, "student": 9462, "trainer": 9463, "worker": 9464}


def test_metrics_ports_reach_the_config_the_pods_and_their_annotations(rendered: tuple[str, list[dict]]) -> None:
    """Each role serves /metrics on its metricsPort: the ConfigMap sets SYLLABUS_<ROLE>_METRICS_PORT (and
    binds 0.0.0.0), the container names the port "metrics", the pod carries the prometheus.io annotations."""
    overlay, objs = rendered
    (cm,) = of_kind(objs, "ConfigMap")
    assert cm["data"]["SYLLABUS_METRICS_HOST"] == "0.0.0.0"
    assert cm["data"]["SYLLABUS_OTLP_ENDPOINT"] == ""  # tracing off unless config.otlpEndpoint is set
    for role, dep in role_deployments(objs).items():
        port = METRICS_PORTS[role]
        assert cm["data"][f"SYLLABUS_{role.upper()}_METRICS_PORT"] == str(port), f"{overlay}/{role}"
        c = containers(dep)[0]  # the role's own container; a service pod's worker follows
        assert {"name": "metrics", "containerPort": port, "protocol": "TCP"} in c["ports"], f"{overlay}/{role}"
        annotations = dep["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(port)
        assert annotations["prometheus.io/path"] == "/metrics"
    assert not [s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics")]
    assert not of_kind(objs, "ServiceMonitor")  # optional, off by default


def test_metrics_off_turns_every_endpoint_off() -> None:
    objs = manifests(render({"metrics": {"enabled": False}, "config": {"otlpEndpoint": "http://otel:4317"}}))
    (cm,) = of_kind(objs, "ConfigMap")
    assert cm["data"]["SYLLABUS_OTLP_ENDPOINT"] == "http://otel:4317"
    for role, dep in role_deployments(objs).items():
        assert cm["data"][f"SYLLABUS_{role.upper()}_METRICS_PORT"] == "0"
        c = containers(dep)[0]  # the role's own container; a service pod's worker follows
        assert all(p["name"] != "metrics" for p in c.get("ports", [])), role
        assert not any(k.startswith("prometheus.io/") for k in dep["spec"]["template"]["metadata"]["annotations"])
    for policy in of_kind(objs, "NetworkPolicy"):
        assert len(policy["spec"]["ingress"]) == 1  # the gRPC rule only
    # scrape annotations can be dropped on their own (a ServiceMonitor scrapes instead)
    objs = manifests(render({"metrics": {"scrapeAnnotations": False}}))
    for dep in role_deployments(objs).values():
        assert "prometheus.io/scrape" not in dep["spec"]["template"]["metadata"]["annotations"]


def test_service_monitor_scrapes_every_role_through_metrics_only_services() -> None:
    from kubernetes_validate import utils

    scrapers = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    values = {"metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}, "from": scrapers}}
    objs = manifests(render(values))
    services = {s["metadata"]["name"]: s for s in of_kind(objs, "Service") if s["metadata"]["name"].endswith("-metrics")}
    assert set(services) == {f"syl-syllabus-{role}-metrics" for role in SYLLABUS_ROLES}
    for role in SYLLABUS_ROLES:
        spec = services[f"syl-syllabus-{role}-metrics"]["spec"]
        assert spec["selector"]["app.kubernetes.io/component"] == role
        assert spec["clusterIP"] == "None"
        assert spec["ports"] == [{"name": "metrics", "port": METRICS_PORTS[role], "targetPort": "metrics", "protocol": "TCP"}]
    # the gateway's (possibly public) Service never exposes the metrics port
    (gateway,) = [s for s in of_kind(objs, "Service") if s["metadata"]["name"] == "syl-syllabus-gateway"]
    assert [p["name"] for p in gateway["spec"]["ports"]] == ["grpc"]
    (monitor,) = of_kind(objs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (expr,) = monitor["spec"]["selector"]["matchExpressions"]
    assert sorted(expr["values"]) == sorted(f"{role}-metrics" for role in SYLLABUS_ROLES)
    selected = [s for s in services.values()
                if s["metadata"]["labels"]["app.kubernetes.io/component"] in expr["values"]
                and all(s["metadata"]["labels"][k] == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())]
    assert len(selected) == len(SYLLABUS_ROLES)
    assert monitor["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s", "scrapeTimeout": "10s"}]
    # only the monitoring namespace reaches the services' metrics port
    for policy in (p for p in of_kind(objs, "NetworkPolicy") if component(p) not in DEPENDENCY_CALLERS):
        _, metrics = policy["spec"]["ingress"]
        assert metrics["from"] == scrapers
    for obj in objs:  # everything but the CRD's object is schema-valid
        if obj["kind"] != "ServiceMonitor":
            utils.validate(obj, KUBE_VERSION, strict=True)


def test_no_syllabus_pod_holds_the_object_stores_root_keys() -> None:
    """MinIO's root keys reach only MinIO and its bucket job; the job makes one user per role: the
    artifact user (worker and services: read, write, delete in the bucket) and the gateway's (read and
    write, never delete), neither able to reach another bucket or administer MinIO."""
    import json as jsonlib

    objs = manifests(render())
    keys = {}
    for role, dep in role_deployments(objs).items():
        env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for c in containers(dep) for e in c.get("env", [])
               if "secretKeyRef" in e.get("valueFrom", {})}  # fmt: skip
        assert not {k for k in env.values() if k.startswith("MINIO_ROOT")}, role
        keys[role] = (env["SYLLABUS_S3_ACCESS_KEY"], env["SYLLABUS_S3_SECRET_KEY"])
    assert keys.pop("gateway") == ("GATEWAY_S3_ACCESS_KEY", "GATEWAY_S3_SECRET_KEY")
    assert set(keys.values()) == {("SYLLABUS_S3_ACCESS_KEY", "SYLLABUS_S3_SECRET_KEY")}
    (minio,) = [d for d in of_kind(objs, "Deployment") if component(d) == "minio"]
    root = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in containers(minio)[0]["env"] if "valueFrom" in e}
    assert root == {"MINIO_ROOT_USER": "MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD": "MINIO_ROOT_PASSWORD"}
    (secret,) = [s for s in of_kind(objs, "Secret") if "helm.sh/hook" not in s["metadata"].get("annotations", {})]
    data = secret["stringData"]
    assert len({data["MINIO_ROOT_PASSWORD"], data["SYLLABUS_S3_SECRET_KEY"], data["GATEWAY_S3_SECRET_KEY"]}) == 3
    assert data["MINIO_ROOT_USER"] not in (data["SYLLABUS_S3_ACCESS_KEY"], data["GATEWAY_S3_ACCESS_KEY"])

    (job,) = [j for j in of_kind(objs, "Job") if component(j) == "minio-bucket"]
    (mc,) = containers(job)
    script = mc["args"][0]
    policies = {name: jsonlib.loads(body) for name, body in re.findall(r"cat > /tmp/(\w+)\.json <<'POLICY'\n(.*?)\nPOLICY", script, re.DOTALL)}
    actions = {name: {a for st in p["Statement"] for a in st["Action"]} for name, p in policies.items()}
    assert "s3:DeleteObject" in actions["artifacts"] and "s3:DeleteObject" not in actions["gateway"]
    for p in policies.values():
        assert {r for st in p["Statement"] for r in st["Resource"]} == {"arn:aws:s3:::syllabus", "arn:aws:s3:::syllabus/*"}
        assert not any(a.startswith("admin:") or a == "s3:*" for st in p["Statement"] for a in st["Action"])
    env = {e["name"]: e["valueFrom"]["secretKeyRef"]["key"] for e in mc["env"]}
    assert (env["APP_KEY"], env["GW_KEY"], env["ROOT_USER"]) == ("SYLLABUS_S3_ACCESS_KEY", "GATEWAY_S3_ACCESS_KEY", "MINIO_ROOT_USER")
    assert 'policy attach syllabus syllabus-artifacts --user "$APP_KEY"' in script
    assert 'policy attach syllabus syllabus-gateway --user "$GW_KEY"' in script
