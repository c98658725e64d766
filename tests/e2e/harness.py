"""Shared pieces of the end-to-end tests: start batchd-sim and batchd in a temporary
directory, drop jobs into the spool the way producers do, talk varlink to the control socket,
and wait for conditions with deadlines (never fixed sleeps). Everything started here is
stopped and removed again by Env.close(), also when a test fails."""

import atexit
import json
import os
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request

BUILD = os.environ.get("BATCHD_BUILD_DIR") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build")
SOURCE = os.environ.get("BATCHD_SOURCE_DIR") or os.path.join(os.path.dirname(__file__), "..", "..")
WORKSPACE = "6278acb09062db3b35bcbeb0"
# BATCHD_E2E_VALGRIND=1 runs batchd under valgrind: any memory error or leak makes it exit 99,
# which stop() and Env.close() turn into a test failure.
VALGRIND = os.environ.get("BATCHD_E2E_VALGRIND") == "1"
SLOW = 4 if VALGRIND else 1


def _cache_on(var):
    try:
        with open(os.path.join(BUILD, "CMakeCache.txt")) as f:
            return any(line.startswith(var + ":") and line.strip().endswith("=ON") for line in f)
    except OSError:
        return False


# A ThreadSanitizer build (the tsan preset): RSS is mostly its shadow memory, so memory bounds
# do not measure batchd; a race report makes batchd exit with TSAN_EXIT.
TSAN = _cache_on("BATCHD_SANITIZE_THREAD")
TSAN_EXIT = 66
# An ASan+UBSan build (the asan preset, built with clang, which links the runtime into the
# program: no libasan shows in its maps).
ASAN = _cache_on("BATCHD_SANITIZE")
TOKEN = "e2e-secret-token-7f3a9c"


def binary(name):
    return os.path.join(BUILD, name)


def _wait_bound_s(args):
    """Seconds of the --timeout DURATION among batchctl's args (500ms, 60s, 2m, 1h), or 0."""
    for flag, value in zip(args, args[1:]):
        m = re.fullmatch(r"(\d+)(ms|s|m|h)?", str(value)) if flag == "--timeout" else None
        if m:
            scale = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)]
            return int(m.group(1)) * scale
    return 0


def batchctl(env, *args, text=True, timeout=30):
    """Runs batchctl against the env's daemon (its config and socket; $BATCHD_CONFIG of the
    caller left out); returns the CompletedProcess, output as text unless text=False. A
    command given --timeout D gets D and 30 s more before it is killed here: batchctl's own
    timeout is what such a test checks."""
    timeout = max(timeout, _wait_bound_s(args) + 30)
    e = dict(os.environ)
    e.pop("BATCHD_CONFIG", None)
    return subprocess.run([binary("batchctl"), "-c", env.daemon.conf, "-s", env.daemon.socket,
                           *args], capture_output=True, text=text, timeout=timeout, env=e)


_OTHER_UID_BIN = []


def other_uid_bin_dir():
    """A directory that any uid can reach, holding copies of batchd, batchd-sim and batchctl:
    what a test runs as a second uid must not live in the checkout or build tree, which may
    sit where other uids cannot enter (a 0700 home, a mktemp -d folder). Made once per
    process under /tmp with mode 0755, removed at exit; returns its path."""
    if not _OTHER_UID_BIN:
        d = tempfile.mkdtemp(prefix="batchd-bin-", dir="/tmp")
        atexit.register(shutil.rmtree, d, True)
        os.chmod(d, 0o755)  # mkdtemp makes it 0700
        for name in ("batchd", "batchd-sim", "batchctl"):
            dst = os.path.join(d, name)
            shutil.copyfile(binary(name), dst)
            os.chmod(dst, 0o755)
        _OTHER_UID_BIN.append(d)
    return _OTHER_UID_BIN[0]


class TestFailure(AssertionError):
    pass


class Skipped(Exception):
    """Raised by a test that cannot run here (not root, a tool missing): reported as a skip,
    never as ok. A suite whose every test was skipped exits 77, which ctest shows as skipped."""


def check(cond, msg):
    if not cond:
        raise TestFailure(msg)


def wait_for(pred, timeout=30.0, what="condition", interval=0.02):
    """Polls pred until it returns a true value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise TestFailure(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_progress(count, target, stall=60.0, what="progress", interval=0.2):
    """Waits until count() reaches target, for as long as it keeps growing: fails only when it
    stays the same for stall seconds. For bulk work whose total time is the machine's load,
    not batchd's correctness."""
    last, since = None, time.monotonic()
    while True:
        n = count()
        if n >= target:
            return n
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since > stall:
            raise TestFailure(f"{what}: stuck at {n} of {target} for {stall:.0f}s")
        time.sleep(interval)


class Sim:
    def __init__(self, workdir, args=()):
        self.log = open(os.path.join(workdir, "sim.log"), "wb")
        self.proc = subprocess.Popen(
            [binary("batchd-sim"), "--listen", "127.0.0.1:0", "--token", TOKEN, "--seed", "7",
             "--import-queued", "50ms", "--import-processing", "100ms",
             "--batch-processing", "300ms", *args],
            stdout=subprocess.PIPE, stderr=self.log)
        line = self.proc.stdout.readline().decode()
        check(line.startswith("listening on http://127.0.0.1:"), f"sim said {line!r}")
        self.url = line.split("listening on ", 1)[1].strip()

    def get(self, path):
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def state(self):
        return self.get("/_sim/state")

    def set_faults(self, faults, **kw):
        body = json.dumps(dict(faults=faults, **kw)).encode()
        req = urllib.request.Request(self.url + "/_sim/faults", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()


class Daemon:
    def __init__(self, env, extra_conf=""):
        self.env = env
        self.proc = None
        self.starts = 0
        d = env.dir
        self.spool = os.path.join(d, "spool")
        self.state_dir = os.path.join(d, "state")
        self.socket = os.path.join(d, "run", "io.batchd")
        self.token_file = os.path.join(d, "api-token")
        with open(self.token_file, "w") as f:
            f.write(TOKEN + "\n")
        os.chmod(self.token_file, 0o600)
        self.conf = os.path.join(d, "batchd.conf")
        templates = os.path.join(d, "templates")
        os.makedirs(templates, exist_ok=True)
        shutil.copy(os.path.join(SOURCE, "conf", "templates", "default.json"),
                    os.path.join(templates, "default.json"))
        sections = {
            "api": {"url": env.sim.url, "workspace_id": WORKSPACE, "token_file": self.token_file,
                    "timeout": "5s", "max_rate": "200", "max_connections": "16"},
            "spool": {"dir": self.spool, "rescan_interval": "2s"},
            "state": {"dir": self.state_dir},
            "control": {"socket": self.socket, "group": "root"},
            "poll": {"initial": "100ms", "max": "1s", "multiplier": "2"},
            "job": {"template": os.path.join(templates, "default.json"), "max_active": "64"},
        }
        for line in extra_conf.strip().splitlines():
            line = line.strip()
            if not line:
                continue
            key, value = [x.strip() for x in line.split("=", 1)]
            sec, name = key.split(".", 1)
            sections.setdefault(sec, {})[name] = value
        with open(self.conf, "w") as f:
            for sec, kv in sections.items():
                f.write(f"[{sec}]\n")
                for k, v in kv.items():
                    f.write(f"{k} = {v}\n")
        self.log_path = os.path.join(d, "batchd.log")

    def start(self, wait=True, env=None, cwd=None):
        self.starts += 1
        log = open(self.log_path, "ab")
        e = dict(os.environ)
        e.pop("NOTIFY_SOCKET", None)
        e.pop("JOURNAL_STREAM", None)
        if env:
            e.update(env)
        cmd = [binary("batchd"), "-c", self.conf]
        if VALGRIND:
            cmd = ["valgrind", "-q", "--error-exitcode=99", "--leak-check=full",
                   "--errors-for-leak-kinds=definite,indirect",
                   "--show-leak-kinds=definite,indirect",
                   f"--log-file={self.env.dir}/valgrind-%p.log"] + cmd
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=e, cwd=cwd)
        log.close()
        if wait:
            wait_for(self.answers, 20 * SLOW, "batchd's control socket")
        return self.proc

    def answers(self):
        if self.proc.poll() is not None:
            raise TestFailure(f"batchd exited with {self.proc.returncode}; log:\n{self.logs()}")
        try:
            call(self.socket, "io.batchd.GetInfo")
            return True
        except OSError:
            return False

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise TestFailure(f"batchd did not stop within {timeout}s after {sig}")
            if VALGRIND and self.proc.returncode == 99:
                self.valgrind_failed = True
        if TSAN and self.proc and self.proc.returncode == TSAN_EXIT:
            self.tsan_failed = True  # also when it exited at the report, before the stop
        return self.proc.returncode if self.proc else None

    valgrind_failed = False
    tsan_failed = False

    def valgrind_report(self):
        out = []
        for fn in sorted(os.listdir(self.env.dir)):
            if fn.startswith("valgrind-"):
                with open(os.path.join(self.env.dir, fn), errors="replace") as f:
                    out.append(f.read())
        return "\n".join(out)

    def kill9(self):
        self.proc.kill()
        self.proc.wait()

    def logs(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def drop(self, src, name=None):
        """Atomic drop as a producer does it: copy into tmp/, then rename into incoming/."""
        name = name or os.path.basename(src.rstrip("/"))
        tmp = os.path.join(self.spool, "tmp", f".{name}.{random.randrange(1 << 30)}")
        os.makedirs(os.path.join(self.spool, "tmp"), exist_ok=True)
        os.makedirs(os.path.join(self.spool, "incoming"), exist_ok=True)
        if os.path.isdir(src):
            shutil.copytree(src, tmp)
        else:
            shutil.copy(src, tmp)
        os.rename(tmp, os.path.join(self.spool, "incoming", name))
        return name

    def dir_entries(self, sub):
        try:
            return sorted(os.listdir(os.path.join(self.spool, sub)))
        except FileNotFoundError:
            return []

    def wait_finished(self, job, sub, timeout):
        """Waits until batchd itself says job (a name or id) is finished in sub/ ("done" or
        "failed"): its Job's dir is there. An entry seen in sub/ is not enough: batchd may
        still be finishing the move (an fsync), and a Retry then is refused as too early."""
        def moved():
            r = call(self.socket, "io.batchd.GetJob", {"job": job})
            if "error" in r:  # not claimed yet
                return False
            return (r["parameters"]["job"].get("dir") or "").startswith(sub + "/")
        wait_for(moved, timeout, f"{job} finished in {sub}/")

    def result(self, name):
        with open(os.path.join(self.spool, "done", name, "result.json")) as f:
            return json.load(f)

    def error(self, name):
        with open(os.path.join(self.spool, "failed", name, "error.json")) as f:
            return json.load(f)

    def jobs(self, states=None):
        params = {"states": states} if states else {}
        return call(self.socket, "io.batchd.ListJobs", params)["parameters"]["jobs"]


def call(path, method, params=None, more=False, timeout=10):
    """One varlink call; returns the reply object (raises OSError if unreachable)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        msg = {"method": method, "parameters": params or {}}
        if more:
            msg["more"] = True
        s.sendall(json.dumps(msg).encode() + b"\0")
        buf = b""
        while b"\0" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return json.loads(buf.split(b"\0", 1)[0])
    finally:
        s.close()


class Watch:
    """A streaming io.batchd.Watch subscription."""

    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.connect(path)
        self.s.sendall(json.dumps({"method": "io.batchd.Watch", "parameters": {},
                                   "more": True}).encode() + b"\0")
        self.buf = b""

    def next(self, timeout=30):
        self.s.settimeout(timeout)
        while b"\0" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise TestFailure("watch connection closed")
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def close(self):
        self.s.close()


class Env:
    """A temporary directory with a sim and a daemon; use as a context manager."""

    def __init__(self, sim_args=(), extra_conf="", start=True, other_uid=False):
        # other_uid: a test gives this directory to a second uid, so it must not sit under a
        # TMPDIR that other uids cannot enter (the test still sets the directory's own mode).
        self.dir = tempfile.mkdtemp(prefix="batchd-e2e-", dir="/tmp" if other_uid else None)
        self.sim = None
        self.daemon = None
        self.ok = False
        try:
            self.sim = Sim(self.dir, sim_args)
            self.daemon = Daemon(self, extra_conf)
            if start:
                self.daemon.start()
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.ok = exc_type is None
        self.close()
        return False

    def close(self):
        if self.daemon and self.daemon.proc:
            try:
                self.daemon.stop()
            except TestFailure:
                pass
        if self.sim:
            self.sim.stop()
        if self.daemon and self.daemon.valgrind_failed:
            report = self.daemon.valgrind_report()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise TestFailure("valgrind found errors in batchd:\n" + report[-20000:])
        if self.daemon and self.daemon.tsan_failed:
            log = self.daemon.logs()
            shutil.rmtree(self.dir, ignore_errors=True)
            raise TestFailure("ThreadSanitizer found a race in batchd:\n" + log[-20000:])
        if not self.ok and self.daemon:
            sys.stderr.write("---- batchd log ----\n" + self.daemon.logs()[-20000:] + "\n")
            try:
                with open(os.path.join(self.dir, "sim.log"), "rb") as f:
                    sys.stderr.write("---- sim log (tail) ----\n" +
                                     f.read()[-5000:].decode(errors="replace") + "\n")
            except OSError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def assert_no_token_leak(self, encoded=False, replies=()):
        """The token appears nowhere but the file it was read from. encoded=True also looks
        for it base64-encoded, percent-encoded and JSON-\\u-escaped, inside JSON strings and
        in replies (bytes, e.g. raw socket replies): see assert_no_token_anywhere."""
        if encoded:
            assert_no_token_anywhere(self, replies)
            return
        for p, data in regular_files(self.dir, skip=(self.daemon.token_file,)):
            check(TOKEN.encode() not in data, f"the API token leaked into {p}")


PASS, FAIL, SKIP = "pass", "fail", "skip"


def skipped(t, reason):
    """t, replaced by a test of the same name that reports a skip with reason (for tests a
    run leaves out on purpose, so that they are listed as skipped, not silently dropped)."""
    def skip():
        raise Skipped(reason)
    skip.__name__ = t.__name__
    return skip


def _run_one(t):
    """Runs one test function, prints its line; returns PASS, FAIL or SKIP."""
    start = time.monotonic()
    try:
        t()
        print(f"ok   {t.__name__} ({time.monotonic() - start:.1f}s)", flush=True)
        return PASS
    except Skipped as e:
        print(f"SKIP {t.__name__}: {e}", flush=True)
        return SKIP
    except Exception as e:  # noqa: BLE001 - report every kind of failure the same way
        print(f"FAIL {t.__name__}: {type(e).__name__}: {e}", flush=True)
        return FAIL


SKIP_EXIT = 77  # ctest's SKIP_RETURN_CODE for these suites (tests/CMakeLists.txt)


def _summary(outcomes):
    """Prints the closing line; exits 1 on a failure, 77 when every test was skipped."""
    passed, failed, skipped = (outcomes.count(k) for k in (PASS, FAIL, SKIP))
    print(f"{passed} passed, {failed} failed, {skipped} skipped", flush=True)
    sys.exit(1 if failed else SKIP_EXIT if skipped and not passed else 0)


def run(tests):
    """Runs test functions; prints a summary line that ctest shows; exits non-zero on failure
    (77 when all were skipped)."""
    _summary([_run_one(t) for t in tests])


def hold(pred, duration, what="condition", interval=0.05):
    """Checks that pred stays true for the whole of duration (an observation window, e.g. that
    nothing happens while paused); raises at the first moment it is false."""
    deadline = time.monotonic() + duration
    while True:
        check(pred(), f"{what} stopped holding")
        if time.monotonic() >= deadline:
            return
        time.sleep(interval)


def rss_kib(pid):
    """Resident set size of a process in KiB (VmRSS of /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise TestFailure(f"no VmRSS for pid {pid}")


class Conn:
    """One varlink connection for several calls in a row (call() opens a new one each time)."""

    def __init__(self, path, timeout=10):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""

    def send(self, method, params=None, **flags):
        msg = {"method": method, "parameters": params or {}}
        msg.update(flags)
        self.s.sendall(json.dumps(msg).encode() + b"\0")

    def recv(self, timeout=10):
        """The next reply, or None when the server closed the connection."""
        self.s.settimeout(timeout)
        while b"\0" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                return None
            self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method, params=None, **flags):
        self.send(method, params, **flags)
        reply = self.recv()
        check(reply is not None, f"connection closed instead of answering {method}")
        return reply

    def close(self):
        self.s.close()


def run_tests(shared_tests, setup, teardown, own_tests=()):
    """Like run(), for suites whose first tests share one daemon: setup() before them,
    teardown(ok) after them (ok: every shared test passed), then the tests that start their
    own. A failing shared test does not stop the others; a failing setup fails them all."""
    outcomes = []
    try:
        setup()
    except Exception as e:  # noqa: BLE001
        print(f"FAIL setup: {type(e).__name__}: {e}", flush=True)
        outcomes += [FAIL] * len(shared_tests)
        shared_tests = []
    shared = [_run_one(t) for t in shared_tests]
    try:
        teardown(FAIL not in shared)
    except Exception as e:  # noqa: BLE001
        shared.append(FAIL)
        print(f"FAIL teardown: {type(e).__name__}: {e}", flush=True)
    outcomes += shared
    outcomes += [_run_one(t) for t in own_tests]
    _summary(outcomes)


# ---------------------------------------------------------------- the token, in any form


def token_forms(token=TOKEN):
    """The byte strings that give the token away: raw; base64 (standard and URL-safe, at each
    of the three alignments it can have inside a longer encoded value, keeping only the
    characters that depend on the token alone); every byte percent-encoded (either case);
    every character JSON-\\u-escaped (either case)."""
    import base64
    t = token.encode()
    forms = {"raw": t}
    for k in range(3):
        for name, enc in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            e = enc(b"\0" * k + t)
            start = -(-8 * k // 6)
            end = (8 * (k + len(t))) // 6
            forms[f"{name}@{k}"] = e[start:end]
    forms["percent"] = "".join(f"%{c:02X}" for c in t).encode()
    forms["percent-lower"] = "".join(f"%{c:02x}" for c in t).encode()
    forms["json-u"] = "".join(f"\\u{c:04x}" for c in t).encode()
    forms["json-U"] = "".join(f"\\u{c:04X}" for c in t).encode()
    return forms


def _json_strings(v):
    if isinstance(v, str):
        yield v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield k
            yield from _json_strings(x)
    elif isinstance(v, list):
        for x in v:
            yield from _json_strings(x)


def token_leaks(data, token=TOKEN):
    """How the token shows in data (bytes): [] when it does not. Besides token_forms, data
    is percent-decoded as a whole, and each JSON document in it (the whole, each line, each
    NUL-separated message) has its strings decoded, so partly escaped forms count too."""
    import urllib.parse
    found = [name for name, f in token_forms(token).items() if f in data]
    text = data.decode("utf-8", errors="replace")
    if token in urllib.parse.unquote(text):
        found.append("percent-decoded")
    docs = [text] + text.split("\n") + text.split("\0")
    for d in docs:
        d = d.strip()
        if not d or d[0] not in "{[\"":
            continue
        try:
            v = json.loads(d)
        except (ValueError, RecursionError):
            continue
        for st in _json_strings(v):
            if token in st or token in urllib.parse.unquote(st):
                found.append("json-decoded")
                return sorted(set(found))
    return sorted(set(found))


def regular_files(top, skip=()):
    """(path, bytes) of every regular file under top but those in skip. A running batchd
    renames its temporary files into place, so a file listed by the walk may be gone by the
    time it is looked at: it is passed over (its content is under its final name). Only
    regular files are opened: opening a FIFO a test dropped would block forever."""
    for root, _dirs, files in os.walk(top):
        for fn in files:
            p = os.path.join(root, fn)
            if p in skip:
                continue
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                continue
            yield p, data


def assert_no_token_anywhere(env, replies=()):
    """The token, in no form (token_leaks), in any regular file under env.dir (the spool,
    the state dir, batchd's log, ...) except the token file, nor in any of replies (bytes)."""
    problems = []
    for p, data in regular_files(env.dir, skip=(env.daemon.token_file,)):
        how = token_leaks(data)
        if how:
            problems.append(f"{os.path.relpath(p, env.dir)} ({', '.join(how)})")
    for i, r in enumerate(replies):
        how = token_leaks(r)
        if how:
            problems.append(f"reply #{i} {r[:120]!r}... ({', '.join(how)})")
    check(not problems, "the API token leaked into: " + "; ".join(problems))


def call_raw(path, method, params=None, more=False, timeout=10):
    """One varlink call; returns the first reply's bytes as sent (without the NUL), for
    checks on the encoding itself (call() returns the decoded object)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        msg = {"method": method, "parameters": params or {}}
        if more:
            msg["more"] = True
        s.sendall(json.dumps(msg).encode() + b"\0")
        buf = b""
        while b"\0" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise OSError("connection closed")
            buf += chunk
        return buf.split(b"\0", 1)[0]
    finally:
        s.close()
