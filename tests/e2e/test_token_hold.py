"""End to end: an API token the API rejects (HTTP 401) puts batchd on hold instead of failing
jobs (batchd(8), JOB STATES). Every job stays where it was, GetInfo and batchctl status say why, and a
reload with a different token (or a resume) lets every job carry on. Also the process rules:
batchd is not dumpable and BATCHD_API_TOKEN is gone from its environment once read."""

import json
import os
import subprocess

from harness import (TOKEN, Env, Skipped, batchctl, binary, call, check, hold,
                     other_uid_bin_dir, regular_files, run, wait_for)

WRONG = "e2e-wrong-token-typo"
NOBODY = 65534



def write_token(env, token):
    with open(env.daemon.token_file, "w") as f:
        f.write(token + "\n")
    os.chmod(env.daemon.token_file, 0o600)


def make_jobs(env, n, prefix):
    src = os.path.join(env.dir, "src")
    os.makedirs(src, exist_ok=True)
    names = []
    for i in range(n):
        p = os.path.join(src, f"{prefix}{i}.jsonl")
        with open(p, "w") as f:
            for k in range(3):
                f.write(json.dumps({"prompt": f"q{i}.{k}", "response": f"a{i}.{k}"}) + "\n")
        names.append(env.daemon.drop(p)[: -len(".jsonl")])
    return names


def info(env):
    return call(env.daemon.socket, "io.batchd.GetInfo")["parameters"]


ctl = batchctl


def count_401(env):
    return sum(1 for r in env.sim.state()["requests"] if r["status"] == 401)


def no_job_failed(env):
    check(env.daemon.dir_entries("failed") == [], f"failed/: {env.daemon.dir_entries('failed')}")
    states = {j["name"]: j["state"] for j in env.daemon.jobs()}
    check(all(s not in ("failed", "cancelled") for s in states.values()), states)
    return states


def on_hold(env):
    i = info(env)
    return i["paused"] is True and i.get("pause_reason") == "api_token_rejected"


def start_on_hold(env, n, prefix):
    """Starts batchd with the wrong token, drops n jobs and waits for the hold."""
    write_token(env, WRONG)
    env.daemon.start()
    check(info(env)["pause_reason"] is None, f"paused before any 401: {info(env)}")
    names = make_jobs(env, n, prefix)
    wait_for(lambda: on_hold(env), 30, "the hold after a 401")
    # A hold stops claiming too: a job dropped late may wait in incoming/.
    wait_for(lambda: len(env.daemon.jobs()) + len(env.daemon.dir_entries("incoming")) == n,
             30, f"{n} jobs known")
    return names


def test_401_hold_lifted_by_reload():
    with Env(start=False) as env:
        d = env.daemon
        names = start_on_hold(env, 4, "rl")
        # Held: no request is sent and nothing fails, however long it lasts.
        seen = len(env.sim.state()["requests"])
        hold(lambda: len(env.sim.state()["requests"]) == seen, 1.5,
             "no request sent while on hold")
        states = no_job_failed(env)
        check(set(states) | set(d.dir_entries("incoming")) >= set(names), states)
        for j in d.jobs():
            if j["state"] == "creating_dataset" and j.get("last_error"):
                check("401" in j["last_error"], j)
        st = ctl(env, "status")
        check(st.returncode == 0 and "the API rejected the token" in st.stdout, st.stdout)
        logs = d.logs()
        check(logs.count("the API rejected the token (HTTP 401)") == 1,
              "one notice in the log, not one per job")
        check("batchctl reload" in logs, "the notice says what to do")

        # A reload with the same token keeps the hold, and says so.
        r = ctl(env, "reload")
        check(r.returncode == 0, r.stderr)
        check(on_hold(env), "a reload with the same token lifted the hold")
        wait_for(lambda: "same API token" in d.logs(), 10, "the same-token notice")

        write_token(env, TOKEN)
        r = ctl(env, "reload")
        check(r.returncode == 0, r.stderr)
        wait_for(lambda: sorted(d.dir_entries("done")) == sorted(names), 60, "every job done")
        check(d.dir_entries("failed") == [], f"failed: {d.dir_entries('failed')}")
        i = info(env)
        check(i["paused"] is False and i["pause_reason"] is None, i)
        d.stop()
        env.assert_no_token_leak()


def test_hold_does_not_time_out_waits():
    """A 401 on an import poll holds the daemon for longer than import_timeout: once the hold
    is lifted, the job carries on to READY; the time on hold is not the import's."""
    with Env(start=False, sim_args=("--hostile-status", "401"),
             extra_conf="poll.import_timeout = 3s\npoll.initial = 200ms") as env:
        d = env.daemon
        d.start()
        env.sim.set_faults([{"kind": "echo-raw", "count": 1, "endpoint": "get_import"}])
        names = make_jobs(env, 1, "wt")
        wait_for(lambda: on_hold(env), 30, "the hold after a 401 on an import poll")
        check([j["state"] for j in d.jobs()] == ["importing"], d.jobs())
        # Held past import_timeout: nothing fails meanwhile.
        hold(lambda: d.dir_entries("failed") == [], 4.0, "no job failed while on hold")
        r = ctl(env, "resume")
        check(r.returncode == 0, r.stderr)
        wait_for(lambda: d.dir_entries("done") == names or d.dir_entries("failed"), 60,
                 "the job finished")
        check(d.dir_entries("done") == names,
              f"done: {d.dir_entries('done')}, failed: {d.dir_entries('failed')}")
        d.stop()


def test_401_hold_lifted_by_resume():
    with Env(start=False) as env:
        d = env.daemon
        names = start_on_hold(env, 3, "rs")
        no_job_failed(env)
        # Resume with the token still wrong: the next 401 holds again, and fails nothing.
        before = count_401(env)
        r = ctl(env, "resume")
        check(r.returncode == 0, r.stderr)
        wait_for(lambda: count_401(env) > before, 30, "a 401 after the resume")
        wait_for(lambda: on_hold(env), 30, "the hold again")
        no_job_failed(env)
        # An operator's pause on top of the hold: both reasons stay coherent.
        check(ctl(env, "pause").returncode == 0, "pause")
        check(on_hold(env), "the token hold is the reason shown while it lasts")
        # Fix the token file; resume reads it again and every job carries on.
        write_token(env, TOKEN)
        r = ctl(env, "resume")
        check(r.returncode == 0, r.stderr)
        wait_for(lambda: sorted(d.dir_entries("done")) == sorted(names), 60, "every job done")
        check(d.dir_entries("failed") == [], f"failed: {d.dir_entries('failed')}")
        i = info(env)
        check(i["paused"] is False and i["pause_reason"] is None, i)


def test_status_line_says_on_hold():
    """systemd's STATUS= line names the hold, and drops it once a new token is loaded."""
    from test_notify import NotifySocket, start_notified, wait_ready
    with Env(start=False) as env:
        notify = NotifySocket(os.path.join(env.dir, "notify"))
        try:
            write_token(env, WRONG)
            start_notified(env, notify)
            wait_ready(env, notify)
            make_jobs(env, 1, "st")
            n = notify.wait(lambda n: "on hold" in (n.get("STATUS") or ""), 30,
                            "STATUS= on hold")
            check("token" in n.get("STATUS"), n)
            no_job_failed(env)
            write_token(env, TOKEN)
            check(ctl(env, "reload").returncode == 0, "reload")
            notify.wait_key("STATUS", "0 active, 1 done, 0 failed", 30)
        finally:
            notify.close()


def test_operator_pause_reason():
    with Env() as env:
        check(info(env)["pause_reason"] is None, info(env))
        check(ctl(env, "pause").returncode == 0, "pause")
        i = info(env)
        check(i["paused"] is True and i["pause_reason"] == "operator", i)
        check(ctl(env, "resume").returncode == 0, "resume")
        i = info(env)
        check(i["paused"] is False and i["pause_reason"] is None, i)


def test_not_dumpable_and_env_token_removed():
    """batchd runs as an unprivileged user here: a non-dumpable process's /proc files belong
    to root, which a dumpable one's do not."""
    if os.geteuid() != 0:
        raise Skipped("needs root to run batchd as another user and read its environment")
    with Env(start=False, extra_conf="control.group =", other_uid=True) as env:
        d = env.daemon
        with open(d.conf) as f:
            conf = "".join(line for line in f if not line.startswith("token_file"))
        with open(d.conf, "w") as f:
            f.write(conf)
        # The binary must not run from the checkout or build tree (maybe 0700 for others).
        exe = os.path.join(other_uid_bin_dir(), "batchd")
        for sub in ("tmp", "incoming", "active", "done", "failed"):
            os.makedirs(os.path.join(d.spool, sub), exist_ok=True)
        os.makedirs(os.path.dirname(d.socket), exist_ok=True)
        os.chmod(env.dir, 0o755)
        for root, dirs, files in os.walk(env.dir):
            for n in dirs + files:
                os.lchown(os.path.join(root, n), NOBODY, NOBODY)
        os.lchown(env.dir, NOBODY, NOBODY)
        e = {k: v for k, v in os.environ.items()
             if k not in ("CREDENTIALS_DIRECTORY", "NOTIFY_SOCKET", "BATCHD_CONFIG")}
        e["BATCHD_API_TOKEN"] = TOKEN
        e["BATCHD_E2E_MARKER"] = "still-here"
        log = open(d.log_path, "ab")
        d.proc = subprocess.Popen([exe, "-c", d.conf], stdout=log, stderr=log, env=e,
                                  user=NOBODY, group=NOBODY, extra_groups=[])
        log.close()
        wait_for(d.answers, 20, "batchd's control socket")
        pid = d.proc.pid
        check(os.stat(f"/proc/{pid}").st_uid == NOBODY, "batchd runs as nobody")
        st = os.stat(f"/proc/{pid}/environ")
        check(st.st_uid == 0, f"/proc/{pid}/environ belongs to uid {st.st_uid}: dumpable")
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        check(b"BATCHD_E2E_MARKER=still-here" in environ, "environ read")
        check(b"BATCHD_API_TOKEN" not in environ, "BATCHD_API_TOKEN is still set")
        check(TOKEN.encode() not in environ, "the token is still in the environment block")
        # The token read from the environment works, also after a reload.
        src = os.path.join(env.dir, "envtok.jsonl")
        with open(src, "w") as f:
            f.write(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        os.chown(src, NOBODY, NOBODY)
        r = call(d.socket, "io.batchd.Reload")
        check("error" not in r, r)
        d.drop(src)
        wait_for(lambda: d.dir_entries("done") == ["envtok"], 30, "the job in done/")


def test_echo_after_the_token_changed():
    """A reply echoing the token its request carried comes back after a reload brought a
    different token: it is cleaned of the token it was sent with, so the old one leaks into
    no log, error.json or record."""
    # A long API timeout: the held create must not time out (its retry would carry the new
    # token, which the sim refuses) however slowly the test reaches the release.
    with Env(sim_args=["--slow", "600s"], extra_conf="api.timeout = 120s") as env:
        d = env.daemon
        env.sim.set_faults([{"kind": "echo-raw", "probability": 1.0,
                             "endpoint": "create_dataset", "hold": True}])
        name = make_jobs(env, 1, "echo")[0]
        # The sim logs a held answer before holding it.
        wait_for(lambda: any(r["endpoint"] == "create_dataset"
                             for r in env.sim.state()["requests"]), 20,
                 "the echo made and held")
        write_token(env, "e2e-the-next-token")
        r = ctl(env, "reload")
        check(r.returncode == 0, r.stderr)
        env.sim.set_faults([], slow_ms=0)  # releases the held answer
        d.wait_finished(name, "failed", 30)
        with open(os.path.join(d.spool, "failed", name, "error.json")) as f:
            err = f.read()
        check("echo" in err or "400" in err, f"error.json: {err}")
        d.stop()
        for p, data in regular_files(env.dir):
            check(TOKEN.encode() not in data, f"the replaced token leaked into {p}")


if __name__ == "__main__":
    run([test_401_hold_lifted_by_reload, test_hold_does_not_time_out_waits,
         test_401_hold_lifted_by_resume,
         test_status_line_says_on_hold, test_operator_pause_reason,
         test_not_dumpable_and_env_token_removed, test_echo_after_the_token_changed])
