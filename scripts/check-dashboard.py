#!/usr/bin/env python3
"""Structural check of the Grafana dashboard (deploy/grafana/dashboards/*.json).

Grafana's own dashboard linter is not available here, so this checks what it would and what the
live Prometheus test (tests/observability.rs) relies on:
  - current schema (schemaVersion >= 39), a uid and a title;
  - a `datasource` template variable of type `datasource` for Prometheus, and every panel and
    every query using it as `${datasource}` (no hard-coded data source);
  - unique panel ids, every panel with a gridPos inside the 24-column grid, no two overlapping;
  - every query with a unique refId and a non-empty expression whose brackets and quotes balance
    and whose template variables are known;
  - every metric name in the dashboard and in the alert rules is one that src/metrics.rs defines,
    and every metric src/metrics.rs defines is listed in the README.
PromQL itself is parsed and evaluated by the real Prometheus in tests/observability.rs.
Usage: scripts/check-dashboard.py [DASHBOARD.json ...]; exits 1 listing every problem.
"""
import glob
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
PANEL_TYPES = {"row", "stat", "timeseries", "bargauge", "table", "gauge", "text", "heatmap"}
VARIABLES = {"$job", "$__rate_interval", "$__interval", "$__range"}
METRIC = re.compile(r"\bwebhooks_[a-z0-9_]+")
SUFFIXES = ("_bucket", "_sum", "_count")


def defined_metrics():
    with open(os.path.join(ROOT, "src", "metrics.rs"), encoding="utf-8") as f:
        source = f.read().split("#[cfg(test)]")[0]
    return set(re.findall(r'"(webhooks_[a-z0-9_]+)"', source))


def base_name(name, defined):
    if name in defined:
        return name
    for s in SUFFIXES:
        if name.endswith(s) and name[: -len(s)] in defined:
            return name[: -len(s)]
    return None


def expr_problems(expr):
    """Brackets and quotes balance; only known template variables."""
    problems = []
    stack, quote, i = [], None, 0
    pairs = {")": "(", "]": "[", "}": "{"}
    while i < len(expr):
        c = expr[i]
        if quote:
            if c == "\\":
                i += 1
            elif c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c in "([{":
            stack.append(c)
        elif c in ")]}":
            if not stack or stack.pop() != pairs[c]:
                problems.append(f"unbalanced {c!r} at {i}")
                break
        i += 1
    if quote:
        problems.append("unterminated string")
    if stack:
        problems.append(f"unclosed {''.join(stack)!r}")
    for var in re.findall(r"\$\{?[A-Za-z_]+\}?", expr):
        if var.replace("{", "").replace("}", "") not in VARIABLES:
            problems.append(f"unknown template variable {var}")
    return problems


def overlaps(a, b):
    return (a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"]
            and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"])


def check(path, defined):
    problems = []
    p = problems.append
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < 39:
        p(f"schemaVersion {d.get('schemaVersion')!r} is older than 39")
    for key in ("uid", "title"):
        if not d.get(key):
            p(f"missing {key}")
    variables = {v.get("name"): v for v in d.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        p("no template variable `datasource` of type datasource for prometheus")
    for name, v in variables.items():
        if v.get("type") == "query" and v.get("datasource") != DATASOURCE:
            p(f"variable {name}: datasource is not ${{datasource}}")
    panels = []
    for panel in d.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows
    ids = [x.get("id") for x in panels]
    for i in sorted({i for i in ids if ids.count(i) > 1}, key=str):
        p(f"panel id {i} is used {ids.count(i)} times")
    boxes = []
    exprs = []
    for panel in panels:
        name = f"panel {panel.get('id')} {panel.get('title')!r}"
        if not isinstance(panel.get("id"), int):
            p(f"{name}: id is not an integer")
        if panel.get("type") not in PANEL_TYPES:
            p(f"{name}: unknown panel type {panel.get('type')!r}")
        g = panel.get("gridPos")
        if not isinstance(g, dict) or not all(isinstance(g.get(k), int) for k in "hwxy"):
            p(f"{name}: gridPos missing or not integers")
        elif g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            p(f"{name}: gridPos {g} is outside the 24-column grid")
        else:
            for other_name, other in boxes:
                if overlaps(g, other):
                    p(f"{name}: gridPos {g} overlaps {other_name} {other}")
            boxes.append((name, g))
        if panel.get("type") == "row":
            continue
        if not panel.get("title"):
            p(f"{name}: no title")
        if panel.get("datasource") != DATASOURCE:
            p(f"{name}: datasource is {panel.get('datasource')!r}, not ${{datasource}}")
        targets = panel.get("targets") or []
        if not targets:
            p(f"{name}: no queries")
        refs = [t.get("refId") for t in targets]
        if len(set(refs)) != len(refs) or not all(refs):
            p(f"{name}: refIds {refs} are not unique and non-empty")
        for t in targets:
            tname = f"{name} query {t.get('refId')}"
            if t.get("datasource") != DATASOURCE:
                p(f"{tname}: datasource is {t.get('datasource')!r}, not ${{datasource}}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                p(f"{tname}: empty expression")
                continue
            for problem in expr_problems(expr):
                p(f"{tname}: {problem}: {expr}")
            exprs.append((tname, expr))
    for tname, expr in exprs:
        for m in METRIC.findall(expr):
            if base_name(m, defined) is None:
                p(f"{tname}: metric {m} is not defined in src/metrics.rs")
    return problems


def main():
    paths = sys.argv[1:] or sorted(glob.glob(os.path.join(ROOT, "deploy", "grafana", "dashboards", "*.json")))
    if not paths:
        print("no dashboard found", file=sys.stderr)
        return 1
    defined = defined_metrics()
    problems = []
    for path in paths:
        problems += [f"{os.path.relpath(path, ROOT)}: {x}" for x in check(path, defined)]
    for rules in sorted(glob.glob(os.path.join(ROOT, "deploy", "prometheus", "rules", "*.rules.yml"))):
        with open(rules, encoding="utf-8") as f:
            for m in sorted(set(METRIC.findall(f.read()))):
                if base_name(m, defined) is None:
                    problems.append(f"{os.path.relpath(rules, ROOT)}: metric {m} is not defined in src/metrics.rs")
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for m in sorted(defined):
        if f"`{m}" not in readme:
            problems.append(f"README.md: metric {m} is not listed")
    for x in problems:
        print(f"check-dashboard: {x}", file=sys.stderr)
    if problems:
        print(f"check-dashboard: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"check-dashboard: {len(paths)} dashboard(s) OK, {len(defined)} metrics defined and listed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
