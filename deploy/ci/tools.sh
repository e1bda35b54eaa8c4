# Sourced by deploy/ci/check: installs the deployment checks' tools once
# into $SIGNALS_TOOLS_DIR (default ~/.cache/signals-tools, outside the clone)
# and puts them on PATH. Idempotent: a second run only checks stamps.
#
#   helm, kubeconform   Go programs, built with `go install` from the Go
#                       module proxy (pinned versions)
#   Kubernetes schemas  made from the API's OpenAPI document in the
#                       k8s.io/kubernetes module (no schema download site is
#                       reachable here), by deploy/ci/k8s_schemas.py
#   compose schema      the compose specification's JSON schema, from the
#                       compose-spec/compose-go module
#   promtool            Debian's prometheus package
#   python              a venv with pyyaml and jsonschema

HELM_VERSION=v3.19.0
KUBECONFORM_VERSION=v0.7.0
KUBERNETES_VERSION=1.34.2
COMPOSE_GO_VERSION=v2.16.2  # v2.17 needs a newer Go than this machine's 1.26.8

SIGNALS_TOOLS_DIR="${SIGNALS_TOOLS_DIR:-$HOME/.cache/signals-tools}"
tools_bin="$SIGNALS_TOOLS_DIR/bin"
mkdir -p "$tools_bin"
export PATH="$tools_bin:$PATH"

tools_log() { echo "tools: $*" >&2; }

# Go's usual place when it is not on PATH.
if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="$PATH:/usr/local/go/bin"
fi

# go install into tools_bin when the stamp is not this version.
tools_go_install() {
    local name=$1 package=$2 version=$3
    if [ "$(cat "$tools_bin/.$name.version" 2>/dev/null)" = "$version" ] && [ -x "$tools_bin/$name" ]; then
        return
    fi
    command -v go >/dev/null || { tools_log "go is needed to build $name"; return 1; }
    tools_log "building $name $version (once)"
    GOBIN="$tools_bin" GOFLAGS=-mod=mod go install "$package@$version" >&2
    echo "$version" >"$tools_bin/.$name.version"
}

# The directory of a Go module in the module cache (downloaded once).
tools_go_module_dir() {
    local dir
    dir=$(GOFLAGS=-mod=mod go mod download -json "$1@$2" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    [ -n "$dir" ] || { tools_log "cannot download the Go module $1@$2"; return 1; }
    echo "$dir"
}

tools_go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION"
tools_go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION"

K8S_SCHEMAS="$SIGNALS_TOOLS_DIR/kubernetes-json-schema/v$KUBERNETES_VERSION-strict"
converter_hash=$(sha256sum "$(dirname "${BASH_SOURCE[0]}")/k8s_schemas.py" | cut -c1-16)
if [ "$(cat "$K8S_SCHEMAS/.stamp" 2>/dev/null)" != "$converter_hash" ]; then
    tools_log "Kubernetes $KUBERNETES_VERSION schemas (once)"
    k8s_dir=$(tools_go_module_dir k8s.io/kubernetes "v$KUBERNETES_VERSION")
    rm -rf "$K8S_SCHEMAS"
    python3 "$(dirname "${BASH_SOURCE[0]}")/k8s_schemas.py" "$k8s_dir/api/openapi-spec/swagger.json" "$K8S_SCHEMAS"
    echo "$converter_hash" >"$K8S_SCHEMAS/.stamp"
fi
export K8S_SCHEMAS KUBERNETES_VERSION

COMPOSE_SCHEMA="$SIGNALS_TOOLS_DIR/compose-spec-$COMPOSE_GO_VERSION.json"
if [ ! -s "$COMPOSE_SCHEMA" ]; then
    tools_log "compose specification schema $COMPOSE_GO_VERSION (once)"
    cp "$(tools_go_module_dir github.com/compose-spec/compose-go/v2 "$COMPOSE_GO_VERSION")/schema/compose-spec.json" "$COMPOSE_SCHEMA.tmp"
    mv "$COMPOSE_SCHEMA.tmp" "$COMPOSE_SCHEMA"
fi
export COMPOSE_SCHEMA

if ! command -v promtool >/dev/null; then
    tools_log "promtool: apt-get install prometheus (once)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >&2
fi

TOOLS_PYTHON="$SIGNALS_TOOLS_DIR/venv/bin/python"
if ! "$TOOLS_PYTHON" -c 'import yaml, jsonschema' 2>/dev/null; then
    tools_log "python venv with pyyaml and jsonschema (once)"
    python3 -m venv "$SIGNALS_TOOLS_DIR/venv" >&2
    "$SIGNALS_TOOLS_DIR/venv/bin/pip" install -q pyyaml jsonschema >&2
fi
export TOOLS_PYTHON
