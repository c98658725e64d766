"""End to end: exports of ready jobs (batchd(8), EXPORTS; batchctl export) against batchd-sim:
both POST answer forms, the ZIP on disk byte for byte what the sim serves, no Authorization
header on the download, kill -9 while downloading, [export] interval with keep and the
on_export hook, and faults on the export endpoints."""

import json
import os
import urllib.request
import zipfile

from harness import TOKEN, Env, Skipped, Watch, batchctl, call, check, run, wait_for

API = "/api/v1/data-collection"


def ready_job(env, name="exp", n=3):
    """Drops a small job and waits for it in done/; returns (name, Job)."""
    d = env.daemon
    src = os.path.join(env.dir, name + ".jsonl")
    with open(src, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n")
    d.drop(src)
    wait_for(lambda: name in d.dir_entries("done"), 30, f"{name} in done/")
    job = call(d.socket, "io.batchd.GetJob", {"job": name})["parameters"]["job"]
    wait_for(lambda: call(d.socket, "io.batchd.GetJob", {"job": name})["parameters"]["job"]
             ["dir"] == "done/" + name, 10, "the job finished")
    return name, job


def get_job(env, name):
    return call(env.daemon.socket, "io.batchd.GetJob", {"job": name})["parameters"]["job"]


def api(env, method, path):
    req = urllib.request.Request(env.sim.url + API + path, method=method,
                                 headers={"Authorization": "Token " + TOKEN,
                                          "Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
        return r.status, json.loads(body) if body else None


def sim_zip(env, batch_id):
    """The ZIP the sim serves for the batch, fetched here with a fresh URL (two exports of one
    batch are the same bytes)."""
    status, body = api(env, "POST", f"/batches/{batch_id}/export")
    if body.get("status") == "generating":
        eid = body["export_id"]

        def complete():
            nonlocal body
            body = api(env, "GET", f"/batches/{batch_id}/export/{eid}")[1]
            return body.get("status") == "complete"
        wait_for(complete, 30, "the sim's export")
    with urllib.request.urlopen(body["url"], timeout=30) as r:
        return r.read()


def zips(env, name):
    d = os.path.join(env.daemon.spool, "done", name, "exports")
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return []


def export_complete(env, name):
    e = get_job(env, name).get("export")
    check(not e or e["state"] != "failed", f"export failed: {e}")
    return e and e["state"] == "complete"


def downloads(env):
    return [r for r in env.sim.state()["requests"] if "/_download/" in r["path"]]


def sim_exports(env):
    return [x for b in env.sim.state()["batches"] for x in (b.get("exports") or [])]


def check_export(env, name, job):
    # batchd deletes the API's export job after the download: wait for that, so that the
    # sim's export made below is a new one in either mode.
    wait_for(lambda: not sim_exports(env), 10, "the export deleted at the sim")
    e = get_job(env, name)["export"]
    check(e["state"] == "complete" and e["path"].startswith("exports/") and
          e["path"].endswith(".zip"), f"Job.export: {e}")
    path = os.path.join(env.daemon.spool, "done", name, e["path"])
    with open(path, "rb") as f:
        got = f.read()
    check(got[-22:-18] == b"PK\x05\x06" or b"PK\x05\x06" in got[-70000:], "an end record")
    check(got == sim_zip(env, job["batch_id"]), "the ZIP is what the sim serves")
    check(zips(env, name) == [os.path.basename(e["path"])], f"one ZIP, no temp: {zips(env, name)}")
    return e


def export_in_mode(mode):
    with Env(sim_args=["--export-mode", mode, "--export-generating", "300ms"]) as env:
        name, job = ready_job(env)
        r = batchctl(env, "export", name, "--wait")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        e = check_export(env, name, job)
        want = os.path.join(env.daemon.spool, "done", name, e["path"])
        check(r.stdout.strip() == want, f"--wait printed {r.stdout!r}, not {want!r}")
        dl = downloads(env)
        check(dl and not any(x["auth"] for x in dl), f"downloads with Authorization: {dl}")
        # The API's export job is deleted once the ZIP is home (the sim keeps the one this
        # test asked for itself).
        st = env.sim.state()
        reqs = [x for x in st["requests"] if x["method"] == "DELETE" and "/export/" in x["path"]]
        check(reqs and reqs[0]["status"] in (200, 204), f"no DELETE of the export: {reqs}")
        env.assert_no_token_leak()


def test_export_new_mode():
    export_in_mode("new")


def test_export_old_mode():
    # Old behaviour: 202 for a new job; 200 with a finished URL (no export_id) once the batch
    # has a finished export, which batchd downloads as well (and has nothing to delete).
    with Env(sim_args=["--export-mode", "old", "--export-generating", "300ms"]) as env:
        name, job = ready_job(env)
        r = batchctl(env, "export", name, "--wait")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        check_export(env, name, job)
        want = sim_zip(env, job["batch_id"])  # leaves a finished export at the sim
        r = batchctl(env, "export", name, "--wait")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        with open(r.stdout.strip(), "rb") as f:
            check(f.read() == want, "the ZIP of the 200 answer is what the sim serves")
        check(len(zips(env, name)) == 2, f"ZIPs: {zips(env, name)}")
        posts = [x["status"] for x in env.sim.state()["requests"]
                 if x["method"] == "POST" and x["path"].endswith("/export")]
        check(posts[-1] == 200, f"the last POST was not answered 200: {posts}")


def test_export_refused_for_unready():
    with Env() as env:
        r = batchctl(env, "export", "nosuchjob")
        check(r.returncode == 65, f"unknown job: {r.returncode} {r.stderr}")
        d = env.daemon
        src = os.path.join(env.dir, "bad.jsonl")
        with open(src, "w") as f:
            f.write("{not json\n")
        d.drop(src)
        wait_for(lambda: "bad" in d.dir_entries("failed"), 30, "bad in failed/")
        r = batchctl(env, "export", "bad")
        check(r.returncode == 65 and "ready" in r.stderr, f"failed job: {r.returncode} {r.stderr}")
        check(not [x for x in env.sim.state()["requests"] if "/export" in x["path"]],
              "no export request")


def test_kill9_while_downloading():
    # Downloads are held in flight (the sim acts, then waits); batchd dies with its
    # temporary file open. The next start, with downloads served again, removes it, polls for
    # a fresh URL and downloads again: exactly one ZIP, no temporary file. (Every download is
    # held until the kill, not just the first: the kill may come before the first one reaches
    # the sim, and a hold left for the next start would outlast the test.)
    args = ["--export-pad", "65536", "--export-generating", "200ms", "--slow", "600s"]
    with Env(sim_args=args) as env:
        name, job = ready_job(env)
        env.sim.set_faults([{"kind": "slow", "probability": 1.0, "endpoint": "download"}])
        r = batchctl(env, "export", name)
        check(r.returncode == 0, f"export: {r.returncode} {r.stderr}")
        tmp = os.path.join(env.daemon.spool, "done", name, "exports", ".download.zip.tmp")
        # The sim logs a request when it answers: the held one shows as the temporary file.
        wait_for(lambda: os.path.exists(tmp), 20, "the download in flight")
        wait_for(lambda: get_job(env, name)["export"]["state"] == "downloading", 10,
                 "the export downloading")
        env.daemon.kill9()
        env.sim.set_faults([])
        env.daemon.start()
        wait_for(lambda: export_complete(env, name), 30, "the export complete after restart")
        check(not os.path.exists(tmp), "the temporary file is gone")
        check("removed an unfinished export download" in env.daemon.logs(),
              "the start removed the temporary file")
        check_export(env, name, job)
        check([x["status"] for x in downloads(env)][-1:] == [200], f"downloads: {downloads(env)}")


def test_zip_placed_before_its_record():
    # The process dies after the ZIP is renamed into place but before its record says so
    # (made here by stopping batchd and setting the record back to downloading, as it was on
    # disk in that window). The next start finds the ZIP written since the request and takes
    # it: no second download, one ZIP, the same path.
    with Env(sim_args=["--export-generating", "200ms"]) as env:
        name, job = ready_job(env)
        r = batchctl(env, "export", name, "--wait")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        e = check_export(env, name, job)
        env.daemon.stop()
        rec_path = os.path.join(env.daemon.state_dir, "jobs", job["id"] + ".json")
        with open(rec_path) as f:
            rec = json.load(f)
        x = rec["export"]
        check(x["state"] == "complete" and x.get("export_id"), f"the record's export: {x}")
        x["state"] = "downloading"
        x.pop("path")
        x.pop("delete_pending", None)
        with open(rec_path + ".edit", "w") as f:
            json.dump(rec, f)
        os.rename(rec_path + ".edit", rec_path)
        seen = len(downloads(env))
        env.daemon.start()
        wait_for(lambda: export_complete(env, name), 30, "the export complete after the start")
        again = get_job(env, name)["export"]
        check(again["path"] == e["path"], f"path {again['path']}, not {e['path']}")
        check(zips(env, name) == [os.path.basename(e["path"])], f"ZIPs: {zips(env, name)}")
        check(len(downloads(env)) == seen, f"downloaded again: {downloads(env)[seen:]}")
        check("not downloaded again" in env.daemon.logs(), "the start says it took the ZIP")


HOOK = r'''#!/usr/bin/python3
import json, os, sys
out = %r
n = len(os.listdir(out)) + 1
rec = {"argv": sys.argv, "exists": os.path.exists(sys.argv[1]),
       "state": os.environ.get("BATCHD_STATE"), "token": any("%s" in v for v in os.environ.values())}
with open(os.path.join(out, ".%%d" %% n), "w") as f:
    json.dump(rec, f)
os.rename(os.path.join(out, ".%%d" %% n), os.path.join(out, "call.%%03d.json" %% n))
'''


def zip_order(name):
    """exports/ names in the order batchd made them: YYYYMMDDTHHMMSSZ.zip, then -2, -3..."""
    base = name[:-len(".zip")]
    stamp, _, n = base.partition("-")
    return (stamp, int(n) if n else 1)


def test_interval_keep_and_hook():
    with Env(start=False, sim_args=["--export-generating", "100ms"]) as env:
        out = os.path.join(env.dir, "hook-out")
        os.makedirs(out)
        hook = os.path.join(env.dir, "on-export")
        with open(hook, "w") as f:
            f.write(HOOK % (out, TOKEN))
        os.chmod(hook, 0o755)
        with open(env.daemon.conf, "a") as f:
            f.write(f"[export]\ninterval = 1s\nkeep = 2\n[hooks]\non_export = {hook}\n")
        env.daemon.start()
        name, job = ready_job(env)
        calls = lambda: sorted(x for x in os.listdir(out) if x.startswith("call."))
        wait_for(lambda: len(calls()) >= 4, 30, "four exports on the interval")
        wait_for(lambda: len(zips(env, name)) == 2, 10, "keep = 2 ZIPs")
        recs = []
        for c in calls():
            with open(os.path.join(out, c)) as f:
                recs.append(json.load(f))
        exports = os.path.join(env.daemon.spool, "done", name, "exports")
        for r in recs:
            a = r["argv"][1]
            check(os.path.isabs(a) and a.startswith(exports + "/") and a.endswith(".zip"),
                  f"argv[1] {a}")
            check(r["exists"] and r["state"] == "ready" and not r["token"], f"hook saw {r}")
        # Stopped, nothing more is exported or pruned: the two ZIPs left are the newest of
        # all that were made (a name's order: its time, then its -N suffix).
        env.daemon.stop()
        left = zips(env, name)
        made = sorted({os.path.basename(r["argv"][1]) for r in recs} | set(left), key=zip_order)
        check(len(made) >= 4, f"made {made}")
        check(sorted(left, key=zip_order) == made[-2:], f"kept {left} of {made}")


def test_faults_on_export_endpoints():
    # 500s on the POST, a 429 with Retry-After on the status, 503s on the download, and a URL
    # that has expired by the time its answer arrives (refreshed by polling again): the export
    # still ends complete with the right bytes.
    args = ["--export-generating", "0s", "--export-url-ttl", "3s", "--retry-after", "1",
            "--fault", "500=2x@export", "--fault", "slow=1x@get_export", "--slow", "3500ms",
            "--fault", "429=1x@get_export", "--fault", "503=2x@download"]
    with Env(sim_args=args) as env:
        name, job = ready_job(env)
        r = batchctl(env, "export", name, "--wait", "--timeout", "60s")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        check_export(env, name, job)
        reqs = env.sim.state()["requests"]
        gets = [x["status"] for x in reqs if x["method"] == "GET" and "/export/" in x["path"]]
        check(429 in gets and gets.count(200) >= 2, f"status polls: {gets}")
        dls = [x["status"] for x in reqs if "/_download/" in x["path"]]
        check(dls[-1] == 200 and dls.count(503) == 2, f"downloads: {dls}")


def test_planted_temp_file():
    """A producer's job holding exports/.download.zip.tmp as a FIFO: the export removes it,
    never opens it (a write to a FIFO on the loop would block the daemon), and comes home."""
    with Env(sim_args=["--export-generating", "100ms"]) as env:
        d = env.daemon
        # Built in the spool's tmp/ and renamed in, as a producer does (a copy cannot hold
        # a FIFO).
        src = os.path.join(d.spool, "tmp", "planted")
        os.makedirs(os.path.join(src, "exports"))
        with open(os.path.join(src, "planted.jsonl"), "w") as f:
            for i in range(3):
                f.write(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n")
        os.mkfifo(os.path.join(src, "exports", ".download.zip.tmp"))
        os.rename(src, os.path.join(d.spool, "incoming", "planted"))
        d.wait_finished("planted", "done", 30)
        r = batchctl(env, "export", "planted", "--wait", "--timeout", "60s")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        check(zips(env, "planted") == [os.path.basename(r.stdout.strip())],
              f"one ZIP, no FIFO left: {zips(env, 'planted')}")
        check(call(d.socket, "io.batchd.GetInfo")["parameters"]["version"], "batchd answers")


def peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for pid {pid}")


def test_one_gib_export_flat_memory():
    """A 1 GiB export (the sim pads each record) comes home whole while batchd's peak
    resident memory grows by a few MiB: the download is written as it arrives, never held."""
    pad = 220 * 1024 * 1024  # six padded records: about 1.3 GB
    with Env(sim_args=["--export-pad", str(pad), "--export-generating", "100ms"]) as env:
        st = os.statvfs(env.dir)
        if st.f_bavail * st.f_frsize < 3 * 1024 ** 3:
            raise Skipped(f"{env.dir} has under 3 GiB free for a 1.3 GB export")
        name, job = ready_job(env)
        pid = env.daemon.proc.pid
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # the peak starts again from the current size
        before = peak_kib(pid)
        r = batchctl(env, "export", name, "--wait", "--timeout", "600s")
        check(r.returncode == 0, f"export --wait: {r.returncode} {r.stdout} {r.stderr}")
        grown = peak_kib(pid) - before
        path = r.stdout.strip()
        size = os.path.getsize(path)
        check(size > 1024 ** 3, f"the ZIP is {size} bytes, not over 1 GiB")
        check(grown < 32 * 1024, f"batchd's peak RSS grew by {grown} KiB for a {size}-byte ZIP")
        with zipfile.ZipFile(path) as z:
            names = sorted(i.filename for i in z.infolist())
            check(names == ["responses-by-submission.jsonl", "responses-by-task.jsonl"], names)
            check(z.testzip() is None, "every entry's CRC matches")
        check(zips(env, name) == [os.path.basename(path)], f"one ZIP, no temp: {zips(env, name)}")
        print(f"     {size} bytes; batchd's peak RSS grew by {grown} KiB")


if __name__ == "__main__":
    run([test_export_new_mode, test_export_old_mode, test_export_refused_for_unready,
         test_kill9_while_downloading, test_zip_placed_before_its_record,
         test_interval_keep_and_hook,
         test_faults_on_export_endpoints, test_planted_temp_file,
         test_one_gib_export_flat_memory])

