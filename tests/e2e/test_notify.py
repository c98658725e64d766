"""End to end: batchd's side of systemd's notify protocol (sd_notify(3)), observed on a datagram
socket the test binds as NOTIFY_SOCKET, the way systemd sees it: READY=1 only once recovered
jobs are loaded and the control socket answers, STATUS= as jobs run, WATCHDOG=1 at half of
WATCHDOG_USEC (and only for the pid in WATCHDOG_PID), RELOADING=1 with MONOTONIC_USEC then
READY=1 on SIGHUP and Reload, STOPPING=1 with EXTEND_TIMEOUT_USEC on SIGTERM. Every
datagram's sender is checked with SCM_CREDENTIALS. Waits are socket timeouts with deadlines."""

import json
import os
import signal
import socket
import struct
import subprocess
import time

from harness import (TOKEN, Env, TestFailure, binary, call, check, run, wait_for)

UCRED = struct.Struct("iII")  # struct ucred: pid, uid, gid
TIMESPEC = struct.Struct("qq")  # struct timespec on 64-bit Linux
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # also its SCM_ cmsg type


def mono_usec():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notification:
    def __init__(self, at, pid, raw, sent=None):
        self.at = at  # time.monotonic() when it arrived
        # When the kernel queued it (SO_TIMESTAMPNS, seconds): when batchd sent it, however
        # late the test got to read it.
        self.sent = sent
        self.pid = pid  # sender, from SCM_CREDENTIALS
        self.raw = raw
        self.fields = {}
        for line in raw.split("\n"):
            if line:
                key, sep, value = line.partition("=")
                check(sep == "=", f"not an assignment in a notification: {raw!r}")
                self.fields[key] = value

    def get(self, key):
        return self.fields.get(key)

    def __repr__(self):
        return repr(self.raw)


class NotifySocket:
    """The systemd end: a bound AF_UNIX datagram socket that records every notification."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.seen = []

    def recv(self, timeout):
        """The next notification, or None when none arrives within timeout seconds."""
        self.sock.settimeout(max(timeout, 0.001))
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(
                4096, socket.CMSG_SPACE(UCRED.size) + socket.CMSG_SPACE(TIMESPEC.size))
        except socket.timeout:
            return None
        pid = sent = None
        for level, kind, payload in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[:UCRED.size])[0]
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = TIMESPEC.unpack(payload[:TIMESPEC.size])
                sent = sec + nsec / 1e9
        check(TOKEN.encode() not in data, "the API token was sent in a notification")
        n = Notification(time.monotonic(), pid, data.decode(), sent)
        self.seen.append(n)
        return n

    def wait(self, pred, timeout=20.0, what="a notification"):
        """Reads notifications until one satisfies pred; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TestFailure(f"timed out after {timeout}s waiting for {what}; "
                                  f"received: {self.seen[-30:]}")
            n = self.recv(left)
            if n is not None and pred(n):
                return n

    def wait_key(self, key, value=None, timeout=20.0):
        return self.wait(lambda n: key in n.fields and (value is None or n.get(key) == value),
                         timeout, f"{key}={value if value is not None else '*'}")

    def collect(self, seconds):
        """Every notification that arrives within the next seconds."""
        out = []
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            n = self.recv(left)
            if n is not None:
                out.append(n)
        return out

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def start_notified(env, notify, extra_env=None, watchdog_pid_is_daemon=False):
    """Starts batchd with NOTIFY_SOCKET (and extra_env) without waiting for its socket: the
    test waits for READY=1 instead. With watchdog_pid_is_daemon, a shell exports its own pid
    as WATCHDOG_PID and execs batchd, so the daemon runs under exactly that pid, as under
    systemd."""
    d = env.daemon
    e = dict(os.environ)
    for k in ("NOTIFY_SOCKET", "JOURNAL_STREAM", "WATCHDOG_USEC", "WATCHDOG_PID"):
        e.pop(k, None)
    e["NOTIFY_SOCKET"] = notify.path
    e.update(extra_env or {})
    argv = [binary("batchd"), "-c", d.conf]
    if watchdog_pid_is_daemon:
        argv = ["/bin/sh", "-c", 'WATCHDOG_PID=$$; export WATCHDOG_PID; exec "$@"', "sh", *argv]
    with open(d.log_path, "ab") as log:
        d.proc = subprocess.Popen(argv, stdout=log, stderr=log, env=e)
    d.starts += 1
    return d.proc


def wait_ready(env, notify, timeout=20.0):
    """Waits for READY=1 from the daemon; fails early if batchd exits instead."""
    d = env.daemon
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if d.proc.poll() is not None:
            raise TestFailure(f"batchd exited with {d.proc.returncode} before READY=1")
        n = notify.recv(min(0.2, deadline - time.monotonic()))
        if n is not None and n.get("READY") == "1":
            check(n.pid == d.proc.pid, f"READY=1 from pid {n.pid}, batchd is {d.proc.pid}")
            return n
    raise TestFailure(f"no READY=1 within {timeout}s; received: {notify.seen}")


def statuses(msgs):
    return [n.get("STATUS") for n in msgs if "STATUS" in n.fields]


def make_job(env, name, records=3):
    src = os.path.join(env.dir, "src")
    os.makedirs(src, exist_ok=True)
    p = os.path.join(src, f"{name}.jsonl")
    with open(p, "w") as f:
        for i in range(records):
            f.write(json.dumps({"prompt": f"{name} q{i}", "response": f"a{i}"}) + "\n")
    return env.daemon.drop(p)


def test_ready_after_recovery():
    """Two unfinished jobs are in the state directory; READY=1 comes once they are loaded and
    the control socket answers, and they then finish, reported through STATUS=."""
    with Env() as env:
        d = env.daemon
        # Park two jobs mid-way: every create_dataset fails, so they wait to retry.
        env.sim.set_faults([{"kind": "503", "probability": 1.0, "endpoint": "create_dataset"}])
        make_job(env, "parked1")
        make_job(env, "parked2")
        wait_for(lambda: len([j for j in d.jobs() if j["attempts"] >= 1]) == 2, 20,
                 "both jobs retrying create_dataset")
        check(d.stop() == 0, "batchd stopped cleanly")
        records = []
        jobs_dir = os.path.join(d.state_dir, "jobs")
        for fn in os.listdir(jobs_dir):
            with open(os.path.join(jobs_dir, fn)) as f:
                rec = json.load(f)
            if rec.get("name") in ("parked1", "parked2"):
                records.append(rec)
        check(len(records) == 2, f"two job records in the state directory: {records}")
        check(all(r.get("state") == "creating_dataset" for r in records),
              f"the records are unfinished: {[r.get('state') for r in records]}")
        check(sorted(d.dir_entries("active")) == ["parked1", "parked2"], d.dir_entries("active"))
        env.sim.set_faults([])

        notify = NotifySocket(os.path.join(env.dir, "notify"))
        try:
            start_notified(env, notify)
            ready = wait_ready(env, notify)
            # Right now, at READY=1: the socket answers and shows the recovered jobs.
            try:
                info = call(d.socket, "io.batchd.GetInfo")["parameters"]
                jobs = call(d.socket, "io.batchd.ListJobs")["parameters"]["jobs"]
            except OSError as e:
                raise TestFailure(f"READY=1 was sent but {d.socket} does not answer: {e}")
            names = sorted(j["name"] for j in jobs)
            check(names == ["parked1", "parked2"], f"ListJobs at READY=1: {names}")
            check(sum(info["jobs"].values()) == 2, f"GetInfo at READY=1: {info['jobs']}")
            before = notify.seen[:notify.seen.index(ready)]
            check(statuses(before) == ["2 active, 0 done, 0 failed"],
                  f"STATUS= before READY=1: {statuses(before)}")
            check(all(n.pid == d.proc.pid for n in notify.seen), "a notification from elsewhere")
            check("recovered 2 unfinished job(s)" in d.logs(), "the log says what was recovered")
            notify.wait_key("STATUS", "0 active, 2 done, 0 failed", 30)
            check(sorted(d.dir_entries("done")) == ["parked1", "parked2"], d.dir_entries("done"))
            check([n for n in notify.seen if n.get("READY") == "1"] == [ready],
                  "READY=1 is sent once at start-up")
        finally:
            notify.close()


def test_status_updates():
    """STATUS= follows a job: 1 active while it runs, 1 done when it is READY; pause shows."""
    with Env(start=False) as env:
        d = env.daemon
        notify = NotifySocket(os.path.join(env.dir, "notify"))
        try:
            start_notified(env, notify)
            ready = wait_ready(env, notify)
            check(statuses(notify.seen[:notify.seen.index(ready)]) == ["0 active, 0 done, 0 failed"],
                  f"STATUS= before READY=1: {statuses(notify.seen)}")
            mark = len(notify.seen)
            make_job(env, "one")
            notify.wait_key("STATUS", "0 active, 1 done, 0 failed", 30)
            check(statuses(notify.seen[mark:]) ==
                  ["1 active, 0 done, 0 failed", "0 active, 1 done, 0 failed"],
                  f"STATUS= while the job ran: {statuses(notify.seen[mark:])}")
            check(d.dir_entries("done") == ["one"], d.dir_entries("done"))
            call(d.socket, "io.batchd.Pause")
            notify.wait_key("STATUS", "0 active, 1 done, 0 failed, paused by an operator "
                                     "(batchctl resume lifts it)", 10)
            call(d.socket, "io.batchd.Resume")
            notify.wait_key("STATUS", "0 active, 1 done, 0 failed", 10)
            # A job that fails counts as failed.
            bad = os.path.join(env.dir, "bad.jsonl")
            with open(bad, "w") as f:
                f.write('{"prompt": "no response field"}\n')
            d.drop(bad)
            notify.wait_key("STATUS", "0 active, 1 done, 1 failed", 30)
        finally:
            notify.close()


def watchdog_env(usec, pid=None):
    e = {"WATCHDOG_USEC": str(usec)}
    if pid is not None:
        e["WATCHDOG_PID"] = str(pid)
    return e


def test_watchdog_rate():
    """WATCHDOG_USEC=1000000 with WATCHDOG_PID = batchd's pid: a ping every 500 ms. The gaps
    are measured when the kernel queued each ping (so a test read late does not count), over
    ten of them: their mean is the period, and none comes near the watchdog's timeout."""
    usec = 1000000
    period = usec / 2 / 1e6
    n_gaps = 10
    with Env(start=False) as env:
        d = env.daemon
        notify = NotifySocket(os.path.join(env.dir, "notify"))
        try:
            start_notified(env, notify, watchdog_env(usec), watchdog_pid_is_daemon=True)
            wait_ready(env, notify)
            pings = [notify.wait_key("WATCHDOG", "1", 5)]
            while len(pings) <= n_gaps:
                pings.append(notify.wait_key("WATCHDOG", "1", 5))
            check(all(n.pid == d.proc.pid for n in pings), "pings from batchd's own pid")
            check(all(n.sent is not None for n in pings), "no kernel timestamps")
            gaps = [b.sent - a.sent for a, b in zip(pings, pings[1:])]
            mean = (pings[-1].sent - pings[0].sent) / n_gaps
            # A timer is never early, and a late wake-up only lengthens the gaps a little: the
            # mean tells half the interval (500 ms) from the whole one (1 s) or a busy loop.
            check(period * 0.9 <= mean <= period * 1.5,
                  f"mean ping interval {mean * 1000:.0f} ms, expected {period * 1000:.0f} ms")
            check(max(gaps) < usec / 1e6, f"a gap of {max(gaps) * 1000:.0f} ms would trip "
                  f"systemd's watchdog ({usec // 1000} ms)")
            # The pings go on while a job runs (they come from the same loop).
            make_job(env, "busy")
            for _ in range(3):
                notify.wait_key("WATCHDOG", "1", 5)
        finally:
            notify.close()


def test_watchdog_other_pid_or_unset():
    """WATCHDOG_PID naming another process, or no WATCHDOG_USEC: no pings at all."""
    for extra in (watchdog_env(200000, os.getpid()), {}):
        with Env(start=False) as env:
            notify = NotifySocket(os.path.join(env.dir, "notify"))
            try:
                start_notified(env, notify, extra)
                wait_ready(env, notify)
                quiet = notify.collect(1.0)
                pings = [n for n in notify.seen if "WATCHDOG" in n.fields]
                check(pings == [], f"pings with {extra}: {pings} (then {quiet})")
            finally:
                notify.close()


def expect_reload(env, notify, trigger, what):
    d = env.daemon
    mark = len(notify.seen)
    t0 = mono_usec()
    result = trigger()
    rel = notify.wait_key("RELOADING", "1", 10)
    t1 = mono_usec()
    check(rel.pid == d.proc.pid, f"RELOADING=1 from pid {rel.pid}")
    mono = rel.get("MONOTONIC_USEC")
    check(mono is not None and mono.isdigit(),
          f"{what}: RELOADING=1 without MONOTONIC_USEC in the same datagram: {rel}")
    check(t0 <= int(mono) <= t1,
          f"{what}: MONOTONIC_USEC={mono} outside CLOCK_MONOTONIC [{t0}, {t1}]")
    ready = notify.wait_key("READY", "1", 10)
    check(notify.seen.index(ready) > notify.seen.index(rel), f"{what}: READY=1 after RELOADING=1")
    check(len([n for n in notify.seen[mark:] if n.get("READY") == "1"]) == 1,
          f"{what}: one READY=1 per reload: {notify.seen[mark:]}")
    return result


def test_reload():
    """SIGHUP and io.batchd.Reload: RELOADING=1 + MONOTONIC_USEC, then READY=1; also when the
    new configuration is broken (the running one stays)."""
    with Env(start=False) as env:
        d = env.daemon
        notify = NotifySocket(os.path.join(env.dir, "notify"))
        try:
            start_notified(env, notify)
            wait_ready(env, notify)
            expect_reload(env, notify, lambda: d.proc.send_signal(signal.SIGHUP), "SIGHUP")
            reply = expect_reload(env, notify, lambda: call(d.socket, "io.batchd.Reload"),
                                  "Reload")
            check("error" not in reply, f"Reload failed: {reply}")
            with open(d.conf) as f:
                good = f.read()
            with open(d.conf, "a") as f:
                f.write("[nonsense]\nkey = 1\n")
            expect_reload(env, notify, lambda: d.proc.send_signal(signal.SIGHUP), "broken config")
            check(d.proc.poll() is None, "batchd survives a broken configuration on reload")
            check(d.answers(), "the control socket still answers")
            with open(d.conf, "w") as f:
                f.write(good)
        finally:
            notify.close()


def test_stopping():
    """SIGTERM: STOPPING=1 and EXTEND_TIMEOUT_USEC, then a clean exit with nothing after."""
    with Env(start=False) as env:
        d = env.daemon
        notify = NotifySocket(os.path.join(env.dir, "notify"))
        try:
            start_notified(env, notify, watchdog_env(200000), watchdog_pid_is_daemon=True)
            wait_ready(env, notify)
            notify.wait_key("WATCHDOG", "1", 5)
            d.proc.send_signal(signal.SIGTERM)
            stop = notify.wait_key("STOPPING", "1", 10)
            check(stop.pid == d.proc.pid, f"STOPPING=1 from pid {stop.pid}")
            ext = notify.wait_key("EXTEND_TIMEOUT_USEC", None, 10)
            check(ext.get("EXTEND_TIMEOUT_USEC").isdigit() and
                  int(ext.get("EXTEND_TIMEOUT_USEC")) > 0, f"EXTEND_TIMEOUT_USEC: {ext}")
            check(d.proc.wait(15) == 0, f"batchd exited with {d.proc.returncode}")
            after = notify.seen[notify.seen.index(stop) + 1:] + notify.collect(0.3)
            late = [n for n in after if "READY" in n.fields or "WATCHDOG" in n.fields]
            check(late == [], f"READY=1 or WATCHDOG=1 after STOPPING=1: {late}")
        finally:
            notify.close()


if __name__ == "__main__":
    run([test_ready_after_recovery, test_status_updates, test_watchdog_rate,
         test_watchdog_other_pid_or_unset, test_reload, test_stopping])
