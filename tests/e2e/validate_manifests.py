"""Validates a rendered kustomize overlay (YAML on stdin) offline, and prints `ok`:

- every built-in kind against the Kubernetes schemas of kubernetes-validate's newest
  version, strictly (unknown fields are errors);
- the custom resources against the fields of the API versions they name: InferencePool
  (inference.networking.k8s.io/v1, the Gateway API Inference Extension's spec), HTTPRoute
  (gateway.networking.k8s.io/v1, the fields used), ServiceMonitor (monitoring.coreos.com/v1,
  the fields used);
- that the pieces fit: the pool selects the model server's pods on its container port, its
  endpoint picker is a Service on the port named, the route's backend is the pool, the HPA
  scales the Deployment, and the grace period covers the preStop and the server's drain.
"""
import re
import sys

import kubernetes_validate
import yaml
from kubernetes_validate import utils

# Allowed fields: a dict is an object's fields, [x] a list of x, a set the allowed values,
# None any scalar.
LABELS = {"*": None}
INFERENCE_POOL_V1 = {
    "apiVersion": {"inference.networking.k8s.io/v1"}, "kind": {"InferencePool"},
    "metadata": {"name": None, "namespace": None, "labels": LABELS, "annotations": LABELS},
    "spec": {
        "selector": {"matchLabels": LABELS},
        "targetPorts": [{"number": None}],
        "endpointPickerRef": {"group": None, "kind": None, "name": None, "port": {"number": None},
                              "failureMode": {"FailOpen", "FailClose"}},
    },
}
PARENT_REF = {"group": None, "kind": None, "name": None, "namespace": None, "sectionName": None, "port": None}
HTTP_ROUTE_V1 = {
    "apiVersion": {"gateway.networking.k8s.io/v1"}, "kind": {"HTTPRoute"},
    "metadata": {"name": None, "namespace": None, "labels": LABELS, "annotations": LABELS},
    "spec": {
        "parentRefs": [PARENT_REF],
        "hostnames": [None],
        "rules": [{
            "matches": [{"path": {"type": {"Exact", "PathPrefix", "RegularExpression"}, "value": None}}],
            "backendRefs": [{"group": None, "kind": None, "name": None, "namespace": None, "port": None, "weight": None}],
            "timeouts": {"request": None, "backendRequest": None},
        }],
    },
}
SERVICE_MONITOR_V1 = {
    "apiVersion": {"monitoring.coreos.com/v1"}, "kind": {"ServiceMonitor"},
    "metadata": {"name": None, "namespace": None, "labels": LABELS, "annotations": LABELS},
    "spec": {
        "selector": {"matchLabels": LABELS},
        "endpoints": [{"port": None, "path": None, "interval": None, "scheme": None, "bearerTokenSecret": {"name": None, "key": None}}],
    },
}
CUSTOM = {"InferencePool": INFERENCE_POOL_V1, "HTTPRoute": HTTP_ROUTE_V1, "ServiceMonitor": SERVICE_MONITOR_V1}
REQUIRED = {
    "InferencePool": ["spec.selector.matchLabels", "spec.targetPorts", "spec.endpointPickerRef.name"],
    "HTTPRoute": ["spec.parentRefs", "spec.rules"],
    "ServiceMonitor": ["spec.selector", "spec.endpoints"],
}


def check_fields(value, allowed, at, errors):
    if allowed is None:
        if isinstance(value, (dict, list)):
            errors.append(f"{at}: expected a scalar")
    elif isinstance(allowed, set):
        if value not in allowed:
            errors.append(f"{at}: {value!r} is not one of {sorted(allowed)}")
    elif isinstance(allowed, list):
        if not isinstance(value, list):
            errors.append(f"{at}: expected a list")
            return
        for i, item in enumerate(value):
            check_fields(item, allowed[0], f"{at}[{i}]", errors)
    else:
        if not isinstance(value, dict):
            errors.append(f"{at}: expected an object")
            return
        for key, item in value.items():
            if key in allowed:
                check_fields(item, allowed[key], f"{at}.{key}", errors)
            elif "*" in allowed:
                check_fields(item, allowed["*"], f"{at}.{key}", errors)
            else:
                errors.append(f"{at}.{key}: not a field of this API version")


def get(doc, path):
    for key in path.split("."):
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def main():
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    errors = []
    version = utils.latest_version()
    for doc in docs:
        kind, name = doc.get("kind"), get(doc, "metadata.name")
        if kind in CUSTOM:
            check_fields(doc, CUSTOM[kind], f"{kind}/{name}", errors)
            errors += [f"{kind}/{name}: {path} is required" for path in REQUIRED[kind] if get(doc, path) in (None, [], {})]
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except Exception as e:  # ValidationError, SchemaNotFoundError, ...
            errors.append(f"{kind}/{name}: {type(e).__name__}: {e}")
    if errors:
        # The cross-checks below read the fields just refused.
        print("\n".join(errors))
        sys.exit(1)
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    server = by_kind["Deployment"]["cinder"]
    pod = server["spec"]["template"]
    container = next(c for c in pod["spec"]["containers"] if c["name"] == "cinder")
    pool = by_kind["InferencePool"]["cinder"]["spec"]
    if any(pod["metadata"]["labels"].get(k) != v for k, v in pool["selector"]["matchLabels"].items()):
        errors.append("the InferencePool's selector does not select the model server's pods")
    if pool["targetPorts"][0]["number"] not in [p["containerPort"] for p in container["ports"]]:
        errors.append("the InferencePool's target port is not the model server's container port")
    picker = by_kind["Service"].get(pool["endpointPickerRef"]["name"])
    if picker is None or pool["endpointPickerRef"]["port"]["number"] not in [p["port"] for p in picker["spec"]["ports"]]:
        errors.append("the InferencePool's endpoint picker is not a Service on the port named")
    for route in by_kind["HTTPRoute"].values():
        for rule in route["spec"]["rules"]:
            if not any(b.get("kind") == "InferencePool" and b["name"] == "cinder" for b in rule["backendRefs"]):
                errors.append(f"HTTPRoute/{route['metadata']['name']}: a rule does not route to the InferencePool")
    for hpa in by_kind["HorizontalPodAutoscaler"].values():
        if hpa["spec"]["scaleTargetRef"]["name"] != "cinder":
            errors.append("the HPA does not scale the model server")
    args = " ".join(container["args"])
    flag = lambda name: int(re.search(rf"--{name}=(\d+)", args).group(1))
    pre_stop = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    needed = pre_stop + flag("drain-grace") + flag("drain-timeout")
    if pod["spec"]["terminationGracePeriodSeconds"] <= needed:
        errors.append(f"terminationGracePeriodSeconds {pod['spec']['terminationGracePeriodSeconds']} does not cover preStop + drain ({needed} s)")
    if container["readinessProbe"]["httpGet"]["path"] != "/health/ready" or container["livenessProbe"]["httpGet"]["path"] != "/health/live":
        errors.append("the probes are not /health/ready and /health/live")
    if errors:
        print("\n".join(errors))
        sys.exit(1)
    print(f"{len(docs)} resources valid (Kubernetes {version} schemas; InferencePool v1, HTTPRoute v1, ServiceMonitor v1)")
    print("ok")


if __name__ == "__main__":
    main()
