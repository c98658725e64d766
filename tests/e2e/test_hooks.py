"""End to end: [hooks] on_ready and on_failed (batchd.conf(5), HOOKS) against batchd-sim: argv
and environment, no token anywhere in a hook's environment, retries, the timeout, a rerun
after kill -9, and the two hooks of examples/hooks/."""

import http.server
import json
import os
import shlex
import signal
import threading

from harness import SOURCE, TOKEN, Env, check, run, wait_for

# A hook that dumps its argv, environment and pid to OUT/call.<job id>.<n>.json and then
# behaves as MODE says, per job: fail the first FAIL calls with exit 1; sleep SLEEP seconds
# on the first call (recording a SIGTERM, then exiting 143).
HOOK = r'''#!/usr/bin/python3
import json, os, signal, sys, time
OUT, FAIL, SLEEP = %r, %d, %d
job = os.environ.get("BATCHD_JOB_ID", "none")
n = len([f for f in os.listdir(OUT) if f.startswith("call." + job + ".")]) + 1
rec = {"argv": sys.argv, "env": dict(os.environ), "pid": os.getpid(), "n": n,
       "stdin": os.readlink("/proc/self/fd/0")}
path = os.path.join(OUT, "call.%%s.%%d.json" %% (job, n))
with open(path + ".tmp", "w") as f:
    json.dump(rec, f)
os.rename(path + ".tmp", path)
print("hook says hello\x1b[31m from call %%d" %% n)
sys.stdout.flush()
def term(sig, frame):
    open(os.path.join(OUT, "term.%%s.%%d" %% (job, n)), "w").close()
    sys.exit(143)
signal.signal(signal.SIGTERM, term)
if n == 1 and SLEEP:
    time.sleep(SLEEP)
sys.exit(1 if n <= FAIL else 0)
'''


def make_hook(env, name, fail=0, sleep=0):
    out = os.path.join(env.dir, "out-" + name)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(env.dir, name)
    with open(path, "w") as f:
        f.write(HOOK % (out, fail, sleep))
    os.chmod(path, 0o755)
    return path, out


def calls(out, job_id=None):
    res = []
    for fn in sorted(os.listdir(out)):
        if fn.startswith("call.") and fn.endswith(".json") and (not job_id or f".{job_id}." in fn):
            with open(os.path.join(out, fn)) as f:
                res.append(json.load(f))
    return sorted(res, key=lambda r: r["n"])


def write_jsonl(path, n=2, bad=False):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n")
        if bad:
            f.write("{not json\n")


def env_with_hooks(ready="", failed="", extra=""):
    env = Env(start=False, extra_conf=extra)
    conf = ""
    if ready:
        conf += f"on_ready = {ready}\n"
    if failed:
        conf += f"on_failed = {failed}\n"
    return env, conf


def start_with(env, hooks_conf, start_env=None, cwd=None):
    with open(env.daemon.conf, "a") as f:
        f.write("[hooks]\n" + hooks_conf)
    # The token in the daemon's own environment too: a hook must never see it.
    e = {"BATCHD_API_TOKEN": TOKEN, "CREDENTIALS_DIRECTORY": os.path.join(env.dir, "creds")}
    e.update(start_env or {})
    env.daemon.start(env=e, cwd=cwd)


def history_notes(env, name):
    from harness import call
    reply = call(env.daemon.socket, "io.batchd.GetJob", {"job": name})
    if reply.get("error"):
        return []  # not claimed yet (io.batchd.NoSuchJob)
    return [h.get("note") or "" for h in reply["parameters"]["job"]["history"]]


def test_ready_and_failed():
    """on_ready with argv[1] = result.json and exactly the documented environment; on_failed
    for a failed job with error.json; no token anywhere; output logged, escaped."""
    env = Env(start=False)
    with env:
        ready, rout = make_hook(env, "ready")
        failed, fout = make_hook(env, "failed")
        start_with(env, f"on_ready = {ready}\non_failed = {failed}\n")
        d = env.daemon
        src = os.path.join(env.dir, "good.jsonl")
        write_jsonl(src)
        d.drop(src)
        bad = os.path.join(env.dir, "bad.jsonl")
        write_jsonl(bad, bad=True)
        d.drop(bad)
        wait_for(lambda: len(calls(rout)) == 1 and len(calls(fout)) == 1, 30, "both hooks ran")
        res = d.result("good")
        c = calls(rout)[0]
        done_dir = os.path.join(d.spool, "done", "good")
        check(c["argv"] == [ready, os.path.join(done_dir, "result.json")], c["argv"])
        want = {"BATCHD_JOB": "good", "BATCHD_JOB_ID": res["id"], "BATCHD_STATE": "ready",
                "BATCHD_DIR": done_dir, "BATCHD_DATASET_ID": res["dataset_id"],
                "BATCHD_BATCH_ID": res["batch_id"], "PATH": "/usr/local/bin:/usr/bin:/bin"}
        # python adds LC_CTYPE on its own in some locales; nothing else may be there.
        got = {k: v for k, v in c["env"].items() if k != "LC_CTYPE"}
        check(got == want, f"environment {c['env']}")
        check(c["stdin"] == "/dev/null", c["stdin"])
        err = d.error("bad")
        c = calls(fout)[0]
        fdir = os.path.join(d.spool, "failed", "bad")
        check(c["argv"] == [failed, os.path.join(fdir, "error.json")], c["argv"])
        check(c["env"]["BATCHD_STATE"] == "failed" and c["env"]["BATCHD_JOB_ID"] == err["id"],
              c["env"])
        check(c["env"]["BATCHD_DATASET_ID"] == "" and c["env"]["BATCHD_BATCH_ID"] == "",
              "unknown ids are present and empty")
        for c in calls(rout) + calls(fout):
            blob = json.dumps(c)
            check(TOKEN not in blob, "the token reached a hook")
            check("CREDENTIALS_DIRECTORY" not in c["env"], c["env"])
        wait_for(lambda: "hook on_ready exited 0 (attempt 1 of 4)" in history_notes(env, "good"),
                 10, "the outcome in the job's history")
        wait_for(lambda: "hook on_failed exited 0 (attempt 1 of 4)" in history_notes(env, "bad"),
                 10, "the outcome in the failed job's history")
        logs = d.logs()
        check(f"job {res['id']}" in logs and "hook says hello\\x1b[31m from call 1" in logs,
              "the hook's output is logged with the job id, escaped")
        # Outcomes survive a restart (the history is in the record).
        d.stop()
        d.start()
        check("hook on_ready exited 0 (attempt 1 of 4)" in history_notes(env, "good"),
              "history after restart")
        # No second run after the restart: the journal is read on the thread pool after the
        # start, so wait until a later job's run is over before counting.
        src2 = os.path.join(env.dir, "later.jsonl")
        write_jsonl(src2)
        d.drop(src2)
        wait_for(lambda: "hook on_ready exited 0 (attempt 1 of 4)" in
                 history_notes(env, "later"), 30, "the later job's hook ran")
        check(len(calls(rout, res["id"])) == 1 and len(calls(fout)) == 1,
              "no second run after a restart")


def test_retry_after_exit_1():
    """A hook that exits 1 twice runs again after 1 s, then 2 s, and then succeeds."""
    env = Env(start=False)
    with env:
        ready, rout = make_hook(env, "ready", fail=2)
        start_with(env, f"on_ready = {ready}\n")
        d = env.daemon
        src = os.path.join(env.dir, "r.jsonl")
        write_jsonl(src)
        d.drop(src)
        wait_for(lambda: len(calls(rout)) == 3, 30, "three runs")
        wait_for(lambda: "hook on_ready exited 0 (attempt 3 of 4)" in history_notes(env, "r"),
                 10, "success noted")
        notes = history_notes(env, "r")
        check("hook on_ready exited 1 (attempt 1 of 4)" in notes, notes)
        check("hook on_ready exited 1 (attempt 2 of 4)" in notes, notes)
        logs = d.logs()
        check("retrying in 1s" in logs and "retrying in 2s" in logs, "backoff 1 s then 2 s")


# A shell hook whose first attempt traps SIGTERM (recording it) and waits; later ones exit 0.
# The trap is set before anything else, well inside hook_timeout.
TRAP_HOOK = r"""#!/bin/sh
trap 'touch "$OUT/term.$BATCHD_JOB_ID.$n"; exit 143' TERM
OUT=%s
n=$(($(ls "$OUT" | grep -c "^call\.$BATCHD_JOB_ID\.") + 1))
touch "$OUT/call.$BATCHD_JOB_ID.$n"
if [ "$n" -eq 1 ]; then
    sleep 60 &
    wait
fi
exit 0
"""


def test_timeout_term_then_retry():
    """Past hook_timeout the hook gets SIGTERM; the next attempt runs and succeeds."""
    env = Env(start=False)
    with env:
        out = os.path.join(env.dir, "out-trap")
        os.makedirs(out)
        ready = os.path.join(env.dir, "trap")
        with open(ready, "w") as f:
            f.write(TRAP_HOOK % shlex.quote(out))
        os.chmod(ready, 0o755)
        start_with(env, f"on_ready = {ready}\nhook_timeout = 3s\n")
        d = env.daemon
        src = os.path.join(env.dir, "t.jsonl")
        write_jsonl(src)
        d.drop(src)
        wait_for(lambda: "hook on_ready exited 0 (attempt 2 of 4)" in history_notes(env, "t"),
                 60, "the retry after the timeout succeeded")
        notes = history_notes(env, "t")
        check("hook on_ready killed after its timeout (attempt 1 of 4)" in notes, notes)
        job = d.result("t")["id"]
        check(os.path.exists(os.path.join(out, f"term.{job}.1")),
              "the first attempt got SIGTERM (not only SIGKILL)")


# Leaves a background process holding its stdout and stderr, records its pid, exits 0.
BG_HOOK = r"""#!/bin/sh
sleep 300 &
echo $! > %s/bg.$BATCHD_JOB_ID
exit 0
"""


def test_background_child():
    """A hook that exits 0 but leaves a process holding its output: the run is over promptly
    (the pipes get a short grace), and a stop is not held up by that process."""
    env = Env(start=False)
    bg = []
    with env:
        out = os.path.join(env.dir, "out-bg")
        os.makedirs(out)
        ready = os.path.join(env.dir, "bg")
        with open(ready, "w") as f:
            f.write(BG_HOOK % shlex.quote(out))
        os.chmod(ready, 0o755)
        start_with(env, f"on_ready = {ready}\n")
        d = env.daemon
        try:
            src = os.path.join(env.dir, "a.jsonl")
            write_jsonl(src)
            d.drop(src)
            first = wait_for(lambda: [f for f in os.listdir(out) if f.startswith("bg.")
                                      and os.path.getsize(os.path.join(out, f))], 30,
                             "the hook left its background process")
            bg.append(int(open(os.path.join(out, first[0])).read()))
            wait_for(lambda: "hook on_ready exited 0 (attempt 1 of 4)" in
                     history_notes(env, "a"), 20, "the run recorded as done")
            # A second one, stopped while its background process still holds the pipes.
            src = os.path.join(env.dir, "b.jsonl")
            write_jsonl(src)
            d.drop(src)
            wait_for(lambda: [f for f in os.listdir(out) if f.startswith("bg.")
                              and os.path.getsize(os.path.join(out, f))
                              and int(open(os.path.join(out, f)).read()) not in bg],
                     30, "the second hook left its background process")
            pid_b = [int(open(os.path.join(out, f)).read()) for f in os.listdir(out)
                     if f.startswith("bg.") and int(open(os.path.join(out, f)).read()) not in bg][0]
            bg.append(pid_b)
            check(d.stop(timeout=6) == 0, "batchd stopped cleanly")

            def gone(pid):
                try:
                    return open(f"/proc/{pid}/stat").read().split()[2] == "Z"
                except OSError:
                    return True
            job_b = d.result("b")["id"]
            ended = f"job {job_b}" in d.logs() and any(
                f"job {job_b}" in line and "hook on_ready exited 0" in line
                for line in d.logs().splitlines())
            # Stopped within the grace: its group got SIGTERM. Over before the stop: the
            # process was left alone, as the man page says.
            check(ended or wait_for(lambda: gone(pid_b), 5, "the background process killed"),
                  "the second hook's background process")
        finally:
            for pid in bg:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def test_relative_spool():
    """A spool dir relative to batchd's working directory: hooks (run in /) still get
    absolute paths that exist."""
    env = Env(start=False, extra_conf="spool.dir = spool")
    with env:
        ready, rout = make_hook(env, "ready")
        start_with(env, f"on_ready = {ready}\n", cwd=env.dir)
        d = env.daemon
        src = os.path.join(env.dir, "rel.jsonl")
        write_jsonl(src)
        d.drop(src)
        wait_for(lambda: len(calls(rout)) == 1, 30, "the hook ran")
        c = calls(rout)[0]
        arg = c["argv"][1]
        check(os.path.isabs(arg) and os.path.isfile(arg), c["argv"])
        check(os.path.samefile(arg, os.path.join(d.spool, "done", "rel", "result.json")),
              c["argv"])
        check(os.path.isabs(c["env"]["BATCHD_DIR"]) and os.path.isdir(c["env"]["BATCHD_DIR"]),
              c["env"])


def start_sleeping_hook(env, name):
    """Starts batchd with an on_ready hook that sleeps, drops job NAME and waits until its
    hook runs; returns the daemon, the hook's call log and the hook's pid."""
    ready, rout = make_hook(env, "ready", sleep=300)
    start_with(env, f"on_ready = {ready}\n")
    d = env.daemon
    src = os.path.join(env.dir, f"{name}.jsonl")
    write_jsonl(src)
    d.drop(src)
    wait_for(lambda: len(calls(rout)) == 1, 30, "the hook started")
    return d, rout, calls(rout)[0]["pid"]


def test_rerun_after_kill9():
    """A hook running when the daemon is killed with SIGKILL runs again after the restart;
    the running hook's /proc/PID/environ holds no token."""
    env = Env(start=False)
    with env:
        d, rout, pid = start_sleeping_hook(env, "k")
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                environ = f.read()
            check(TOKEN.encode() not in environ, "the token is in a hook's /proc/PID/environ")
            check(b"CREDENTIALS_DIRECTORY" not in environ and b"BATCHD_API_TOKEN" not in environ,
                  environ)
            d.kill9()
        finally:
            try:
                os.kill(pid, signal.SIGKILL)  # the orphan of the killed daemon
            except ProcessLookupError:
                pass
        d.start(env={"BATCHD_API_TOKEN": TOKEN})
        wait_for(lambda: len(calls(rout)) == 2, 30, "the interrupted hook ran again")
        wait_for(lambda: "hook on_ready exited 0 (attempt 1 of 4)" in history_notes(env, "k"),
                 10, "its outcome noted")
        check("interrupted by the stop; running it again" in d.logs(), "the rerun is logged")


def test_stop_while_running():
    """SIGTERM while a hook runs: the daemon stops at once, the hook is killed, and it runs
    again after the restart."""
    env = Env(start=False)
    with env:
        d, rout, pid = start_sleeping_hook(env, "s")
        check(d.stop() == 0, "batchd stopped cleanly")
        wait_for(lambda: not os.path.exists(f"/proc/{pid}") or
                 open(f"/proc/{pid}/stat").read().split()[2] == "Z", 10, "the hook was killed")
        d.start()
        wait_for(lambda: len(calls(rout)) == 2, 30, "the hook ran again after the restart")
        wait_for(lambda: "hook on_ready exited 0 (attempt 1 of 4)" in history_notes(env, "s"),
                 10, "its outcome noted")


def test_finished_before_journal():
    """A job that finished while the daemon was stopping before its run reached the journal
    gets its run at the next start: simulated by removing the journal entry of a run."""
    env = Env(start=False)
    with env:
        ready, rout = make_hook(env, "ready")
        start_with(env, f"on_ready = {ready}\n")
        d = env.daemon
        src = os.path.join(env.dir, "w.jsonl")
        write_jsonl(src)
        d.drop(src)
        wait_for(lambda: len(calls(rout)) == 1, 30, "the hook ran")
        wait_for(lambda: "hook on_ready exited 0 (attempt 1 of 4)" in history_notes(env, "w"),
                 10, "noted")
        d.stop()
        jdir = os.path.join(d.state_dir, "hooks")
        for fn in os.listdir(jdir):
            if fn.endswith(".json"):
                os.unlink(os.path.join(jdir, fn))
        d.start()
        wait_for(lambda: len(calls(rout)) == 2, 30, "the run queued again at start")


class _Receiver(http.server.BaseHTTPRequestHandler):
    got = []
    fail_first = 1

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        _Receiver.got.append((self.headers.get("Content-Type"), body))
        code = 500 if len(_Receiver.got) <= _Receiver.fail_first else 204
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def test_example_hooks():
    """examples/hooks/ledger appends a CSV line under a lock; examples/hooks/webhook posts a
    JSON message and fails on an HTTP error, so batchd retries it."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    env = Env(start=False)
    try:
        with env:
            ledger_file = os.path.join(env.dir, "ledger.csv")
            wconf = os.path.join(env.dir, "webhook.conf")
            with open(wconf, "w") as f:
                f.write(f"# test\nurl = http://127.0.0.1:{srv.server_address[1]}/hook\n"
                        "timeout = 5\n")
            wrappers = {}
            for name, var, val in (("ledger", "BATCHD_LEDGER", ledger_file),
                                   ("webhook", "WEBHOOK_CONF", wconf)):
                p = os.path.join(env.dir, "wrap-" + name)
                with open(p, "w") as f:
                    f.write(f"#!/bin/sh\n{var}='{val}' exec "
                            f"'{os.path.join(os.path.abspath(SOURCE), 'examples', 'hooks', name)}' \"$@\"\n")
                os.chmod(p, 0o755)
                wrappers[name] = p
            start_with(env, f"on_ready = {wrappers['ledger']}\n"
                            f"on_failed = {wrappers['webhook']}\n")
            d = env.daemon
            for i in range(3):
                src = os.path.join(env.dir, f'l"{i}.jsonl')
                write_jsonl(src)
                d.drop(src)
            bad = os.path.join(env.dir, "bad.jsonl")
            write_jsonl(bad, bad=True)
            d.drop(bad)

            def ledger_lines():
                try:
                    with open(ledger_file) as f:
                        return f.read().splitlines()
                except FileNotFoundError:
                    return []
            wait_for(lambda: len(ledger_lines()) == 4, 30, "a header and three ledger lines")
            lines = ledger_lines()
            check(lines[0] == "time,job_id,job,state,dataset_id,batch_id", lines[0])
            import csv
            rows = list(csv.reader(lines[1:]))
            check(sorted(r[2] for r in rows) == ['l"0', 'l"1', 'l"2'], rows)
            check(all(r[3] == "ready" and r[4] and r[5] for r in rows), rows)
            wait_for(lambda: len(_Receiver.got) == 2, 30, "the webhook posted twice (500, then ok)")
            ctype, body = _Receiver.got[-1]
            check(ctype == "application/json", ctype)
            msg = json.loads(body)
            err = d.error("bad")
            check(msg["job"] == "bad" and msg["id"] == err["id"] and msg["state"] == "failed", msg)
            wait_for(lambda: "hook on_failed exited 0 (attempt 2 of 4)" in
                     history_notes(env, "bad"), 10, "the webhook's retry succeeded")
    finally:
        srv.shutdown()
        srv.server_close()


def test_check_config():
    """batchd --check-config names the line of a hook that is not executable."""
    env = Env(start=False)
    with env:
        plain = os.path.join(env.dir, "plain")
        with open(plain, "w") as f:
            f.write("#!/bin/sh\n")
        os.chmod(plain, 0o644)
        with open(env.daemon.conf, "a") as f:
            f.write(f"[hooks]\non_failed = {plain}\n")
        import subprocess
        from harness import binary
        n = len(open(env.daemon.conf).read().splitlines())
        p = subprocess.run([binary("batchd"), "-c", env.daemon.conf, "--check-config"],
                           capture_output=True, text=True)
        check(p.returncode == 78, p)
        check(f"{env.daemon.conf}:{n}: [hooks] on_failed = {plain}: not executable" in p.stdout,
              p.stdout)


if __name__ == "__main__":
    run([test_ready_and_failed, test_retry_after_exit_1, test_timeout_term_then_retry,
         test_background_child, test_relative_spool, test_rerun_after_kill9, test_stop_while_running, test_finished_before_journal, test_example_hooks,
         test_check_config])
