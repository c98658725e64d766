"""End to end: a fault that lasts backs off (issue 9's retry storm). An upload URL that answers
500 to every PUT for a minute gets a handful of attempts with growing gaps, each counted
truly in the job's history ("attempt 3 of 20"), not one a second all called 'attempt 1'. Once
the fault is lifted the job goes READY."""

import json
import os
import re
import time

from harness import Env, call, check, run, wait_for

FAULT_S = 60


def test_upload_500_for_a_minute_backs_off():
    # The shipped [poll] schedule, so that retries use the default base (1 s) and cap.
    conf = "poll.initial = 2s\npoll.max = 60s"
    with Env(extra_conf=conf) as env:
        d = env.daemon
        env.sim.set_faults([{"kind": "500", "probability": 1.0, "endpoint": "upload"}])
        src = os.path.join(env.dir, "storm.jsonl")
        with open(src, "w") as f:
            for k in range(3):
                f.write(json.dumps({"prompt": f"q{k}", "response": f"a{k}"}) + "\n")
        d.drop(src)
        start = time.monotonic()

        def failed_puts():
            return [r for r in env.sim.state()["requests"]
                    if r["endpoint"] == "upload" and r["status"] == 500]

        wait_for(lambda: len(failed_puts()) >= 1, 30, "the first refused PUT")
        # Observe the fault for a minute (an observation window, not a synchronisation).
        time.sleep(max(0.0, FAULT_S - (time.monotonic() - start)))
        puts = failed_puts()
        n = len(puts)
        # Full jitter from 1 s doubling: about 6 or 7 attempts fit in a minute; the storm
        # made about 60.
        check(3 <= n <= 14, f"{n} PUTs in {FAULT_S}s")
        # Single gaps are not asserted: with full jitter any one of them may be short (a
        # bound on the largest failed one run in eight). The count above (a storm makes ~60,
        # backoff ~7, and more than 14 is all but impossible) and the attempt numbers below
        # (never reset) are what backing off means.
        gaps = [b["t_ms"] - a["t_ms"] for a, b in zip(puts, puts[1:])]
        print(f"     {n} PUTs in {FAULT_S}s, gaps {gaps} ms", flush=True)
        job = [j for j in d.jobs() if j["name"] == "storm"][0]
        check(job["state"] == "uploading", job)
        check(job["attempts"] == n, f"attempts {job['attempts']}, {n} PUTs failed")
        hist = call(d.socket, "io.batchd.GetJob", {"job": "storm"})["parameters"]["job"]["history"]
        counted = [int(m.group(1)) for e in hist
                   for m in [re.search(r"attempt (\d+) of 20 failed", e["note"] or "")] if m]
        check(counted == list(range(1, n + 1)), f"attempt numbers in the history: {counted}")

        env.sim.set_faults([])
        wait_for(lambda: d.dir_entries("done") == ["storm"], 360, "the job in done/ after "
                 "the fault is lifted")
        check(d.result("storm")["batch_status"] == "READY", d.result("storm"))
        check(d.dir_entries("failed") == [], d.dir_entries("failed"))


if __name__ == "__main__":
    run([test_upload_500_for_a_minute_backs_off])
