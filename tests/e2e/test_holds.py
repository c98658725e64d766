"""End to end: holds and the backlog (batchd(8), PAUSE; batchctl(1), status and retry). An
operator's pause lasts across a restart; GetInfo counts the entries waiting in incoming/ and
those waiting for a slot; Retry on a job waiting for its retry time makes the attempt now, and
is refused on a running job; skipped_records in Job and result.json; and the small command-line
fixes (batchd -V, batchd-sim -h/-V, submit --name with a '/')."""

import json
import os
import subprocess
import time

from harness import Env, TestFailure, batchctl, binary, call, check, hold, run, wait_for


def info(env):
    return call(env.daemon.socket, "io.batchd.GetInfo")["parameters"]


def get_job(env, key):
    return call(env.daemon.socket, "io.batchd.GetJob", {"job": key})["parameters"]["job"]


ctl = batchctl


def data_file(env, name, good=3, bad=0):
    p = os.path.join(env.dir, "src", name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        for k in range(good):
            f.write(json.dumps({"prompt": f"q{k}", "response": f"a{k}"}) + "\n")
        for k in range(bad):
            f.write(json.dumps({"prompt": k}) + "\n")  # a number, and no response
    return p


def marker(env):
    return os.path.join(env.daemon.state_dir, "paused")


def test_durable_pause():
    with Env() as env:
        d = env.daemon
        call(d.socket, "io.batchd.Pause")
        wait_for(lambda: os.path.exists(marker(env)), 10, "the pause marker in the state dir")
        check(d.stop() == 0, "batchd stops cleanly")
        d.start()
        i = info(env)
        check(i["paused"] is True and i["pause_reason"] == "operator", i)
        check("starting paused" in d.logs(), "the start says it is paused")
        name = d.drop(data_file(env, "held.jsonl"))
        wait_for(lambda: info(env)["incoming"] == 1, 10, "incoming = 1")
        i = info(env)
        check(i["waiting_for_slot"] == 1 and i["stuck"] == 0, i)
        hold(lambda: d.dir_entries("incoming") == [name] and d.jobs() == [], 1.0,
             "nothing is claimed while paused")
        st = ctl(env, "status")
        check(st.returncode == 0 and "paused by an operator" in st.stdout and
              "1 waiting in incoming/" in st.stdout, st.stdout + st.stderr)
        # submit does not wait for a claim that the paused daemon will not make (it would
        # wait up to 10 s otherwise), and says why the id is not known.
        t0 = time.monotonic()
        sub = ctl(env, "submit", data_file(env, "also-held.jsonl"))
        took = time.monotonic() - t0
        check(sub.returncode == 0 and sub.stdout.strip() == "also-held", sub.stdout + sub.stderr)
        check("batchd is paused" in sub.stderr and "until batchctl resume" in sub.stderr,
              sub.stderr)
        check(took < 9, f"submit waited {took:.1f}s for a claim while paused")
        call(d.socket, "io.batchd.Resume")
        for n in ("held", "also-held"):
            wait_for(lambda: os.path.exists(os.path.join(d.spool, "done", n, "result.json")), 30,
                     f"{n} is ready after resume")
        wait_for(lambda: not os.path.exists(marker(env)), 10, "the marker is gone after resume")
        i = info(env)
        check(i["incoming"] == 0 and i["waiting_for_slot"] == 0, i)
        # The resume is durable too.
        check(d.stop() == 0, "batchd stops cleanly")
        d.start()
        i = info(env)
        check(i["paused"] is False and i["pause_reason"] is None, i)


def test_backlog_max_active_1():
    with Env(sim_args=("--batch-processing", "2s"), extra_conf="job.max_active = 1") as env:
        d = env.daemon
        names = [d.drop(data_file(env, f"b{k}.jsonl")) for k in range(4)]

        # The first job may finish at any time, so status is read in the same condition (it
        # shows the state of one moment; the jobs listed before and after it agree with it).
        last = {}

        def one_running_three_waiting():
            i = info(env)
            if not (i["incoming"] == 3 and i["waiting_for_slot"] == 3 and
                    len([j for j in d.jobs() if j["state"] != "ready"]) == 1):
                return False
            last["status"] = ctl(env, "status").stdout
            return "3 waiting in incoming/ (3 for a free slot" in last["status"]
        try:
            wait_for(one_running_three_waiting, 20,
                     "1 job running, 3 waiting for a slot, and status saying so")
        except TestFailure as e:
            raise TestFailure(f"{e}; the last status read: {last.get('status')!r}") from None
        wait_for(lambda: len(d.dir_entries("done")) == 4, 60, "all four ready")
        check(sorted(d.dir_entries("done")) == sorted(n[:-len(".jsonl")] for n in names),
              d.dir_entries("done"))
        i = info(env)
        check(i["incoming"] == 0 and i["waiting_for_slot"] == 0, i)


def test_retry_now_beats_retry_after():
    sim = ("--fault", "429=1x@create_dataset", "--retry-after", "30")
    with Env(sim_args=sim) as env:
        d = env.daemon
        d.drop(data_file(env, "later.jsonl"))
        wait_for(lambda: d.jobs() and d.jobs()[0]["retry_at"] is not None, 20,
                 "the job waits for its retry time after the 429")
        j = d.jobs()[0]
        check(j["state"] == "creating_dataset" and j["dataset_id"] is None, j)
        start = time.monotonic()
        r = call(d.socket, "io.batchd.Retry", {"job": j["id"]})
        check("error" not in r, r)
        check(r["parameters"]["job"]["retry_at"] is None, r)
        wait_for(lambda: get_job(env, j["id"])["dataset_id"] is not None, 5,
                 "the dataset is created within seconds of the retry")
        wait_for(lambda: get_job(env, j["id"])["state"] == "ready", 20, "ready")
        took = time.monotonic() - start
        check(took < 25, f"ready {took:.1f}s after the retry: the Retry-After of 30s was waited")
        notes = [h["note"] for h in get_job(env, j["id"])["history"]]
        check(any("retry requested by an operator" in n for n in notes), notes)
        check("(later): retried now" in d.logs(), "the log line names the job")


def test_retry_running_refused():
    with Env(sim_args=("--batch-processing", "60s",)) as env:
        d = env.daemon
        d.drop(data_file(env, "busy.jsonl"))
        wait_for(lambda: d.jobs() and d.jobs()[0]["state"] == "processing", 20, "processing")
        r = call(d.socket, "io.batchd.Retry", {"job": "busy"})
        check(r.get("error") == "io.batchd.InvalidState", r)
        check("running" in r["parameters"].get("message", ""), r)
        p = ctl(env, "retry", "busy")
        check(p.returncode == 65 and "running" in p.stderr, (p.returncode, p.stdout, p.stderr))
        check(d.jobs()[0]["state"] == "processing", d.jobs())


def test_skipped_records():
    with Env(extra_conf="job.invalid_records = skip") as env:
        d = env.daemon
        d.drop(data_file(env, "mixed.jsonl", good=3, bad=2))
        d.drop(data_file(env, "clean.jsonl", good=3))
        wait_for(lambda: sorted(d.dir_entries("done")) == ["clean", "mixed"], 30, "both ready")
        check(get_job(env, "mixed")["skipped_records"] == 2, get_job(env, "mixed"))
        check(get_job(env, "clean")["skipped_records"] == 0, get_job(env, "clean"))
        check(d.result("mixed")["skipped_records"] == 2, d.result("mixed"))
        check(d.result("mixed")["records"] == 3, d.result("mixed"))
        check(d.result("clean")["skipped_records"] == 0, d.result("clean"))
        # validate --json counts the rejected records in skip mode, valid or not.
        for good, bad in ((3, 4), (0, 5)):
            p = ctl(env, "--json", "validate", data_file(env, f"v{good}{bad}.jsonl", good, bad))
            out = json.loads(p.stdout)
            check(out["rejected"] == bad and out["records"] == good,
                  f"{good} good, {bad} bad: {out}")
            check(p.returncode == (0 if good else 65), p.returncode)


def test_small_cli():
    for args in (["-V"], ["--version"]):
        p = subprocess.run([binary("batchd"), *args], capture_output=True, text=True, timeout=10)
        check(p.returncode == 0 and p.stdout.startswith("batchd "), (args, p))
    for args in (["-V"], ["--version"]):
        p = subprocess.run([binary("batchd-sim"), *args], capture_output=True, text=True,
                           timeout=10)
        check(p.returncode == 0 and p.stdout.startswith("batchd-sim "), (args, p))
    for args in (["-h"], ["--help"]):
        p = subprocess.run([binary("batchd-sim"), *args], capture_output=True, text=True,
                           timeout=10)
        check(p.returncode == 0 and p.stdout.startswith("Usage: batchd-sim"), (args, p))
    with Env(start=False) as env:
        p = ctl(env, "submit", data_file(env, "x.jsonl"), "--name", "a/b")
        check(p.returncode == 65, p.returncode)
        check("'a/b' contains '/'" in p.stderr and "cannot name a path" in p.stderr, p.stderr)
        check(env.daemon.dir_entries("incoming") == [], env.daemon.dir_entries("incoming"))


if __name__ == "__main__":
    run([test_durable_pause, test_backlog_max_active_1, test_retry_now_beats_retry_after,
         test_retry_running_refused, test_skipped_records, test_small_cli])
