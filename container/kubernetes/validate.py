"""Checks rendered Chamberlain manifests offline; run by validate.sh, which installs what it needs.

    python3 validate.py --k8s 1.30 --k8s 1.37 RENDERED.yaml [RENDERED.yaml ...]

1. Every object against the Kubernetes OpenAPI schema of each version given, strict (a field
   the schema does not name is an error; so is a kind or apiVersion it does not know). The
   schemas are the ones the PyPI package kubernetes-validate ships (generated from each
   Kubernetes release's OpenAPI document), read from its files: no network.
2. What the API server or the cluster would refuse, or what would leave these manifests not
   working together, which a schema cannot see: names, label syntax, quantities, selectors
   that select the pods they mean, references (ports, ConfigMaps, Secrets, ServiceAccounts,
   Roles, volumes, $(VAR)s), Pod Security "restricted" for the gateway's pods, the Role's
   least-privilege promises, NetworkPolicy CIDRs.

Prints one line per problem and exits 1 if there is any.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from decimal import Decimal
from functools import lru_cache

import importlib_resources
import jsonschema
import yaml
from referencing import Registry, Resource

NAMESPACE = "chamberlain"
# The labels the gateway puts on users' pods (it creates them; these manifests only select them).
OPENCODE_LABELS = {
    "app.kubernetes.io/name": "chamberlain",
    "app.kubernetes.io/component": "opencode",
    "chamberlain.dev/user": "0123abcd",
}
# Made by the operator with kubectl (README.md), not by these manifests.
EXTERNAL_SECRETS = {"chamberlain-admin", "chamberlain-org-auth"}
EXTERNAL_CONFIGMAPS = {"chamberlain-org-config"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "StorageClass", "IngressClass"}

problems: list[str] = []


def problem(where: str, text: str) -> None:
    problems.append(f"ERROR {where}: {text}")


# ---- 1. schemas --------------------------------------------------------------------------

SCHEMAS = importlib_resources.files("kubernetes_validate").joinpath("kubernetes-json-schema")


@lru_cache(maxsize=None)
def schema_dir(version: str):
    wanted = f"v{version}.0-local-strict" if version.count(".") == 1 else f"v{version}-local-strict"
    folder = SCHEMAS.joinpath(wanted)
    if not folder.is_dir():
        have = sorted(p.name for p in SCHEMAS.iterdir() if p.name.endswith("-local-strict"))
        sys.exit(f"FATAL no strict schemas for Kubernetes {version} (have: {', '.join(have)})")
    return folder


@lru_cache(maxsize=None)
def definitions(version: str) -> Resource:
    return Resource.from_contents(json.loads(schema_dir(version).joinpath("_definitions.json").read_text()))


@lru_cache(maxsize=None)
def validator(version: str, kind: str, api_version: str):
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = schema_dir(version).joinpath(f"{kind.lower()}-{api}.json")
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    registry = definitions(version) @ (Resource.from_contents(schema) @ Registry())
    return jsonschema.Draft202012Validator(schema, registry=registry)


def check_schema(obj: dict, where: str, versions: list[str]) -> None:
    for version in versions:
        v = validator(version, str(obj.get("kind")), str(obj.get("apiVersion")))
        if v is None:
            problem(where, f"Kubernetes {version} has no {obj.get('apiVersion')} {obj.get('kind')}")
            continue
        for error in sorted(v.iter_errors(obj), key=lambda e: list(map(str, e.absolute_path))):
            path = ".".join(str(p) for p in error.absolute_path) or "(top)"
            message = error.message if len(error.message) < 300 else error.message[:300] + "..."
            problem(where, f"schema {version}: {path}: {message}")


# ---- 2. what a schema does not see ------------------------------------------------------

DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
QUANTITY = re.compile(r"^([+-]?)(\d+(?:\.\d*)?|\.\d+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?\d+)?$")
SUFFIX = {"": 1, "n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3"),
          "k": Decimal(10) ** 3, "M": Decimal(10) ** 6, "G": Decimal(10) ** 9,
          "T": Decimal(10) ** 12, "P": Decimal(10) ** 15, "E": Decimal(10) ** 18,
          "Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60}
ENV_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def quantity(text, where: str):
    """The value of a Kubernetes quantity, or None (with a problem) when it is not one."""
    match = QUANTITY.match(str(text))
    if not match:
        problem(where, f"{text!r} is not a Kubernetes quantity")
        return None
    sign, number, suffix = match.groups()
    suffix = suffix or ""
    scale = Decimal(10) ** int(suffix[1:]) if suffix[:1] in ("e", "E") else Decimal(SUFFIX[suffix])
    return Decimal(sign + number) * scale


def check_labels(labels: dict | None, where: str) -> None:
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not DNS_SUBDOMAIN.match(prefix))) or not name \
                or len(name) > 63 or not LABEL_NAME.match(name):
            problem(where, f"label key {key!r} is not valid")
        if not isinstance(value, str) or len(value) > 63 or not LABEL_NAME.match(value):
            problem(where, f"label {key}={value!r}: not a valid label value")


def selects(selector: dict | None, labels: dict) -> bool:
    """Whether a LabelSelector (matchLabels and matchExpressions) selects these labels."""
    selector = selector or {}
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if (op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values) \
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels):
            return False
    return True


def check_resources(resources: dict | None, where: str) -> None:
    resources = resources or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for kind, values in (("requests", requests), ("limits", limits)):
        for name, value in values.items():
            quantity(value, f"{where}.resources.{kind}.{name}")
    for name in set(requests) & set(limits):
        low, high = quantity(requests[name], where), quantity(limits[name], where)
        if low is not None and high is not None and low > high:
            problem(where, f"request of {name} {requests[name]} is above its limit {limits[name]}")


def check_pod(spec: dict, labels: dict, where: str, objects: dict) -> None:
    volumes = {v["name"]: v for v in spec.get("volumes") or []}
    sa = spec.get("serviceAccountName")
    if sa and ("ServiceAccount", sa) not in objects:
        problem(where, f"ServiceAccount {sa} is not among the manifests")
    pod_sc = spec.get("securityContext") or {}
    # Pod Security "restricted" (namespace.yaml enforces it): the pods would be refused.
    for volume in volumes.values():
        kinds = set(volume) - {"name"}
        if not kinds <= {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                         "persistentVolumeClaim", "projected", "secret"}:
            problem(where, f"volume {volume['name']}: {kinds} is not allowed by Pod Security restricted")
        if "emptyDir" in volume and volume["emptyDir"] and "sizeLimit" in volume["emptyDir"]:
            quantity(volume["emptyDir"]["sizeLimit"], f"{where}.volumes.{volume['name']}")
        for kind, name_key, known, external in (("secret", "secretName", "Secret", EXTERNAL_SECRETS),
                                                ("configMap", "name", "ConfigMap", EXTERNAL_CONFIGMAPS)):
            if kind in volume:
                name = volume[kind].get(name_key)
                if (known, name) not in objects and name not in external:
                    problem(where, f"volume {volume['name']}: {known} {name} is neither made here nor documented")
                mode = volume[kind].get("defaultMode")
                if mode is not None and not 0 <= mode <= 0o777:
                    problem(where, f"volume {volume['name']}: defaultMode {mode} is not a file mode")
    containers = [("initContainers", c) for c in spec.get("initContainers") or []] + \
                 [("containers", c) for c in spec.get("containers") or []]
    for group, c in containers:
        at = f"{where}.{group}.{c['name']}"
        sc = c.get("securityContext") or {}
        run_as_non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        run_as_user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if run_as_non_root is not True or run_as_user == 0:
            problem(at, "Pod Security restricted: runAsNonRoot must be true (and runAsUser not 0)")
        if sc.get("allowPrivilegeEscalation") is not False:
            problem(at, "Pod Security restricted: allowPrivilegeEscalation must be false")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            problem(at, "Pod Security restricted: capabilities must drop ALL")
        if set((sc.get("capabilities") or {}).get("add") or []) - {"NET_BIND_SERVICE"}:
            problem(at, "Pod Security restricted: only NET_BIND_SERVICE may be added")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problem(at, "Pod Security restricted: seccompProfile must be RuntimeDefault or Localhost")
        if sc.get("privileged"):
            problem(at, "privileged")
        if not sc.get("readOnlyRootFilesystem"):
            problem(at, "the root file system should be read-only")
        check_resources(c.get("resources"), at)
        if not (c.get("resources") or {}).get("limits", {}).get("memory"):
            problem(at, "no memory limit")
        for mount in c.get("volumeMounts") or []:
            if mount["name"] not in volumes:
                problem(at, f"volumeMount {mount['name']} names no volume")
        ports = {p.get("name"): p["containerPort"] for p in c.get("ports") or []}
        for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = ((c.get(probe_name) or {}).get("httpGet") or {}).get("port")
            if isinstance(port, str) and port not in ports:
                problem(at, f"{probe_name} names port {port!r}, which the container does not have")
        for source in c.get("envFrom") or []:
            ref = source.get("configMapRef") or source.get("secretRef") or {}
            kind = "ConfigMap" if "configMapRef" in source else "Secret"
            if (kind, ref.get("name")) not in objects:
                problem(at, f"envFrom {kind} {ref.get('name')} is not among the manifests")
        defined = set()
        for env in c.get("env") or []:
            for name in ENV_REF.findall(str(env.get("value", ""))):
                if name not in defined:
                    problem(at, f"env {env['name']} uses $({name}), not defined before it")
            defined.add(env["name"])


def cidr_family_and_subset(cidr: str, excepts: list[str], where: str) -> None:
    try:
        net = ipaddress.ip_network(cidr)
    except ValueError as e:
        problem(where, f"ipBlock cidr {cidr}: {e}")
        return
    for text in excepts or []:
        try:
            sub = ipaddress.ip_network(text)
        except ValueError as e:
            problem(where, f"ipBlock except {text}: {e}")
            continue
        if sub.version != net.version or not sub.subnet_of(net) or sub == net:
            problem(where, f"ipBlock except {text} is not strictly inside {cidr}")


def check_semantics(docs: list[dict], source: str) -> None:
    objects = {}
    for obj in docs:
        objects[(obj.get("kind"), (obj.get("metadata") or {}).get("name"))] = obj
    pods = []  # (where, labels) of the pods these manifests make
    for obj in docs:
        kind, meta = obj.get("kind"), obj.get("metadata") or {}
        where = f"{source}: {kind}/{meta.get('name')}"
        name = str(meta.get("name"))
        if len(name) > 253 or not DNS_SUBDOMAIN.match(name):
            problem(where, "name is not a DNS subdomain")
        if kind in ("Namespace", "Service") and (len(name) > 63 or not DNS_LABEL.match(name)):
            problem(where, "name is not a DNS label")
        check_labels(meta.get("labels"), where)
        if kind in ("ClusterRole", "ClusterRoleBinding"):
            problem(where, "cluster-wide RBAC: the gateway's rights end at its namespace")
        if kind not in CLUSTER_SCOPED and meta.get("namespace") != NAMESPACE:
            problem(where, f"namespace is {meta.get('namespace')!r}, not {NAMESPACE!r}")
        if kind == "Deployment":
            template = obj["spec"]["template"]
            labels = template["metadata"].get("labels") or {}
            check_labels(labels, where + " (pod template)")
            if not selects(obj["spec"]["selector"], labels):
                problem(where, "selector does not select its own pod template")
            check_pod(template["spec"], labels, where, objects)
            pods.append((where, labels, template["spec"]))
    gateway = [p for p in pods if p[1].get("app.kubernetes.io/component") == "gateway"]
    if len(gateway) != 1:
        problem(source, f"expected one gateway pod template, found {len(gateway)}")
        return
    gw_where, gw_labels, gw_spec = gateway[0]
    gw_ports = {p.get("name"): p["containerPort"] for c in gw_spec["containers"] for p in c.get("ports") or []}
    known_labels = {"gateway": gw_labels, "opencode": OPENCODE_LABELS}
    for obj in docs:
        kind, meta, spec = obj.get("kind"), obj.get("metadata") or {}, obj.get("spec") or {}
        where = f"{source}: {kind}/{meta.get('name')}"
        if kind == "Service":
            if not selects({"matchLabels": spec.get("selector") or {}}, gw_labels):
                problem(where, "selects no gateway pod")
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port["port"])
                if isinstance(target, str) and target not in gw_ports:
                    problem(where, f"targetPort {target!r} is no port of the gateway container")
        if kind == "PodDisruptionBudget" and not selects(spec.get("selector"), gw_labels):
            problem(where, "selects no gateway pod")
        if kind == "Ingress":
            for rule in spec.get("rules") or []:
                for path in (rule.get("http") or {}).get("paths") or []:
                    svc = path["backend"].get("service") or {}
                    target = objects.get(("Service", svc.get("name")))
                    if target is None:
                        problem(where, f"backend Service {svc.get('name')} is not among the manifests")
                        continue
                    port = svc.get("port") or {}
                    names = {p.get("name") for p in target["spec"]["ports"]}
                    numbers = {p["port"] for p in target["spec"]["ports"]}
                    if ("name" in port and port["name"] not in names) or ("number" in port and port["number"] not in numbers):
                        problem(where, f"backend port {port} is not a port of Service {svc.get('name')}")
        if kind == "RoleBinding":
            ref = obj["roleRef"]
            if ref["kind"] != "Role" or ("Role", ref["name"]) not in objects:
                problem(where, f"roleRef {ref['kind']}/{ref['name']} is not a Role among the manifests")
            for subject in obj.get("subjects") or []:
                if subject["kind"] != "ServiceAccount" or ("ServiceAccount", subject["name"]) not in objects \
                        or subject.get("namespace") != NAMESPACE:
                    problem(where, f"subject {subject} is not a ServiceAccount of {NAMESPACE} made here")
        if kind == "Role":
            for rule in obj.get("rules") or []:
                if "*" in rule.get("verbs", []) or "*" in rule.get("resources", []) or "*" in rule.get("apiGroups", []):
                    problem(where, f"wildcard in rule {rule}")
                if "persistentvolumeclaims" in rule.get("resources", []) and \
                        {"delete", "deletecollection"} & set(rule.get("verbs", [])):
                    problem(where, "the gateway may not delete users' homes (claims)")
                if {"pods/exec", "pods/attach", "pods/portforward", "nodes"} & set(rule.get("resources", [])):
                    problem(where, f"rule {rule} reaches past the pod network")
        if kind == "ServiceAccount" and meta.get("name") == "chamberlain-opencode" \
                and obj.get("automountServiceAccountToken") is not False:
            problem(where, "users' pods must not get a token: automountServiceAccountToken: false")
        if kind == "NetworkPolicy":
            chosen = [n for n, labels in known_labels.items() if selects(spec.get("podSelector"), labels)]
            if not chosen:
                problem(where, "podSelector selects neither the gateways nor users' pods")
            for direction, peers_key in (("ingress", "from"), ("egress", "to")):
                for rule in spec.get(direction) or []:
                    for peer in rule.get(peers_key) or []:
                        if "ipBlock" in peer:
                            cidr_family_and_subset(peer["ipBlock"]["cidr"], peer["ipBlock"].get("except"), where)
                        elif "podSelector" in peer and "namespaceSelector" not in peer:
                            if not any(selects(peer["podSelector"], l) for l in known_labels.values()):
                                problem(where, f"{direction} peer {peer['podSelector']} selects no pod of ours")
        if kind == "ConfigMap":
            data = obj.get("data") or {}
            for key in ("CHAMBERLAIN_K8S_CPU", "CHAMBERLAIN_K8S_MEMORY"):
                if key in data:
                    parts = data[key].split(":")
                    if len(parts) != 2:
                        problem(where, f"{key}={data[key]!r} is not REQUEST:LIMIT")
                    else:
                        low, high = (quantity(p, f"{where}.{key}") for p in parts)
                        if low is not None and high is not None and low > high:
                            problem(where, f"{key}: request above limit")
            if "CHAMBERLAIN_K8S_HOME_SIZE" in data:
                quantity(data["CHAMBERLAIN_K8S_HOME_SIZE"], f"{where}.CHAMBERLAIN_K8S_HOME_SIZE")
            for key, port in (("CHAMBERLAIN_LISTEN", "http"), ("CHAMBERLAIN_LLM_LISTEN", "relay"),
                              ("CHAMBERLAIN_ADMIN_LISTEN", "admin")):
                if key in data and not data[key].endswith(f":{gw_ports.get(port)}"):
                    problem(where, f"{key}={data[key]} is not the container's {port} port {gw_ports.get(port)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--k8s", action="append", required=True, help="Kubernetes version (repeatable)")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    for version in args.k8s:
        schema_dir(version)
    checked = 0
    for source in args.files:
        with open(source) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        if not docs:
            problem(source, "no objects")
        for obj in docs:
            if not isinstance(obj, dict):
                problem(source, f"not an object: {obj!r}")
                continue
            where = f"{source}: {obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"
            check_schema(obj, where, args.k8s)
            checked += 1
        check_semantics([d for d in docs if isinstance(d, dict)], source)
    for line in problems:
        print(line)
    print(f"{checked} objects in {len(args.files)} renderings, schemas of Kubernetes "
          f"{', '.join(args.k8s)} (strict): {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
