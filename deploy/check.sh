#!/usr/bin/env bash
# Checks deploy/ offline, as CI runs it (.ci/run's "deploy files" step):
#   - the Kubernetes manifests against the API schemas of one Kubernetes version
#     (kubernetes-validate, strict: unknown fields fail too)
#   - the alert rules (promtool check rules), their unit tests (promtool test rules: which alerts
#     fire on series shaped as herd exports them) and both Prometheus configs (promtool check
#     config)
#   - the compose file (docker compose config, or Debian's docker-compose where the plugin is
#     missing): schema, interpolation, anchors
#   - both gateway config files, deploy/gateway.toml and the ConfigMap's copy in
#     k8s/gateway.yaml (herd-gateway --check)
# The Dockerfile is not built: that needs base images from a registry this machine cannot reach.
# The running check (Prometheus scraping the demo for every series the rules and the dashboard
# name) is examples/axum-app/tests/prometheus.rs, part of `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"

# A version kubernetes-validate ships schemas for (it needs no network for them); 1.34 is the
# oldest of the four its 1.37.0 release ships, so the manifests also suit clusters a few
# releases behind.
K8S_VERSION="${K8S_VERSION:-1.34.0}"

fail=0
run() {
  echo "+ $*"
  if ! "$@"; then
    echo "deploy/check.sh: FAILED: $*" >&2
    fail=1
  fi
}

run python3 -m kubernetes_validate --strict --kubernetes-version "$K8S_VERSION" k8s/*.yaml

run promtool check rules prometheus/rules.yml
run promtool test rules prometheus/rules.test.yml
run promtool check config prometheus/prometheus.yml prometheus/prometheus-k8s.yml

# SESSION_KEY is required by the file (no default secret); any value does for the check.
if docker compose version >/dev/null 2>&1; then
  run env SESSION_KEY=check docker compose -f compose.yaml config --quiet
else
  run env SESSION_KEY=check docker-compose -f compose.yaml config --quiet
fi

gateway="${HERD_GATEWAY_BIN:-../target/debug/herd-gateway}"
if [ ! -x "$gateway" ]; then
  (cd .. && cargo build -q -p herd-gateway --features cli --bin herd-gateway)
  gateway=../target/debug/herd-gateway
fi
run "$gateway" --check --config gateway.toml
configmap="$(mktemp)"
trap 'rm -f "$configmap"' EXIT
python3 - k8s/gateway.yaml "$configmap" <<'PY'
import sys, yaml
for doc in yaml.safe_load_all(open(sys.argv[1])):
    if doc and doc.get("kind") == "ConfigMap":
        open(sys.argv[2], "w").write(doc["data"]["gateway.toml"])
        break
else:
    sys.exit("no ConfigMap with gateway.toml in " + sys.argv[1])
PY
run "$gateway" --check --config "$configmap"

if [ "$fail" != 0 ]; then
  echo "deploy/check.sh: some checks failed (above)" >&2
  exit 1
fi
echo "deploy/check.sh: all deploy/ checks passed"
