#!/usr/bin/env python3
"""Every Signals metric that the alert rules and the Grafana dashboard query
is one the code records: a `metrics::counter!`/`gauge!`/`histogram!` call
with that name in the Rust sources (histograms also as _bucket, _sum,
_count). A renamed metric would otherwise leave an alert that never fires.

usage: check_metric_names.py REPO_ROOT
"""

import json
import pathlib
import re
import sys

import yaml

RECORDED = re.compile(r'\b(counter|gauge|histogram)!\(\s*"(signals_[a-z0-9_]+)"')
QUERIED = re.compile(r"\b(signals_[a-z0-9_]+)")


def recorded(root):
    kinds = {}
    for directory in ("services", "batch", "schemas"):
        for path in (root / directory).rglob("*.rs"):
            for kind, name in RECORDED.findall(path.read_text(encoding="utf-8")):
                kinds.setdefault(name, set()).add(kind)
    return kinds


def exprs_of_dashboard(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            yield node["expr"]
        for value in node.values():
            yield from exprs_of_dashboard(value)
    elif isinstance(node, list):
        for item in node:
            yield from exprs_of_dashboard(item)


def known(name, kinds):
    if name in kinds:
        return True
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)] if name.endswith(suffix) else None
        if base and "histogram" in kinds.get(base, ()):
            return True
    return False


def main(root):
    root = pathlib.Path(root)
    kinds = recorded(root)
    sources = {}
    rules = yaml.safe_load((root / "deploy/prometheus/alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            sources[f"alert {rule['alert']}"] = [rule["expr"]]
    for path in sorted((root / "deploy/grafana/dashboards").glob("*.json")):
        sources[f"dashboard {path.name}"] = list(exprs_of_dashboard(json.loads(path.read_text())))
    failed = passed = 0
    for where, exprs in sources.items():
        unknown = sorted({n for e in exprs for n in QUERIED.findall(e) if not known(n, kinds)})
        if unknown:
            failed += 1
            print(f"FAIL {where}: no such metric in the code: {', '.join(unknown)}")
        else:
            passed += 1
    print(f"metric names ({len(kinds)} recorded by the code): {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
