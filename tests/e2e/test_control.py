"""End to end: the io.batchd control socket and batchctl against the real daemon and batchd-sim.
Every method over a raw socket, Watch ordering against each job's history, batchctl's commands
and exit codes, batchctl in a real terminal (tmux), permissions for a second uid, and abuse of
the socket (500 connections, 64 MiB of garbage, a reader that never reads) while jobs run."""

import json
import os
import shutil
import signal
import socket
import subprocess
import threading

from harness import (TSAN, VALGRIND, Conn, Env, Skipped, Watch, binary, call, check, hold,
                     other_uid_bin_dir, rss_kib, run, wait_for)


def write_jsonl(path, n, prefix="p"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{prefix} prompt {i}", "response": f"answer {i}"}) + "\n")


def drop_jobs(env, names, records=3):
    src = os.path.join(env.dir, "src")
    os.makedirs(src, exist_ok=True)
    for name in names:
        p = os.path.join(src, f"{name}.jsonl")
        write_jsonl(p, records, prefix=name)
        env.daemon.drop(p)


def get_job(sock, key):
    r = call(sock, "io.batchd.GetJob", {"job": key})
    check("error" not in r, f"GetJob {key}: {r}")
    return r["parameters"]["job"]


def job_state(sock, key):
    r = call(sock, "io.batchd.GetJob", {"job": key})
    return None if "error" in r else r["parameters"]["job"]["state"]


def wait_state(sock, key, state, timeout=30):
    return wait_for(lambda: job_state(sock, key) == state, timeout, f"job {key} {state}")


def states_of(history):
    """Distinct consecutive states (notes and progress keep the state)."""
    out = []
    for s in history:
        if not out or out[-1] != s:
            out.append(s)
    return out


def ctl(env, *args, user=None, extra_env=None, timeout=30):
    """Runs batchctl against the env's socket; returns CompletedProcess (text)."""
    cmd = [binary("batchctl"), "-s", env.daemon.socket, *args]
    if user:
        # The second uid runs a copy it can reach, wherever the build tree is.
        cmd[0] = os.path.join(other_uid_bin_dir(), "batchctl")
        cmd = ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups", *cmd]
    e = dict(os.environ)
    e.pop("BATCHD_CONFIG", None)
    if extra_env:
        e.update(extra_env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=e)


def sim_seq(env):
    reqs = env.sim.get("/_sim/requests")
    reqs = reqs if isinstance(reqs, list) else reqs.get("requests", [])
    return max((r["seq"] for r in reqs), default=0)


# ------------------------------------------------------------------ raw methods


def test_methods_raw():
    """Every io.batchd and org.varlink.service method, and the errors, over a raw socket."""
    with Env() as env:
        sock = env.daemon.socket
        drop_jobs(env, ["alpha", "beta"])
        wait_for(lambda: len(env.daemon.dir_entries("done")) == 2, 30, "two jobs in done/")

        info = call(sock, "io.batchd.GetInfo")
        check("error" not in info and info.get("continues") is not True, info)
        p = info["parameters"]
        for key in ("version", "started_at", "paused", "api_url", "spool_dir", "jobs"):
            check(key in p, f"GetInfo lacks {key}: {p}")
        check(p["paused"] is False and p["spool_dir"] == env.daemon.spool, p)
        check(p["api_url"].rstrip("/") == env.sim.url.rstrip("/"), p)
        check(p["jobs"].get("ready") == 2 and p["jobs"].get("failed") == 0, p["jobs"])

        jobs = call(sock, "io.batchd.ListJobs")["parameters"]["jobs"]
        check(sorted(j["name"] for j in jobs) == ["alpha", "beta"], jobs)
        for j in jobs:
            for key in ("id", "name", "state", "dataset_id", "import_id", "batch_id", "records",
                        "bytes_total", "bytes_sent", "import_status", "accepted_count",
                        "rejected_count", "batch_status", "total_task_count", "attempts",
                        "retry_at", "last_error", "created_at", "updated_at"):
                check(key in j, f"Job lacks {key}: {j}")
            check("history" not in j, "ListJobs leaves history out")
            check(j["state"] == "ready" and j["batch_status"] == "READY" and j["records"] == 3, j)
        ready = call(sock, "io.batchd.ListJobs", {"states": ["ready"]})["parameters"]["jobs"]
        check(len(ready) == 2, ready)
        none = call(sock, "io.batchd.ListJobs", {"states": ["failed", "queued"]})
        check(none["parameters"]["jobs"] == [], none)
        bad = call(sock, "io.batchd.ListJobs", {"states": ["nonsense"]})
        check(bad.get("error") == "io.batchd.InvalidParameter" and
              bad["parameters"].get("parameter") == "states" and
              "unfinished" in bad["parameters"].get("valid", []), bad)
        bad = call(sock, "io.batchd.ListJobs", {"states": "ready"})
        check(bad.get("error") == "org.varlink.service.InvalidParameter", bad)
        # Newest first; limit keeps the first ones; a negative or fractional limit is refused.
        keys = [(j["created_at"], j["id"]) for j in jobs]
        check(keys == sorted(keys, reverse=True), f"ListJobs not newest first: {keys}")
        one = call(sock, "io.batchd.ListJobs", {"limit": 1})["parameters"]["jobs"]
        check([j["id"] for j in one] == [jobs[0]["id"]], one)
        for limit in (-1, 1.5, "2"):
            bad = call(sock, "io.batchd.ListJobs", {"limit": limit})
            check(bad.get("error") == "org.varlink.service.InvalidParameter" and
                  bad["parameters"].get("parameter") == "limit", f"limit {limit!r}: {bad}")
        lp = ctl(env, "list", "-q", "--limit", "1")
        check(lp.returncode == 0 and lp.stdout.split() == [jobs[0]["name"]], (lp.stdout, lp.stderr))
        lp = ctl(env, "list", "--limit", "-3")
        check(lp.returncode == 64 and "--limit" in lp.stderr, (lp.returncode, lp.stderr))

        alpha = get_job(sock, "alpha")
        by_id = get_job(sock, alpha["id"])
        check(by_id["id"] == alpha["id"] and by_id["name"] == "alpha", by_id)
        hist = alpha["history"]
        check(isinstance(hist, list) and all({"at", "state", "note"} <= set(h) for h in hist),
              hist)
        states = states_of([h["state"] for h in hist])
        check(states[0] == "queued" and states[-1] == "ready", states)
        for s in ("validating", "creating_dataset", "uploading", "importing", "creating_batch",
                  "setting_up", "processing"):
            check(s in states, f"history lacks {s}: {states}")

        r = call(sock, "io.batchd.GetJob", {"job": "nope"})
        check(r.get("error") == "io.batchd.NoSuchJob" and r["parameters"]["job"] == "nope", r)
        for params in ({}, {"job": ""}, {"job": 7}):
            r = call(sock, "io.batchd.GetJob", params)
            check(r.get("error") == "org.varlink.service.InvalidParameter" and
                  r["parameters"].get("parameter") == "job", f"{params}: {r}")
        r = call(sock, "io.batchd.Retry", {"job": "alpha"})
        check(r.get("error") == "io.batchd.InvalidState" and r["parameters"]["job"] == "alpha", r)
        r = call(sock, "io.batchd.Cancel", {"job": "alpha"})
        check(r.get("error") == "io.batchd.InvalidState", f"Cancel of a READY job: {r}")
        r = call(sock, "io.batchd.Cancel", {"job": "nope"})
        check(r.get("error") == "io.batchd.NoSuchJob", r)

        r = call(sock, "org.varlink.service.GetInfo")["parameters"]
        check(r["product"] == "batchd" and r["version"] == p["version"], r)
        check(r["interfaces"] == ["org.varlink.service", "io.batchd"], r)
        for iface in ("io.batchd", "org.varlink.service"):
            d = call(sock, "org.varlink.service.GetInterfaceDescription", {"interface": iface})
            check(d["parameters"]["description"].find(f"interface {iface}\n") >= 0, d)
        desc = call(sock, "org.varlink.service.GetInterfaceDescription",
                    {"interface": "io.batchd"})["parameters"]["description"]
        for m in ("GetInfo", "ListJobs", "GetJob", "Watch", "Retry", "Cancel", "Pause",
                  "Resume", "Reload"):
            check(f"method {m}(" in desc, f"description lacks {m}")
        r = call(sock, "org.varlink.service.GetInterfaceDescription", {"interface": "x.y"})
        check(r.get("error") == "org.varlink.service.InterfaceNotFound", r)
        r = call(sock, "io.batchd.Frobnicate")
        check(r.get("error") == "org.varlink.service.MethodNotFound" and
              r["parameters"]["method"] == "io.batchd.Frobnicate", r)
        r = call(sock, "com.example.Nothing")
        check(r.get("error") == "org.varlink.service.InterfaceNotFound", r)
        r = call(sock, "io.batchd.Watch")
        check(r.get("error") == "org.varlink.service.ExpectedMore", r)

        # Protocol violations get one error and the connection is closed; others are unharmed.
        for raw in (b"{not json\0", b'{"method": 5}\0', b'{"method":"io.batchd.GetInfo",'
                    b'"parameters":[]}\0', b'"just a string"\0', b"\xff\xfe\0"):
            c = Conn(sock)
            c.s.sendall(raw)
            r = c.recv()
            check(r is not None and r.get("error") == "io.batchd.ProtocolError" and
                  r["parameters"].get("reason"), f"{raw!r}: {r}")
            check(c.recv() is None, f"{raw!r}: the connection stays open")
            c.close()

        # Several calls on one connection, answered in order; a oneway call gets no reply.
        c = Conn(sock)
        c.send("io.batchd.GetJob", {"job": "alpha"})
        c.send("io.batchd.Pause", oneway=True)
        c.send("io.batchd.GetJob", {"job": "beta"})
        c.send("io.batchd.Resume")
        check(c.recv()["parameters"]["job"]["name"] == "alpha", "first reply")
        check(c.recv()["parameters"]["job"]["name"] == "beta", "oneway Pause answered")
        check(c.recv() == {"parameters": {}}, "Resume reply")
        check(call(sock, "io.batchd.GetInfo")["parameters"]["paused"] is False, "resumed")
        c.close()


def test_retry_cancel_pause():
    """Retry of a failed job goes back through active/ to done/; Retry of a running job is
    refused; Cancel fails it as cancelled; Pause stops requests to the API until Resume."""
    with Env() as env:
        d, sock = env.daemon, env.daemon.socket
        env.sim.set_faults([], batch_error=1.0)
        drop_jobs(env, ["broken"])
        d.wait_finished("broken", "failed", 30)
        err = d.error("broken")
        check(err["code"] == "batch_error" and err["batch_id"], err)
        check(job_state(sock, "broken") == "failed", "GetJob says failed")
        env.sim.set_faults([], batch_error=0.0)
        r = call(sock, "io.batchd.Retry", {"job": "broken"})
        check("error" not in r and r["parameters"]["job"]["state"] not in ("failed", "ready"), r)
        check("broken" in d.dir_entries("active") and "broken" not in d.dir_entries("failed"),
              f"active/{d.dir_entries('active')} failed/{d.dir_entries('failed')}")
        wait_for(lambda: "broken" in d.dir_entries("done"), 30, "retried job in done/")
        res = d.result("broken")
        check(res["state"] == "ready" and res["batch_id"] != err["batch_id"], res)
        check(not os.path.exists(os.path.join(d.spool, "failed", "broken", "error.json")) and
              d.dir_entries("failed") == [], f"failed/ still holds {d.dir_entries('failed')}")
        check(job_state(sock, "broken") == "ready", "GetJob says ready")

        # A job waiting to retry create_batch (429 with Retry-After): Retry makes the attempt
        # now (test_holds.py checks that it beats a long Retry-After).
        env.sim.set_faults([{"kind": "429", "probability": 1.0, "endpoint": "create_batch"}])
        drop_jobs(env, ["stuck"])
        wait_for(lambda: (get_job(sock, "stuck")["retry_at"] if job_state(sock, "stuck") else
                          None), 30, "stuck waiting to retry")
        check(job_state(sock, "stuck") == "creating_batch", job_state(sock, "stuck"))
        r = call(sock, "io.batchd.Retry", {"job": "stuck"})
        check("error" not in r and r["parameters"]["job"]["retry_at"] is None, r)

        # Pause: requests in flight finish, then nothing new reaches the API; a new drop waits.
        check(call(sock, "io.batchd.Pause") == {"parameters": {}}, "Pause reply")
        paused_at = sim_seq(env)
        check(call(sock, "io.batchd.GetInfo")["parameters"]["paused"] is True, "paused")
        drop_jobs(env, ["later"])
        # Only "stuck" runs, and a job has one request at a time: the one it may have had in
        # flight when the Pause took effect is all that may still reach the API. Retry-After
        # is 1 s, so unpaused it would ask at least twice within the window.
        hold(lambda: sim_seq(env) - paused_at <= 1 and
             "later.jsonl" in d.dir_entries("incoming"), 2.5,
             "no new requests and no claims while paused")
        seq = sim_seq(env)
        check(call(sock, "io.batchd.Resume") == {"parameters": {}}, "Resume reply")
        check(call(sock, "io.batchd.GetInfo")["parameters"]["paused"] is False, "resumed")
        wait_for(lambda: sim_seq(env) > seq, 10, "requests after Resume")
        wait_for(lambda: "later.jsonl" not in d.dir_entries("incoming"), 10, "later claimed")

        # Cancel the running job: failed/NAME/error.json says cancelled.
        r = call(sock, "io.batchd.Cancel", {"job": "stuck"})
        check("error" not in r and r["parameters"]["job"]["state"] == "cancelled", r)
        wait_for(lambda: "stuck" in d.dir_entries("failed"), 10, "stuck in failed/")
        err = d.error("stuck")
        check(err["code"] == "cancelled" and err["dataset_id"], err)
        r = call(sock, "io.batchd.Cancel", {"job": "stuck"})
        check(r.get("error") == "io.batchd.InvalidState", f"second Cancel: {r}")
        # A cancelled job can be retried too, once the API behaves.
        env.sim.set_faults([])
        r = call(sock, "io.batchd.Retry", {"job": "stuck"})
        check("error" not in r, r)
        wait_for(lambda: {"stuck", "later"} <= set(d.dir_entries("done")), 30,
                 "stuck and later in done/")
        st = env.sim.state()
        per_ds = {}
        for b in st["batches"]:
            for ds in b["datasets"]:
                per_ds[ds["id"]] = per_ds.get(ds["id"], 0) + (b["status"] != "ERROR")
        check(all(v == 1 for v in per_ds.values()), f"one good batch per dataset: {per_ds}")


def test_reload():
    """Reload applies max_rate and names spool.dir as needing a restart."""
    with Env() as env:
        d, sock = env.daemon, env.daemon.socket
        r = call(sock, "io.batchd.Reload")
        check(r == {"parameters": {"applied": [], "restart_required": []}}, r)
        with open(d.conf) as f:
            conf = f.read()
        with open(d.conf, "w") as f:
            f.write(conf.replace("max_rate = 200", "max_rate = 50"))
        r = call(sock, "io.batchd.Reload")["parameters"]
        check(r["applied"] == ["api.max_rate"] and r["restart_required"] == [], r)
        with open(d.conf, "w") as f:
            f.write(conf.replace(f"dir = {d.spool}\n", f"dir = {d.spool}-elsewhere\n"))
        r = call(sock, "io.batchd.Reload")["parameters"]
        check("spool.dir" in r["restart_required"] and "api.max_rate" in r["applied"], r)
        check(call(sock, "io.batchd.GetInfo")["parameters"]["spool_dir"] == d.spool,
              "spool.dir unchanged until a restart")
        with open(d.conf, "w") as f:
            f.write(conf + "[bogus]\nkey = 1\n")
        r = call(sock, "io.batchd.Reload")
        check(r.get("error") == "io.batchd.ReloadFailed" and "bogus" in
              r["parameters"].get("message", ""), r)
        # The running configuration still works.
        drop_jobs(env, ["afterreload"])
        wait_for(lambda: "afterreload" in d.dir_entries("done"), 30, "job after reload")
        p = ctl(env, "reload")
        check(p.returncode == 78 and "reload failed" in p.stderr, (p.returncode, p.stderr))
        with open(d.conf, "w") as f:
            f.write(conf.replace("max_rate = 200", "max_rate = 60"))
        p = ctl(env, "reload")
        check(p.returncode == 0 and "applied: api.max_rate" in p.stdout, (p.returncode, p.stdout))


# ------------------------------------------------------------------ watch


def test_watch_order():
    """Watch sends the snapshot first, then every state change of each job in order, the same
    sequence as the job's history."""
    with Env() as env:
        sock = env.daemon.socket
        drop_jobs(env, ["early"])
        wait_state(sock, "early", "ready")
        w = Watch(sock)
        first = w.next()
        check(first.get("continues") is True and "jobs" in first["parameters"], first)
        check([j["name"] for j in first["parameters"]["jobs"]] == ["early"], first)
        names = [f"w{i}" for i in range(6)]
        drop_jobs(env, names)
        seen = {n: [] for n in names}
        while not all(s and s[-1] == "ready" for s in seen.values()):
            m = w.next()
            check(m.get("continues") is True and "error" not in m, m)
            j = m["parameters"]["job"]
            if j["name"] == "early":
                # Its move into done/ may be published after it showed "ready".
                check(j["state"] == "ready", f"early changed to {j['state']}")
                continue
            check(j["name"] in seen, f"change of an unexpected job: {j['name']}")
            seen[j["name"]].append(j["state"])
        w.close()
        for n in names:
            got = states_of(seen[n])
            hist = states_of([h["state"] for h in get_job(sock, n)["history"]])
            check(got == hist, f"{n}: watch {got} vs history {hist}")
            check(got[:2] == ["queued", "validating"] and got[-1] == "ready", got)
        # A second subscriber after the fact gets all seven in its snapshot.
        w = Watch(sock)
        snap = w.next()["parameters"]["jobs"]
        check(len(snap) == 7 and all(j["state"] == "ready" for j in snap), snap)
        w.close()
        wait_for(lambda: call(sock, "io.batchd.GetInfo"), 5, "answers after watchers left")


# ------------------------------------------------------------------ batchctl


class Lines:
    """Collects a child's stdout lines on a thread, so a test can wait for one."""

    def __init__(self, args):
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def has(self, text):
        return any(text in ln for ln in list(self.lines))

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=10)
        self.t.join(5)
        return self.proc.returncode, err


def test_batchctl_commands():
    """status, list, show, watch (lines and --json), retry, cancel, pause, resume, exit codes."""
    with Env() as env:
        d, sock = env.daemon, env.daemon.socket
        env.sim.set_faults([], batch_error=1.0)
        drop_jobs(env, ["bad"])
        d.wait_finished("bad", "failed", 30)
        # victim stays in creating_batch (429 with Retry-After) until it is cancelled.
        env.sim.set_faults([{"kind": "429", "probability": 1.0, "endpoint": "create_batch"}],
                           batch_error=0.0)
        drop_jobs(env, ["victim"])
        # Stuck: its first create_batch got the 429 (status then shows "retry in").
        wait_for(lambda: job_state(sock, "victim") == "creating_batch" and
                 get_job(sock, "victim")["retry_at"], 30, "victim stuck")

        # Both watchers have subscribed once their snapshot shows victim.
        watch = Lines([binary("batchctl"), "-s", sock, "watch"])
        watchj = Lines([binary("batchctl"), "-s", sock, "--json", "watch"])
        wait_for(lambda: watch.has(" victim creating_batch") and watchj.has('"victim"'), 10,
                 "watch snapshots")
        check(not watch.has(" bad "), "line watch leaves finished jobs out of its snapshot")

        p = ctl(env, "status")
        check(p.returncode == 0 and p.stdout.startswith("batchd ") and "running" in p.stdout,
              p.stdout)
        rows = [ln for ln in p.stdout.splitlines() if " victim " in ln]
        check(len(rows) == 1 and "creating_batch" in rows[0] and "retry in" in rows[0], p.stdout)
        check(" bad " not in p.stdout, "status lists only unfinished jobs")
        check("\033" not in p.stdout, "no colour on a pipe")
        p = ctl(env, "retry", "victim")  # waiting for its retry time: retried now
        check(p.returncode == 0, (p.returncode, p.stdout, p.stderr))
        p = ctl(env, "cancel", "victim")
        check(p.returncode == 0 and "now cancelled" in p.stdout, (p.returncode, p.stdout,
                                                                  p.stderr))
        wait_for(lambda: "victim" in d.dir_entries("failed"), 10, "victim in failed/")
        check(d.error("victim")["code"] == "cancelled", d.error("victim"))
        p = ctl(env, "cancel", "victim")
        check(p.returncode == 65, p.returncode)
        env.sim.set_faults([])

        drop_jobs(env, ["good"])
        wait_for(lambda: "good" in d.dir_entries("done"), 30, "good done")
        p = ctl(env, "status")
        check("no unfinished jobs" in p.stdout, p.stdout)
        p = ctl(env, "--json", "status")
        s = json.loads(p.stdout)
        check(s["info"]["jobs"]["ready"] == 1 and s["info"]["jobs"]["failed"] == 1 and
              s["info"]["jobs"]["cancelled"] == 1 and s["jobs"] == [], s)
        p = ctl(env, "list")
        lines = p.stdout.splitlines()
        check(p.returncode == 0 and lines[0].split() == ["ID", "NAME", "STATE", "RECORDS",
                                                         "BATCH", "AGE"], p.stdout)
        check(any(" good " in ln and " ready " in ln for ln in lines) and
              any(" bad " in ln and " failed " in ln for ln in lines), p.stdout)
        p = ctl(env, "list", "--state", "failed", "-q")
        check(p.returncode == 0 and p.stdout == "bad\n", p.stdout)
        p = ctl(env, "--json", "list", "--state", "ready")
        check([j["name"] for j in json.loads(p.stdout)["jobs"]] == ["good"], p.stdout)
        p = ctl(env, "list", "--state", "bogus")
        check(p.returncode == 65 and "states" in p.stderr, (p.returncode, p.stderr))

        p = ctl(env, "show", "good")
        check(p.returncode == 0 and "batch_status      READY" in p.stdout and
              "history:" in p.stdout and "processing" in p.stdout, p.stdout)
        p = ctl(env, "show", "bad")
        check(p.returncode == 1 and "failed" in p.stdout, (p.returncode, p.stdout))
        p = ctl(env, "show", "victim")
        check(p.returncode == 1 and "cancelled" in p.stdout, (p.returncode, p.stdout))
        p = ctl(env, "--json", "show", "bad")
        check(p.returncode == 1 and json.loads(p.stdout)["job"]["state"] == "failed", p.stdout)
        p = ctl(env, "show", "missing")
        check(p.returncode == 65 and "missing" in p.stderr, (p.returncode, p.stderr))
        p = ctl(env, "show")
        check(p.returncode == 64, p.returncode)

        p = ctl(env, "retry", "bad")
        check(p.returncode == 0 and p.stdout.startswith("retrying bad ("), (p.returncode, p.stdout))
        wait_for(lambda: "bad" in d.dir_entries("done"), 30, "bad done after retry")
        p = ctl(env, "show", "bad")
        check(p.returncode == 0, "show exits 0 once the retried job is ready")

        p = ctl(env, "pause")
        check(p.returncode == 0 and "paused" in p.stdout, p.stdout)
        check(ctl(env, "status").stdout.find("paused") > 0, "status shows paused")
        check(json.loads(ctl(env, "--json", "status").stdout)["info"]["paused"] is True,
              "--json status shows paused")
        drop_jobs(env, ["late"])
        hold(lambda: "late.jsonl" in d.dir_entries("incoming"), 1.0, "late waits while paused")
        p = ctl(env, "resume")
        check(p.returncode == 0 and "resumed" in p.stdout, p.stdout)
        wait_for(lambda: "late" in d.dir_entries("done"), 30, "late done after resume")

        # Watch saw every event, in order, as lines and as JSON.
        wait_for(lambda: watch.has(" late ready") and watchj.has('"late"'), 10, "late watched")
        rc, err = watch.stop()
        rcj, errj = watchj.stop()
        check(rc == 0 and rcj == 0, (rc, err, rcj, errj))
        out = watch.lines
        check(not any("\033" in ln for ln in out), "no escape sequences in line mode")
        for name in ("good", "late", "bad"):
            seen = states_of([ln.split()[2] for ln in out if ln.split()[1] == name])
            hist = states_of([h["state"] for h in get_job(sock, name)["history"]])
            if name == "bad":  # watched from its retry on
                hist = hist[hist.index("failed") + 1:]
            check(seen == hist, f"{name}: watch lines {seen} vs history {hist}")
        check(any(ln.split()[1:3] == ["victim", "cancelled"] for ln in out), out)
        ready = [ln for ln in out if ln.split()[1:3] == ["good", "ready"]]
        check(len(ready) == 1 and " batch " in ready[0], ready)
        objs = [json.loads(ln) for ln in watchj.lines]
        check("jobs" in objs[0] and all("job" in o for o in objs[1:]), objs[:2])
        goodj = states_of([o["job"]["state"] for o in objs[1:] if o["job"]["name"] == "good"])
        hist = states_of([h["state"] for h in get_job(sock, "good")["history"]])
        check(goodj == hist, f"--json watch {goodj} vs history {hist}")

        # The daemon is down: 69, and the hint names the socket.
        d.stop()
        for args in (["status"], ["watch"], ["pause"], ["show", "good"]):
            p = ctl(env, *args)
            hint = [ln for ln in p.stderr.splitlines() if ln.startswith("hint:")]
            check(p.returncode == 69 and hint and sock in hint[0], (args, p.returncode, p.stderr))


# ------------------------------------------------------------------ terminal


def tmux(sock, *args):
    return subprocess.run(["tmux", "-S", sock, *args], capture_output=True, text=True, timeout=10)


def test_batchctl_terminal():
    """batchctl watch and status in a real terminal: redrawn progress lines, no garbage, colour
    by default and none with NO_COLOR."""
    if not shutil.which("tmux"):
        raise Skipped("tmux is not installed")
    with Env(sim_args=("--batch-processing", "2s")) as env:
        sock = env.daemon.socket
        tsock = os.path.join(env.dir, "tmux.sock")
        ctlbin = binary("batchctl")
        try:
            for name, extra in (("plain", ["-e", "NO_COLOR=1"]), ("color", [])):
                r = tmux(tsock, "-f", "/dev/null", "new-session", "-d", "-s", name, "-x", "120",
                         "-y", "30", "-e", "TERM=xterm-256color", *extra,
                         f"{ctlbin} -s {sock} watch; sleep 600")
                check(r.returncode == 0, r.stderr)
            names = [f"t{i}" for i in range(4)]
            # The jobs stay in processing (a 429 on the batch status) until a live progress
            # line was captured, however slowly the screens are read.
            env.sim.set_faults([{"kind": "429", "probability": 1.0, "endpoint": "batch_status"}])
            drop_jobs(env, names)
            screens = {"plain": set(), "color": set()}

            def capture():
                for name in screens:
                    r = tmux(tsock, "capture-pane", "-p", "-e", "-t", name)
                    screens[name].add(r.stdout)
                return all(job_state(sock, n) == "ready" for n in names)

            def live_seen():
                capture()
                return any("[" in s and "processing" in s for s in screens["plain"])
            wait_for(live_seen, 40, "a live progress line while processing", interval=0.1)
            env.sim.set_faults([])
            wait_for(capture, 40, "four jobs ready while capturing", interval=0.1)
            wait_for(lambda: capture() and all(
                sum(f" {n} ready" in ln for ln in last_screen(tsock, "plain").splitlines()) == 1
                for n in names), 10, "the final screen")
            plain = list(screens["plain"])
            colored = list(screens["color"])
            live = [s for s in plain if "[" in s and "processing" in s]
            check(live, "a live progress line with a bar while processing")
            for s in plain:
                check("\033" not in s, f"NO_COLOR screen has escape sequences:\n{s!r}")
                check("[?25" not in s and "\033[J" not in s and "^[" not in s, f"garbage:\n{s}")
            check(any("\033[3" in s for s in colored), "colour without NO_COLOR")
            final = last_screen(tsock, "plain")
            lines = [ln for ln in final.splitlines() if ln.strip()]
            for n in names:
                rows = [ln for ln in lines if f" {n} " in ln]
                check(len(rows) == 1 and " ready batch " in rows[0],
                      f"one permanent line for {n}:\n{final}")
            check(lines[-1].startswith("no active jobs"), f"live area at the end:\n{final}")
            check(len(lines) == len(names) + 1, f"stale progress lines left:\n{final}")

            # status as a new user would run it, on a terminal.
            tmux(tsock, "new-window", "-t", "plain", "-e", "NO_COLOR=1",
                 f"{ctlbin} -s {sock} status; {ctlbin} -s {sock} list; sleep 600")
            wait_for(lambda: "AGE" in last_screen(tsock, "plain"), 10, "status and list shown")
            scr = last_screen(tsock, "plain")
            check("no unfinished jobs" in scr and "\033" not in scr, scr)
        finally:
            tmux(tsock, "kill-server")


def last_screen(tsock, target):
    return tmux(tsock, "capture-pane", "-p", "-e", "-t", target).stdout


# ------------------------------------------------------------------ permissions


def test_permissions():
    """A member of the control group may read, not change; anyone else is kept out."""
    if os.geteuid() != 0:
        raise Skipped("needs root to run as a second uid")
    if not shutil.which("setpriv"):
        raise Skipped("setpriv (util-linux) is missing")
    group, other = 54321, 54322
    with Env(extra_conf=f"control.group = {group}", start=False, other_uid=True) as env:
        os.chmod(env.dir, 0o711)
        env.daemon.start()
        sock = env.daemon.socket
        st = os.stat(sock)
        check(st.st_gid == group and st.st_mode & 0o777 == 0o660, oct(st.st_mode))
        drop_jobs(env, ["mine"])
        wait_for(lambda: "mine" in env.daemon.dir_entries("done"), 30, "mine done")
        member = (65534, group)
        outsider = (65534, other)

        for args in (["status"], ["list"], ["show", "mine"], ["--json", "list"]):
            p = ctl(env, *args, user=member)
            check(p.returncode == 0 and "mine" in p.stdout + (
                "" if args != ["status"] else "mine"), (args, p.returncode, p.stderr))
        for args in (["retry", "mine"], ["cancel", "mine"], ["pause"], ["resume"], ["reload"]):
            p = ctl(env, *args, user=member)
            check(p.returncode == 77 and "permission denied" in p.stderr,
                  (args, p.returncode, p.stderr))
        check(call(sock, "io.batchd.GetInfo")["parameters"]["paused"] is False, "not paused")

        # A raw client as the member: reads answered, every change refused.
        code = (
            "import json,socket,sys\n"
            "def call(m,p):\n"
            "  s=socket.socket(socket.AF_UNIX);s.connect(sys.argv[1])\n"
            "  s.sendall(json.dumps({'method':m,'parameters':p}).encode()+b'\\0');b=b''\n"
            "  while b'\\0' not in b:\n"
            "    c=s.recv(65536)\n"
            "    if not c: break\n"
            "    b+=c\n"
            "  return json.loads(b.split(b'\\0')[0])\n"
            "out={}\n"
            "for m,p in [('GetInfo',{}),('ListJobs',{}),('GetJob',{'job':'mine'}),"
            "('Retry',{'job':'mine'}),('Cancel',{'job':'mine'}),('Pause',{}),('Resume',{}),"
            "('Reload',{})]:\n"
            "  out[m]=call('io.batchd.'+m,p)\n"
            "print(json.dumps(out))\n")
        p = subprocess.run(["setpriv", f"--reuid={member[0]}", f"--regid={member[1]}",
                            "--clear-groups", "/usr/bin/python3", "-c", code, sock],
                           capture_output=True, text=True, timeout=30)
        check(p.returncode == 0, p.stderr)
        out = json.loads(p.stdout)
        for m in ("GetInfo", "ListJobs", "GetJob"):
            check("error" not in out[m], f"{m} as a member: {out[m]}")
        for m in ("Retry", "Cancel", "Pause", "Resume", "Reload"):
            check(out[m].get("error") == "io.batchd.PermissionDenied" and
                  out[m]["parameters"]["method"] == f"io.batchd.{m}", f"{m}: {out[m]}")

        # Not in the group: cannot even reach the socket.
        for args in (["status"], ["pause"]):
            p = ctl(env, *args, user=outsider)
            check(p.returncode == 77 and sock in p.stderr, (args, p.returncode, p.stderr))
        check(get_job(sock, "mine")["state"] == "ready", "the job is untouched")


# ------------------------------------------------------------------ abuse


def many_getinfo(sock, n):
    """n connections open at once, each sending GetInfo; returns the replies."""
    conns = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(30)
            s.connect(sock)
            conns.append(s)
        for s in conns:
            s.sendall(b'{"method":"io.batchd.GetInfo"}\0')
        replies = []
        for s in conns:
            buf = b""
            while b"\0" not in buf:
                chunk = s.recv(65536)
                if not chunk:
                    break
                buf += chunk
            replies.append(json.loads(buf.split(b"\0")[0]) if buf else None)
        return replies
    finally:
        for s in conns:
            s.close()


def abuse(sock):
    """One round: a Watch that is never read, a client that pipelines calls and never reads,
    64 MiB without a NUL, and 500 connections doing GetInfo at once, which must all be answered.
    Returns how many garbage bytes the daemon took before cutting the sender off."""
    # A Watch that never reads, with a tiny receive buffer.
    lazy = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    lazy.connect(sock)
    lazy.sendall(b'{"method":"io.batchd.Watch","more":true}\0')
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    deaf.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    deaf.connect(sock)
    deaf.settimeout(20)
    flood = {"sent": 0, "err": None, "reply": b"", "deaf": None}

    def garbage():
        g = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        g.settimeout(20)
        g.connect(sock)
        chunk = b"x" * (1 << 20)
        try:
            for _ in range(64):
                g.sendall(chunk)
                flood["sent"] += len(chunk)
        except OSError as e:
            flood["err"] = e
        try:
            flood["reply"] = g.recv(65536)
        except OSError:
            pass
        g.close()

    def deaf_calls():
        try:
            for _ in range(200000):
                deaf.sendall(b'{"method":"io.batchd.ListJobs"}\0')
        except OSError as e:
            flood["deaf"] = e

    t1 = threading.Thread(target=garbage)
    t2 = threading.Thread(target=deaf_calls)
    t1.start()
    t2.start()
    try:
        replies = many_getinfo(sock, 500)
        bad = [r for r in replies if not r or "error" in r]
        check(not bad, f"{len(bad)} of 500 GetInfo calls failed, e.g. {bad[:1]}")
        t1.join(30)
        t2.join(30)
        check(not t1.is_alive() and not t2.is_alive(), "abusive clients were not cut off")
        check(flood["err"] is not None and flood["sent"] < 8 << 20,
              f"64 MiB without a NUL accepted ({flood['sent']} bytes sent)")
        check(b"io.batchd.ProtocolError" in flood["reply"] or flood["reply"] == b"",
              flood["reply"][:200])
        check(isinstance(flood["deaf"], OSError), "a client that never reads was kept")
        check(call(sock, "io.batchd.GetInfo", timeout=5)["parameters"]["version"], "GetInfo")
    finally:
        lazy.close()
        deaf.close()
    return flood["sent"]


def test_abuse_while_jobs_run():
    """500 connections, 64 MiB without a NUL and clients that never read, while 20 jobs run:
    every job ends READY, other clients are answered, memory stays bounded."""
    with Env(sim_args=("--batch-processing", "3s"), start=False) as env:
        d, sock = env.daemon, env.daemon.socket
        # Under AddressSanitizer, freed memory waits in a 256 MiB quarantine and would count
        # as growth: keep it small so that RSS measures the daemon, not the sanitizer.
        asan = os.environ.get("ASAN_OPTIONS", "")
        d.start(env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                     "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"})
        for _ in range(3):  # warm up the allocator before measuring
            many_getinfo(sock, 50)
        rss0 = rss_kib(d.proc.pid)
        # The jobs run until the abuse is over: READY only once the batch status answers
        # again (a 429 makes them poll later), however long the abuse takes.
        env.sim.set_faults([{"kind": "429", "probability": 1.0, "endpoint": "batch_status"}])
        names = [f"a{i:02d}" for i in range(20)]
        drop_jobs(env, names, records=5)
        wait_for(lambda: len(d.jobs()) == 20, 10, "20 jobs claimed")
        check(len(d.dir_entries("done")) < 20, "jobs still running during the abuse")
        cut = abuse(sock)
        check(len(d.dir_entries("done")) < 20, "jobs still running after the abuse")
        env.sim.set_faults([])
        wait_for(lambda: len(d.dir_entries("done")) == 20, 60, "20 jobs in done/")
        check(d.dir_entries("failed") == [], d.dir_entries("failed"))
        check(len(d.jobs(["ready"])) == 20, "ListJobs ready")
        rss1 = rss_kib(d.proc.pid)
        # A second round must not add much more: what the first took was bounded, not leaked.
        abuse(sock)
        rss2 = rss_kib(d.proc.pid)
        print(f"     rss {rss0} -> {rss1} -> {rss2} KiB; garbage cut after {cut} bytes",
              flush=True)
        if not VALGRIND and not TSAN:  # under valgrind or TSan the RSS is mostly theirs
            check(rss2 - rss0 < 32 * 1024, f"RSS grew from {rss0} KiB to {rss2} KiB")
            check(rss2 - rss1 < 8 * 1024, f"RSS grew from {rss1} KiB to {rss2} KiB in round two")


def run_with_skips(tests):
    run(tests)  # the harness reports a Skipped test as a skip


if __name__ == "__main__":
    import sys
    ALL = [test_methods_raw, test_retry_cancel_pause, test_reload, test_watch_order,
                    test_batchctl_commands, test_batchctl_terminal, test_permissions,
                    test_abuse_while_jobs_run]
    # Names on the command line run only those tests (for development).
    run_with_skips([t for t in ALL if len(sys.argv) < 2 or t.__name__ in sys.argv[1:]])
