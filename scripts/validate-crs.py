#!/usr/bin/env python3
"""Strict validation of custom resources (ServiceMonitor, PrometheusRule) in rendered manifests.

kubernetes-validate knows only Kubernetes' own kinds. This reads the CustomResourceDefinitions
given with --crd (prometheus-operator's, from its Go module), turns each version's
openAPIV3Schema into a JSON Schema that rejects unknown fields the way the API server's strict
field validation does (additionalProperties: false wherever properties are listed, unless the
CRD preserves unknown fields), and validates every manifest document of a kind those CRDs define.
Documents of other kinds are left to kubernetes-validate. Exit 1 on any error, listing each.

    validate-crs.py --crd CRD.yaml [--crd ...] MANIFESTS.yaml [...]
"""
import argparse
import sys

import jsonschema
import yaml


def strict(node):
    """The JSON Schema of one OpenAPI v3 (structural) schema node, unknown fields rejected."""
    if isinstance(node, list):
        return [strict(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: strict(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = strict(value)
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = strict(value)
        elif key.startswith("x-kubernetes-"):
            continue
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = out.get("anyOf", []) + [{"type": "integer"}, {"type": "string"}]
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def load_crds(paths):
    schemas = {}
    for path in paths:
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    schema = strict(version["schema"]["openAPIV3Schema"])
                    # metadata is checked by the API server itself; the CRD lists it as `object`.
                    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
                    schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crd", action="append", required=True)
    parser.add_argument("manifests", nargs="+")
    args = parser.parse_args()
    schemas = load_crds(args.crd)
    groups = {api.split("/")[0] for api, _ in schemas}
    errors, checked = [], 0
    for path in args.manifests:
        with open(path) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for doc in docs:
            api, kind = doc.get("apiVersion", ""), doc.get("kind", "")
            name = f"{path}: {kind} {doc.get('metadata', {}).get('name', '?')}"
            schema = schemas.get((api, kind))
            if schema is None:
                if api.split("/")[0] in groups:
                    errors.append(f"{name}: no CRD given for {api} {kind}")
                continue
            checked += 1
            validator = jsonschema.Draft7Validator(schema)
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
                where = ".".join(str(p) for p in e.absolute_path) or "(document)"
                errors.append(f"{name}: {where}: {e.message}")
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    print(f"validate-crs: {checked} custom resources checked, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
