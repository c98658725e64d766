"""End to end: batchctl for automation against the real daemon and batchd-sim. submit reports
the claimed job (a name clash gives NAME-2, --json gives {job, id, path}); wait's exit codes
(ready 0, failed 1, timeout 75, daemon gone 69); id prefixes and ambiguous prefixes with their
candidates; retry --failed; list --state groups; CMD --help; show's record errors; --json
watch events."""

import json
import os
import select
import subprocess
import time

from harness import Env, batchctl, binary, call, check, run, wait_for

COMMANDS = ("status", "list", "show", "watch", "submit", "wait", "validate", "retry", "cancel",
            "pause", "resume", "reload", "metrics", "help")


def ctl(env, *args, timeout=60):
    return batchctl(env, *args, timeout=timeout)


def write_jsonl(path, rows):
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def good(env, name, n=3):
    return write_jsonl(os.path.join(env.dir, f"{name}.jsonl"),
                       [{"prompt": f"{name} {i}", "response": f"r {i}"} for i in range(n)])


def get_job(env, ref):
    r = call(env.daemon.socket, "io.batchd.GetJob", {"job": ref})
    check("error" not in r, f"GetJob {ref}: {r}")
    return r["parameters"]["job"]


def in_failed_dir(env, ref):
    """The job is failed and its move to failed/ is done (a retry needs both)."""
    j = get_job(env, ref)
    return j["state"] == "failed" and (j.get("dir") or "").startswith("failed/")


def blocked_following(pid):
    """True once the process sleeps in a poll() without a deadline: batchctl wait does that only
    while it follows its Watch (the connection and the lookups before it use deadlines). Where
    /proc/PID/syscall cannot be read or the architecture's numbers are not known, it cannot be
    told: True (the caller still checks which exit path was taken)."""
    try:
        with open(f"/proc/{pid}/syscall") as f:
            fields = f.read().split()
    except PermissionError:
        return True
    except OSError:
        return False
    if len(fields) < 4 or not fields[0].isdigit():
        return False  # running
    nr, arg3 = int(fields[0]), int(fields[3], 16)
    arch = os.uname().machine
    if arch not in ("x86_64", "aarch64"):
        return True  # syscall numbers not known here: cannot be told
    if arch == "x86_64" and nr == 7:  # poll(fds, n, -1)
        return arg3 in (0xffffffff, 0xffffffffffffffff)
    if (arch == "x86_64" and nr == 271) or (arch == "aarch64" and nr == 73):  # ppoll(.., NULL)
        return arg3 == 0
    return False


class Lines:
    """Lines from a pipe, each waited for with a deadline (a lost event fails, never hangs)."""

    def __init__(self, pipe):
        self.fd = pipe.fileno()
        self.buf = b""

    def read(self, timeout=30.0):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            check(left > 0, f"no line within {timeout}s (so far: {self.buf!r})")
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                chunk = os.read(self.fd, 65536)
                check(chunk, f"the output ended (so far: {self.buf!r})")
                self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode()


def common_prefix(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def test_submit_wait_prefix_show_retry():
    with Env() as env:
        # The first job: --json gives the full id and the entry's path; wait by a 4-character
        # prefix (the only job, so unique) follows it to READY.
        p = ctl(env, "--json", "submit", good(env, "one"), "--name", "clash")
        check(p.returncode == 0, (p.returncode, p.stdout, p.stderr))
        out = json.loads(p.stdout)
        check(out["job"] == "clash" and isinstance(out["id"], str) and len(out["id"]) == 26, out)
        check(os.path.dirname(out["path"]) == os.path.join(env.daemon.spool, "incoming"), out)
        first = out["id"]
        w = ctl(env, "wait", first[:4])
        check(w.returncode == 0 and "ready" in w.stdout, (w.returncode, w.stdout, w.stderr))
        check("clash" in env.daemon.dir_entries("done"), env.daemon.dir_entries("done"))

        # A name clash: done/clash exists, so the daemon names the job clash-2; submit says so.
        p = ctl(env, "submit", good(env, "two"), "--name", "clash")
        check(p.returncode == 0 and p.stdout.strip() == "clash-2", (p.stdout, p.stderr))
        j = get_job(env, "clash-2")
        check(j["id"] in p.stderr and j["source"].startswith("clash"), (p.stderr, j))
        w = ctl(env, "--json", "wait", "clash-2", "--timeout", "60s")
        check(w.returncode == 0, (w.returncode, w.stdout, w.stderr))
        final = json.loads(w.stdout)
        check(final[0]["id"] == j["id"] and final[0]["state"] == "ready", final)

        # A failed job: wait exits 1 and prints its error; show lists the record errors.
        bad = write_jsonl(os.path.join(env.dir, "bad.jsonl"),
                          [{"prompt": "a", "response": "b"}, {"prompt": "no response"},
                           {"prompt": "c", "response": "d", "extra": 1}])
        p = ctl(env, "--json", "submit", bad, "--wait")
        check(p.returncode == 1, (p.returncode, p.stdout, p.stderr))
        check("invalid_records" in p.stderr + p.stdout, (p.stdout, p.stderr))
        w = ctl(env, "wait", "bad", "clash")
        check(w.returncode == 1 and "invalid_records" in w.stdout, (w.returncode, w.stdout))
        s = ctl(env, "show", "bad")
        check(s.returncode == 1 and "record errors" in s.stdout and "line 2" in s.stdout and
              "response" in s.stdout, s.stdout)
        sj = json.loads(ctl(env, "--json", "show", "bad").stdout)["job"]
        lines = [e["line"] for e in sj["record_errors"]]
        check(2 in lines and 3 in lines and len(lines) <= 20, sj["record_errors"])

        # Id prefixes: one shared by several jobs is ambiguous and lists them; the ID column
        # of list is accepted.
        ids = [first, j["id"], sj["id"]]
        pre = common_prefix(first, j["id"])
        check(len(pre) >= 4, f"ids {ids} share less than 4 characters")
        a = ctl(env, "show", pre)
        check(a.returncode == 65 and first in a.stderr and j["id"] in a.stderr, a.stderr)
        r = call(env.daemon.socket, "io.batchd.GetJob", {"job": pre})
        check(r.get("error") == "io.batchd.AmbiguousJob" and
              first in r["parameters"]["candidates"], r)
        listing = ctl(env, "list").stdout.splitlines()[1:]
        for row in listing:
            short = row.split()[0]
            check(len(short) < 26, row)
            s = ctl(env, "--json", "show", short)
            check(s.returncode in (0, 1) and json.loads(s.stdout)["job"]["id"].startswith(short),
                  (row, s.stderr))

        # retry --failed retries the failed job and prints it; --json gives an array.
        r = ctl(env, "retry", "--failed")
        check(r.returncode == 0 and "bad" in r.stdout, (r.returncode, r.stdout, r.stderr))
        wait_for(lambda: in_failed_dir(env, "bad"), 30, "bad failed again, in failed/")
        r = ctl(env, "--json", "retry", "--failed")
        check(r.returncode == 0 and [x["id"] for x in json.loads(r.stdout)] == [sj["id"]],
              r.stdout)
        wait_for(lambda: in_failed_dir(env, "bad"), 30, "bad failed again, in failed/")

        # list --state groups, and an unknown state names the valid ones.
        fin = ctl(env, "list", "-q", "--state", "finished")
        check(sorted(fin.stdout.split()) == ["bad", "clash", "clash-2"], fin.stdout)
        unf = ctl(env, "list", "-q", "--state", "unfinished")
        check(unf.returncode == 0 and unf.stdout.split() == [], unf.stdout)
        bogus = ctl(env, "list", "--state", "bogus")
        check(bogus.returncode == 65 and "unfinished" in bogus.stderr and
              "processing" in bogus.stderr, (bogus.returncode, bogus.stderr))
        r = call(env.daemon.socket, "io.batchd.ListJobs", {"states": ["bogus"]})
        check(r.get("error") == "io.batchd.InvalidParameter" and
              "finished" in r["parameters"]["valid"], r)

        # wait --timeout on a job held retrying (every create_batch answered 429): 75; then
        # the daemon goes away under a wait: 69.
        env.sim.set_faults([{"kind": "429", "probability": 1.0, "endpoint": "create_batch"}])
        p = ctl(env, "--json", "submit", good(env, "held"))
        held = json.loads(p.stdout)["id"]
        check(held, p.stderr)
        w = ctl(env, "wait", held, "--timeout", "1s")
        check(w.returncode == 75 and "held" in w.stderr, (w.returncode, w.stderr))
        proc = subprocess.Popen([binary("batchctl"), "-c", env.daemon.conf, "wait", held],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: any(s.startswith("held") for s in env.daemon.dir_entries("active")),
                 10, "held active")
        # Stopped only once the wait follows its Watch: a stop before it connected would
        # give 69 too, from the connection that failed, and test nothing.
        wait_for(lambda: blocked_following(proc.pid), 10, "batchctl wait following its Watch")
        env.daemon.stop()
        out, err = proc.communicate(timeout=30)
        check(proc.returncode == 69 and "went away" in err, (proc.returncode, out, err))


def test_help_and_no_daemon():
    with Env(start=False) as env:
        for cmd in COMMANDS:
            h = ctl(env, cmd, "--help")
            check(h.returncode == 0 and h.stdout.startswith("usage:") and cmd in h.stdout,
                  (cmd, h.returncode, h.stdout, h.stderr))
        # Without a daemon submit still enqueues and says the id is not known; --wait fails.
        p = ctl(env, "--json", "submit", good(env, "offline"))
        check(p.returncode == 0, (p.returncode, p.stderr))
        out = json.loads(p.stdout)
        check(out["job"] == "offline" and out["id"] is None and "not running" in p.stderr,
              (out, p.stderr))
        check(os.path.exists(out["path"]), out)
        w = ctl(env, "wait", "offline")
        check(w.returncode == 69, (w.returncode, w.stderr))


def test_json_watch():
    with Env() as env:
        proc = subprocess.Popen([binary("batchctl"), "-c", env.daemon.conf, "--json", "watch"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        lines = Lines(proc.stdout)
        try:
            first = json.loads(lines.read())
            check(first["event"] == "snapshot" and first["at"] and first["jobs"] == [], first)
            p = ctl(env, "--json", "submit", good(env, "watched"))
            jid = json.loads(p.stdout)["id"]
            events = []
            while True:
                e = json.loads(lines.read())
                check(e["event"] in ("changed", "finished") and e["at"].endswith("Z"), e)
                events.append(e)
                if e["event"] == "finished" and e["job"]["id"] == jid:
                    break
            seen = [json.dumps({k: v for k, v in e["job"].items() if k != "updated_at"},
                               sort_keys=True) for e in events]
            check(all(a != b for a, b in zip(seen, seen[1:])), "a job repeated unchanged")
            check(events[-1]["job"]["state"] == "ready", events[-1])
            check(events[0]["job"]["source"] == "watched.jsonl", events[0])
        finally:
            proc.terminate()
            proc.wait(10)
            proc.stdout.close()


def test_retry_failed_pages():
    """retry --failed asks for the failed jobs a page (50) at a time: more than a page are all
    tried, each once, whether its retry is accepted or refused."""
    with Env() as env:
        n = 60
        for k in range(n):
            path = os.path.join(env.dir, f"junk{k:02d}.txt")
            with open(path, "w") as f:
                f.write("not a data file\n")
            env.daemon.drop(path)

        def all_failed():
            r = call(env.daemon.socket, "io.batchd.ListJobs", {"states": ["failed"]})
            jobs = r["parameters"]["jobs"]
            return len(jobs) == n and all(j["dir"].startswith("failed/") for j in jobs)
        wait_for(all_failed, 30, f"{n} rejected jobs in failed/")
        r = ctl(env, "retry", "--failed")
        tried = [ln for ln in r.stdout.splitlines() if ln.startswith("retrying ")]
        refused = [ln for ln in r.stderr.splitlines() if "junk" in ln]
        names = sorted(ln.split()[1] for ln in tried) + sorted(
            next(w for w in ln.replace(":", " ").split() if "junk" in w) for ln in refused)
        check(len(tried) + len(refused) == n, (r.returncode, r.stdout, r.stderr))
        check(len({x for x in names}) == n, names)


if __name__ == "__main__":
    run([test_submit_wait_prefix_show_retry, test_help_and_no_daemon, test_json_watch,
         test_retry_failed_pages])
