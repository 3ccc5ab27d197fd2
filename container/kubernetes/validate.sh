#!/usr/bin/env bash
# Validates the Kubernetes manifests of this folder offline: no cluster, no network but
# Debian's apt repositories and PyPI (for the tools, when they are missing). Exits non-zero on
# any problem.
#
#   bash container/kubernetes/validate.sh
#
# 1. yamllint (PyPI, pinned) on the files as written.
# 2. Renders the kustomization (and the kind trial's overlay, kind.kustomization.yaml) with
#    Debian bookworm's kubectl 1.20.2 (package kubernetes-client; its kustomize is v2.0.3,
#    the oldest these files promise to work with), unpacked into the tool cache, not
#    installed; and with the `kubectl` on PATH too, when there is one (a current kustomize
#    v5). The renderings must agree (apart from order and the ConfigMap's hash suffix).
# 3. validate.py: every rendered object against the Kubernetes OpenAPI schemas, strict
#    (unknown fields, kinds and apiVersions are errors), of every version in K8S_VERSIONS,
#    as shipped by PyPI's kubernetes-validate (pinned); then what a schema cannot see
#    (references, selectors, quantities, Pod Security "restricted", RBAC promises, CIDRs).
#
# Tools go to $CHAMBERLAIN_K8S_TOOLS (default ~/.cache/chamberlain-k8s-validate): a Python
# venv and the unpacked Debian package. On a fresh Debian machine, as root, it installs
# python3-venv with apt-get when Python cannot make a venv.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools=${CHAMBERLAIN_K8S_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/chamberlain-k8s-validate}
K8S_VERSIONS=${K8S_VERSIONS:-"1.30 1.31 1.32 1.33 1.34 1.35 1.36 1.37"}
KUBERNETES_VALIDATE=kubernetes-validate==1.37.0
YAMLLINT=yamllint==1.38.0

say() { echo "validate.sh: $*" >&2; }
fail() { say "$*"; exit 1; }
mkdir -p "$tools"

apt_install() {
    command -v apt-get >/dev/null || fail "needs $* and this is no Debian machine (no apt-get)"
    [ "$(id -u)" = 0 ] || fail "needs $*; run as root so apt-get can install it"
    say "installing $* with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# ---- tools --------------------------------------------------------------------------------
venv=$tools/venv
if ! "$venv/bin/python" -c 'import kubernetes_validate, yamllint' 2>/dev/null \
    || [ "$("$venv/bin/pip" show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p')" != "${KUBERNETES_VALIDATE#*==}" ]; then
    command -v python3 >/dev/null || apt_install python3 python3-venv
    rm -rf "$venv"
    if ! python3 -m venv "$venv" 2>/dev/null; then
        rm -rf "$venv"
        apt_install python3-venv
        python3 -m venv "$venv"
    fi
    say "installing $KUBERNETES_VALIDATE and $YAMLLINT from PyPI into $venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "$KUBERNETES_VALIDATE" "$YAMLLINT"
fi

debian_kubectl=$tools/kubernetes-client/usr/bin/kubectl
if [ ! -x "$debian_kubectl" ]; then
    command -v apt-get >/dev/null || fail "needs Debian's kubernetes-client package (no apt-get here)"
    command -v dpkg-deb >/dev/null || fail "needs dpkg-deb"
    download=$(mktemp -d)
    trap 'rm -rf "$download"' EXIT
    if ! (cd "$download" && apt-get download -qq -o APT::Sandbox::User=root kubernetes-client 2>/dev/null); then
        [ "$(id -u)" = 0 ] || fail "cannot download kubernetes-client (apt lists missing?); run as root"
        apt-get update -qq
        (cd "$download" && apt-get download -qq -o APT::Sandbox::User=root kubernetes-client)
    fi
    dpkg-deb -x "$download"/kubernetes-client_*.deb "$tools/kubernetes-client"
    rm -rf "$download"
    trap - EXIT
fi

# ---- 1. yamllint ----------------------------------------------------------------------------
say "yamllint $("$venv/bin/yamllint" --version | cut -d' ' -f2)"
"$venv/bin/yamllint" --strict -d '{extends: default, rules: {line-length: {max: 200}, document-start: disable, comments: {min-spaces-from-content: 1}, truthy: {check-keys: false}}}' \
    "$here"/*.yaml

# ---- 2. render -------------------------------------------------------------------------------
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
renderers=("$debian_kubectl")
if command -v kubectl >/dev/null && [ "$(command -v kubectl)" != "$debian_kubectl" ]; then
    renderers+=("$(command -v kubectl)")
fi
renderings=()
for kubectl in "${renderers[@]}"; do
    version=$("$kubectl" version --client 2>/dev/null | sed -n 's/.*GitVersion:"\([^"]*\)".*/\1/p; s/^Client Version: //p' | head -1)
    kustomize=$("$kubectl" version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')
    label="kubectl-${version:-unknown}"
    say "rendering with $kubectl ($version, kustomize ${kustomize:-v2.0.3 embedded})"
    "$kubectl" kustomize "$here" >"$work/$label-base.yaml"
    # The kind overlay, as README.md makes it: in a folder of its own, @BASE@ relative to it.
    overlay=$(mktemp -d "$work/kind.XXXX")
    sed "s|@BASE@|$(realpath --relative-to="$overlay" "$here")|" "$here/kind.kustomization.yaml" \
        >"$overlay/kustomization.yaml"
    if [ -z "$kustomize" ]; then
        # kustomize v2.0.x (kubectl < 1.21) takes other kustomizations only under `bases`.
        sed -i 's/^resources:/bases:/' "$overlay/kustomization.yaml"
    fi
    "$kubectl" kustomize "$overlay" >"$work/$label-kind.yaml"
    renderings+=("$work/$label-base.yaml" "$work/$label-kind.yaml")
done

if [ "${#renderers[@]}" -gt 1 ]; then
    "$venv/bin/python" - "${renderings[@]}" <<'EOF'
import json, re, sys, yaml
def prune(value):  # kustomize v2 writes empty labels: {} and annotations: {}
    if isinstance(value, dict):
        return {k: prune(v) for k, v in value.items() if v != {}}
    return [prune(v) for v in value] if isinstance(value, list) else value
def normal(path):
    docs = [prune(d) for d in yaml.safe_load_all(open(path)) if d]
    text = json.dumps(sorted(docs, key=lambda d: (d["kind"], d["metadata"]["name"])), sort_keys=True)
    return re.sub(r"(chamberlain-gateway-config)-[a-z0-9]{10}", r"\1", text)
files = sys.argv[1:]
for kind in ("base", "kind"):
    group = [f for f in files if f.endswith(f"-{kind}.yaml")]
    first = normal(group[0])
    for other in group[1:]:
        if normal(other) != first:
            sys.exit(f"ERROR {group[0]} and {other} differ: the kustomize versions render {kind} differently")
print(f"validate.sh: {len(files)} renderings agree across kustomize versions", file=sys.stderr)
EOF
fi

# ---- 3. schemas and the rest ----------------------------------------------------------------
args=()
for v in $K8S_VERSIONS; do args+=(--k8s "$v"); done
say "validating with kubernetes-validate $("$venv/bin/pip" show kubernetes-validate | sed -n 's/^Version: //p') schemas"
"$venv/bin/python" "$here/validate.py" "${args[@]}" "${renderings[@]}"
