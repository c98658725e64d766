#!/usr/bin/env python3
"""End to end: names of any bytes (ESC, C1, invalid UTF-8) in the spool never reach a terminal
raw through batchctl, never make a socket reply, a record, result.json or a log line invalid
UTF-8, and the jobs are still listed after a restart (batchd(8), HOSTILE AND ACCIDENTAL INPUT)."""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(__file__))
from harness import Env, batchctl, binary, check, regular_files, run, wait_for, TOKEN  # noqa: E402

NAMES = [b"evil\x1b[31m\xff\xfe", b"c1\xc2\x9b2J-nl\x7fdel", b"ok-name"]


def write_jsonl(path, n):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"prompt {i}", "response": f"answer {i}"}) + "\n")


def drop_bytes(env, name):
    """A bare data file dropped under a name of arbitrary bytes."""
    spool = os.fsencode(env.daemon.spool)
    tmp = os.path.join(spool, b"tmp", b".drop-" + name)
    os.makedirs(os.path.join(spool, b"tmp"), exist_ok=True)
    os.makedirs(os.path.join(spool, b"incoming"), exist_ok=True)
    write_jsonl(tmp, 3)
    os.rename(tmp, os.path.join(spool, b"incoming", name + b".jsonl"))


def raw_call(path, method, params=None):
    """One varlink call; the reply's raw bytes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect(path)
        s.sendall(json.dumps({"method": method, "parameters": params or {}}).encode() + b"\0")
        buf = b""
        while b"\0" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return buf.split(b"\0", 1)[0]
    finally:
        s.close()


def assert_text_safe(data, what, allow=b"\n"):
    """Valid UTF-8 and no control character but those allowed (C0, DEL, C1)."""
    try:
        text = data.decode("utf-8")  # strict
    except UnicodeDecodeError as e:
        raise AssertionError(f"{what} is not valid UTF-8: {e}: {data[:300]!r}") from None
    for ch in text:
        o = ord(ch)
        if (o < 0x20 or o == 0x7f or 0x80 <= o <= 0x9f) and ch.encode() not in allow:
            raise AssertionError(f"{what} holds the raw control character {o:#x}: {data[:300]!r}")


def ctl(env, *args):
    return batchctl(env, *args, text=False)


def check_everything(env, ids):
    sock = env.daemon.socket
    for method, params in [("io.batchd.GetInfo", {}), ("io.batchd.ListJobs", {})] + \
            [("io.batchd.GetJob", {"job": i}) for i in ids]:
        raw = raw_call(sock, method, params)
        assert_text_safe(raw, f"the reply to {method}", allow=b"")
        json.loads(raw.decode("utf-8"))
    listed = {j["id"] for j in json.loads(raw_call(sock, "io.batchd.ListJobs"))["parameters"]["jobs"]}
    check(set(ids) <= listed, f"jobs missing from ListJobs: {set(ids) - listed}")
    for args in [("status",), ("list",), *[("show", i) for i in ids],
                 ("--json", "list"), *[("--json", "show", i) for i in ids]]:
        p = ctl(env, *args)
        # show exits 1 for a job that failed
        check(p.returncode == 0 or (p.returncode == 1 and "show" in args), f"batchctl {' '.join(args)} exited {p.returncode}: {p.stderr!r}")
        # pretty JSON is indented with tabs, outside its strings
        assert_text_safe(p.stdout, f"batchctl {' '.join(args)} output",
                         allow=b"\n\t" if "--json" in args else b"\n")
        assert_text_safe(p.stderr, f"batchctl {' '.join(args)} errors")
    # what it shows is the name, escaped
    out = ctl(env, "list").stdout
    check(b"evil\\x1b[31m" in out, f"the ESC of a name is not shown as \\x1b: {out!r}")
    # every record and result.json
    jobs_dir = os.path.join(env.daemon.state_dir, "jobs")
    for p, data in regular_files(jobs_dir):
        name = os.path.basename(p)
        if not name.startswith("journal."):
            assert_text_safe(data, f"the record {name}", allow=b"")
            continue
        # The record journal (store.h): each entry is a header line, the record, a newline;
        # the records in it are held to the same rule.
        while data:
            m = re.match(rb"BJ1 [0-9a-f]{16} [0-9]+ [0-9]+ [0-9A-Za-z_-]{1,31} ([0-9]+) [0-9a-f]{16}\n",
                         data)
            check(m, f"{name}: not a journal entry: {data[:100]!r}")
            n = int(m.group(1))
            text, data = data[m.end():m.end() + n], data[m.end() + n:]
            check(data[:1] == b"\n", f"{name}: an entry not ended by a newline")
            data = data[1:]
            assert_text_safe(text, f"a record in {name}", allow=b"")
    for sub, doc in ((b"done", b"result.json"), (b"failed", b"error.json")):
        top = os.path.join(os.fsencode(env.daemon.spool), sub)
        for d in os.listdir(top):
            with open(os.path.join(top, d, doc), "rb") as f:
                data = f.read()
            assert_text_safe(data, f"{sub!r}/{d!r}/{doc!r}", allow=b"\n\t")
            json.loads(data.decode("utf-8"))
    with open(env.daemon.log_path, "rb") as f:
        assert_text_safe(f.read(), "batchd's log")
    env.assert_no_token_leak()


def test_names_of_any_bytes():
    with Env() as env:
        e = dict(os.environ)
        e.pop("BATCHD_CONFIG", None)
        watch = subprocess.Popen([binary("batchctl"), "-s", env.daemon.socket, "watch"],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=e)
        got = []
        reader = threading.Thread(target=lambda: got.extend(iter(watch.stdout.readline, b"")))
        reader.start()
        try:
            # The watch prints events once subscribed; until then a probe job is missed, so
            # drop probes until one shows.
            probes = []

            def probe_seen():
                if any(p in line for line in list(got) for p in probes):
                    return True
                name = b"probe-%d" % len(probes)
                probes.append(name)
                drop_bytes(env, name)
                return False
            wait_for(probe_seen, 30, "batchctl watch to show a probe job", interval=1.0)
            for n in NAMES:
                drop_bytes(env, n)

            def all_finished():
                jobs = json.loads(raw_call(env.daemon.socket, "io.batchd.ListJobs"))
                jobs = jobs["parameters"]["jobs"]
                return len(jobs) == len(NAMES) + len(probes) and all(
                    j["state"] in ("ready", "failed") for j in jobs)
            wait_for(all_finished, 60, "every job finished")
            wait_for(lambda: any(b"ok-name" in line and b"ready" in line for line in list(got)),
                     30, "batchctl watch to show ok-name ready")
        finally:
            watch.send_signal(signal.SIGINT)
            try:
                _, err = watch.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                watch.kill()
                _, err = watch.communicate()
            reader.join()
        out = b"".join(got)
        assert_text_safe(out, "batchctl watch output")
        assert_text_safe(err, "batchctl watch errors")
        check(b"evil\\x1b[31m" in out, f"batchctl watch did not show the name escaped: {out!r}")
        ids = [j["id"] for j in json.loads(raw_call(env.daemon.socket,
                                                    "io.batchd.ListJobs"))["parameters"]["jobs"]]
        check_everything(env, ids)
        # names survive a restart exactly: the directories in done/ are the names dropped
        env.daemon.stop()
        env.daemon.start()
        check_everything(env, ids)
        spool = os.fsencode(env.daemon.spool)
        kept = set(os.listdir(os.path.join(spool, b"done"))) | set(
            os.listdir(os.path.join(spool, b"failed")))
        check(set(NAMES) <= kept, f"done/ and failed/ hold {kept!r}, not the names dropped")
        check(TOKEN not in env.daemon.logs(), "the token is in the log")


if __name__ == "__main__":
    run([test_names_of_any_bytes])
