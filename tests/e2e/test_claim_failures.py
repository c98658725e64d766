"""End to end: an entry batchd cannot claim (here a directory its user may not rename) stays
in incoming/, is reported once with what to do, and neither blocks the other jobs nor spins
the event loop. Runs batchd as an unprivileged user, so it needs root to set that up."""

import json
import os
import subprocess
import time

from harness import Env, Skipped, check, other_uid_bin_dir, run, wait_for

NOBODY = 65534


def chown_tree(top, uid, gid):
    for root, dirs, files in os.walk(top):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)
    os.lchown(top, uid, gid)


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_unclaimable_entry_does_not_block():
    if os.geteuid() != 0:
        raise Skipped("needs root to run batchd as another user")
    with Env(start=False, extra_conf="job.max_active = 1", other_uid=True) as env:
        d = env.daemon
        with open(d.conf) as f:
            conf = f.read().replace("group = root", f"group = {NOBODY}")
        with open(d.conf, "w") as f:
            f.write(conf)
        for sub in ("tmp", "incoming", "active", "done", "failed"):
            os.makedirs(os.path.join(d.spool, sub), exist_ok=True)
        os.chmod(env.dir, 0o755)
        chown_tree(env.dir, NOBODY, NOBODY)
        # A producer's directory that batchd's user may not rename (it would have to
        # rewrite the directory's "..").
        bad = os.path.join(d.spool, "incoming", "bad")
        os.mkdir(bad, 0o755)
        with open(os.path.join(bad, "data.jsonl"), "w") as f:
            f.write(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        log = open(d.log_path, "ab")
        # The build tree may be where nobody cannot enter: run a copy it can reach.
        batchd = os.path.join(other_uid_bin_dir(), "batchd")
        d.proc = subprocess.Popen([batchd, "-c", d.conf], stdout=log, stderr=log,
                                  user=NOBODY, group=NOBODY, extra_groups=[])
        log.close()
        wait_for(d.answers, 20, "batchd's control socket")
        src = os.path.join(env.dir, "good.jsonl")
        with open(src, "w") as f:
            f.write(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        os.chown(src, NOBODY, NOBODY)
        d.drop(src)
        wait_for(lambda: d.dir_entries("done") == ["good"], 30, "the good job in done/")
        check(d.dir_entries("incoming") == ["bad"], f"incoming: {d.dir_entries('incoming')}")
        check(os.listdir(bad) == ["data.jsonl"], "the bad entry is untouched")
        wait_for(lambda: "cannot claim incoming/bad" in d.logs(), 10, "the failure logged")
        # No spinning: the loop sleeps while the bad entry waits for its next try.
        before = cpu_seconds(d.proc.pid)
        time.sleep(2)  # measuring idle CPU over a window, not synchronising
        used = cpu_seconds(d.proc.pid) - before
        check(used < 0.5, f"batchd used {used:.2f}s of CPU in 2s while idle")
        logs = d.logs()
        n = logs.count("cannot claim incoming/bad")
        check(n == 1, f"the failure is logged {n} times, not once")
        check("rename" in logs.split("cannot claim incoming/bad", 1)[1].splitlines()[0],
              "the message says what to do")
        check(d.answers(), "the control socket still answers")


if __name__ == "__main__":
    run([test_unclaimable_entry_does_not_block])
