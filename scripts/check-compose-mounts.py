#!/usr/bin/env python3
"""Checks that everything docker-compose.yml takes from the work tree exists.

Reads the output of `docker-compose config` (paths already resolved to absolute ones) on stdin
and checks, for every service: each bind-mounted source (a file or a directory, as the target
suggests), the build context and its Dockerfile, and each env_file. Exit 1 listing every
missing path. With --expect-services A,B,… it also checks the set of services.

It then checks that the mounted files agree with each other, which `config` cannot see:
Prometheus scrapes the processor's admin port and its rule_files pattern matches the mounted
rules; Grafana's datasource points at the Prometheus service and its dashboard provider reads the
folder the dashboards are mounted at, which holds at least one dashboard JSON.
"""
import argparse
import fnmatch
import glob
import json
import os
import sys

import yaml


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--expect-services", default="")
    args = parser.parse_args()
    config = yaml.safe_load(sys.stdin)
    problems, checked = [], 0
    services = config.get("services", {})
    if args.expect_services:
        want = set(args.expect_services.split(","))
        have = set(services)
        if want != have:
            problems.append(f"services: expected {sorted(want)}, found {sorted(have)}"
                            f" (missing {sorted(want - have)}, unexpected {sorted(have - want)})")
    for name, service in services.items():
        for volume in service.get("volumes", []):
            if isinstance(volume, str):
                parts = volume.split(":")
                source, target = parts[0], parts[1] if len(parts) > 1 else ""
                kind = "bind" if source.startswith(("/", ".")) else "volume"
            else:
                source, target, kind = volume.get("source", ""), volume.get("target", ""), volume.get("type")
            if kind != "bind":
                continue
            checked += 1
            if not os.path.exists(source):
                problems.append(f"{name}: mounts {source} at {target}, which does not exist")
            elif os.path.splitext(target)[1] and not os.path.isfile(source):
                problems.append(f"{name}: {source} mounted at file path {target} is not a file")
        build = service.get("build")
        if build:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            checked += 1
            if not os.path.isdir(context):
                problems.append(f"{name}: build context {context} does not exist")
            elif not os.path.isfile(os.path.join(context, dockerfile)):
                problems.append(f"{name}: {os.path.join(context, dockerfile)} does not exist")
        env_files = service.get("env_file", [])
        for env_file in [env_files] if isinstance(env_files, str) else env_files:
            checked += 1
            if not os.path.isfile(env_file):
                problems.append(f"{name}: env_file {env_file} does not exist")
    if not problems:
        problems += consistency(services)
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    print(f"compose mounts: {checked} paths of {len(services)} services checked, {len(problems)} problems")
    return 1 if problems else 0


def mounts(service):
    """{container path: host path} of a service's bind mounts."""
    out = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            parts = volume.split(":")
            if len(parts) > 1:
                out[parts[1]] = parts[0]
        elif volume.get("type") == "bind":
            out[volume["target"]] = volume["source"]
    return out


def host_path(service_mounts, container_path):
    """The host path behind a container path, through the mount holding it."""
    for target, source in sorted(service_mounts.items(), key=lambda m: -len(m[0])):
        if container_path == target or container_path.startswith(target.rstrip("/") + "/"):
            return source + container_path[len(target):]
    return None


def consistency(services):
    problems = []
    prom = services["prometheus"]
    prom_mounts = mounts(prom)
    config_path = host_path(prom_mounts, "/etc/prometheus/prometheus.yml")
    with open(config_path) as f:
        prom_config = yaml.safe_load(f)
    targets = [t for job in prom_config.get("scrape_configs", []) if job.get("job_name") == "mgpass-webhooks"
               for sc in job.get("static_configs", []) for t in sc.get("targets", [])]
    if targets != ["processor:9464"]:
        problems.append(f"prometheus.yml: job mgpass-webhooks should scrape processor:9464, scrapes {targets}")
    processor_config = host_path(mounts(services["processor"]), "/etc/mgpass-webhooks/config.toml")
    with open(processor_config) as f:
        if 'listen = "0.0.0.0:9464"' not in f.read():
            problems.append(f"{processor_config}: admin.listen should be 0.0.0.0:9464 (what Prometheus scrapes)")
    rule_files = []
    for pattern in prom_config.get("rule_files", []):
        directory = host_path(prom_mounts, os.path.dirname(pattern))
        matched = glob.glob(os.path.join(directory, os.path.basename(pattern))) if directory else []
        if not matched:
            problems.append(f"prometheus.yml: rule_files {pattern} matches no mounted file")
        rule_files += matched
    if not any(fnmatch.fnmatch(os.path.basename(r), "mgpass-webhooks.rules.yml") for r in rule_files):
        problems.append("prometheus.yml: the rules of deploy/prometheus/rules/mgpass-webhooks.rules.yml are not loaded")
    for r in rule_files:
        with open(r) as f:
            if not isinstance(yaml.safe_load(f).get("groups"), list):
                problems.append(f"{r}: no `groups:` list")

    grafana_mounts = mounts(services["grafana"])
    ds_dir = host_path(grafana_mounts, "/etc/grafana/provisioning/datasources")
    urls = []
    for path in glob.glob(os.path.join(ds_dir or "/nonexistent", "*.yml")):
        with open(path) as f:
            urls += [d.get("url") for d in yaml.safe_load(f).get("datasources", [])]
    if "http://prometheus:9090" not in urls:
        problems.append(f"grafana: no provisioned datasource at http://prometheus:9090 (found {urls})")
    provider_dir = host_path(grafana_mounts, "/etc/grafana/provisioning/dashboards")
    paths = []
    for path in glob.glob(os.path.join(provider_dir or "/nonexistent", "*.yml")):
        with open(path) as f:
            paths += [p.get("options", {}).get("path") for p in yaml.safe_load(f).get("providers", [])]
    if not paths:
        problems.append("grafana: no dashboard provider provisioned")
    for path in paths:
        folder = host_path(grafana_mounts, path) if path else None
        dashboards = glob.glob(os.path.join(folder, "*.json")) if folder else []
        if not dashboards:
            problems.append(f"grafana: the provider path {path} holds no mounted dashboard JSON")
        for d in dashboards:
            with open(d) as f:
                if "panels" not in json.load(f):
                    problems.append(f"{d}: not a dashboard (no panels)")
    home = services["grafana"].get("environment", {}).get("GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH")
    if home and not (host_path(grafana_mounts, home) and os.path.isfile(host_path(grafana_mounts, home))):
        problems.append(f"grafana: GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH {home} is not a mounted file")
    if not problems:
        print(f"compose consistency: Prometheus scrapes processor:9464 and loads {len(rule_files)} rules file(s); "
              f"Grafana has its datasource and {len(paths)} dashboard provider(s)")
    return problems


if __name__ == "__main__":
    sys.exit(main())
