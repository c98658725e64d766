"""End to end: append jobs (PRODUCT §11) against batchd-sim. Three appends dropped at once
grow one batch one at a time, in claim order; the totals follow the batch's grouping; a
target that is missing or not ready fails locally with no API call; a kill -9 while syncing
imports nothing twice; faults on the sync endpoints are retried."""

import json
import os
import shutil

from harness import SOURCE, Env, batchctl, check, run, wait_for

APPEND_ENDPOINTS = ("upload_url", "upload", "check_upload", "get_import", "sync", "get_sync",
                    "batch_status")


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def tpg_base(env, name="base", n=4, tpg=3):
    """A normal job with the default template, tasks_per_group tpg, n records."""
    d = os.path.join(env.dir, "src", name)
    os.makedirs(d)
    with open(os.path.join(d, "job.json"), "w") as f:
        json.dump({"batch": {"tasks_per_group": tpg}}, f)
    write_jsonl(os.path.join(d, "data.jsonl"),
                [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(n)])
    return d


def append_dir(env, name, target, rows, extra=None):
    d = os.path.join(env.dir, "src", name)
    os.makedirs(d)
    spec = {"append_to": target}
    spec.update(extra or {})
    with open(os.path.join(d, "job.json"), "w") as f:
        json.dump(spec, f)
    write_jsonl(os.path.join(d, f"{name}.jsonl"), rows)
    return d


def run_base(env, src, name="base"):
    d = env.daemon
    d.drop(src, name)
    wait_for(lambda: name in d.dir_entries("done"), 60, f"{name} in done/")
    return d.result(name)


def drop_all(d, dirs):
    """Drops the directories in one go: one rescan or event batch claims them together."""
    tmp = os.path.join(d.spool, "tmp")
    os.makedirs(tmp, exist_ok=True)
    staged = []
    for src in dirs:
        name = os.path.basename(src)
        t = os.path.join(tmp, f".{name}")
        shutil.copytree(src, t)
        staged.append((t, name))
    for t, name in staged:
        os.rename(t, os.path.join(d.spool, "incoming", name))


def wait_done(d, names, timeout=90):
    wait_for(lambda: all(n in d.dir_entries("done") or n in d.dir_entries("failed")
                         for n in names), timeout, f"{names} finished")
    failed = [n for n in names if n in d.dir_entries("failed")]
    check(not failed, f"failed: {[(n, d.error(n)) for n in failed]}")


def batch_of(st, batch_id):
    return next(b for b in st["batches"] if b["id"] == batch_id)


def check_serialised(st, results):
    """Each append's requests form one block in the request log, in claim order; one
    upload_url per append; its sync comes after its import's last poll."""
    reqs = st["requests"]
    blocks = []
    for res in sorted(results, key=lambda r: r["claimed_at"]):
        file_name = res["job"] + ".jsonl"
        mine = [r for r in reqs
                if (r["endpoint"] == "upload_url" and r["path"].endswith("/" + file_name))
                or (r["endpoint"] == "get_import" and r["path"].endswith("/" + res["import_id"]))
                or (r["endpoint"] == "get_sync" and r["path"].endswith("/" + res["sync_id"]))]
        urls = [r for r in mine if r["endpoint"] == "upload_url"]
        check(len(urls) == 1, f"{res['job']}: one upload_url expected: {urls}")
        polls = [r["seq"] for r in mine if r["endpoint"] == "get_import"]
        gets = [r["seq"] for r in mine if r["endpoint"] == "get_sync"]
        check(polls and gets, f"{res['job']}: import and sync polls: {mine}")
        syncs = [r["seq"] for r in reqs if r["endpoint"] == "sync" and
                 max(polls) < r["seq"] < min(gets)]
        check(len(syncs) >= 1, f"{res['job']}: no sync between its import's last poll "
                               f"{max(polls)} and its first sync poll {min(gets)}")
        blocks.append((res["job"], min(r["seq"] for r in mine), max(r["seq"] for r in mine)))
    for a, b in zip(blocks, blocks[1:]):
        check(a[2] < b[1], f"appends overlap: {a} and {b}")
    # A sync only after every import of the dataset completed: the sim would have failed it.
    for b in st["batches"]:
        for s in b.get("syncs") or []:
            check(s["status"] == "complete", f"sync not complete: {s}")


def test_three_appends_tasks_per_group():
    """tasks_per_group 3: 4 tasks (groups 3+1), then three appends of 2 dropped at once: the
    open group is topped up, the totals end at 10 tasks in 4 groups."""
    with Env() as env:
        d = env.daemon
        base = run_base(env, tpg_base(env))
        check(base["total_task_count"] == 4 and base["total_task_groups"] == 2, base)
        names = ["a1", "a2", "a3"]
        dirs = [append_dir(env, n, "base", [{"prompt": f"{n}-{i}", "response": "x"}
                                            for i in range(2)]) for n in names]
        drop_all(d, dirs)
        wait_done(d, names)
        results = [d.result(n) for n in names]
        st = env.sim.state()
        check(len(st["datasets"]) == 1 and len(st["batches"]) == 1, "no new dataset or batch")
        ds = st["datasets"][0]
        check(len(ds["imports"]) == 4, f"one import per append: {ds['imports']}")
        b = batch_of(st, base["batch_id"])
        check(b["total_task_count"] == 10 and b["total_task_groups"] == 4, b)
        check_serialised(st, results)
        out = batchctl(env, "list").stdout
        check(all(any(f" {n} " in ln and "append:base" in ln for ln in out.splitlines())
                  for n in names), out)
        out = batchctl(env, "show", "a1").stdout
        check(f"job base ({base['id']}), sync " in out, out)
        last = max(results, key=lambda r: r["finished_at"])
        check(last["total_task_count"] == 10 and last["total_task_groups"] == 4, last)
        for res in results:
            check(res["append_to"] == {"job": "base", "id": base["id"]}, res)
            check(res["dataset_id"] == base["dataset_id"] and
                  res["batch_id"] == base["batch_id"], res)
            check(res["records"] == 2 and res["tasks_created"] == 2, res)
            check(res["datapoints_processed"] == 2, res)
            for k in ("import_id", "sync_id", "groups_created", "groups_expanded"):
                check(res.get(k) is not None, f"result.json lacks {k}: {res}")
        d.stop()


def test_three_appends_task_group_id():
    """A task_group_id schema: appends join the batch's existing groups by key and start new
    ones; keys are shared across appends."""
    with Env() as env:
        d = env.daemon
        base = run_base(env, os.path.join(SOURCE, "examples", "pairwise"), "pairwise")
        check(base["total_task_count"] == 4 and base["total_task_groups"] == 2, base)

        def rows(sessions):
            return [{"prompt": f"q{i}", "response_a": "a", "response_b": "b", "session_id": s}
                    for i, s in enumerate(sessions)]
        plan = {"g1": ["session_002", "session_003"], "g2": ["session_003", "session_004"],
                "g3": ["session_001"]}
        dirs = [append_dir(env, n, base["id"], rows(s)) for n, s in plan.items()]
        drop_all(d, dirs)
        wait_done(d, list(plan))
        results = [d.result(n) for n in plan]
        st = env.sim.state()
        b = batch_of(st, base["batch_id"])
        check(b["total_task_count"] == 9 and b["total_task_groups"] == 4, b)
        check_serialised(st, results)
        by = {r["job"]: r for r in results}
        check(by["g3"]["groups_created"] == 0 and by["g3"]["groups_expanded"] == 1, by["g3"])
        for r in results:
            check(r["append_to"] == {"job": "pairwise", "id": base["id"]}, r)
        d.stop()


def test_waiting_note_names_the_one_ahead():
    """While one append syncs slowly, the next waits in queued with a note naming it."""
    with Env(sim_args=("--sync-processing", "3s")) as env:
        d = env.daemon
        base = run_base(env, tpg_base(env))
        dirs = [append_dir(env, n, "base", [{"prompt": n, "response": "x"}])
                for n in ("w1", "w2")]
        drop_all(d, dirs)
        # Either may be claimed first: the one that syncs is ahead, the other waits.
        syncing = wait_for(lambda: [j for j in d.jobs() if j["name"] in ("w1", "w2") and
                                    j["state"] == "syncing"], 30, "an append syncing")
        ahead = syncing[0]
        behind = "w2" if ahead["name"] == "w1" else "w1"
        other = [j for j in d.jobs() if j["name"] == behind][0]
        check(other["state"] == "queued", f"{behind} waits in queued while {ahead['name']} "
                                          f"syncs: {other}")
        out = batchctl(env, "--json", "show", behind)
        check(out.returncode == 0, out.stderr)
        hist = out.stdout
        check(f"waits for {ahead['name']} ({ahead['id']})" in hist,
              f"no note naming {ahead['name']}: {hist}")
        wait_done(d, ["w1", "w2"])
        check(d.result("w2")["batch_id"] == base["batch_id"], d.result("w2"))
        d.stop()


def test_target_missing_or_not_ready():
    """No job by that name, or a target not ready: failed locally, invalid_job naming the
    target, no API call for them."""
    with Env(sim_args=("--batch-processing", "20s")) as env:
        d = env.daemon
        d.drop(tpg_base(env, "slow"), "slow")
        wait_for(lambda: [j for j in d.jobs() if j["name"] == "slow" and
                          j["state"] == "processing"], 30, "slow processing")
        before = len(env.sim.state()["requests"])
        d.drop(append_dir(env, "nosuch", "no-such-job", [{"prompt": "p", "response": "r"}]))
        d.drop(append_dir(env, "early", "slow", [{"prompt": "p", "response": "r"}]))
        wait_for(lambda: {"nosuch", "early"} <= set(d.dir_entries("failed")), 30, "both failed")
        e1, e2 = d.error("nosuch"), d.error("early")
        check(e1["code"] == "invalid_job" and "no-such-job" in e1["message"], e1)
        check(e2["code"] == "invalid_job" and "slow" in e2["message"] and
              "not ready" in e2["message"], e2)
        reqs = env.sim.state()["requests"][before:]
        # Only the slow job's own polls happened meanwhile.
        others = [r for r in reqs if r["endpoint"] != "batch_status"]
        check(not others, f"API calls for a locally failed append: {others}")
        d.stop()


def test_records_checked_against_target_schema():
    """The target's schema applies: a record with a field it does not have fails the append
    as invalid_records, with no API call."""
    with Env() as env:
        d = env.daemon
        run_base(env, tpg_base(env))
        before = len(env.sim.state()["requests"])
        d.drop(append_dir(env, "bad", "base", [{"prompt": "p", "colour": "red"}]))
        wait_for(lambda: "bad" in d.dir_entries("failed"), 30, "bad failed")
        e = d.error("bad")
        check(e["code"] == "invalid_records", e)
        check(not env.sim.state()["requests"][before:], "no API call")
        d.stop()


def test_explicit_ids():
    """append_to {batch_id, dataset_id}: the job's own schema (here the template's)."""
    with Env() as env:
        d = env.daemon
        base = run_base(env, tpg_base(env))
        d.drop(append_dir(env, "byid", {"batch_id": base["batch_id"],
                                        "dataset_id": base["dataset_id"]},
                          [{"prompt": "p", "response": "r"}]))
        wait_done(d, ["byid"])
        res = d.result("byid")
        check(res["append_to"] == {"batch_id": base["batch_id"],
                                   "dataset_id": base["dataset_id"]}, res)
        check(res["total_task_count"] == 5, res)
        # list and show say what an append job targets.
        out = batchctl(env, "list").stdout
        row = [ln for ln in out.splitlines() if " byid " in ln]
        check(row and "append:" + base["batch_id"] in row[0], out)
        out = batchctl(env, "show", "byid").stdout
        check(f"batch {base['batch_id']} (dataset {base['dataset_id']})" in out, out)
        d.stop()


def test_kill9_while_syncing():
    """kill -9 in syncing, restart: ready, with exactly one import for the append."""
    with Env(sim_args=("--sync-processing", "2s")) as env:
        d = env.daemon
        base = run_base(env, tpg_base(env))
        d.drop(append_dir(env, "k1", "base", [{"prompt": "p", "response": "r"}] * 2))
        wait_for(lambda: [j for j in d.jobs() if j["name"] == "k1" and
                          j["state"] == "syncing"], 30, "k1 syncing")
        d.kill9()
        d.start()
        wait_done(d, ["k1"])
        st = env.sim.state()
        check(len(st["datasets"][0]["imports"]) == 2, st["datasets"][0]["imports"])
        check(batch_of(st, base["batch_id"])["total_task_count"] == 6, "6 tasks")
        check(d.result("k1")["total_task_count"] == 6, d.result("k1"))
        d.stop()


def test_sync_faults():
    """500 and 429 on sync and get_sync: retried, the job still reaches ready."""
    with Env() as env:
        d = env.daemon
        base = run_base(env, tpg_base(env))
        env.sim.set_faults([{"kind": "500", "count": 2, "endpoint": "sync"},
                            {"kind": "429", "count": 2, "endpoint": "get_sync"},
                            {"kind": "500", "count": 1, "endpoint": "get_sync"}],
                           retry_after=1)
        d.drop(append_dir(env, "f1", "base", [{"prompt": "p", "response": "r"}]))
        wait_done(d, ["f1"], 120)
        st = env.sim.state()
        faulted = [r for r in st["requests"] if r["fault"] and
                   r["endpoint"] in ("sync", "get_sync")]
        check(len(faulted) == 5, f"the five faults were served: {faulted}")
        check(batch_of(st, base["batch_id"])["total_task_count"] == 5, "5 tasks")
        check(len(st["datasets"][0]["imports"]) == 2, "one import for the append")
        d.stop()


def test_standing_batch_example():
    """examples/standing-batch: a template with append_to as the template of bare files; two
    drops grow the one batch to 9 tasks in 3 groups."""
    ex = os.path.join(SOURCE, "examples", "standing-batch")
    with Env(start=False) as env:
        d = env.daemon
        templates = os.path.join(env.dir, "templates")
        shutil.copy(os.path.join(ex, "standing.json"), templates)
        with open(d.conf) as f:
            conf = f.read()
        conf = conf.replace(os.path.join(templates, "default.json"),
                            os.path.join(templates, "standing.json"))
        with open(d.conf, "w") as f:
            f.write(conf)
        d.start()
        base = run_base(env, os.path.join(ex, "evals"), "evals")
        check(base["total_task_count"] == 4 and base["total_task_groups"] == 2, base)
        tmp = os.path.join(env.dir, "src")
        os.makedirs(tmp)
        drops = []
        for n in ("day-2", "day-3"):
            shutil.copy(os.path.join(ex, "drops", n + ".jsonl"), tmp)
            drops.append(os.path.join(tmp, n + ".jsonl"))
        for p in drops:
            d.drop(p)
        wait_done(d, ["day-2", "day-3"])
        st = env.sim.state()
        b = batch_of(st, base["batch_id"])
        check(b["total_task_count"] == 9 and b["total_task_groups"] == 3, b)
        check(d.result("day-3")["append_to"]["job"] == "evals", d.result("day-3"))
        d.stop()


if __name__ == "__main__":
    run([test_three_appends_tasks_per_group, test_three_appends_task_group_id,
         test_waiting_note_names_the_one_ahead, test_target_missing_or_not_ready,
         test_records_checked_against_target_schema, test_explicit_ids,
         test_kill9_while_syncing, test_sync_faults, test_standing_batch_example])
