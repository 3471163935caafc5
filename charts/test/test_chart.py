#!/usr/bin/env python3
"""Tests of the wasmpod Helm chart (charts/wasmpod), with Helm's own code.

Helm comes from helm-sdkpy (Helm 4 built as a shared library). It has lint,
install and uninstall but no `template`, so the chart is rendered the way
`helm install` renders it: Helm's install action runs against FakeKube, a
small in-memory Kubernetes API (fakekube.py). That gives the real rendering
(values schema, kubeVersion check, hooks, NOTES) and also shows what Helm
sends to the API server and in which order on install and on uninstall.

Checks:
  * `helm lint`: no error and no warning (strict); the only message allowed
    is the informational "icon is recommended";
  * every rendered object, hooks included: parses, has apiVersion/kind/name,
    is one of the expected kinds, and validates against the Kubernetes JSON
    schemas (kubernetes-validate, strict: unknown fields fail) of 1.25 (the
    chart's minimum), 1.30 and the newest the package ships;
  * the design: DaemonSet (hostPID, privileged, /host, NODE_NAME, exact
    installer arguments, probe, scheduling, selector), RBAC (only nodes
    get/patch; the waiter only nodes list), RuntimeClass (handler,
    nodeSelector, tolerations, overhead), the pre-delete hooks (weights,
    delete policies, arguments, Job limits), NOTES;
  * values: defaults and non-default sets; values.schema.json rejects bad
    values; the kubeVersion constraint is enforced;
  * `helm uninstall`: hooks created in weight order, then deleted, then the
    release's objects; nothing left behind; a failing waiter Job stops it;
  * the checks themselves: broken copies of the chart must fail them.

Run: python3 charts/test/test_chart.py  (or charts/test/run, which installs
the Python packages first).
"""

from __future__ import annotations

import asyncio
import atexit
import os
import re
import shutil
import sys
import tempfile
import unittest
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHART = HERE.parent / "wasmpod"

# Helm (Go) reads its environment once, when the library loads: give it a
# scratch HOME and Helm directories, and no kubeconfig of the machine's.
SCRATCH = Path(tempfile.mkdtemp(prefix="wasmpod-chart-test-"))
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)
os.environ["HOME"] = str(SCRATCH)
for var, sub in (("HELM_CACHE_HOME", "cache"), ("HELM_CONFIG_HOME", "config"), ("HELM_DATA_HOME", "data")):
    os.environ[var] = str(SCRATCH / sub)
os.environ.pop("KUBECONFIG", None)

sys.path.insert(0, str(HERE))

import helm_sdkpy as helm  # noqa: E402
import kubernetes_validate  # noqa: E402
import yaml  # noqa: E402

from fakekube import FakeKube  # noqa: E402

RELEASE = "wasmpod"
NAMESPACE = "wasmpod-system"
READY_LABEL = "wasmpod.io/ready"
STEP_LABEL = "wasmpod.io/step"
SCHEMA_VERSIONS = ["1.25.0", "1.30.0", kubernetes_validate.latest_version()]

EXPECTED_API = {
    "DaemonSet": "apps/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1",
    "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "ServiceAccount": "v1",
    "RuntimeClass": "node.k8s.io/v1",
    "Job": "batch/v1",
}
NAMESPACED = {"DaemonSet", "ServiceAccount", "Job"}
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# The installer's command line (runtimeclass/src/bin/wasmpod-node.rs).
def target_args(bin_dir="/usr/local/bin", distro="auto", config="", socket=""):
    args = ["--host-root", "/host", "--bin-dir", bin_dir, "--distro", distro]
    return args + (["--config", config] if config else []) + (["--socket", socket] if socket else [])


def node_args(
    verb: str,
    bin_dir="/usr/local/bin",
    distro="auto",
    config="",
    restart="auto",
    socket="",
    restart_command="",
    handler_timeout=120,
):
    return (
        [verb, *target_args(bin_dir, distro, config, socket), "--restart", restart]
        + (["--restart-command", restart_command.replace("$", "$$")] if restart_command else [])
        + ["--handler-timeout", str(handler_timeout)]
        + ["--node-name", "$(NODE_NAME)", "--label", READY_LABEL, "--step-label", STEP_LABEL, "--wait"]
    )


DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def merged(overrides: dict) -> dict:
    """The chart's defaults with `overrides` merged in, as Helm merges them."""

    def merge(a, b):
        out = dict(a)
        for k, v in b.items():
            if v is None:  # null removes a default
                out.pop(k, None)
            elif isinstance(v, dict) and isinstance(a.get(k), dict):
                out[k] = merge(a[k], v)
            else:
                out[k] = v
        return out

    return merge(DEFAULTS, overrides)


def schema_error(obj: dict) -> str | None:
    """What the API server's strict field validation would say, by the
    Kubernetes JSON schemas (kubernetes-validate), or None."""
    for version in SCHEMA_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            return f"Kubernetes {version}: {e.message} at {'/'.join(map(str, e.path))}"
        except kubernetes_validate.SchemaNotFoundError as e:
            return f"Kubernetes {version}: no schema for {obj.get('apiVersion')} {obj.get('kind')}: {e}"
    return None


# -- Helm ---------------------------------------------------------------------


def run(coro):
    return asyncio.run(coro)


def helm_config(kube: FakeKube) -> helm.Configuration:
    path = SCRATCH / f"kubeconfig-{kube.url.rsplit(':', 1)[1]}"
    path.write_text(kube.kubeconfig)
    return helm.Configuration(namespace=NAMESPACE, kubeconfig=str(path))


def helm_install(kube: FakeKube, values: dict | None = None, chart: Path = CHART) -> dict:
    return run(
        helm.Install(helm_config(kube)).run(
            RELEASE,
            str(chart),
            values=values or None,
            wait=False,
            timeout=60,
            # Helm's own validation path on (it reads the API's OpenAPI and
            # leaves field validation to the server); the objects themselves
            # are validated by check_generic
            disable_openapi_validation=False,
        )
    )


def helm_uninstall(kube: FakeKube) -> dict:
    return run(helm.Uninstall(helm_config(kube)).run(RELEASE, wait=False, timeout=60))


@dataclass
class Rendered:
    values: dict  # the effective values
    objects: list[dict]  # the release's manifest
    hooks: list[tuple[dict, dict]]  # (Helm's hook record, object)
    notes: str
    sent: list[dict] = field(default_factory=list)  # what Helm created on install

    def all(self) -> list[dict]:
        return self.objects + [o for _h, o in self.hooks]

    def get(self, kind: str, name: str | None = None, hooks: bool | None = None) -> list[dict]:
        pool = self.objects if hooks is False else [o for _h, o in self.hooks] if hooks else self.all()
        return [o for o in pool if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]

    def one(self, kind: str, name: str) -> dict:
        found = self.get(kind, name)
        assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
        return found[0]


def load_docs(text: str, what: str) -> list[dict]:
    docs = []
    for doc in yaml.safe_load_all(text):
        if doc is None:
            continue
        assert isinstance(doc, dict), f"{what}: a document is not a mapping: {doc!r}"
        docs.append(doc)
    return docs


def render(overrides: dict | None = None, chart: Path = CHART) -> Rendered:
    with FakeKube(validator=schema_error) as kube:
        try:
            result = helm_install(kube, overrides, chart)
        except helm.HelmError as e:
            raise AssertionError(f"helm install failed: {e}; rejected by the API: {kube.rejected}") from e
        sent = [o for o in kube.created if o["kind"] != "Secret"]
        assert not kube.unhandled, f"Helm made requests FakeKube does not serve: {kube.unhandled}"
    objects = load_docs(result["manifest"], "manifest")
    hooks = []
    for h in result.get("hooks") or []:
        docs = load_docs(h["manifest"], h["path"])
        assert len(docs) == 1, f"hook {h['path']} {h['name']}: {len(docs)} documents"
        hooks.append((h, docs[0]))
    notes = result["info"].get("notes", "")
    return Rendered(merged(overrides or {}), objects, hooks, notes, sent)


def expect_install_error(test: unittest.TestCase, overrides: dict, *needles: str, version="v1.30.0") -> str:
    """Install must fail before anything reaches the cluster; returns the message."""
    with FakeKube(version=version) as kube:
        with test.assertRaises(helm.InstallError) as cm:
            helm_install(kube, overrides)
        test.assertEqual(kube.created, [], "a failed install created objects")
    msg = str(cm.exception)
    for needle in needles:
        test.assertIn(needle, msg)
    return msg


# -- checks of a rendering ----------------------------------------------------


def fullname(values: dict) -> str:
    if values.get("fullnameOverride"):
        return values["fullnameOverride"][:63].rstrip("-")
    name = values.get("nameOverride") or "wasmpod"
    return (RELEASE if name in RELEASE else f"{RELEASE}-{name}")[:63].rstrip("-")


def component(values: dict, suffix: str) -> str:
    return f"{fullname(values)[: 62 - len(suffix)].rstrip('-')}-{suffix}"


def check_generic(t: unittest.TestCase, r: Rendered) -> None:
    seen = set()
    for obj in r.all():
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        t.assertTrue(obj.get("apiVersion") and kind and name, f"missing apiVersion/kind/metadata.name: {obj}")
        t.assertIn(kind, EXPECTED_API, f"unexpected kind {kind}")
        t.assertEqual(obj["apiVersion"], EXPECTED_API[kind], f"{kind} {name}")
        t.assertNotIn((kind, name), seen, f"{kind} {name} rendered twice")
        seen.add((kind, name))
        t.assertLessEqual(len(name), 63, f"{kind} {name}: name too long")
        t.assertRegex(name, DNS1123_LABEL if kind != "RuntimeClass" else r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
        if kind in NAMESPACED:
            t.assertEqual(meta.get("namespace"), NAMESPACE, f"{kind} {name}: namespace")
        else:
            t.assertNotIn("namespace", meta, f"cluster-scoped {kind} {name} has a namespace")
        labels = meta.get("labels") or {}
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            t.assertIn(key, labels, f"{kind} {name}: label {key}")
        t.assertEqual(labels["app.kubernetes.io/instance"], RELEASE)
        t.assertEqual(labels["app.kubernetes.io/managed-by"], "Helm")
        t.assertEqual(labels["helm.sh/chart"], "wasmpod-0.1.0")
        t.assertEqual(labels["app.kubernetes.io/version"], "0.1.0")
        for k, v in labels.items():
            t.assertIsInstance(v, str, f"{kind} {name}: label {k} is not a string")
            t.assertLessEqual(len(v), 63)
            t.assertRegex(v, LABEL_VALUE, f"{kind} {name}: label {k}={v!r}")
        err = schema_error(obj)
        t.assertIsNone(err, f"{kind} {name} does not validate: {err}")
    # what Helm sent to the API server on install is the manifest, no hooks
    t.assertEqual(
        sorted((o["kind"], o["metadata"]["name"]) for o in r.sent),
        sorted((o["kind"], o["metadata"]["name"]) for o in r.objects),
    )


def check_pod_spec_common(t, r: Rendered, ds_or_job: dict, container_name: str, sa: str) -> dict:
    v = r.values
    kind, name = ds_or_job["kind"], ds_or_job["metadata"]["name"]
    tmpl = ds_or_job["spec"]["template"]
    spec = tmpl["spec"]
    t.assertEqual(spec.get("serviceAccountName"), sa, f"{kind} {name}: serviceAccountName")
    t.assertTrue(r.get("ServiceAccount", sa), f"{kind} {name}: ServiceAccount {sa} is not rendered")
    t.assertEqual(spec.get("nodeSelector") or {}, v["nodeSelector"], f"{kind} {name}: nodeSelector")
    t.assertEqual(spec.get("tolerations") or [], v["tolerations"], f"{kind} {name}: tolerations")
    t.assertEqual(spec.get("affinity") or {}, v["affinity"], f"{kind} {name}: affinity")
    t.assertEqual(spec.get("priorityClassName", ""), v["priorityClassName"], f"{kind} {name}: priorityClassName")
    t.assertEqual(spec.get("imagePullSecrets") or [], v["imagePullSecrets"], f"{kind} {name}: imagePullSecrets")
    containers = spec["containers"]
    t.assertEqual([c["name"] for c in containers], [container_name], f"{kind} {name}: containers")
    c = containers[0]
    t.assertEqual(c["image"], f"{v['image']['repository']}:{v['image']['tag'] or '0.1.0'}")
    t.assertEqual(c["imagePullPolicy"], v["image"]["pullPolicy"])
    t.assertEqual(c["command"], ["/wasmpod-node"])
    t.assertEqual(c.get("resources") or {}, v.get("resources") or {}, f"{kind} {name}: resources")
    # selector labels of a DaemonSet / labels of a Job's pods
    labels = tmpl["metadata"]["labels"]
    if kind == "DaemonSet":
        sel = ds_or_job["spec"]["selector"]["matchLabels"]
        t.assertTrue(sel, f"{name}: empty selector")
        for k, val in sel.items():
            t.assertEqual(labels.get(k), val, f"{name}: selector {k}={val} does not match the pod template")
    return c


def check_node_pod(t, r: Rendered, ds: dict, verb: str, container_name: str) -> None:
    """The privileged node pods: the installer and the uninstaller."""
    v = r.values
    c = check_pod_spec_common(t, r, ds, container_name, component(v, "node"))
    spec = ds["spec"]["template"]["spec"]
    name = ds["metadata"]["name"]
    t.assertIs(spec.get("hostPID"), True, f"{name}: hostPID")
    t.assertEqual(spec.get("terminationGracePeriodSeconds"), v["terminationGracePeriodSeconds"])
    t.assertEqual(c.get("securityContext"), {"privileged": True}, f"{name}: privileged")
    node = v["node"]
    extra = ["--config-version", str(node["configVersion"])] if verb == "install" and node["configVersion"] else []
    t.assertEqual(
        c["args"][: len(c["args"]) - len(extra)],
        node_args(
            verb,
            node["binDir"],
            node["distro"],
            node["containerdConfig"],
            node["restart"],
            node["socket"],
            node["restartCommand"],
            node["handlerTimeout"],
        ),
        f"{name}: arguments",
    )
    t.assertEqual(c["args"][len(c["args"]) - len(extra) :], extra, f"{name}: --config-version")
    t.assertIn(
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        c.get("env") or [],
        f"{name}: NODE_NAME from spec.nodeName",
    )
    vols = {vol["name"]: vol for vol in spec.get("volumes") or []}
    mounts = [m for m in c.get("volumeMounts") or [] if m["mountPath"] == "/host"]
    t.assertEqual(len(mounts), 1, f"{name}: /host mount")
    t.assertEqual(vols[mounts[0]["name"]].get("hostPath"), {"path": "/", "type": "Directory"})
    t.assertFalse(mounts[0].get("readOnly"), f"{name}: /host must be writable")
    t.assertEqual(
        ds["spec"].get("updateStrategy"), {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}}
    )


def check_installer(t, r: Rendered) -> None:
    ds = r.one("DaemonSet", component(r.values, "node"))
    t.assertNotIn("annotations", ds["metadata"], "the installer DaemonSet must not be a hook")
    check_node_pod(t, r, ds, "install", "installer")
    c = ds["spec"]["template"]["spec"]["containers"][0]
    node = r.values["node"]
    # status must look where install put things
    t.assertEqual(
        c["readinessProbe"]["exec"]["command"],
        [
            "/wasmpod-node",
            "status",
            *target_args(node["binDir"], node["distro"], node["containerdConfig"], node["socket"]),
            "--quiet",
        ],
    )


def rules_of(r: Rendered, name: str) -> list[dict]:
    return r.one("ClusterRole", name)["rules"]


def check_binding(t, r: Rendered, name: str) -> None:
    crb = r.one("ClusterRoleBinding", name)
    t.assertEqual(
        crb["roleRef"], {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name}
    )
    t.assertTrue(r.get("ClusterRole", name))
    t.assertEqual(crb["subjects"], [{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}])
    t.assertTrue(r.get("ServiceAccount", name))


def check_rbac(t, r: Rendered) -> None:
    node = component(r.values, "node")
    t.assertEqual(
        rules_of(r, node),
        [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]}],
        "the installer may only get and patch nodes",
    )
    check_binding(t, r, node)
    for kind in ("ServiceAccount", "ClusterRole", "ClusterRoleBinding"):
        t.assertEqual(len(r.get(kind, hooks=False)), 1, f"one {kind} in the release")
    for o in r.get("ClusterRole"):
        for rule in o["rules"]:
            t.assertEqual(rule["resources"], ["nodes"], f"{o['metadata']['name']}: only nodes")
            t.assertNotIn("*", rule["verbs"])


def check_runtimeclass(t, r: Rendered) -> None:
    rc_values = r.values["runtimeClass"]
    rcs = r.get("RuntimeClass")
    if not rc_values["create"]:
        t.assertEqual(rcs, [], "runtimeClass.create=false must not render a RuntimeClass")
        return
    rc = r.one("RuntimeClass", rc_values["name"])
    t.assertEqual(rc["handler"], "wasmpod")
    t.assertEqual(rc["scheduling"]["nodeSelector"], {READY_LABEL: "true"})
    t.assertEqual(rc["scheduling"].get("tolerations") or [], rc_values["tolerations"])
    if rc_values["overhead"]:
        t.assertEqual(rc["overhead"], {"podFixed": rc_values["overhead"]})
    else:
        t.assertNotIn("overhead", rc)


HOOK_ANNOTATIONS = {
    "helm.sh/hook": "pre-delete",
    "helm.sh/hook-delete-policy": "before-hook-creation,hook-succeeded",
}


def check_hooks(t, r: Rendered) -> None:
    v = r.values
    if not v["uninstall"]["enabled"]:
        t.assertEqual(r.hooks, [], "uninstall.enabled=false must not render hooks")
        return
    wait, uninstall = component(v, "uninstall-wait"), component(v, "uninstall")
    expected = {
        ("ServiceAccount", wait): -1,
        ("ClusterRole", wait): -1,
        ("ClusterRoleBinding", wait): -1,
        ("DaemonSet", uninstall): 0,
        ("Job", wait): 1,
    }
    got = {(o["kind"], o["metadata"]["name"]): h for h, o in r.hooks}
    t.assertEqual(set(got), set(expected), "pre-delete hooks")
    for h, o in r.hooks:
        key = (o["kind"], o["metadata"]["name"])
        ann = o["metadata"].get("annotations") or {}
        t.assertEqual(ann, HOOK_ANNOTATIONS | {"helm.sh/hook-weight": str(expected[key])}, f"{key}: annotations")
        # and Helm read them as meant
        t.assertEqual(h["events"], ["pre-delete"], f"{key}: events")
        t.assertEqual(h.get("weight", 0), expected[key], f"{key}: weight")
        t.assertEqual(h["delete_policies"], ["before-hook-creation", "hook-succeeded"], f"{key}: policies")
    t.assertEqual(
        rules_of(r, wait),
        [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["list"]}],
        "the waiter may only list nodes",
    )
    check_binding(t, r, wait)
    ds = r.one("DaemonSet", uninstall)
    check_node_pod(t, r, ds, "uninstall", "uninstaller")
    inst = r.one("DaemonSet", component(v, "node"))
    t.assertNotEqual(
        ds["spec"]["selector"], inst["spec"]["selector"], "the two DaemonSets must not share a selector"
    )
    job = r.one("Job", wait)
    # a failed pod (evicted, an API server restart) is retried; the wait
    # itself retries failed API calls
    t.assertEqual(job["spec"]["backoffLimit"], 2)
    timeout = v["uninstall"]["timeout"]
    t.assertEqual(job["spec"]["activeDeadlineSeconds"], timeout + 120)
    t.assertEqual(job["spec"]["template"]["spec"]["restartPolicy"], "Never")
    c = check_pod_spec_common(t, r, job, "wait-unlabeled", wait)
    t.assertEqual(
        c["args"],
        ["wait-unlabeled", "--label", READY_LABEL, "--step-label", STEP_LABEL, "--timeout", str(timeout)],
    )
    t.assertNotIn("securityContext", c, "the waiter needs no privileges")


def check_notes(t, r: Rendered) -> None:
    n = r.notes
    t.assertIn(f"kubectl get nodes -l {READY_LABEL}=true", n)
    t.assertIn(f"helm uninstall {RELEASE} -n {NAMESPACE}", n)
    if r.values["runtimeClass"]["create"]:
        lines = n.splitlines()
        start = next(i for i, line in enumerate(lines) if line.endswith("<<'POD'")) + 1
        end = lines.index("     POD", start)
        doc = yaml.safe_load("\n".join(line[5:] for line in lines[start:end]))
        t.assertEqual(doc["spec"]["runtimeClassName"], r.values["runtimeClass"]["name"])
        t.assertIn("wasmpod oci", n, "NOTES must say the image is a Wasm image built with wasmpod oci")
        t.assertIsNone(schema_error(doc), "the example pod in NOTES must be a valid Pod")
    if r.values["uninstall"]["enabled"]:
        t.assertIn(component(r.values, "uninstall"), n)
    else:
        t.assertIn("no hooks run", n)


def check_all(t, r: Rendered) -> None:
    check_generic(t, r)
    check_installer(t, r)
    check_rbac(t, r)
    check_runtimeclass(t, r)
    check_hooks(t, r)
    check_notes(t, r)


# -- tests --------------------------------------------------------------------

CUSTOM = {  # the brief's non-default set, and more
    "fullnameOverride": "edge-wasm",
    "image": {"repository": "registry.example.com/wasmpod/node", "tag": "0.2.0-rc.1", "pullPolicy": "Always"},
    "imagePullSecrets": [{"name": "regcred"}],
    "node": {
        "binDir": "/opt/bin",
        "distro": "k3s",
        "containerdConfig": "/var/lib/rancher/k3s/agent/etc/containerd/config.toml.tmpl",
        "restart": "none",
    },
    "nodeSelector": {"kubernetes.io/os": "linux", "node-role.example.com/wasm": "true"},
    "terminationGracePeriodSeconds": 300,
    "tolerations": [{"key": "wasm", "operator": "Equal", "value": "only", "effect": "NoSchedule"}],
    "priorityClassName": "system-node-critical",
    "resources": {"requests": {"cpu": "20m", "memory": "48Mi"}, "limits": {"cpu": 1, "memory": "256Mi"}},
    "runtimeClass": {"create": False, "overhead": {"cpu": "10m", "memory": "16Mi"}},
    "uninstall": {"enabled": False},
}

CUSTOM_RC = {  # a RuntimeClass with overhead and tolerations; hooks on custom nodes
    "runtimeClass": {
        "name": "wasm.example.com",
        "tolerations": [{"key": "wasm", "operator": "Exists", "effect": "NoSchedule"}],
        "overhead": {"cpu": "10m", "memory": "16Mi"},
    },
    "nodeSelector": {"kubernetes.io/os": None, "pool": "wasm"},  # null drops a default
    "tolerations": [],
    "affinity": {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64", "arm64"]}]}
                ]
            }
        }
    },
    "resources": None,
}


class Lint(unittest.TestCase):
    def lint(self, chart: Path) -> list[dict]:
        result = run(helm.Lint(helm.Configuration(namespace=NAMESPACE)).run(str(chart)))
        self.assertEqual(result.get("TotalChartsLinted"), 1, result)
        return result.get("Messages") or [], result.get("Errors") or []

    def test_lint_strict(self):
        messages, errors = self.lint(CHART)
        for m in messages:
            print(f"  lint: severity {m['Severity']} {m['Path']}: {m['Err'] or '(message not exported)'}", file=sys.stderr)
        self.assertEqual(errors, [], "helm lint errors")
        # Severity 1 = INFO, 2 = WARNING, 3 = ERROR. The one INFO Helm gives a
        # chart without `icon` in Chart.yaml is allowed; nothing else is.
        self.assertEqual(
            [(m["Severity"], m["Path"]) for m in messages if (m["Severity"], m["Path"]) != (1, "Chart.yaml")],
            [],
            "helm lint messages (strict: warnings fail)",
        )

    def test_lint_catches_breakage(self):
        # lint must be able to fail: a template error and a deprecated API
        broken = copy_chart("lint-broken")
        edit(broken / "templates/rbac.yaml", "verbs:", "verbs: {{ .Values.no.such }}\n    xverbs:")
        messages, errors = self.lint(broken)
        self.assertIn((3, "templates/"), [(m["Severity"], m["Path"]) for m in messages])
        self.assertTrue(errors)
        broken = copy_chart("lint-deprecated")
        edit(broken / "templates/runtimeclass.yaml", "apiVersion: node.k8s.io/v1", "apiVersion: node.k8s.io/v1beta1")
        messages, _ = self.lint(broken)
        self.assertIn((2, "templates/runtimeclass.yaml"), [(m["Severity"], m["Path"]) for m in messages])


class Render(unittest.TestCase):
    def test_defaults(self):
        r = render()
        check_all(self, r)
        kinds = sorted((o["kind"], o["metadata"]["name"]) for o in r.objects)
        self.assertEqual(
            kinds,
            [
                ("ClusterRole", "wasmpod-node"),
                ("ClusterRoleBinding", "wasmpod-node"),
                ("DaemonSet", "wasmpod-node"),
                ("RuntimeClass", "wasmpod"),
                ("ServiceAccount", "wasmpod-node"),
            ],
        )
        ds = r.one("DaemonSet", "wasmpod-node")
        spec = ds["spec"]["template"]["spec"]
        self.assertEqual(spec["nodeSelector"], {"kubernetes.io/os": "linux"})
        self.assertEqual(spec["tolerations"], [{"operator": "Exists"}], "must reach tainted nodes")
        c = spec["containers"][0]
        self.assertEqual(c["image"], "ghcr.io/wasmpod/wasmpod-node:0.1.0")
        self.assertEqual(c["imagePullPolicy"], "IfNotPresent")
        self.assertEqual(c["resources"], {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}})
        self.assertEqual(c["args"], node_args("install"))
        self.assertNotIn("priorityClassName", spec)
        self.assertNotIn("imagePullSecrets", spec)
        rc = r.one("RuntimeClass", "wasmpod")
        self.assertEqual(rc["scheduling"], {"nodeSelector": {"wasmpod.io/ready": "true"}})
        self.assertNotIn("overhead", rc)
        self.assertEqual(len(r.hooks), 5)

    def test_custom_values(self):
        r = render(CUSTOM)
        check_all(self, r)
        self.assertEqual(r.hooks, [])
        self.assertEqual(r.get("RuntimeClass"), [])
        ds = r.one("DaemonSet", "edge-wasm-node")
        spec = ds["spec"]["template"]["spec"]
        self.assertEqual(spec["nodeSelector"], {"kubernetes.io/os": "linux", "node-role.example.com/wasm": "true"})
        self.assertEqual(spec["priorityClassName"], "system-node-critical")
        self.assertEqual(spec["imagePullSecrets"], [{"name": "regcred"}])
        c = spec["containers"][0]
        self.assertEqual(c["image"], "registry.example.com/wasmpod/node:0.2.0-rc.1")
        self.assertIn("--config", c["args"])
        self.assertEqual(c["args"][c["args"].index("--distro") + 1], "k3s")
        self.assertEqual(c["args"][c["args"].index("--restart") + 1], "none")
        self.assertIn("runtimeClass.create is false", r.notes)

    def test_custom_containerd_without_systemd(self):
        # the operator's case: containerd at its own socket and config, no
        # systemd; the command restarts it (see charts/README.md)
        command = "kill $(cat /run/containerd-edge.pid); setsid containerd --config /etc/containerd-edge/config.toml >>/var/log/containerd-edge.log 2>&1 &"
        values = {
            "node": {
                "containerdConfig": "/etc/containerd-edge/config.toml",
                "socket": "/run/containerd-edge/containerd.sock",
                "restartCommand": command,
                "handlerTimeout": 300,
                "configVersion": 3,
            },
            "uninstall": {"timeout": 900},
        }
        r = render(values)
        check_all(self, r)
        for name in ("wasmpod-node", "wasmpod-uninstall"):
            args = r.one("DaemonSet", name)["spec"]["template"]["spec"]["containers"][0]["args"]
            self.assertEqual(args[args.index("--socket") + 1], "/run/containerd-edge/containerd.sock")
            # kubelet expands $(VAR) and turns $$ into $ in args: the chart
            # doubles every $, so the command reaches the installer as given
            self.assertEqual(args[args.index("--restart-command") + 1], command.replace("$", "$$"))
            self.assertEqual(args[args.index("--handler-timeout") + 1], "300")
        args = r.one("DaemonSet", "wasmpod-node")["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertEqual(args[-2:], ["--config-version", "3"])
        probe = r.one("DaemonSet", "wasmpod-node")["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        self.assertIn("/run/containerd-edge/containerd.sock", probe["exec"]["command"])
        job = r.one("Job", "wasmpod-uninstall-wait")
        self.assertEqual(job["spec"]["activeDeadlineSeconds"], 1020)

    def test_runtimeclass_overhead_and_hooks_on_custom_nodes(self):
        r = render(CUSTOM_RC)
        check_all(self, r)
        rc = r.one("RuntimeClass", "wasm.example.com")
        self.assertEqual(rc["overhead"], {"podFixed": {"cpu": "10m", "memory": "16Mi"}})
        self.assertEqual(
            rc["scheduling"]["tolerations"], [{"key": "wasm", "operator": "Exists", "effect": "NoSchedule"}]
        )
        for name in ("wasmpod-node", "wasmpod-uninstall"):
            spec = r.one("DaemonSet", name)["spec"]["template"]["spec"]
            self.assertEqual(spec["nodeSelector"], {"pool": "wasm"})
            self.assertNotIn("tolerations", spec)
            self.assertIn("nodeAffinity", spec["affinity"])
            self.assertNotIn("resources", spec["containers"][0])

    def test_long_names_stay_within_63(self):
        r = render({"fullnameOverride": "x" * 63})
        check_all(self, r)
        names = {o["metadata"]["name"] for o in r.all()}
        self.assertIn("x" * 48 + "-uninstall-wait", names)
        r = render({"nameOverride": "wasm"})  # release "wasmpod" contains "wasm"
        self.assertTrue(r.get("DaemonSet", "wasmpod-node"))

    def test_schema_rejects_bad_values(self):
        bad = [
            ({"node": {"distro": "bogus"}}, "distro"),
            ({"node": {"restart": "sometimes"}}, "restart"),
            ({"node": {"binDir": "usr/local/bin"}}, "binDir"),
            ({"node": {"containerdConfig": "config.toml"}}, "containerdConfig"),
            ({"node": {"socket": "run/containerd/containerd.sock"}}, "socket"),
            ({"node": {"restartCommand": ["systemctl", "restart"]}}, "restartCommand"),
            ({"node": {"handlerTimeout": 0}}, "handlerTimeout"),
            ({"node": {"configVersion": 1}}, "configVersion"),
            ({"uninstall": {"timeout": 5}}, "timeout"),
            ({"terminationGracePeriodSeconds": -1}, "terminationGracePeriodSeconds"),
            ({"node": {"shimDir": "/opt"}}, "shimDir"),
            ({"bogusTopLevel": 1}, "bogusTopLevel"),
            ({"image": {"registry": "docker.io"}}, "registry"),
            ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
            ({"runtimeClass": {"create": "yes"}}, "create"),
            ({"runtimeClass": {"overhead": {"memory": "lots"}}}, "overhead"),
            ({"runtimeClass": {"name": "Not_A_Name"}}, "name"),
            ({"runtimeClass": {"handler": "other"}}, "handler"),
            ({"tolerations": [{"operator": "Sometimes"}]}, "operator"),
            ({"resources": {"requests": {"cpu": "a lot"}}}, "cpu"),
            ({"uninstall": {"enabled": "true"}}, "enabled"),
            ({"imagePullSecrets": ["regcred"]}, "imagePullSecrets"),
        ]
        for overrides, field_name in bad:
            with self.subTest(values=overrides):
                msg = expect_install_error(self, overrides, "schema")
                self.assertIn(field_name, msg)

    def test_kube_version_constraint(self):
        expect_install_error(self, {}, "Kubernetes", version="v1.24.9")
        with FakeKube(version="v1.25.0") as kube:
            helm_install(kube)


INSTALLER = Path(os.environ.get("WASMPOD_NODE", HERE.parents[1] / "target/release/wasmpod-node"))


class InstallerTakesTheArguments(unittest.TestCase):
    """Every command line the chart renders parses in the real installer:
    `wasmpod-node ARGS --help` exits 0 only when every flag before --help is
    one it knows (`make chart` builds it first)."""

    def test_rendered_command_lines_parse(self):
        import subprocess

        self.assertTrue(INSTALLER.is_file(), f"{INSTALLER} not built (make build, or set WASMPOD_NODE)")
        for values in ({}, CUSTOM, CUSTOM_RC, {"node": {"socket": "/run/x.sock", "restartCommand": "true"}}):
            r = render(values)
            lines = []
            for o in r.all():
                if o["kind"] not in ("DaemonSet", "Job"):
                    continue
                c = o["spec"]["template"]["spec"]["containers"][0]
                lines.append(c["args"])
                if "readinessProbe" in c:
                    lines.append(c["readinessProbe"]["exec"]["command"][1:])
            self.assertTrue(lines)
            for args in lines:
                with self.subTest(values=values, args=args):
                    p = subprocess.run([str(INSTALLER), *args, "--help"], capture_output=True, text=True, timeout=30)
                    self.assertEqual(p.returncode, 0, p.stderr)
        # and the check bites: an unknown flag fails
        p = subprocess.run([str(INSTALLER), "install", "--no-such-flag", "--help"], capture_output=True, timeout=30)
        self.assertNotEqual(p.returncode, 0)


class Uninstall(unittest.TestCase):
    """`helm uninstall` through Helm's real uninstall action."""

    def test_hooks_run_in_order_and_leave_nothing(self):
        with FakeKube(validator=schema_error) as kube:
            helm_install(kube)
            installed = len(kube.created)
            helm_uninstall(kube)
            self.assertEqual(kube.rejected, [])
            hooks_created = [(o["kind"], o["metadata"]["name"]) for o in kube.created[installed:]]
            self.assertEqual(
                hooks_created,
                [
                    ("ServiceAccount", "wasmpod-uninstall-wait"),
                    ("ClusterRole", "wasmpod-uninstall-wait"),
                    ("ClusterRoleBinding", "wasmpod-uninstall-wait"),
                    ("DaemonSet", "wasmpod-uninstall"),
                    ("Job", "wasmpod-uninstall-wait"),
                ],
                "pre-delete hooks in weight order",
            )
            deleted = [(k, n) for k, _ns, n in kube.deleted]
            # the hooks go first (after the waiter Job succeeded), then the release
            self.assertEqual(deleted[:5], list(reversed(hooks_created)))
            self.assertEqual(
                sorted(deleted[5:]),
                sorted(
                    [
                        ("ClusterRole", "wasmpod-node"),
                        ("ClusterRoleBinding", "wasmpod-node"),
                        ("DaemonSet", "wasmpod-node"),
                        ("RuntimeClass", "wasmpod"),
                        ("ServiceAccount", "wasmpod-node"),
                        ("Secret", "sh.helm.release.v1.wasmpod.v1"),
                    ]
                ),
            )
            # the installer's ServiceAccount (used by the uninstall DaemonSet)
            # outlives the hooks
            self.assertLess(
                deleted.index(("DaemonSet", "wasmpod-uninstall")), deleted.index(("ServiceAccount", "wasmpod-node"))
            )
            self.assertEqual(kube.kinds_present(), [], "objects left after helm uninstall")

    def test_failed_wait_stops_uninstall(self):
        with FakeKube(job_outcome="Failed") as kube:
            helm_install(kube)
            with self.assertRaises(helm.UninstallError) as cm:
                helm_uninstall(kube)
            self.assertIn("wasmpod-uninstall-wait", str(cm.exception))
            left = {(k, n) for k, _ns, n in kube.kinds_present()}
            # the release stays (nodes may still be set up), with the failed
            # Job for its log
            for obj in [("DaemonSet", "wasmpod-node"), ("RuntimeClass", "wasmpod"), ("Job", "wasmpod-uninstall-wait")]:
                self.assertIn(obj, left)

    def test_invalid_hook_is_refused(self):
        # the API (FakeKube with the Kubernetes schemas) refuses a hook with
        # an unknown field, and helm uninstall stops there
        chart = copy_chart("bad-hook")
        edit(chart / "templates/uninstall-job.yaml", "backoffLimit: 2", "backofLimit: 2")
        with FakeKube(validator=schema_error) as kube:
            helm_install(kube, chart=chart)
            with self.assertRaises(helm.UninstallError):
                helm_uninstall(kube)
            self.assertEqual([(k, n) for k, n, _m in kube.rejected], [("Job", "wasmpod-uninstall-wait")])
            self.assertIn("backofLimit", kube.rejected[0][2])

    def test_without_hooks(self):
        with FakeKube() as kube:
            helm_install(kube, {"uninstall": {"enabled": False}})
            installed = len(kube.created)
            helm_uninstall(kube)
            self.assertEqual(kube.created[installed:], [], "no hook may run")
            self.assertEqual(kube.kinds_present(), [])


# -- the checks must bite -----------------------------------------------------


def copy_chart(name: str) -> Path:
    dst = SCRATCH / "charts" / name / "wasmpod"
    shutil.copytree(CHART, dst)
    return dst


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path}: {old!r} not found"
    path.write_text(text.replace(old, new, 1))


class ChecksCatchBrokenCharts(unittest.TestCase):
    """Each broken copy of the chart must fail check_all (or Helm)."""

    def assert_caught(self, name: str, file: str, old: str, new: str, overrides=None) -> str:
        chart = copy_chart(name)
        edit(chart / "templates" / file, old, new)
        with self.assertRaises(AssertionError) as cm:
            check_all(unittest.TestCase(), render(overrides, chart))
        return str(cm.exception)

    def test_extra_verb(self):
        self.assert_caught("verb", "rbac.yaml", '["get", "patch"]', '["get", "patch", "list"]')

    def test_selector_mismatch(self):
        self.assert_caught(
            "selector",
            "daemonset.yaml",
            '{{- include "wasmpod.labels" (dict "ctx" . "component" "node") | nindent 8 }}',
            '{{- include "wasmpod.labels" (dict "ctx" . "component" "nodes") | nindent 8 }}',
        )

    def test_unknown_field(self):
        # strict schema validation (kubernetes-validate) in check_generic
        msg = self.assert_caught("field", "daemonset.yaml", "hostPID: true", "hostPid: true")
        self.assertIn("hostPid", msg)

    def test_hook_weight(self):
        self.assert_caught("weight", "uninstall-job.yaml", 'helm.sh/hook-weight: "1"', 'helm.sh/hook-weight: "-5"')

    def test_missing_node_name(self):
        self.assert_caught("env", "daemonset.yaml", "fieldPath: spec.nodeName", "fieldPath: metadata.name")

    def test_runtimeclass_selector(self):
        self.assert_caught("rc", "runtimeclass.yaml", '}}: "true"', '}}: "yes"')


if __name__ == "__main__":
    result = unittest.main(exit=False, verbosity=2).result
    failed = len(result.failures) + len(result.errors)
    passed = result.testsRun - failed - len(result.skipped)
    print(f"{passed} passed, {failed} failed", flush=True)
    sys.exit(0 if result.wasSuccessful() and result.testsRun else 1)
