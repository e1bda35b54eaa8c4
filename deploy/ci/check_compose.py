#!/usr/bin/env python3
"""docker-compose.yml against the compose specification, without Docker.

What `docker compose config` would refuse: the file, interpolated the way
compose does it (${VAR}, ${VAR:-default}, ${VAR-default}, $$) from an empty
environment, must validate against the specification's JSON schema
(compose-spec/compose-go's schema/compose-spec.json), and its references
must resolve: depends_on and volumes_from name services, named volumes are
declared, bind-mounted files and build contexts exist. A copy with a
misspelt service key must fail, so the check itself is known to bite.

usage: check_compose.py COMPOSE_FILE SCHEMA_JSON
"""

import copy
import json
import os
import re
import sys

import jsonschema
import yaml

VARIABLE = re.compile(r"\$(\$|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])((?:[^{}]|\{[^{}]*\})*))?\}|([A-Za-z_][A-Za-z0-9_]*))")


def interpolate(value, env):
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match):
        if match.group(1) == "$":
            return "$"
        name = match.group(2) or match.group(5)
        op, arg = match.group(3), match.group(4) or ""
        current = env.get(name)
        if op in (":-", "-"):
            unset = current is None or (op == ":-" and current == "")
            return interpolate(arg, env) if unset else current
        if op in (":?", "?"):
            if current is None or (op == ":?" and current == ""):
                raise ValueError(f"required variable {name} is missing: {arg}")
            return current
        if op in (":+", "+"):
            return interpolate(arg, env) if current else ""
        return current or ""

    return VARIABLE.sub(one, value)


def references(doc, base):
    errors = []
    services = doc.get("services", {})
    volumes = set((doc.get("volumes") or {}).keys())
    for name, service in services.items():
        depends = service.get("depends_on", [])
        for dep in depends if isinstance(depends, list) else depends.keys():
            if dep not in services:
                errors.append(f"{name}: depends_on unknown service {dep}")
        for mount in service.get("volumes", []):
            source = mount.split(":", 1)[0] if isinstance(mount, str) else mount.get("source", "")
            if source.startswith((".", "/")):
                if not os.path.exists(os.path.join(base, source)):
                    errors.append(f"{name}: bind mount {source} does not exist")
            elif source and source not in volumes:
                errors.append(f"{name}: volume {source} is not declared under volumes")
        build = service.get("build")
        context = build if isinstance(build, str) else (build or {}).get("context")
        if context and not os.path.isdir(os.path.join(base, context)):
            errors.append(f"{name}: build context {context} does not exist")
    return errors


def validate(doc, schema, base):
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [f"{'/'.join(map(str, e.absolute_path)) or '(root)'}: {e.message}"
              for e in validator.iter_errors(doc)]
    return errors + references(doc, base)


def main(compose_path, schema_path):
    with open(schema_path, encoding="utf-8") as f:
        schema = json.load(f)
    with open(compose_path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)  # merges `<<: *anchor` as compose does
    doc = interpolate(raw, {})
    base = os.path.dirname(os.path.abspath(compose_path))
    errors = validate(doc, schema, base)
    for error in errors:
        print(f"FAIL {compose_path}: {error}")
    # The check must bite: a misspelt key and a dangling depends_on fail.
    broken = copy.deepcopy(doc)
    first = next(iter(broken["services"].values()))
    first["healthchek"] = {}
    first["depends_on"] = {"no-such-service": {"condition": "service_started"}}
    caught = validate(broken, schema, base)
    if len(caught) < 2:
        errors.append("a broken copy passed")
        print(f"FAIL the check did not catch a misspelt key and a dangling depends_on: {caught}")
    services = len(doc.get("services", {}))
    print(f"compose file: {services} services valid against the compose specification" if not errors else "compose file: invalid")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
