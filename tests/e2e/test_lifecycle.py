"""End to end: the pairwise example's workflow and concurrent jobs, batchd against batchd-sim."""

import json
import os
import signal

from harness import SLOW, Env, SOURCE, WORKSPACE, check, run, wait_for


def write_jsonl(path, n, prefix="p"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{prefix} prompt {i}", "response": f"answer {i}"}) + "\n")


def test_seed_workflow():
    """The pairwise example (task_group_id grouping) goes to READY with its layout."""
    with Env() as env:
        d = env.daemon
        d.drop(os.path.join(SOURCE, "examples", "pairwise"), "pairwise")
        wait_for(lambda: "pairwise" in d.dir_entries("done"), 30, "pairwise in done/")
        res = d.result("pairwise")
        for key in ("job", "id", "state", "workspace_id", "dataset_id", "import_id", "batch_id",
                    "batch_status", "records", "total_task_count", "total_task_groups",
                    "claimed_at", "finished_at", "api_requests"):
            check(key in res, f"result.json lacks {key}: {res}")
        check(res["state"] == "ready" and res["batch_status"] == "READY", res)
        check(res["workspace_id"] == WORKSPACE, res)
        check(res["records"] == 4 and res["total_task_count"] == 4, res)
        check(res["total_task_groups"] == 2, f"two session_id groups expected: {res}")
        check(os.path.exists(os.path.join(d.spool, "done", "pairwise", "data.jsonl")),
              "the job's own files stay with it")
        st = env.sim.state()
        check(len(st["datasets"]) == 1 and len(st["batches"]) == 1, "one dataset, one batch")
        ds = st["datasets"][0]
        check(ds["id"] == res["dataset_id"], "dataset id in result.json")
        fields = ds["schema"]["fields"]
        check(fields["session_id"]["type"] == "task_group_id", ds["schema"])
        batch = st["batches"][0]
        check(batch["id"] == res["batch_id"] and batch["status"] == "READY", batch)
        items = batch["batch_items"][0]["rows"][1]["columns"]
        check(len(items) == 2, "the example's two-column row")
        # Every API call carried the token; the upload to the presigned URL never did.
        for r in st["requests"]:
            if r["endpoint"] == "upload":
                check(not r["auth"], f"Authorization sent to the upload URL: {r}")
            else:
                check(r["auth"], f"API call without Authorization: {r}")
        eps = [r["endpoint"] for r in st["requests"]]
        for ep in ("create_dataset", "upload_url", "upload", "get_import", "create_batch",
                   "setup", "batch_status"):
            check(ep in eps, f"no {ep} request: {eps}")
        check(eps.count("create_dataset") == 1 and eps.count("create_batch") == 1, eps)
        check(res["api_requests"] == len([e for e in eps if e != "upload"]),
              f"api_requests {res['api_requests']} vs sim {len(eps)}")
        d.stop()
        env.assert_no_token_leak()


def test_concurrent_jobs():
    """50 jobs dropped at once all become READY, each with exactly one dataset and batch."""
    n = 50
    with Env() as env:
        d = env.daemon
        src = os.path.join(env.dir, "src")
        os.makedirs(src)
        for i in range(n):
            p = os.path.join(src, f"job{i:02d}.jsonl")
            write_jsonl(p, 3 + i % 5, prefix=f"j{i}")
            d.drop(p)
        wait_for(lambda: len(d.dir_entries("done")) == n, 90, f"{n} jobs in done/")
        check(d.dir_entries("failed") == [], f"failed: {d.dir_entries('failed')}")
        st = env.sim.state()
        check(len(st["datasets"]) == n, f"{len(st['datasets'])} datasets")
        check(len(st["batches"]) == n, f"{len(st['batches'])} batches")
        per_ds = {}
        for b in st["batches"]:
            for ds in b["datasets"]:
                per_ds[ds["id"]] = per_ds.get(ds["id"], 0) + 1
        check(all(v == 1 for v in per_ds.values()), "one batch per dataset")
        for i in range(n):
            res = d.result(f"job{i:02d}")
            check(res["records"] == 3 + i % 5 and res["total_task_count"] == 3 + i % 5, res)
        jobs = d.jobs(["ready"])
        check(len(jobs) == n, f"ListJobs ready: {len(jobs)}")


def test_sigterm_with_requests_in_flight():
    """SIGTERM while every request hangs: batchd does not wait for them beyond its few seconds
    of drain, and the next start resumes each job from its last durable step to READY, with
    one batch per job."""
    import time
    slow_s = 60
    with Env(sim_args=["--fault", "slow=1.0", "--slow", f"{slow_s}s"],
             extra_conf="api.timeout = 120s") as env:
        d = env.daemon
        src = os.path.join(env.dir, "src")
        os.makedirs(src)
        for i in range(3):
            p = os.path.join(src, f"t{i}.jsonl")
            write_jsonl(p, 2, prefix=f"t{i}")
            d.drop(p)
        # The sim performs a create before it holds the answer: three datasets at the sim are
        # three creates in flight (the record's intent is written before the request is sent,
        # so it does not say that).
        wait_for(lambda: len(env.sim.state()["datasets"]) == 3, 20, "three creates at the sim")
        start = time.monotonic()
        rc = d.stop(timeout=slow_s)
        took = time.monotonic() - start
        check(rc == 0, f"exit status {rc}")
        # Creates in flight get DRAIN_MS (3 s) to answer; then they are abandoned, long before
        # the sim would answer.
        check("abandoning the requests still in flight" in d.logs(), "the creates were abandoned")
        check(took < slow_s / 2, f"took {took:.1f}s to stop with requests in flight")
        check(len(d.dir_entries("active")) == 3, "the jobs stay in active/")
        env.sim.set_faults([], slow_ms=0)  # also releases the answers still held
        d.start()
        wait_for(lambda: len(d.dir_entries("done")) == 3, 60, "three jobs in done/")
        st = env.sim.state()
        check(len(st["batches"]) == 3, f"{len(st['batches'])} batches")
        logs = d.logs()
        check("stopping" in logs and "recovered" in logs, "stop and recovery are logged")


def test_sigterm_lets_a_create_finish():
    """A create in flight when SIGTERM arrives is given a few seconds to answer, so its
    dataset is recorded instead of orphaned and created again on the next start."""
    # The sim holds the create's answer until the test releases it (slow_ms = 0).
    with Env(sim_args=["--fault", "slow=1.0@create_dataset", "--slow", "600s"]) as env:
        d = env.daemon
        src = os.path.join(env.dir, "c.jsonl")
        write_jsonl(src, 2)
        d.drop(src)
        # The create reached the sim (it performs it, then holds the answer).
        wait_for(lambda: len(env.sim.state()["datasets"]) == 1, 20, "the create at the sim")
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "waiting up to" in d.logs(), 10, "the stop to wait for the create")
        check(d.proc.poll() is None, "batchd waits for the create in flight")
        env.sim.set_faults([], slow_ms=0)  # the answer comes now, within the drain
        # It is stopping already: wait for the exit (a second SIGTERM could meet the default
        # action once its signal handlers are closed).
        rc = d.proc.wait(15 * SLOW)
        check(rc == 0, f"clean exit, not {rc}")
        check("abandoning" not in d.logs(), "the create's answer was waited for, not abandoned")
        d.start()
        wait_for(lambda: d.dir_entries("done") == ["c"], 30, "the job in done/")
        st = env.sim.state()
        check(len(st["datasets"]) == 1, f"{len(st['datasets'])} datasets: one was orphaned")


def test_old_records_pruned_at_start():
    """Records of jobs finished more than 30 days ago are removed at start (their results stay
    in done/); recent ones stay listed."""
    import time
    with Env(start=False) as env:
        d = env.daemon
        jobs = os.path.join(d.state_dir, "jobs")
        os.makedirs(jobs)
        now_ms = int(time.time() * 1000)
        for jid, age_days in (("01OLDJOB", 40), ("01NEWJOB", 1)):
            rec = {"version": 1, "id": jid, "name": jid.lower(), "dir": jid.lower(),
                   "state": "ready", "moved": True, "created_at": now_ms - age_days * 86400000,
                   "finished_at": now_ms - age_days * 86400000, "history": []}
            with open(os.path.join(jobs, jid + ".json"), "w") as f:
                json.dump(rec, f)
        d.start()
        check(sorted(os.listdir(jobs)) == ["01NEWJOB.json"], f"records: {os.listdir(jobs)}")
        check([j["id"] for j in d.jobs()] == ["01NEWJOB"], "the recent job is still listed")
        check("removed 1 job record(s)" in d.logs(), "the pruning is logged")


def test_second_instance_refused():
    """A second batchd on the same spool and state refuses to start (exit 69, EX_UNAVAILABLE)
    before it touches anything; the first keeps working."""
    import subprocess
    from harness import binary
    with Env() as env:
        d = env.daemon
        p = subprocess.run([binary("batchd"), "-c", d.conf], capture_output=True, timeout=30)
        check(p.returncode == 69, f"exit {p.returncode}")
        err = p.stderr.decode()
        check("another batchd is already running" in err, err)
        check("recovered" not in err, "the second daemon recovered jobs before refusing")
        src = os.path.join(env.dir, "after.jsonl")
        write_jsonl(src, 2)
        d.drop(src)
        wait_for(lambda: d.dir_entries("done") == ["after"], 30, "the first daemon still works")


if __name__ == "__main__":
    run([test_seed_workflow, test_concurrent_jobs, test_sigterm_with_requests_in_flight,
         test_sigterm_lets_a_create_finish, test_old_records_pruned_at_start,
         test_second_instance_refused])
