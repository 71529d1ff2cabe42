"""k8s/: render every kustomization, validate the objects strictly, and check what we promise.

Rendering uses ``kubectl kustomize`` or ``kustomize build`` when one is on PATH. Without either,
base/, batch/ and train/ are rendered by a small PyYAML fallback (resources + namespace + images +
configMapGenerator literals, which is all they use) and the overlays are skipped with the reason.
Core objects are validated with kubernetes-validate; the training job (a Kubeflow PyTorchJob) with
the operator's CRD schema in tests/schemas/ (its pod templates with kubernetes-validate again).
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
TARGETS = {
    "base": "base",
    "dev": "overlays/dev",
    "prod": "overlays/prod",
    "gpu": "overlays/gpu",
    "batch": "batch",
    "train": "train",
}
FALLBACK_TARGETS = {"base", "batch", "train"}  # these use only what the fallback renderer understands
PYTORCHJOB_CRD = ROOT / "tests" / "schemas" / "kubeflow.org_pytorchjobs.yaml"
ELIDED = "x-transfigure-elided"  # where the committed CRD leaves out a copy of a core Kubernetes type
IMAGES = ("transfigure:", "transfigure-train:")  # the Bento image; the training image (k8s/train/Dockerfile)
BENTO_UID = 1034
REQUIRED_CONFIG = {
    "TRANSFIGURE_MAX_BYTES",
    "TRANSFIGURE_MAX_PIXELS",
    "TRANSFIGURE_MAX_SIDE",
    "TRANSFIGURE_FULLRES_MAX_SIDE",
    "TRANSFIGURE_TILE",
    "TRANSFIGURE_MODELS",
    "TRANSFIGURE_WORKERS",
    "TRANSFIGURE_THREADS",
}

pytestmark = pytest.mark.timeout(120)


# -- rendering ---------------------------------------------------------------------------------------


def _kustomize_command() -> list[str] | None:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


KUSTOMIZE = _kustomize_command()
NO_KUSTOMIZE = "neither `kubectl` nor `kustomize` is on PATH; overlays need a real kustomize to render"


def _render_with_tool(folder: Path) -> list[dict[str, Any]]:
    assert KUSTOMIZE is not None
    proc = subprocess.run([*KUSTOMIZE, str(folder)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(KUSTOMIZE)} {folder} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def _render_fallback(folder: Path) -> list[dict[str, Any]]:
    """Just enough kustomize for base/ and batch/; refuses anything it does not understand."""
    kust = yaml.safe_load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator", "images"}
    unknown = set(kust) - known
    assert not unknown, f"the fallback renderer does not understand {sorted(unknown)} in {folder}"
    docs: list[dict[str, Any]] = []
    for res in kust.get("resources", []):
        docs += [d for d in yaml.safe_load_all((folder / res).read_text()) if d]
    for gen in kust.get("configMapGenerator", []):
        data = dict(line.split("=", 1) for line in gen.get("literals", []))
        docs.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        )
    extra = {k: v for lab in kust.get("labels", []) for k, v in lab.get("pairs", {}).items()}
    images = {i["name"]: i for i in kust.get("images", [])}
    for d in docs:
        meta = d.setdefault("metadata", {})
        meta.setdefault("labels", {}).update(extra)
        if "namespace" in kust:
            if d["kind"] == "Namespace":
                meta["name"] = kust["namespace"]
            else:
                meta["namespace"] = kust["namespace"]
        for c in _containers(d):
            override = images.get(c["image"].split(":")[0])
            if override:
                c["image"] = f"{override.get('newName', override['name'])}:{override.get('newTag', 'latest')}"
    return docs


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    out = {}
    for target, rel in TARGETS.items():
        if KUSTOMIZE is not None:
            out[target] = _render_with_tool(K8S / rel)
        elif target in FALLBACK_TARGETS:
            out[target] = _render_fallback(K8S / rel)
    return out


def _target(rendered: dict[str, list[dict[str, Any]]], target: str) -> list[dict[str, Any]]:
    if target not in rendered:
        pytest.skip(f"{target}: {NO_KUSTOMIZE}")
    return rendered[target]


def _pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc.get("kind") in {"Deployment", "Job", "StatefulSet", "DaemonSet"}:
        return doc["spec"]["template"]["spec"]
    return None


def _pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec of a workload: one, or one per replica type of a PyTorchJob."""
    if doc.get("kind") == "PyTorchJob":
        return [r["template"]["spec"] for r in doc["spec"]["pytorchReplicaSpecs"].values()]
    spec = _pod_spec(doc)
    return [] if spec is None else [spec]


def _containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for spec in _pod_specs(doc) for c in [*spec.get("initContainers", []), *spec["containers"]]]


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _cpu(q: str | int) -> float:
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def _config(docs: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The environment a container gets from its ConfigMaps (envFrom) and literal env values."""
    maps = {d["metadata"]["name"]: d.get("data", {}) for d in docs if d["kind"] == "ConfigMap"}
    env: dict[str, str] = {}
    for src in container.get("envFrom", []):
        name = src["configMapRef"]["name"]
        assert name in maps, f"envFrom names ConfigMap '{name}', which is not rendered"
        env.update(maps[name])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


ALL = pytest.mark.parametrize("target", list(TARGETS))
SERVICE_TARGETS = pytest.mark.parametrize("target", ["base", "dev", "prod", "gpu"])


# -- rendering and schema ------------------------------------------------------------------------------


@ALL
def test_renders(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    docs = _target(rendered, target)
    assert docs and all({"apiVersion", "kind", "metadata"} <= set(d) for d in docs)
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"
    assert all(d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace")


@pytest.mark.skipif(KUSTOMIZE is None, reason=NO_KUSTOMIZE)
def test_fallback_renderer_agrees_with_kustomize() -> None:
    """The fallback used where no kustomize exists makes the same objects (modulo the ConfigMap hash)."""
    for target in sorted(FALLBACK_TARGETS):
        real = _render_with_tool(K8S / TARGETS[target])
        ours = _render_fallback(K8S / TARGETS[target])

        def key(d: dict[str, Any]) -> tuple[str, str, str]:
            name = d["metadata"]["name"]
            if d["kind"] == "ConfigMap":
                name = re.sub(r"-[a-z0-9]{10}$", "", name)
            return d["kind"], name, d["metadata"].get("namespace", "")

        assert sorted(map(key, real)) == sorted(map(key, ours))
        real_images = sorted(c["image"] for d in real for c in _containers(d))
        assert real_images == sorted(c["image"] for d in ours for c in _containers(d))


@ALL
def test_kubernetes_validate_strict(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    version = kv.latest_version()
    for doc in _target(rendered, target):
        if doc["kind"] == "PyTorchJob":
            _validate_pytorchjob(doc)
        else:
            kv.validate(doc, version, strict=True)  # raises ValidationError naming the field


def test_strict_validation_catches_a_typo(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Guards the test above: a misspelt field in a real object must be refused."""
    kv = pytest.importorskip("kubernetes_validate")
    deployment = copy.deepcopy(_one(_target(rendered, "base"), "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {
        "httpGet": {"path": "/readyz"}
    }
    with pytest.raises(kv.ValidationError):
        kv.validate(deployment, kv.latest_version(), strict=True)


# -- what the manifests promise ------------------------------------------------------------------------------


@ALL
def test_pods_are_restricted(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    workloads = [d for d in _target(rendered, target) if _pod_specs(d)]
    assert workloads
    for spec in [spec for d in workloads for spec in _pod_specs(d)]:
        psc = spec["securityContext"]
        assert psc["runAsNonRoot"] is True and psc["runAsUser"] == BENTO_UID
        assert psc["seccompProfile"]["type"] == "RuntimeDefault"
        assert spec.get("automountServiceAccountToken") is False
        assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
            assert sc.get("privileged", False) is False
            assert sc["seccompProfile"]["type"] == "RuntimeDefault"
            assert c["image"].split("/")[-1].startswith(IMAGES)
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            assert mounts.get("/tmp") in empty_dirs, "a read-only root needs a writable /tmp"
            env = _config(_target(rendered, target), c)
            if "BENTOML_HOME" in env:
                assert mounts.get(env["BENTOML_HOME"]) in empty_dirs, (
                    "BENTOML_HOME must be a writable emptyDir"
                )


def test_namespace_enforces_restricted(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for target in ("base", "dev", "prod", "gpu"):
        if target not in rendered:
            continue
        ns = _one(rendered[target], "Namespace")
        assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
        assert all(
            d["metadata"]["namespace"] == ns["metadata"]["name"] for d in rendered[target] if d is not ns
        )


@SERVICE_TARGETS
def test_deployment_probes_drain_and_config(rendered: dict[str, list[dict[str, Any]]], target: str) -> None:
    docs = _target(rendered, target)
    dep = _one(docs, "Deployment")
    spec = dep["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    port = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert port["http"] == 3000
    assert c["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert "replicas" not in dep["spec"], "the HPA owns the replica count"

    env = _config(docs, c)
    assert set(env) >= REQUIRED_CONFIG
    # answers keep the input's size: only full-resolution networks run on a bounded copy
    assert int(env["TRANSFIGURE_MAX_SIDE"]) == 0 and int(env["TRANSFIGURE_FULLRES_MAX_SIDE"]) > 0
    token = [e for e in c["env"] if e["name"] == "TRANSFIGURE_API_TOKEN"]
    assert token and token[0]["valueFrom"]["secretKeyRef"]["optional"] is True

    # a clean drain: preStop pause, then the request timeout, fit in the grace period
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= int(pre_stop[1]) + int(env.get("TRANSFIGURE_TIMEOUT", "60"))

    # CPU = workers x ORT threads, request == limit (whole cores, Guaranteed QoS)
    res = c["resources"]
    cpus = int(env["TRANSFIGURE_WORKERS"]) * int(env["TRANSFIGURE_THREADS"])
    assert _cpu(res["limits"]["cpu"]) == cpus, f"{target}: CPU limit != WORKERS x THREADS = {cpus}"
    assert _cpu(res["requests"]["cpu"]) == cpus
    assert res["requests"]["memory"] == res["limits"]["memory"]


@SERVICE_TARGETS
def test_service_hpa_pdb_networkpolicy_select_the_pods(
    rendered: dict[str, list[dict[str, Any]]], target: str
) -> None:
    docs = _target(rendered, target)
    dep = _one(docs, "Deployment")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str]) -> bool:
        return bool(selector) and all(pod_labels.get(k) == v for k, v in selector.items())

    svc = _one(docs, "Service")
    assert selects(svc["spec"]["selector"])
    assert [p["targetPort"] for p in svc["spec"]["ports"]] == ["http"]
    assert selects(_one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"])

    hpa = _one(docs, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    netpol = _one(docs, "NetworkPolicy")
    assert selects(netpol["spec"]["podSelector"]["matchLabels"])
    assert set(netpol["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert netpol["spec"].get("egress", []) == []  # no egress at all
    ports = [p for rule in netpol["spec"]["ingress"] for p in rule["ports"]]
    assert ports == [{"port": 3000, "protocol": "TCP"}]


def test_overlays_differ_where_they_should(rendered: dict[str, list[dict[str, Any]]]) -> None:
    dev, prod = _target(rendered, "dev"), _target(rendered, "prod")
    img = {t: _containers(_one(d, "Deployment"))[0]["image"] for t, d in (("dev", dev), ("prod", prod))}
    assert img["dev"] != img["prod"] and not img["prod"].endswith(":latest")
    assert _one(dev, "Namespace")["metadata"]["name"] != _one(prod, "Namespace")["metadata"]["name"]
    assert _one(prod, "HorizontalPodAutoscaler")["spec"]["minReplicas"] >= 2  # survives losing a pod


def test_gpu_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """One NVIDIA GPU per pod on GPU nodes, CUDA or refuse, the GPU image; otherwise prod's pod."""
    from service.config import load_settings

    gpu, prod = _target(rendered, "gpu"), _target(rendered, "prod")
    pod, prod_pod = (_one(d, "Deployment")["spec"]["template"]["spec"] for d in (gpu, prod))
    (c,), (prod_c,) = pod["containers"], prod_pod["containers"]
    res = c["resources"]
    assert int(res["limits"]["nvidia.com/gpu"]) == 1
    assert (
        res["requests"].get("nvidia.com/gpu", res["limits"]["nvidia.com/gpu"])
        == res["limits"]["nvidia.com/gpu"]
    )
    assert "nvidia.com/gpu" not in prod_c["resources"]["limits"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert c["image"].endswith("-gpu") and c["image"].rsplit(":", 1)[0] == prod_c["image"].rsplit(":", 1)[0]
    # the same restricted pod as prod
    assert pod["securityContext"] == prod_pod["securityContext"]
    assert c["securityContext"] == prod_c["securityContext"]
    for key in ("automountServiceAccountToken", "enableServiceLinks", "volumes"):
        assert pod.get(key) == prod_pod.get(key), key
    env = _config(gpu, c)
    assert env["TRANSFIGURE_PROVIDERS"] == "cuda" and int(env["TRANSFIGURE_WORKERS"]) == 1
    assert int(env["TRANSFIGURE_INFER_CONCURRENCY"]) == 1
    settings = load_settings(
        providers=env["TRANSFIGURE_PROVIDERS"], gpu_mem_limit=env["TRANSFIGURE_GPU_MEM_LIMIT"]
    )
    assert settings.providers == "cuda" and 0 < settings.gpu_mem_limit <= 16 << 30
    assert _one(gpu, "Namespace")["metadata"]["name"] not in {
        _one(_target(rendered, t), "Namespace")["metadata"]["name"] for t in ("dev", "prod")
    }


def test_batch_job(rendered: dict[str, list[dict[str, Any]]]) -> None:
    from service import batch

    docs = _target(rendered, "batch")
    job = _one(docs, "Job")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] >= 1 and spec["backoffLimitPerIndex"] >= 1
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by backoffLimitPerIndex
    (c,) = pod["containers"]
    assert c["command"][-2:] == ["-m", "service.batch"]  # = `transfigure batch` (see job.yaml)
    parser = argparse.ArgumentParser()
    batch.add_arguments(parser)
    args = parser.parse_args(c["args"])  # the Job's arguments are valid for the real CLI
    assert args.shard_count == spec["completions"], "--shard-count must equal the Job's completions"
    assert args.shard_index is None, "the shard index must come from $JOB_COMPLETION_INDEX"
    claims = {
        v["name"]: v["persistentVolumeClaim"]["claimName"]
        for v in pod["volumes"]
        if "persistentVolumeClaim" in v
    }
    pvcs = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    assert set(claims.values()) <= pvcs and claims
    data_mounts = [m["mountPath"] for m in c["volumeMounts"] if m["name"] in claims]
    for path in (args.input, str(args.output)):
        assert any(path.startswith(m.rstrip("/") + "/") for m in data_mounts), f"{path} is not on the PVC"
    env = _config(docs, c)
    assert _cpu(c["resources"]["limits"]["cpu"]) == int(env["TRANSFIGURE_THREADS"])
    # outputs keep their input's size; a full-resolution network runs on a bounded copy
    assert args.max_side is None and int(env.get("TRANSFIGURE_MAX_SIDE", "0")) == 0
    assert args.fullres_max_side is None and int(env["TRANSFIGURE_FULLRES_MAX_SIDE"]) > 0
    codes = [r for r in spec.get("podFailurePolicy", {}).get("rules", []) if r["action"] == "FailIndex"]
    assert codes and 1 in codes[0]["onExitCodes"]["values"]  # bad inputs are not retried
    netpol = _one(docs, "NetworkPolicy")
    assert (
        netpol["spec"]["podSelector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    )
    assert netpol["spec"].get("ingress", []) == [] and netpol["spec"].get("egress", []) == []


@pytest.mark.parametrize("target", ["base", "dev", "prod", "gpu", "batch"])
def test_configured_variables_are_valid_settings(
    rendered: dict[str, list[dict[str, Any]]], target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every TRANSFIGURE_* variable the service and batch pods get is a setting, and the values load."""
    from service.config import Settings, load_settings, variable

    known = {variable(f) for f in Settings.model_fields}
    docs = _target(rendered, target)
    containers = [c for d in docs for c in _containers(d)]
    assert containers
    for c in containers:
        env = _config(docs, c)
        names = {n for n in {e["name"] for e in c.get("env", [])} | set(env) if n.startswith("TRANSFIGURE_")}
        assert names <= known, f"{target}: not settings: {sorted(names - known)}"
        for name in known:
            monkeypatch.delenv(name, raising=False)
        for name in names & set(env):
            monkeypatch.setenv(name, env[name])
        settings = load_settings()  # SettingsError names a bad value
        assert settings.threads == int(env["TRANSFIGURE_THREADS"])


# -- the training job: a Kubeflow PyTorchJob ---------------------------------------------------------


def _strict_schema(node: dict[str, Any]) -> dict[str, Any]:
    """A CRD schema as the API server applies it with strict field validation (``kubectl apply
    --validate=strict``): an unknown field is an error instead of being pruned silently."""
    node = dict(node)
    if "properties" in node:
        node["properties"] = {k: _strict_schema(v) for k, v in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            node[key] = _strict_schema(node[key])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in node:
            node[key] = [_strict_schema(v) for v in node[key]]
    return node


def _crd_schema(api_version: str, kind: str) -> dict[str, Any]:
    crd = yaml.safe_load(PYTORCHJOB_CRD.read_text())
    group, version = api_version.split("/")
    assert (crd["spec"]["group"], crd["spec"]["names"]["kind"]) == (group, kind), f"no CRD for {kind}"
    (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
    return served["schema"]["openAPIV3Schema"]


def _elided(node: dict[str, Any], path: str = "") -> dict[str, str]:
    found = {path: node[ELIDED]} if ELIDED in node else {}
    for key, child in node.get("properties", {}).items():
        found.update(_elided(child, f"{path}.{key}" if path else key))
    if isinstance(node.get("additionalProperties"), dict):
        found.update(_elided(node["additionalProperties"], f"{path}.*"))
    if isinstance(node.get("items"), dict):
        found.update(_elided(node["items"], f"{path}[]"))
    return found


def _validate_pytorchjob(doc: dict[str, Any]) -> None:
    """The operator's CRD schema, strictly; each pod template as a core/v1 PodTemplate (the type the
    committed CRD copy leaves out). Raises jsonschema's or kubernetes-validate's ValidationError."""
    jsonschema = pytest.importorskip("jsonschema")
    kv = pytest.importorskip("kubernetes_validate")
    jsonschema.validate(doc, _strict_schema(_crd_schema(doc["apiVersion"], doc["kind"])))
    metrics = doc["spec"].get("elasticPolicy", {}).get("metrics")
    assert not metrics, "elasticPolicy.metrics is left out of the committed CRD: it cannot be checked here"
    for role, replica in doc["spec"]["pytorchReplicaSpecs"].items():
        pod_template = {
            "apiVersion": "v1",
            "kind": "PodTemplate",
            "metadata": {"name": f"{doc['metadata']['name']}-{role.lower()}"},
            "template": replica["template"],
        }
        kv.validate(pod_template, kv.latest_version(), strict=True)


def test_committed_crd_names_its_source_and_leaves_out_only_core_types() -> None:
    header = PYTORCHJOB_CRD.read_text().split("\n---\n")[0]
    assert "kubeflow/training-operator" in header and re.search(r"commit [0-9a-f]{40}", header)
    assert _elided(_crd_schema("kubeflow.org/v1", "PyTorchJob")) == {
        "spec.pytorchReplicaSpecs.*.template": "core/v1 PodTemplateSpec",
        "spec.elasticPolicy.metrics[]": "autoscaling/v2 MetricSpec",
    }


def test_pytorchjob_validation_catches_mistakes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Guards the CRD validation: a misspelt or mistyped field of the job or of its pods is refused."""
    jsonschema = pytest.importorskip("jsonschema")
    kv = pytest.importorskip("kubernetes_validate")
    job = _one(_target(rendered, "train"), "PyTorchJob")
    _validate_pytorchjob(job)
    for path, value in [
        (("spec", "pytorchReplicaSpecs", "Worker", "replica"), 2),  # for "replicas"
        (("spec", "runPolicy", "backoffLimit"), "three"),
        (("spec", "nprocPerNode"), 4),  # a string in the CRD
    ]:
        bad = copy.deepcopy(job)
        node = bad
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(jsonschema.ValidationError):
            _validate_pytorchjob(bad)
    bad = copy.deepcopy(job)
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kv.ValidationError):
        _validate_pytorchjob(bad)


def test_training_job(rendered: dict[str, list[dict[str, Any]]]) -> None:
    torchrun = pytest.importorskip("torch.distributed.run")
    from training.recipes import recipe_module

    docs = _target(rendered, "train")
    spec = _one(docs, "PyTorchJob")["spec"]
    replicas = spec["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    assert replicas["Master"]["replicas"] == 1 and replicas["Worker"]["replicas"] >= 1
    assert replicas["Master"]["template"] == replicas["Worker"]["template"], "edit both pod templates"
    for r in replicas.values():  # a failed pod restarts, and rejoins the rendezvous
        assert r["restartPolicy"] in {"OnFailure", "ExitCode"}
    assert spec["runPolicy"]["backoffLimit"] >= 1
    pod = replicas["Master"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["name"] == "pytorch", "the operator sets MASTER_ADDR/MASTER_PORT on the container named pytorch"
    assert "pytorchjob-port" in {p["name"] for p in c["ports"]}

    # torchrun's arguments are valid for the real torchrun, and agree with the job's shape
    assert c["command"] == ["torchrun"]
    run = torchrun.get_args_parser().parse_args(c["args"])
    gpus = c["resources"]["limits"]["nvidia.com/gpu"]
    assert c["resources"]["requests"]["nvidia.com/gpu"] == gpus
    assert run.nproc_per_node == str(gpus) == spec["nprocPerNode"], "processes per pod = GPUs per pod"
    assert run.nnodes == str(1 + replicas["Worker"]["replicas"]), "--nnodes = 1 Master + the Workers"
    assert run.rdzv_backend == "c10d" and run.rdzv_endpoint == "$(MASTER_ADDR):$(MASTER_PORT)"
    assert run.max_restarts >= 1 and run.module and run.training_script == "training.cli"
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert env.get("TORCH_DISABLE_SHARE_RDZV_TCP_STORE") == "1"  # restarts read fresh keys

    # the training command is valid for the real CLI, and a restart continues the run
    command, recipe, *rest = run.training_script_args
    assert command == "train"
    parser = argparse.ArgumentParser()
    recipe_module(recipe).add_arguments(parser)
    args = parser.parse_args(rest)
    assert getattr(args, "resume", False) is True, "--resume: a restarted rank continues from last.pt"

    # data and runs on the shared volume (runs writable), a memory-backed /dev/shm for NCCL
    pvcs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    claimed = {n for n, v in volumes.items() if v.get("persistentVolumeClaim", {}).get("claimName") in pvcs}
    assert claimed and all(pvcs[volumes[n]["persistentVolumeClaim"]["claimName"]]["spec"]["accessModes"]
                           == ["ReadWriteMany"] for n in claimed)  # fmt: skip
    mounts = [m for m in c["volumeMounts"] if m["name"] in claimed]

    def mount_of(path: str) -> dict[str, Any]:
        found = [m for m in mounts if path.startswith(m["mountPath"].rstrip("/") + "/")]
        assert found, f"{path} is not on the shared volume"
        return found[0]

    mount_of(args.data)
    assert not mount_of(args.out).get("readOnly", False), "--out must be writable"
    shm = [m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm and volumes[shm[0]["name"]]["emptyDir"]["medium"] == "Memory"
    assert pod["terminationGracePeriodSeconds"] >= 60  # SIGTERM: finish the step, write a checkpoint

    netpol = _one(docs, "NetworkPolicy")
    labels = replicas["Master"]["template"]["metadata"]["labels"]
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= labels.items()
    peers = [p["podSelector"]["matchLabels"] for rule in netpol["spec"]["ingress"] for p in rule["from"]]
    assert peers == [netpol["spec"]["podSelector"]["matchLabels"]], "only the job's own pods come in"


def test_readme_walks_through_deployment() -> None:
    text = (K8S / "README.md").read_text()
    for step in ("bentoml build", "bentoml containerize", "docker push", "kubectl apply -k k8s/overlays/prod",
                 "kubectl create -k k8s/batch"):  # fmt: skip
        assert step in text, f"k8s/README.md does not show `{step}`"


# -- checkov -----------------------------------------------------------------------------------------------


def _skips() -> list[dict[str, Any]]:
    entries = yaml.safe_load((K8S / "checkov-skips.yaml").read_text())["skips"]
    for e in entries:
        assert re.fullmatch(r"CKV2?_K8S_\d+", e["id"]), e
        assert len(e.get("reason", "").strip()) > 40, f"{e['id']}: every skip needs a real reason"
        assert set(e.get("targets", TARGETS)) <= set(TARGETS), e
    return entries


def test_checkov_finds_nothing_unexplained(rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    # `make test` installs checkov in a virtualenv of its own beside the project's (.venv/tools: its
    # networkx pin clashes with scikit-image's) and does not put it on PATH
    checkov = str(Path(sys.prefix) / "tools" / "bin" / "checkov")
    if not Path(checkov).exists():
        checkov = shutil.which("checkov") or checkov
    if not Path(checkov).exists():
        pytest.skip("checkov is not installed (dev extra)")
    for target, docs in rendered.items():
        (tmp_path / f"{target}.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    cmd = [checkov, "-d", str(tmp_path), "--framework", "kubernetes", "--skip-download", "--quiet", "--compact",
           "-o", "json"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=110)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert any(r.get("summary", {}).get("resource_count", 0) for r in reports), "checkov scanned nothing"
    allowed = {(e["id"], t) for e in _skips() for t in e.get("targets", TARGETS)}
    unexplained = []
    for r in reports:
        for f in r.get("results", {}).get("failed_checks", []):
            target = Path(f["file_path"]).stem
            if (f["check_id"], target) not in allowed:
                unexplained.append(f"{target}: {f['check_id']} {f['check_name']} ({f['resource']})")
    assert not unexplained, "checkov failures not in k8s/checkov-skips.yaml:\n" + "\n".join(unexplained)
