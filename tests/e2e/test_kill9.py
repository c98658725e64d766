"""End to end: batchd is killed with SIGKILL at random moments (at least 20 kills over 20
jobs) and restarted each time. Every job still ends READY, no job is claimed twice, and the
sim holds exactly one batch per job."""

import json
import os
import random
import time

from harness import Env, check, run, wait_for


def test_kill9_many_times():
    n = 20
    rng = random.Random(int(os.environ.get("BATCHD_E2E_SEED", "20261129")))
    sim_args = ["--import-queued", "200ms", "--import-processing", "500ms",
                "--batch-processing", "1s", "--fault", "drop-after=0.05"]
    with Env(sim_args=sim_args, extra_conf="api.max_rate = 30") as env:
        d = env.daemon
        src = os.path.join(env.dir, "src")
        os.makedirs(src)
        paths = []
        for i in range(n):
            p = os.path.join(src, f"k{i:02d}.jsonl")
            with open(p, "w") as f:
                for k in range(5):
                    f.write(json.dumps({"prompt": f"q{i}.{k}", "response": "a"}) + "\n")
            paths.append(p)
        kills = 0
        busy_kills = 0
        deadline = time.monotonic() + 300
        # Jobs arrive over time, so the kills land in every stage of the pipeline.
        while time.monotonic() < deadline and len(d.dir_entries("done")) < n:
            for _ in range(rng.randint(0, 2)):
                if paths:
                    d.drop(paths.pop(0))
            end = time.monotonic() + rng.uniform(0.05, 0.5)
            while time.monotonic() < end and d.proc.poll() is None:
                time.sleep(0.01)
            if d.dir_entries("active"):
                busy_kills += 1
            d.kill9()
            kills += 1
            d.start()
            if not paths and kills >= 20 and len(d.dir_entries("done")) < n:
                break
        wait_for(lambda: len(d.dir_entries("done")) == n, 120, "all jobs in done/")
        check(kills >= 20, f"only {kills} kills")
        check(busy_kills >= 10, f"only {busy_kills} kills hit a daemon with active jobs")
        check(d.dir_entries("failed") == [], f"failed: {d.dir_entries('failed')}")
        check(d.dir_entries("active") == [] and d.dir_entries("incoming") == [],
              "nothing left behind")
        names = sorted(d.dir_entries("done"))
        check(names == [f"k{i:02d}" for i in range(n)], f"claimed twice or renamed: {names}")
        st = env.sim.state()
        per_ds = {}
        for b in st["batches"]:
            for ds in b["datasets"]:
                per_ds[ds["id"]] = per_ds.get(ds["id"], 0) + 1
        check(len(st["batches"]) == n, f"{len(st['batches'])} batches for {n} jobs")
        check(all(v == 1 for v in per_ds.values()), f"a dataset with two batches: {per_ds}")
        setups = {}
        for r in st["requests"]:
            if r["endpoint"] == "setup" and r["status"] == 202:
                setups[r["path"]] = setups.get(r["path"], 0) + 1
        check(all(v == 1 for v in setups.values()), f"a batch set up twice: {setups}")
        for name in names:
            res = d.result(name)
            check(res["batch_id"] in {b["id"] for b in st["batches"]}, res)
            check(res["total_task_count"] == 5, res)
        print(f"   {kills} kills ({busy_kills} with jobs active), {len(st['datasets'])} datasets "
              f"(orphans from unknown creates allowed), {n} batches")


if __name__ == "__main__":
    run([test_kill9_many_times])
