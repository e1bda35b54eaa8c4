#!/usr/bin/env python3
"""The chart's batch CronJob splits the log's partitions into shares that
cover every partition exactly once, for many (partitions, shares) pairs.

For each pair it renders the chart with helm, reads the Indexed Job, and
runs the container's own shell command once per completion index with a
stand-in `signals` on PATH that prints its arguments: so what is checked is
the `--partitions` each worker would really be given. Impossible pairs
(shares above partitions, zero shares) must fail to render.

usage: check_batch_shares.py CHART   (helm on PATH)
"""

import os
import subprocess
import sys
import tempfile

import yaml

PAIRS = [(1, 1), (6, 1), (6, 4), (6, 6), (7, 3), (24, 4), (24, 5), (64, 7), (100, 9), (128, 128)]
REFUSED = [(4, 5), (6, 0), (1, 2)]
TOKENS = ["--set", "auth.apiTokens[0]=ci-api-token-0123456789", "--set", "auth.adminToken=ci-admin-token-0123456789"]


def render(chart, partitions, shares):
    return subprocess.run(
        ["helm", "template", "t", chart, "--kube-version", os.environ.get("KUBERNETES_VERSION", "1.34.2"),
         "--show-only", "templates/batch-cronjob.yaml",
         "--set", f"kafka.partitions={partitions}", "--set", f"batch.shares={shares}",
         "--set", "speed.replicas=1", *TOKENS],
        capture_output=True, text=True,
    )


def parse_partitions(text):
    """The syntax of `signals batch run --partitions` (`0-5,9`)."""
    out = []
    for piece in text.split(","):
        if "-" in piece:
            start, end = (int(x) for x in piece.split("-", 1))
            assert start <= end, f"empty range {piece}"
            out.extend(range(start, end + 1))
        else:
            out.append(int(piece))
    return out


def worker_argv(command, index, fake_bin):
    env = dict(os.environ, JOB_COMPLETION_INDEX=str(index), PATH=f"{fake_bin}:{os.environ['PATH']}")
    # command = [tini, --, /bin/sh, -c, script]: run the shell part as is.
    assert command[:2] == ["/usr/bin/tini", "--"], command
    result = subprocess.run(command[2:], capture_output=True, text=True, env=env)
    return result.returncode, result.stdout.split()


def check(chart, partitions, shares, fake_bin):
    result = render(chart, partitions, shares)
    if result.returncode != 0:
        return [f"render failed: {result.stderr.strip()}"]
    cronjob = yaml.safe_load(result.stdout)
    job = cronjob["spec"]["jobTemplate"]["spec"]
    errors = []
    if job.get("completionMode") != "Indexed":
        errors.append(f"completionMode {job.get('completionMode')}")
    if job["completions"] != shares or job["parallelism"] != shares:
        errors.append(f"completions {job['completions']} parallelism {job['parallelism']}, want {shares}")
    command = job["template"]["spec"]["containers"][0]["command"]
    covered = []
    for index in range(job["completions"]):
        code, argv = worker_argv(command, index, fake_bin)
        if code != 0 or argv[:3] != ["batch", "run", "--partitions"] or len(argv) != 4:
            errors.append(f"index {index}: exit {code}, argv {argv}")
            continue
        share = parse_partitions(argv[3])
        if not share:
            errors.append(f"index {index}: empty share")
        covered.extend(share)
    # An index beyond the Job's completions has no share.
    code, _ = worker_argv(command, job["completions"], fake_bin)
    if code == 0:
        errors.append("an index past the last one ran")
    if sorted(covered) != list(range(partitions)):
        missing = sorted(set(range(partitions)) - set(covered))
        twice = sorted({p for p in covered if covered.count(p) > 1})
        extra = sorted(set(covered) - set(range(partitions)))
        errors.append(f"missing {missing}, twice {twice}, out of range {extra}")
    return errors


def main(chart):
    failed = passed = 0
    with tempfile.TemporaryDirectory() as fake_bin:
        fake = os.path.join(fake_bin, "signals")
        with open(fake, "w") as f:
            f.write('#!/bin/sh\necho "$@"\n')
        os.chmod(fake, 0o755)
        for partitions, shares in PAIRS:
            errors = check(chart, partitions, shares, fake_bin)
            if errors:
                failed += 1
                print(f"FAIL {partitions} partitions / {shares} shares: {'; '.join(errors)}")
            else:
                passed += 1
                print(f"ok   {partitions} partitions / {shares} shares: each partition in exactly one share")
        for partitions, shares in REFUSED:
            if render(chart, partitions, shares).returncode == 0:
                failed += 1
                print(f"FAIL {partitions} partitions / {shares} shares rendered; must be refused")
            else:
                passed += 1
                print(f"ok   {partitions} partitions / {shares} shares refused")
    print(f"batch shares: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
