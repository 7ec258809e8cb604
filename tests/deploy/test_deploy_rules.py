"""The project's rules for its Kubernetes manifests, checked on every rendered overlay.

Schemas say an object is well-formed; these say it is deployed the way KubeKVM needs: probes
and resources on every container, pinned images, a disruption budget per Deployment, MongoDB
as a persistent replica set reachable only by its clients, a non-root read-only server, the
agent on hypervisor nodes with the host paths it needs, recommended labels everywhere, and
the replica counts of each overlay.
"""

from __future__ import annotations

import base64
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

SERVER = {"app.kubernetes.io/name": "kubekvm", "app.kubernetes.io/component": "server"}
DATABASE = {"app.kubernetes.io/name": "mongodb", "app.kubernetes.io/component": "database"}
INIT_JOB = {"app.kubernetes.io/name": "mongodb", "app.kubernetes.io/component": "replicaset-init"}
BACKUP = {"app.kubernetes.io/name": "mongodb", "app.kubernetes.io/component": "backup"}
# Secrets the production overlay expects to exist (created by the operator, never rendered).
EXTERNAL_SECRETS = {"kubekvm-server", "kubekvm-mongodb", "kubekvm-host-tokens"}
CLUSTER_SCOPED = {"Namespace"}


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def long_running(manifests) -> list[dict[str, Any]]:
    return [w for w in manifests.workloads() if w["kind"] in ("Deployment", "StatefulSet", "DaemonSet")]


# --- containers -------------------------------------------------------------------------------


def test_long_running_containers_have_probes(manifests) -> None:
    missing = []
    for workload in long_running(manifests):
        for container in manifests.containers(workload, init=False):
            wanted = ["livenessProbe"]
            if workload["kind"] != "DaemonSet":  # the agent serves nobody: liveness suffices
                wanted.append("readinessProbe")
            missing += [
                f"{manifests.ident(workload)}/{container['name']}: {probe}"
                for probe in wanted
                if probe not in container
            ]
    assert missing == []


def test_every_container_has_requests_and_limits(manifests) -> None:
    missing = []
    for workload, container in manifests.all_containers():
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(section, {}):
                    missing.append(f"{manifests.ident(workload)}/{container['name']}: {section}")
    assert missing == []


def test_images_are_pinned_by_tag(manifests) -> None:
    unpinned = []
    for workload, container in manifests.all_containers():
        image = container["image"]
        name, _, tag = image.rpartition(":") if "@" not in image else (image, "", "digest")
        if not name or "/" in tag or tag in ("", "latest"):
            unpinned.append(f"{manifests.ident(workload)}/{container['name']}: {image}")
    assert unpinned == []


def test_kubekvm_image_tags_match_the_version_label(manifests) -> None:
    for kind, name in (("Deployment", "kubekvm"), ("DaemonSet", "kubekvm-agent")):
        workload = manifests.one(kind, name)
        version = workload["metadata"]["labels"]["app.kubernetes.io/version"]
        for container in manifests.containers(workload):
            assert container["image"].endswith(f":{version}"), container["image"]


def test_mongodb_image_is_a_pinned_7_0_release(manifests) -> None:
    images = {c["image"] for _, c in manifests.all_containers() if c["image"].startswith("mongo:")}
    assert len(images) == 1, images  # database, init Job and backup share one version
    assert re.fullmatch(r"mongo:7\.0\.\d+", images.pop())


# --- disruption budgets, selectors, references ------------------------------------------------


def test_every_deployment_and_statefulset_has_a_matching_disruption_budget(manifests) -> None:
    budgets = manifests.of_kind("PodDisruptionBudget")
    for workload in manifests.of_kind("Deployment") + manifests.of_kind("StatefulSet"):
        labels = manifests.pod_labels(workload)
        matching = [pdb for pdb in budgets if manifests.selects(pdb["spec"]["selector"]["matchLabels"], labels)]
        assert len(matching) == 1, f"{manifests.ident(workload)}: {len(matching)} budgets"
        spec = matching[0]["spec"]
        # A budget that allows no eviction at all blocks every node drain.
        assert spec.get("maxUnavailable", 1) >= 1


def test_workload_selectors_match_their_pod_templates(manifests) -> None:
    for workload in manifests.workloads():
        if workload["kind"] in ("Job", "CronJob"):
            continue
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector, manifests.ident(workload)
        assert manifests.selects(selector, manifests.pod_labels(workload)), manifests.ident(workload)


def test_services_and_budgets_select_existing_pods(manifests) -> None:
    templates = [manifests.pod_labels(w) for w in manifests.workloads()]
    for obj in manifests.of_kind("Service") + manifests.of_kind("PodDisruptionBudget"):
        selector = obj["spec"]["selector"]
        selector = selector.get("matchLabels", selector)
        assert any(manifests.selects(selector, labels) for labels in templates), manifests.ident(obj)


def test_referenced_configmaps_and_secrets_exist(manifests) -> None:
    existing = {(o["kind"], o["metadata"]["name"]) for o in manifests.objects}
    dangling = set()
    for workload in manifests.workloads():
        spec = manifests.pod_template(workload)["spec"]
        refs = []
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                refs.append(("ConfigMap", volume["configMap"]["name"]))
            if "secret" in volume:
                refs.append(("Secret", volume["secret"]["secretName"]))
            if "persistentVolumeClaim" in volume:
                refs.append(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for container in manifests.containers(workload):
            for source in container.get("envFrom", []):
                if "configMapRef" in source:
                    refs.append(("ConfigMap", source["configMapRef"]["name"]))
                if "secretRef" in source:
                    refs.append(("Secret", source["secretRef"]["name"]))
            for item in container.get("env", []):
                value_from = item.get("valueFrom", {})
                if "configMapKeyRef" in value_from:
                    refs.append(("ConfigMap", value_from["configMapKeyRef"]["name"]))
                if "secretKeyRef" in value_from:
                    refs.append(("Secret", value_from["secretKeyRef"]["name"]))
        dangling |= {ref for ref in refs if ref not in existing}
    if manifests.overlay == "production":
        dangling -= {("Secret", name) for name in EXTERNAL_SECRETS}
    assert dangling == set()


def test_production_ships_no_secret(production) -> None:
    assert production.of_kind("Secret") == []


def test_dev_secrets_hold_only_marked_placeholders(dev) -> None:
    secrets = dev.of_kind("Secret")
    assert {s["metadata"]["name"].rsplit("-", 1)[0] for s in secrets} == EXTERNAL_SECRETS
    for secret in secrets:
        for key, encoded in secret["data"].items():
            value = base64.b64decode(encoded).decode()
            if key.endswith("USERNAME"):
                continue
            assert "CHANGEME" in value.upper().replace("-", ""), f"{secret['metadata']['name']}.{key}"


# --- the server -------------------------------------------------------------------------------


def test_server_runs_non_root_with_a_read_only_root_filesystem(manifests) -> None:
    pod = manifests.pod_template(manifests.one("Deployment", "kubekvm"))["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert len(tmp) == 1
    (volume,) = [v for v in pod["volumes"] if v["name"] == tmp[0]["name"]]
    assert "emptyDir" in volume


def test_every_server_replica_shares_one_read_write_many_image_store(manifests) -> None:
    pod = manifests.pod_template(manifests.one("Deployment", "kubekvm"))["spec"]
    (container,) = pod["containers"]
    (config,) = [o for o in manifests.of_kind("ConfigMap") if o["metadata"]["name"].startswith("kubekvm-config")]
    store = config["data"]["KUBEKVM_IMAGE_STORE"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == store]
    assert not mount.get("readOnly")
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    claim = manifests.one("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]


def test_server_probes_and_ports(manifests) -> None:
    deployment = manifests.one("Deployment", "kubekvm")
    (container,) = manifests.containers(deployment)
    assert container["command"] + container["args"] == [
        "kubekvm", "serve", "--host", "0.0.0.0", "--port", "8000",
        "--log-level", "$(KUBEKVM_LOG_LEVEL)",
    ]  # fmt: skip
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    service = manifests.one("Service", "kubekvm")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"][0]["port"] == 8000
    assert service["spec"]["ports"][0]["targetPort"] == "http"


def test_server_gets_its_settings_and_secrets(manifests) -> None:
    (container,) = manifests.containers(manifests.one("Deployment", "kubekvm"))
    env = env_of(container)
    for name in ("MONGODB_URI", "KUBEKVM_SECRET_KEY"):
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"].startswith("kubekvm-server") and ref["key"] == name
    (config_ref,) = [s["configMapRef"]["name"] for s in container["envFrom"]]
    config = [c for c in manifests.of_kind("ConfigMap") if c["metadata"]["name"] == config_ref]
    assert {"KUBEKVM_MAX_REPLICAS", "KUBEKVM_HOST_TIMEOUT", "KUBEKVM_LOG_LEVEL"} <= set(config[0]["data"])


def test_each_server_advertises_its_own_pod_address_for_consoles(manifests) -> None:
    (container,) = manifests.containers(manifests.one("Deployment", "kubekvm"))
    env = env_of(container)
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    port = container["ports"][0]["containerPort"]
    assert env["KUBEKVM_ADVERTISE_URL"]["value"] == f"http://$(POD_IP):{port}"
    names = list(env)
    assert names.index("POD_IP") < names.index("KUBEKVM_ADVERTISE_URL")  # $(POD_IP) expands


def test_dev_database_uri_uses_the_replica_set_with_majority_writes(dev) -> None:
    (secret,) = [s for s in dev.of_kind("Secret") if s["metadata"]["name"].startswith("kubekvm-server")]
    uri = urlsplit(base64.b64decode(secret["data"]["MONGODB_URI"]).decode())
    options = parse_qs(uri.query)
    assert options["replicaSet"] == ["rs0"]
    assert options["w"] == ["majority"]
    assert options["authSource"] == ["admin"]
    assert uri.hostname == "mongodb-0.mongodb.kubekvm.svc"


def test_server_spreads_over_nodes(manifests) -> None:
    pod = manifests.pod_template(manifests.one("Deployment", "kubekvm"))["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    for constraint in pod["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"] == SERVER


def test_ingress_routes_to_the_server_and_keeps_websockets_open(manifests) -> None:
    ingress = manifests.one("Ingress", "kubekvm")
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    service = manifests.one("Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


# --- MongoDB ----------------------------------------------------------------------------------


def test_mongodb_is_a_persistent_replica_set(manifests) -> None:
    statefulset = manifests.one("StatefulSet", "mongodb")
    spec = statefulset["spec"]
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"]
    (mongod,) = spec["template"]["spec"]["containers"]
    assert claim["metadata"]["name"] in {m["name"] for m in mongod["volumeMounts"]}
    args = mongod["args"]
    assert args[args.index("--replSet") + 1] == "rs0"
    assert "--bind_ip_all" in args and "--keyFile" in args
    service = manifests.one("Service", spec["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert mongod["securityContext"]["readOnlyRootFilesystem"] is True


def test_init_job_follows_the_statefulset(manifests) -> None:
    statefulset = manifests.one("StatefulSet", "mongodb")
    job = manifests.one("Job", "mongodb-init")
    (container,) = manifests.containers(job)
    env = env_of(container)
    assert env["MONGODB_MEMBERS"]["value"] == str(statefulset["spec"]["replicas"])
    assert env["MONGODB_SERVICE"]["value"] == statefulset["spec"]["serviceName"]
    assert env["MONGODB_REPLICA_SET"]["value"] == "rs0"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert manifests.pod_labels(job) == manifests.pod_labels(job) | INIT_JOB


def test_only_clients_reach_mongodb(manifests) -> None:
    (policy,) = manifests.of_kind("NetworkPolicy")
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"] == DATABASE
    assert manifests.selects(DATABASE, manifests.pod_labels(manifests.one("StatefulSet", "mongodb")))
    assert spec["policyTypes"] == ["Ingress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": 27017, "protocol": "TCP"}]
    peers = rule["from"]
    assert all(set(peer) == {"podSelector"} for peer in peers)  # no namespace or IP blocks
    allowed = [peer["podSelector"]["matchLabels"] for peer in peers]
    # The server and the init Job; also the backup and the members themselves (replication).
    assert SERVER in allowed and INIT_JOB in allowed
    assert all(peer in (SERVER, INIT_JOB, BACKUP, DATABASE) for peer in allowed)
    # Each allowed peer is a real pod template: a renamed label would silently lock it out.
    templates = [manifests.pod_labels(w) for w in manifests.workloads()]
    for peer in allowed:
        assert any(manifests.selects(peer, labels) for labels in templates), peer


# --- the agent --------------------------------------------------------------------------------


def test_agent_runs_on_hypervisor_nodes_with_the_host_paths(manifests) -> None:
    daemonset = manifests.one("DaemonSet", "kubekvm-agent")
    pod = manifests.pod_template(daemonset)["spec"]
    assert pod["nodeSelector"] == {"kubekvm.io/hypervisor": "true"}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in pod["volumes"] if "hostPath" in v}
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    mounted = {host_paths[name]: mounts[name] for name in host_paths}
    assert mounted["/var/run/libvirt"] == "/var/run/libvirt"
    # qemu on the host opens these by the agent's paths: same path inside and outside.
    assert mounted["/var/lib/kubekvm/images"] == "/var/lib/kubekvm/images"
    assert mounted["/var/lib/kubekvm/state"] == "/var/lib/kubekvm/state"
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert not security.get("privileged", False)
    assert "ports" not in pod or all("hostPort" not in p for p in container["ports"])


def test_agent_identity_token_and_server(manifests) -> None:
    daemonset = manifests.one("DaemonSet", "kubekvm-agent")
    pod = manifests.pod_template(daemonset)["spec"]
    (container,) = pod["containers"]
    env = env_of(container)
    assert env["KUBEKVM_HOST_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
    # The token file is <secret volume>/<node name>.
    tokens = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName", "").startswith("kubekvm-host-tokens")]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == tokens[0]["name"]]
    assert env["KUBEKVM_HOST_TOKEN_FILE"]["value"] == f"{mount['mountPath']}/$(KUBEKVM_HOST_NAME)"
    names = list(env)
    assert names.index("KUBEKVM_HOST_NAME") < names.index("KUBEKVM_HOST_TOKEN_FILE")
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    (config_ref,) = [s["configMapRef"]["name"] for s in container["envFrom"]]
    config = next(c for c in manifests.of_kind("ConfigMap") if c["metadata"]["name"] == config_ref)
    server = urlsplit(config["data"]["KUBEKVM_SERVER"])
    service = manifests.one("Service", "kubekvm")
    assert server.hostname == f"kubekvm.{manifests.NAMESPACE}.svc"
    assert server.port == service["spec"]["ports"][0]["port"]
    assert config["data"]["KUBEKVM_LIBVIRT_URI"] == "qemu:///system"


# --- labels and namespace ---------------------------------------------------------------------


def test_every_object_has_the_recommended_labels(manifests) -> None:
    missing = []
    for obj in manifests.objects:
        labels = obj["metadata"].get("labels", {})
        missing += [f"{manifests.ident(obj)}: {k}" for k in manifests.RECOMMENDED_LABELS if not labels.get(k)]
        if labels.get("app.kubernetes.io/part-of") != "kubekvm":
            missing.append(f"{manifests.ident(obj)}: part-of kubekvm")
    for workload in manifests.workloads():
        labels = manifests.pod_labels(workload)
        missing += [f"{manifests.ident(workload)} pods: {k}" for k in manifests.RECOMMENDED_LABELS if not labels.get(k)]
    assert missing == []


def test_everything_lives_in_the_kubekvm_namespace(manifests) -> None:
    manifests.one("Namespace", manifests.NAMESPACE)
    for obj in manifests.objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"].get("namespace") == manifests.NAMESPACE, manifests.ident(obj)


# --- overlays ---------------------------------------------------------------------------------


def test_dev_runs_one_server_and_one_member(dev) -> None:
    assert dev.one("Deployment", "kubekvm")["spec"]["replicas"] == 1
    assert dev.of_kind("HorizontalPodAutoscaler") == []
    assert dev.one("StatefulSet", "mongodb")["spec"]["replicas"] == 1


def test_production_runs_several_servers_and_three_members(production) -> None:
    deployment = production.one("Deployment", "kubekvm")
    # The autoscaler owns the count; a count in the manifest would be reset by every apply.
    assert "replicas" not in deployment["spec"]
    hpa = production.one("HorizontalPodAutoscaler", "kubekvm")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1", "kind": "Deployment", "name": "kubekvm",
    }  # fmt: skip
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] == 10
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    statefulset = production.one("StatefulSet", "mongodb")
    assert statefulset["spec"]["replicas"] == 3
    # Three members on one node would not survive that node.
    constraints = statefulset["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert any(
        c["topologyKey"] == "kubernetes.io/hostname" and c["whenUnsatisfiable"] == "DoNotSchedule" for c in constraints
    )


def test_mongodb_cache_fits_its_memory_limit(manifests) -> None:
    (mongod,) = manifests.containers(manifests.one("StatefulSet", "mongodb"), init=False)
    args = mongod["args"]
    size = args[args.index("--wiredTigerCacheSizeGB") + 1]
    if size.startswith("$("):
        size = env_of(mongod)[size[2:-1]]["value"]
    cache_mib = float(size) * 1024
    limit = mongod["resources"]["limits"]["memory"]
    limit_mib = int(limit[:-2]) * {"Mi": 1, "Gi": 1024}[limit[-2:]]
    assert cache_mib >= 256  # mongod refuses a smaller WiredTiger cache
    assert cache_mib <= limit_mib / 2  # room for connections, sorts, the oplog applier
