"""A minimal, in-memory Kubernetes API server for driving Helm's real install
and uninstall actions (helm-sdkpy) without a cluster.

It serves what Helm's client needs: /version, legacy discovery (/api, /apis,
/api/v1, /apis/GROUP/VERSION), and create / get / list / watch / update /
patch / delete of the resource types the chart and Helm's release storage
use (Secrets). Nothing is validated here beyond naming and conflicts: the
tests validate what Helm sent (see test_chart.py). Every request is logged in
`requests` so the tests can check what Helm did and in which order.

Jobs are "completed" when created (or failed, see `job_outcome`), so Helm's
wait for hook Jobs finishes; workloads report a settled, empty status.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import yaml

# (group, version) -> [(resource, kind, namespaced)]
RESOURCES: dict[tuple[str, str], list[tuple[str, str, bool]]] = {
    ("", "v1"): [
        ("namespaces", "Namespace", False),
        ("nodes", "Node", False),
        ("pods", "Pod", True),
        ("secrets", "Secret", True),
        ("configmaps", "ConfigMap", True),
        ("serviceaccounts", "ServiceAccount", True),
        ("services", "Service", True),
        ("events", "Event", True),
    ],
    ("apps", "v1"): [
        ("daemonsets", "DaemonSet", True),
        ("deployments", "Deployment", True),
        ("replicasets", "ReplicaSet", True),
        ("statefulsets", "StatefulSet", True),
    ],
    ("batch", "v1"): [
        ("jobs", "Job", True),
        ("cronjobs", "CronJob", True),
    ],
    ("rbac.authorization.k8s.io", "v1"): [
        ("clusterroles", "ClusterRole", False),
        ("clusterrolebindings", "ClusterRoleBinding", False),
        ("roles", "Role", True),
        ("rolebindings", "RoleBinding", True),
    ],
    ("node.k8s.io", "v1"): [
        ("runtimeclasses", "RuntimeClass", False),
    ],
    ("apiextensions.k8s.io", "v1"): [
        ("customresourcedefinitions", "CustomResourceDefinition", False),
    ],
}
VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def _singular(kind: str) -> str:
    return kind.lower()


class FakeKube:
    """Run with `with FakeKube(version="v1.30.0") as kube: kube.kubeconfig`."""

    def __init__(
        self,
        version: str = "v1.30.0",
        job_outcome: str = "Complete",
        validator=None,
    ):
        self.version = version
        self.job_outcome = job_outcome  # "Complete" or "Failed"
        # validator(obj) -> error message or None; applied, as the API server
        # does, to objects sent with ?fieldValidation=Strict
        self.validator = validator
        self.rejected: list[tuple[str, str, str]] = []  # (kind, name, message)
        self.lock = threading.RLock()
        # (group, version, resource, namespace, name) -> object
        self.objects: dict[tuple[str, str, str, str, str], dict] = {}
        self.requests: list[tuple[str, str]] = []  # (METHOD, path) in arrival order
        self.created: list[dict] = []  # objects as received, in order
        self.deleted: list[tuple[str, str, str]] = []  # (kind, namespace, name) in order
        self.unhandled: list[tuple[str, str]] = []
        self._rv = 100
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> "FakeKube":
        handler = _make_handler(self)
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    @property
    def kubeconfig(self) -> str:
        return json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )

    # -- helpers for the tests -------------------------------------------
    def kinds_present(self) -> list[tuple[str, str, str]]:
        with self.lock:
            return sorted((o["kind"], k[3], k[4]) for k, o in self.objects.items())

    def next_rv(self) -> str:
        with self.lock:
            self._rv += 1
            return str(self._rv)


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _openapi_v3(gv_path: str, server_version: str) -> dict | None:
    """A skeleton OpenAPI v3 document of one group/version: for each kind a
    PATCH operation that accepts the `fieldValidation` query parameter. That
    is how kubectl's builder (which Helm uses) finds that the server validates
    fields itself, so it does not validate client-side; with server-side apply
    (Helm 4 applies hooks so) it sends `fieldValidation=Strict`, and this
    server then validates with `validator`. No schemas are served."""
    for (g, v), resources in RESOURCES.items():
        if _gv_path(g, v) != gv_path:
            continue
        paths = {}
        for res, kind, nsd in resources:
            prefix = f"/{gv_path}/namespaces/{{namespace}}" if nsd else f"/{gv_path}"
            paths[f"{prefix}/{res}/{{name}}"] = {
                "patch": {
                    "operationId": f"patch{kind}",
                    "x-kubernetes-action": "patch",
                    "x-kubernetes-group-version-kind": {"group": g, "version": v, "kind": kind},
                    "parameters": [
                        {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}
                    ],
                    "responses": {"200": {"description": "OK"}},
                }
            }
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": server_version},
            "paths": paths,
            "components": {"schemas": {}},
        }
    return None


def _status(code: int, reason: str, message: str) -> dict:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure" if code >= 400 else "Success",
        "message": message,
        "reason": reason,
        "code": code,
    }


def _match_labels(obj: dict, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "==" in term or "=" in term:
            k, v = term.split("==", 1) if "==" in term else term.split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def _match_fields(obj: dict, selector: str) -> bool:
    meta = obj.get("metadata") or {}
    for term in filter(None, (t.strip() for t in selector.split(","))):
        k, _, v = term.partition("=")
        v = v.lstrip("=")
        if k == "metadata.name" and meta.get("name") != v:
            return False
        if k == "metadata.namespace" and meta.get("namespace", "") != v:
            return False
    return True


def _make_handler(kube: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, *args):  # quiet
            pass

        # -- plumbing ----------------------------------------------------
        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if not raw:
                return {}
            if "protobuf" in (self.headers.get("Content-Type") or ""):
                # client-go's typed clients (Helm's release storage: Secrets)
                return _decode_k8s_protobuf(raw)
            return json.loads(raw)

        def _route(self):
            """-> (group, version, resource, namespace, name, subresource) or None."""
            parts = [p for p in urlsplit(self.path).path.split("/") if p]
            if parts[:2] == ["api", "v1"]:
                gv, rest = ("", "v1"), parts[2:]
            elif len(parts) >= 3 and parts[0] == "apis":
                gv, rest = (parts[1], parts[2]), parts[3:]
            else:
                return None
            if gv not in RESOURCES or not rest:
                return None
            ns = ""
            if rest[0] == "namespaces" and len(rest) >= 3:
                ns, rest = rest[1], rest[2:]
            resource = rest[0]
            name = rest[1] if len(rest) > 1 else ""
            sub = rest[2] if len(rest) > 2 else ""
            known = {r: (k, nsd) for r, k, nsd in RESOURCES[gv]}
            if resource not in known:
                return None
            return gv[0], gv[1], resource, ns, name, sub, known[resource]

        def _discovery(self, path: str) -> dict | None:
            if path == "/version":
                major, minor = kube.version.lstrip("v").split(".")[:2]
                return {
                    "major": major,
                    "minor": minor,
                    "gitVersion": kube.version,
                    "gitCommit": "0" * 40,
                    "gitTreeState": "clean",
                    "buildDate": "2024-01-01T00:00:00Z",
                    "goVersion": "go1.22.0",
                    "compiler": "gc",
                    "platform": "linux/amd64",
                }
            if path == "/api":
                return {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:443"}
                    ],
                }
            if path == "/apis":
                groups = []
                for g, v in RESOURCES:
                    if g:
                        gv = {"groupVersion": f"{g}/{v}", "version": v}
                        groups.append({"name": g, "versions": [gv], "preferredVersion": gv})
                return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}
            if path == "/openapi/v3":
                return {
                    "paths": {
                        _gv_path(g, v): {"serverRelativeURL": f"/openapi/v3/{_gv_path(g, v)}?hash=0"}
                        for g, v in RESOURCES
                    }
                }
            if path.startswith("/openapi/v3/"):
                return _openapi_v3(path[len("/openapi/v3/") :], kube.version)
            parts = [p for p in path.split("/") if p]
            gv = None
            if parts == ["api", "v1"]:
                gv = ("", "v1")
            elif len(parts) == 3 and parts[0] == "apis":
                gv = (parts[1], parts[2])
            if gv and gv in RESOURCES:
                return {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": f"{gv[0]}/{gv[1]}" if gv[0] else "v1",
                    "resources": [
                        {
                            "name": r,
                            "singularName": _singular(k),
                            "namespaced": nsd,
                            "kind": k,
                            "verbs": VERBS,
                        }
                        for r, k, nsd in RESOURCES[gv]
                    ],
                }
            return None

        # -- verbs -------------------------------------------------------
        def do_GET(self):
            kube.requests.append(("GET", self.path))
            path = urlsplit(self.path).path
            disc = self._discovery(path)
            if disc is not None:
                return self._send(200, disc)
            route = self._route()
            if route is None:
                kube.unhandled.append(("GET", self.path))
                return self._send(404, _status(404, "NotFound", f"no route {path}"))
            g, v, res, ns, name, _sub, (kind, _nsd) = route
            query = {k: vals[-1] for k, vals in parse_qs(urlsplit(self.path).query).items()}
            if name:
                with kube.lock:
                    obj = kube.objects.get((g, v, res, ns, name))
                if obj is None:
                    return self._send(
                        404, _status(404, "NotFound", f'{res} "{name}" not found')
                    )
                return self._send(200, obj)
            items = self._select(g, v, res, ns, query)
            api_version = f"{g}/{v}" if g else v
            if query.get("watch") in ("true", "1"):
                return self._watch(api_version, kind, items, query)
            return self._send(
                200,
                {
                    "kind": f"{kind}List",
                    "apiVersion": api_version,
                    "metadata": {"resourceVersion": kube.next_rv()},
                    "items": items,
                },
            )

        def _select(self, g, v, res, ns, query) -> list[dict]:
            with kube.lock:
                items = [
                    o
                    for (og, ov, ores, ons, _n), o in sorted(kube.objects.items())
                    if (og, ov, ores) == (g, v, res) and (not ns or ons == ns)
                ]
            if "labelSelector" in query:
                items = [o for o in items if _match_labels(o, query["labelSelector"])]
            if "fieldSelector" in query:
                items = [o for o in items if _match_fields(o, query["fieldSelector"])]
            return items

        def _watch(self, api_version: str, kind: str, items: list[dict], query: dict) -> None:
            # A stream of watch events; the objects are already settled, so
            # after the initial events (when asked for) the stream stays quiet
            # until the client goes away or its timeout passes.
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                if query.get("sendInitialEvents") == "true":
                    for obj in items:
                        self._event("ADDED", obj)
                    self._event(
                        "BOOKMARK",
                        {
                            "kind": kind,
                            "apiVersion": api_version,
                            "metadata": {
                                "resourceVersion": kube.next_rv(),
                                "annotations": {"k8s.io/initial-events-end": "true"},
                            },
                        },
                    )
                deadline = time.monotonic() + min(float(query.get("timeoutSeconds", 30)), 30)
                while time.monotonic() < deadline and not kube._stop.is_set():
                    time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def _event(self, typ: str, obj: dict) -> None:
            self.wfile.write(json.dumps({"type": typ, "object": obj}).encode() + b"\n")
            self.wfile.flush()

        def do_POST(self):
            kube.requests.append(("POST", self.path))
            route = self._route()
            body = self._body()
            if route is None:
                kube.unhandled.append(("POST", self.path))
                return self._send(404, _status(404, "NotFound", f"no route {self.path}"))
            g, v, res, ns, name, _sub, (kind, nsd) = route
            meta = body.setdefault("metadata", {})
            if name or not meta.get("name"):
                return self._send(400, _status(400, "BadRequest", "name required"))
            if nsd and not ns:
                return self._send(400, _status(400, "BadRequest", "namespace required"))
            if body.get("kind") != kind:
                return self._send(
                    400, _status(400, "BadRequest", f"kind {body.get('kind')} posted to {res}")
                )
            key = (g, v, res, ns, meta["name"])
            if self._invalid(body):
                return None
            with kube.lock:
                if key in kube.objects:
                    return self._send(
                        409,
                        _status(409, "AlreadyExists", f'{res} "{meta["name"]}" already exists'),
                    )
                kube.created.append(json.loads(json.dumps(body)))
                obj = self._settle(kind, body, ns)
                kube.objects[key] = obj
            return self._send(201, obj)

        def _invalid(self, obj: dict) -> bool:
            """Strict field validation: answer 422 and return True if the
            object does not pass the validator."""
            query = parse_qs(urlsplit(self.path).query)
            if kube.validator is None or query.get("fieldValidation", [""])[-1] != "Strict":
                return False
            msg = kube.validator(obj)
            if not msg:
                return False
            name = (obj.get("metadata") or {}).get("name", "")
            kube.rejected.append((obj.get("kind", ""), name, msg))
            self._send(422, _status(422, "Invalid", f'{obj.get("kind")} "{name}" is invalid: {msg}'))
            return True

        def _settle(self, kind: str, obj: dict, ns: str) -> dict:
            meta = obj["metadata"]
            if ns:
                meta["namespace"] = ns
            meta.setdefault("uid", str(uuid.uuid4()))
            meta["resourceVersion"] = kube.next_rv()
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
            meta.setdefault("generation", 1)
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            if kind == "Job":
                ok = kube.job_outcome == "Complete"
                conds = (
                    [
                        {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                        {"type": "Complete", "status": "True", "lastTransitionTime": now},
                    ]
                    if ok
                    else [
                        {"type": "FailureTarget", "status": "True", "lastTransitionTime": now},
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "BackoffLimitExceeded",
                            "message": "Job has reached the specified backoff limit",
                            "lastTransitionTime": now,
                        },
                    ]
                )
                obj["status"] = {
                    "startTime": now,
                    "succeeded": 1 if ok else 0,
                    "failed": 0 if ok else 1,
                    "active": 0,
                    "ready": 0,
                    "conditions": conds,
                }
                if ok:
                    obj["status"]["completionTime"] = now
            elif kind == "DaemonSet":
                obj["status"] = {
                    "observedGeneration": meta["generation"],
                    "currentNumberScheduled": 0,
                    "desiredNumberScheduled": 0,
                    "numberMisscheduled": 0,
                    "numberReady": 0,
                    "updatedNumberScheduled": 0,
                    "numberAvailable": 0,
                }
            return obj

        def do_PUT(self):
            kube.requests.append(("PUT", self.path))
            route = self._route()
            body = self._body()
            if route is None or not route[4]:
                kube.unhandled.append(("PUT", self.path))
                return self._send(404, _status(404, "NotFound", f"no route {self.path}"))
            g, v, res, ns, name, _sub, (kind, _nsd) = route
            key = (g, v, res, ns, name)
            with kube.lock:
                old = kube.objects.get(key)
                if old is None:
                    return self._send(404, _status(404, "NotFound", f'{res} "{name}" not found'))
                body.setdefault("metadata", {})["uid"] = old["metadata"]["uid"]
                body["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
                obj = self._settle(kind, body, ns)
                kube.objects[key] = obj
            return self._send(200, obj)

        def do_PATCH(self):
            kube.requests.append(("PATCH", self.path))
            route = self._route()
            ctype = self.headers.get("Content-Type") or ""
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
            if route is None or not route[4]:
                kube.unhandled.append(("PATCH", self.path))
                return self._send(404, _status(404, "NotFound", f"no route {self.path}"))
            g, v, res, ns, name, _sub, (kind, _nsd) = route
            key = (g, v, res, ns, name)
            if "apply-patch" in ctype:
                # server-side apply (Helm 4 applies hooks this way): create
                # the object, or take the applied fields over
                body = yaml.safe_load(raw) or {}
                if body.get("kind") != kind or (body.get("metadata") or {}).get("name") != name:
                    return self._send(400, _status(400, "BadRequest", "apply: kind/name mismatch"))
                if self._invalid(body):
                    return None
                with kube.lock:
                    old = kube.objects.get(key)
                    if old is None:
                        kube.created.append(json.loads(json.dumps(body)))
                        obj = self._settle(kind, body, ns)
                        kube.objects[key] = obj
                        return self._send(201, obj)
                    _merge(old, body)
                    old["metadata"]["resourceVersion"] = kube.next_rv()
                    return self._send(200, old)
            if "json-patch" in ctype:
                return self._send(415, _status(415, "UnsupportedMediaType", ctype))
            body = json.loads(raw) if raw else {}
            with kube.lock:
                obj = kube.objects.get(key)
                if obj is None:
                    return self._send(404, _status(404, "NotFound", f'{res} "{name}" not found'))
                _merge(obj, body)
                obj["metadata"]["resourceVersion"] = kube.next_rv()
            return self._send(200, obj)

        def do_DELETE(self):
            kube.requests.append(("DELETE", self.path))
            route = self._route()
            n = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(n)  # DeleteOptions (JSON or protobuf): not needed
            if route is None or not route[4]:
                kube.unhandled.append(("DELETE", self.path))
                return self._send(404, _status(404, "NotFound", f"no route {self.path}"))
            g, v, res, ns, name, _sub, (kind, _nsd) = route
            with kube.lock:
                obj = kube.objects.pop((g, v, res, ns, name), None)
                if obj is not None:
                    kube.deleted.append((kind, ns, name))
            if obj is None:
                return self._send(404, _status(404, "NotFound", f'{res} "{name}" not found'))
            return self._send(200, _status(200, "", "deleted") | {"details": {"name": name, "kind": res}})

    return Handler


def _merge(dst: dict, patch: dict) -> None:
    """JSON merge patch (RFC 7386), enough for metadata/labels patches."""
    for k, v in patch.items():
        if v is None:
            dst.pop(k, None)
        elif isinstance(v, dict) and isinstance(dst.get(k), dict):
            _merge(dst[k], v)
        else:
            dst[k] = v


# -- Kubernetes protobuf (just enough for Secrets) ----------------------------
# Typed client-go clients send core objects as protobuf: the 4-byte magic
# "k8s\0", then a runtime.Unknown {typeMeta=1 {apiVersion=1, kind=2}, raw=2,
# contentEncoding=3, contentType=4}; raw is the object's own message.


def _pb_fields(buf: bytes):
    """Yield (field number, wire type, value) of a protobuf message."""
    i = 0

    def varint():
        nonlocal i
        shift = result = 0
        while True:
            b = buf[i]
            i += 1
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7

    while i < len(buf):
        key = varint()
        num, wt = key >> 3, key & 7
        if wt == 0:
            yield num, wt, varint()
        elif wt == 2:
            n = varint()
            yield num, wt, buf[i : i + n]
            i += n
        elif wt == 1:
            yield num, wt, buf[i : i + 8]
            i += 8
        elif wt == 5:
            yield num, wt, buf[i : i + 4]
            i += 4
        else:
            raise ValueError(f"protobuf wire type {wt} not supported")


def _pb_map_entry(buf: bytes) -> tuple[str, bytes]:
    k, v = "", b""
    for num, _wt, val in _pb_fields(buf):
        if num == 1:
            k = val.decode()
        elif num == 2:
            v = val
    return k, v


def _pb_object_meta(buf: bytes) -> dict:
    meta: dict = {}
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    for num, _wt, val in _pb_fields(buf):
        if num in strings:
            meta[strings[num]] = val.decode()
        elif num in (11, 12):  # labels, annotations
            k, v = _pb_map_entry(val)
            meta.setdefault("labels" if num == 11 else "annotations", {})[k] = v.decode()
    return meta


def _decode_k8s_protobuf(raw: bytes) -> dict:
    import base64

    if not raw.startswith(b"k8s\x00"):
        raise ValueError("not a Kubernetes protobuf body")
    api_version = kind = ""
    inner = b""
    for num, _wt, val in _pb_fields(raw[4:]):
        if num == 1:
            for n2, _w2, v2 in _pb_fields(val):
                if n2 == 1:
                    api_version = v2.decode()
                elif n2 == 2:
                    kind = v2.decode()
        elif num == 2:
            inner = val
    if kind != "Secret":
        raise ValueError(f"protobuf decoding of {kind} is not implemented")
    obj: dict = {"apiVersion": api_version, "kind": kind, "metadata": {}}
    for num, wt, val in _pb_fields(inner):
        if num == 1:
            obj["metadata"] = _pb_object_meta(val)
        elif num == 2:
            k, v = _pb_map_entry(val)
            obj.setdefault("data", {})[k] = base64.b64encode(v).decode()
        elif num == 3:
            obj["type"] = val.decode()
        elif num == 5 and wt == 0:
            obj["immutable"] = bool(val)
    return obj
