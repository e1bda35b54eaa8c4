#!/usr/bin/env python3
"""The configuration the Helm chart renders is one the real binary accepts,
in every role the chart runs, with the environment the chart gives it.

For the default values and for values with every optional key set, it
renders the ConfigMap and runs the built `signals` as each container would
(serve with --listen 0.0.0.0 and the tokens, speed and a batch share
without them, migrate from its environment alone), pointed at closed ports
with startup_timeout = 0s: a configuration the binary refuses exits 2
("invalid configuration"), one it accepts gets as far as connecting and
fails there, saying so. A serve without tokens must be refused, so the check
is known to tell the two apart.

usage: check_chart_config.py CHART SIGNALS_BINARY   (helm on PATH)
"""

import os
import subprocess
import sys
import tempfile

import yaml

TOKENS = {"SIGNALS_SERVER__API_TOKENS": '["ci-api-token-0123456789"]',
          "SIGNALS_SERVER__ADMIN_TOKEN": "ci-admin-token-0123456789"}
VALUES = {
    "default": [],
    "every optional key": ["--set", "redis.url=redis://127.0.0.1:1", "--set", "schemaRegistry.url=http://127.0.0.1:1",
                           "--set", "kafka.createTopics=false", "--set", "migrate.enabled=false",
                           "--set-string", 'extraConfig=[[signals]]\nname = "views_2h"\nevents = ["view"]\naggregation = "count"\nwindow = "2h"'
                                           '\n[[segments]]\nname = "browsing"\nrule = "views_2h >= 5"'],
}


def render(chart, extra):
    out = subprocess.run(["helm", "template", "t", chart, "--kube-version", os.environ.get("KUBERNETES_VERSION", "1.34.2"),
                          "--set", "auth.apiTokens[0]=x", "--set", "auth.adminToken=y", *extra],
                         capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["signals.toml"]
    migrate = next((d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("-migrate")), None)
    return config, migrate


def run(binary, args, env, data):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SIGNALS_")}
    environment.update({"SIGNALS_STARTUP_TIMEOUT": "0s", "SIGNALS_LOG__KAFKA__BROKERS": "127.0.0.1:1",
                        "SIGNALS_LOG__KAFKA__TIMEOUT": "1s", "SIGNALS_STORE__SCYLLA__NODES": "127.0.0.1:1",
                        "SIGNALS_SPEED__LISTEN": "127.0.0.1:0", "SIGNALS_DATA_DIR": data})
    environment.update(env)
    try:
        result = subprocess.run([binary, *args], env=environment, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return None, "timed out"
    return result.returncode, result.stderr.strip().splitlines()[-1:] or [""]


def main(chart, binary):
    passed = failed = 0

    def expect(what, code, detail, accepted):
        nonlocal passed, failed
        text = " ".join(detail)
        if accepted:
            # Past the configuration, failing only where it connects.
            ok = code not in (None, 0, 2) and "invalid configuration" not in text and "api_tokens" not in text \
                and any(word in text for word in ("unavailable", "cannot use", "cannot connect"))
        else:
            ok = code not in (None, 0) and "api_tokens" in text
        passed, failed = (passed + 1, failed) if ok else (passed, failed + 1)
        print(f"{'ok  ' if ok else 'FAIL'} {what}: exit {code} {detail}")

    with tempfile.TemporaryDirectory() as data:
        for name, extra in VALUES.items():
            config, migrate = render(chart, extra)
            path = os.path.join(data, f"{name.replace(' ', '-')}.toml")
            with open(path, "w") as f:
                f.write(config)
            config_env = {"SIGNALS_CONFIG": path}
            code, detail = run(binary, ["serve", "--listen", "0.0.0.0:8080"], {**config_env, **TOKENS}, data)
            expect(f"{name}: serve accepts the config", code, detail, True)
            code, detail = run(binary, ["speed"], config_env, data)
            expect(f"{name}: speed accepts the config without tokens", code, detail, True)
            code, detail = run(binary, ["batch", "run", "--partitions", "0-5"], config_env, data)
            expect(f"{name}: a batch share accepts the config without tokens", code, detail, True)
            code, detail = run(binary, ["serve", "--listen", "0.0.0.0:8080"], config_env, data)
            expect(f"{name}: serve beyond loopback without tokens is refused", code, detail, False)
            if migrate:
                container = migrate["spec"]["template"]["spec"]["containers"][0]
                env = {e["name"]: e["value"] for e in container["env"]}
                env["SIGNALS_STORE__SCYLLA__NODES"] = "127.0.0.1:1"
                env["SIGNALS_DATA_DIR"] = data
                code, detail = run(binary, ["migrate"], env, data)
                expect(f"{name}: the migrate hook's environment is accepted", code, detail, True)
    print(f"chart config in the binary: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
