#!/usr/bin/env python3
"""Checks that everything docker-compose.yml takes from the work tree exists.

Reads the output of `docker-compose config` (paths already resolved to absolute ones) on stdin
and checks, for every service: each bind-mounted source (a file or a directory, as the target
suggests), the build context and its Dockerfile, and each env_file. Exit 1 listing every
missing path. With --expect-services A,B,… it also checks the set of services.
"""
import argparse
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
    for p in problems:
        print(f"ERROR {p}", file=sys.stderr)
    print(f"compose mounts: {checked} paths of {len(services)} services checked, {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
