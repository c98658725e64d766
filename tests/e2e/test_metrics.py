"""End to end: the metrics (batchd(8), METRICS). After a job reaches READY against batchd-sim,
`batchctl metrics` passes `promtool check metrics`, GET /metrics on [metrics] listen serves
the same families (other paths 404, other methods 405), a real Prometheus server scraping
batchd answers `up == 1` and a non-zero request counter through its query API, and
examples/prometheus/alerts.yml passes `promtool check rules`. Skips only when promtool or
prometheus is not installed (Debian's prometheus package)."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

from harness import (SLOW, SOURCE, Env, Skipped, TestFailure, batchctl, binary, check, run,
                     wait_for)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def need(tool):
    path = shutil.which(tool)
    if not path:
        raise Skipped(f"{tool} is not installed (Debian package prometheus)")
    return path


ctl = batchctl


def run_job(env):
    src = os.path.join(env.dir, "m.jsonl")
    with open(src, "w") as f:
        for k in range(3):
            f.write(json.dumps({"prompt": f"q{k}", "response": f"a{k}"}) + "\n")
    env.daemon.drop(src)
    wait_for(lambda: any(j["state"] == "ready" for j in env.daemon.jobs()), 60 * SLOW,
             "the job to be ready")
    # READY shows before the job's record is durable and its directory moves to done/; the
    # finish is counted after the move.
    wait_for(lambda: finished_counted(env), 30 * SLOW, "the job's finish to be counted")


def finished_counted(env):
    r = ctl(env, "metrics")
    return r.returncode == 0 and re.search(
        r'^batchd_jobs_finished_total\{outcome="ready",code="none"\} 1$', r.stdout, re.M)


def http(method, url):
    req = urllib.request.Request(url, method=method, data=b"x" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def families(text):
    return sorted(re.findall(r"^# TYPE (\S+) ", text, re.M))


def sample(text, pattern):
    """The value of the one sample line matching pattern (a regex of the name and labels)."""
    m = re.search(r"^" + pattern + r" (\S+)$", text, re.M)
    check(m, f"no sample {pattern} in:\n{text}")
    return float(m.group(1))


def metrics_env():
    port = free_port()
    return Env(extra_conf=f"metrics.listen = 127.0.0.1:{port}"), port


def test_text_promtool_and_http():
    promtool = need("promtool")
    env, port = metrics_env()
    with env:
        run_job(env)
        r = ctl(env, "metrics")
        check(r.returncode == 0, f"batchctl metrics: {r.returncode} {r.stderr}")
        text = r.stdout
        p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=60)
        check(p.returncode == 0, f"promtool check metrics: {p.stdout}{p.stderr}\n{text}")
        check(sample(text, r'batchd_build_info\{version="[^"]+"\}') == 1, "build_info")
        check(sample(text, r'batchd_jobs\{state="ready"\}') == 1, "one ready job")
        check(sample(text, r'batchd_jobs_finished_total\{outcome="ready",code="none"\}') == 1,
              "one job finished ready")
        check(sample(text, r'batchd_api_requests_total\{endpoint="create_dataset",'
                           r'status_class="2xx"\}') == 1, "one dataset created")
        check(sample(text, r'batchd_upload_bytes_total') > 0, "bytes uploaded")
        check(sample(text, r'batchd_job_ready_duration_seconds_count') == 1, "claim to READY")
        check(sample(text, r'batchd_job_stage_duration_seconds_count\{stage="uploading"\}') == 1,
              "the uploading stage timed")
        check(sample(text, r'batchd_paused\{reason="operator"\}') == 0, "not paused")
        check(sample(text, r'process_open_fds') > 0, "process_open_fds")
        for name in ("process_cpu_seconds_total", "process_resident_memory_bytes",
                     "process_virtual_memory_bytes", "process_max_fds",
                     "process_start_time_seconds", "batchd_hook_runs_total",
                     "batchd_rate_limit_wait_seconds_total", "batchd_api_retries_total",
                     "batchd_incoming_entries", "batchd_stuck_entries",
                     "batchd_waiting_for_slot_entries",
                     "batchd_api_request_duration_seconds"):
            check(f"# TYPE {name} " in text, f"{name} missing")
        j = ctl(env, "--json", "metrics")
        check(j.returncode == 0 and families(json.loads(j.stdout)["text"]) == families(text),
              f"batchctl --json metrics: {j.stdout[:300]}")

        base = f"http://127.0.0.1:{port}"
        status, headers, body = http("GET", base + "/metrics")
        check(status == 200, f"GET /metrics: {status}")
        check(headers["Content-Type"].startswith("text/plain; version=0.0.4"),
              headers["Content-Type"])
        check(families(body) == families(text), f"GET /metrics families differ:\n{body}")
        check(sample(body, r'batchd_jobs\{state="ready"\}') == 1, "GET /metrics: ready job")
        for path in ("/", "/metrics/", "/metricsx", "/api/v1/query", "/../metrics"):
            status, _, _ = http("GET", base + path)
            check(status == 404, f"GET {path}: {status}")
        for method in ("POST", "PUT", "DELETE"):
            status, headers, _ = http(method, base + "/metrics")
            check(status == 405, f"{method} /metrics: {status}")
        status, _, body = http("HEAD", base + "/metrics")
        check(status == 200 and body == "", f"HEAD /metrics: {status}")


def test_listen_off_by_default_and_bad_address():
    with Env() as env:
        check("serving GET /metrics" not in env.daemon.logs(),
              "serves metrics without [metrics] listen")
        r = ctl(env, "metrics")
        check(r.returncode == 0 and "# TYPE batchd_jobs gauge" in r.stdout, r.stderr)
    with Env(extra_conf="metrics.listen = localhost:9465", start=False) as env:
        p = subprocess.run([binary("batchd"), "-c", env.daemon.conf, "--check-config"],
                           capture_output=True, text=True, timeout=30)
        out = p.stdout + p.stderr
        check(p.returncode == 78, f"--check-config: {p.returncode} {out}")
        check(re.search(r"batchd\.conf:\d+: \[metrics\] listen = localhost:9465: ", out), out)
    # A port already taken: batchd says so and exits 69 instead of running without metrics.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        with Env(extra_conf=f"metrics.listen = 127.0.0.1:{port}", start=False) as env:
            proc = env.daemon.start(wait=False)
            code = proc.wait(30 * SLOW)
            check(code == 69, f"batchd exited {code} with its metrics port taken")
            check(f"127.0.0.1:{port}" in env.daemon.logs(), env.daemon.logs())


def query(base, expr):
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            data = json.loads(r.read())
    except (OSError, ValueError):
        return None
    if data.get("status") != "success":
        return None
    return [float(v["value"][1]) for v in data["data"]["result"]]


def test_real_prometheus_scrapes():
    prometheus = need("prometheus")
    env, port = metrics_env()
    with env:
        run_job(env)
        prom_port = free_port()
        conf = os.path.join(env.dir, "prometheus.yml")
        with open(conf, "w") as f:
            f.write("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                    "rule_files:\n  - " + os.path.join(SOURCE, "examples", "prometheus",
                                                        "alerts.yml") + "\n"
                    "scrape_configs:\n  - job_name: batchd\n    static_configs:\n"
                    f"      - targets: ['127.0.0.1:{port}']\n")
        log = open(os.path.join(env.dir, "prometheus.log"), "wb")
        proc = subprocess.Popen(
            [prometheus, f"--config.file={conf}",
             f"--storage.tsdb.path={os.path.join(env.dir, 'tsdb')}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=log, stderr=log, start_new_session=True)
        try:
            base = f"http://127.0.0.1:{prom_port}"

            def up_and_counting():
                if proc.poll() is not None:
                    raise TestFailure(f"prometheus exited with {proc.returncode}")
                up = query(base, 'up{job="batchd"}')
                reqs = query(base, 'sum(batchd_api_requests_total{job="batchd"})')
                return up == [1.0] and reqs and reqs[0] > 0

            try:
                wait_for(up_and_counting, 60 * SLOW, "Prometheus to scrape batchd")
            except TestFailure:
                log.flush()
                with open(os.path.join(env.dir, "prometheus.log"), "rb") as f:
                    raise TestFailure("Prometheus never saw up == 1 and requests > 0:\n" +
                                      f.read()[-3000:].decode(errors="replace")) from None
            ready = query(base, 'batchd_jobs_finished_total{outcome="ready"}')
            check(ready == [1.0], f"Prometheus sees {ready} ready jobs")
            rules = query(base, 'ALERTS')
            check(rules is not None, "the alert rules evaluate")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            log.close()


def test_examples():
    promtool = need("promtool")
    rules = os.path.join(SOURCE, "examples", "prometheus", "alerts.yml")
    p = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode == 0, f"promtool check rules: {p.stdout}{p.stderr}")
    # And they fire when they should, and not otherwise (alerts_test.yml's cases).
    tests = os.path.join(SOURCE, "examples", "prometheus", "alerts_test.yml")
    p = subprocess.run([promtool, "test", "rules", tests], capture_output=True, text=True,
                       timeout=60)
    check(p.returncode == 0, f"promtool test rules: {p.stdout}{p.stderr}")
    # Every metric the dashboard and the rules use is one batchd exports.
    with Env() as env:
        text = ctl(env, "metrics").stdout
    exported = set(families(text))
    with open(os.path.join(SOURCE, "examples", "grafana", "batchd.json")) as f:
        dash = json.load(f)
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    with open(rules) as f:
        exprs.append(f.read())
    used = set()
    for e in exprs:
        for name in re.findall(r"\b((?:batchd|process)_[a-z_]+)", e):
            used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    missing = sorted(n for n in used if n not in exported)
    check(not missing, f"examples use metrics batchd does not export: {missing}")
    check(len(dash["panels"]) >= 5, "dashboard panels")


if __name__ == "__main__":
    run([test_text_promtool_and_http, test_listen_off_by_default_and_bad_address,
         test_real_prometheus_scrapes, test_examples])
