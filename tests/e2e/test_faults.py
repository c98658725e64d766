"""End to end: batchd keeps every job going through API faults — 5xx, 429 with Retry-After,
dropped connections, responses slower than the timeout — and never sends a request before a
Retry-After has elapsed."""

import json
import os

from harness import Env, check, run, wait_for


def make_jobs(env, n, prefix="job"):
    src = os.path.join(env.dir, "src")
    os.makedirs(src, exist_ok=True)
    names = []
    for i in range(n):
        p = os.path.join(src, f"{prefix}{i:02d}.jsonl")
        with open(p, "w") as f:
            for k in range(4):
                f.write(json.dumps({"prompt": f"q{i}.{k}", "response": f"a{i}.{k}"}) + "\n")
        names.append(env.daemon.drop(p)[: -len(".jsonl")])
    return names


def one_batch_per_job(env, n):
    st = env.sim.state()
    check(len(st["batches"]) == n, f"{len(st['batches'])} batches for {n} jobs")
    seen = set()
    for b in st["batches"]:
        for ds in b["datasets"]:
            check(ds["id"] not in seen, f"two batches for dataset {ds['id']}")
            seen.add(ds["id"])
    return st


def test_faults_all_jobs_ready():
    n = 20
    sim_args = ["--fault", "5xx=0.2", "--fault", "429=0.1", "--fault", "drop=0.05",
                "--fault", "drop-after=0.03", "--fault", "slow=0.03", "--slow", "3s",
                "--retry-after", "1"]
    with Env(sim_args=sim_args, extra_conf="api.timeout = 1s") as env:
        d = env.daemon
        names = make_jobs(env, n)
        wait_for(lambda: len(d.dir_entries("done")) + len(d.dir_entries("failed")) == n, 240,
                 "every job finished")
        check(d.dir_entries("failed") == [], f"failed jobs: {d.dir_entries('failed')}")
        for name in names:
            check(d.result(name)["batch_status"] == "READY", name)
        st = one_batch_per_job(env, n)
        kinds = {r["fault"] for r in st["requests"] if r["fault"]}
        for k in ("429", "drop", "slow"):
            check(k in kinds, f"the sim injected no {k} fault (seen {kinds})")
        check(any(k in kinds for k in ("500", "502", "503")), f"no 5xx injected: {kinds}")
        d.stop()
        env.assert_no_token_leak()


def test_retry_after_honoured():
    """One job, many 429s: each next request waits at least the Retry-After."""
    sim_args = ["--fault", "429=0.4", "--retry-after", "1"]
    with Env(sim_args=sim_args) as env:
        d = env.daemon
        make_jobs(env, 1, prefix="ra")
        wait_for(lambda: d.dir_entries("done") == ["ra00"], 120, "the job in done/")
        reqs = [r for r in env.sim.state()["requests"] if r["endpoint"] != "upload"]
        n429 = 0
        for prev, nxt in zip(reqs, reqs[1:]):
            if prev["status"] == 429:
                n429 += 1
                check(prev["retry_after_ms"] == 1000, prev)
                gap = nxt["t_ms"] - prev["t_ms"]
                check(gap >= prev["retry_after_ms"],
                      f"request {nxt['seq']} came {gap} ms after a 429 with Retry-After 1s")
        check(n429 >= 2, f"only {n429} 429s were injected")


def test_retry_after_http_date():
    sim_args = ["--fault", "429=0.5@create_batch", "--retry-after", "date"]
    with Env(sim_args=sim_args) as env:
        d = env.daemon
        make_jobs(env, 1, prefix="rd")
        wait_for(lambda: d.dir_entries("done") == ["rd00"], 120, "the job in done/")
        reqs = [r for r in env.sim.state()["requests"] if r["endpoint"] == "create_batch"]
        check(any(r["status"] == 429 for r in reqs), f"no 429 injected: {reqs}")
        for prev, nxt in zip(reqs, reqs[1:]):
            if prev["status"] == 429:
                # An HTTP-date has one-second resolution: the wait ends at the next second.
                check(nxt["t_ms"] >= prev["t_ms"] + prev["retry_after_ms"],
                      f"create_batch retried {nxt['t_ms'] - prev['t_ms']} ms after a 429")
        check(len(reqs) >= 1, reqs)


if __name__ == "__main__":
    run([test_faults_all_jobs_ready, test_retry_after_honoured, test_retry_after_http_date])
