#!/usr/bin/env python3
"""Kubernetes JSON schemas for kubeconform, made offline from the API's own
OpenAPI document (api/openapi-spec/swagger.json of the k8s.io/kubernetes Go
module, which the Go module proxy serves).

One file per kind, named as kubeconform looks them up
(`{kind}{-group}-{version}.json`, group cut at its first dot, none for the
core group), each self-contained: the kind's definition and every definition
it reaches. Strict like `kubectl --validate=strict`: an object with declared
properties admits no other key, so a misspelt field fails.

usage: k8s_schemas.py SWAGGER_JSON OUT_DIR
"""

import json
import os
import sys

REF = "#/definitions/"


def strict(node):
    """kubeconform's -strict: objects with properties take no unknown keys;
    int-or-string fields take either."""
    if isinstance(node, dict):
        if node.get("format") == "int-or-string":
            return {"oneOf": [{"type": "string"}, {"type": "integer"}]}
        out = {key: strict(value) for key, value in node.items()}
        if "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [strict(item) for item in node]
    return node


def refs(node, found):
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith(REF):
            found.add(ref[len(REF):])
        for value in node.values():
            refs(value, found)
    elif isinstance(node, list):
        for item in node:
            refs(item, found)


def closure(definitions, name):
    seen, todo = set(), [name]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        found = set()
        refs(definitions[current], found)
        todo.extend(found - seen)
    return seen


def main(swagger_path, out_dir):
    with open(swagger_path, encoding="utf-8") as f:
        definitions = json.load(f)["definitions"]
    os.makedirs(out_dir, exist_ok=True)
    written = 0
    for name, definition in definitions.items():
        kinds = definition.get("x-kubernetes-group-version-kind") or []
        # Only top-level objects (those with apiVersion and kind) are manifests.
        properties = definition.get("properties", {})
        if "kind" not in properties or "apiVersion" not in properties:
            continue
        for gvk in kinds:
            group = gvk["group"].split(".")[0]
            suffix = f"-{group}-{gvk['version']}" if group else f"-{gvk['version']}"
            schema = strict(definition)
            schema["definitions"] = {
                dep: strict(definitions[dep])
                for dep in sorted(closure(definitions, name) - {name})
            }
            schema["$schema"] = "http://json-schema.org/schema#"
            path = os.path.join(out_dir, f"{gvk['kind'].lower()}{suffix}.json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(schema, f, separators=(",", ":"))
            written += 1
    if written == 0:
        sys.exit(f"no kinds found in {swagger_path}")
    print(f"{written} schemas in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
