"""End to end: members of the control group flood the control socket (batchd(8), CONTROL SOCKET,
"The control socket"). Four unprivileged uids take every ordinary connection slot, 64 of their
connections pipeline ListJobs over 500 jobs without reading a reply, a Watch never reads, and
one more member is turned away; meanwhile root's GetInfo is answered within 100 ms every time
(on new connections: the reserve), batchd's memory stays within 64 MiB of where it started,
and refusals are logged at most once a second per uid."""

import json
import os
import re
import select
import shutil
import subprocess
import time

from harness import ASAN, VALGRIND, Env, Skipped, binary, call, check, rss_kib, run, wait_for



GROUP = 54331
FLOODERS = (65531, 65532, 65533, 65534)  # each takes its whole per-uid share of the slots
PER_UID = 256                              # batchd's per-uid cap (src/batchd/main.c)
PIPELINERS = 16                            # per uid: 64 in all
N_JOBS = 500
FLOOD_S = 8                                # how long root measures under the flood
LATENCY_MS = 100
# AddressSanitizer makes batchd's work (serialising hundreds of jobs) several times slower: in
# such a build the bound is this many times the product's, and the output says so.
ASAN_SLOWDOWN = 5
RSS_GROWTH_KIB = 64 * 1024

# Runs as a flooding uid, from /usr/bin/python3 with the code inline (nothing of the checkout
# is run as another uid). argv: socket, pipeliners, idle connections, watch (0/1), max seconds.
# Prints "ready <idle kept>" once set up, floods until stdin closes or max seconds pass, then
# prints "done <pipeliner connections still open> <why> <max ms> <samples>" (the last two: its
# own GetInfo calls timed while it floods, when asked to probe).
FLOODER = r"""
import os, select, socket, sys, time
path, n_pipe, n_idle, watch, max_s = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4] == "1", float(sys.argv[5])
probe_on = sys.argv[6] == "1"
end = time.monotonic() + max_s

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect(path)
    return s

keep = []
if watch:
    w = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    w.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    w.settimeout(5)
    w.connect(path)
    w.sendall(b'{"method":"io.batchd.Watch","more":true}\0')
    keep.append(w)
pipes = []
for _ in range(n_pipe):
    s = connect()
    s.setblocking(False)
    pipes.append(s)
# Each idle connection makes one call, to learn whether it was let in, and then idles.
kept = []
for _ in range(n_idle):
    s = connect()
    b = b""
    try:
        s.sendall(b'{"method":"io.batchd.GetInfo"}\0')
        while b"\0" not in b:
            c = s.recv(65536)
            if not c:
                break
            b += c
    except OSError:
        pass
    if b'"version"' in b:
        kept.append(s)
    else:
        s.close()
print("ready", len(kept), flush=True)
msg = b'{"method":"io.batchd.ListJobs"}\0' * 64
why = "time"
# The member's own status checks on one of its idle connections, timed (ms), while it floods.
probe = kept[0] if kept and probe_on else None
lat = []
while time.monotonic() < end:
    if select.select([sys.stdin], [], [], 0.02)[0]:
        why = "stdin %r" % sys.stdin.read(100)
        break
    for s in list(pipes):
        try:
            s.send(msg)
        except BlockingIOError:
            pass
        except OSError:
            pipes.remove(s)
    if probe is not None:
        t0 = time.monotonic()
        probe.sendall(b'{"method":"io.batchd.GetInfo"}\0')
        b = b""
        while b"\0" not in b:
            c = probe.recv(65536)
            if not c:
                break
            b += c
        lat.append((time.monotonic() - t0) * 1000 if b'"version"' in b else 1e9)
print("done", len(pipes), why, "%.1f" % max(lat or [0]), len(lat), flush=True)
"""


def start_flooder(sock, uid, n_pipe, n_idle, watch, max_s, probe=False):
    return subprocess.Popen(
        ["setpriv", f"--reuid={uid}", f"--regid={GROUP}", "--clear-groups", "/usr/bin/python3",
         "-c", FLOODER, sock, str(n_pipe), str(n_idle), "1" if watch else "0", str(max_s),
         "1" if probe else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def read_line(proc, timeout):
    """One line of proc's stdout within timeout seconds, or None."""
    r, _, _ = select.select([proc.stdout], [], [], timeout)
    return proc.stdout.readline().strip() if r else None


def getinfo_ms(sock):
    """GetInfo on a new connection; milliseconds from connect to the reply."""
    t0 = time.monotonic()
    r = call(sock, "io.batchd.GetInfo", timeout=10)
    ms = (time.monotonic() - t0) * 1000
    check("error" not in r and r["parameters"]["version"], r)
    return ms


def sanitized(pid):
    """Whether the process runs with AddressSanitizer's runtime: an ASan build (clang links
    the runtime in), or GCC's libasan mapped in."""
    if ASAN:
        return True
    with open(f"/proc/{pid}/maps") as f:
        return "libasan" in f.read()


def drop_failing_jobs(env, n):
    """n jobs that fail validation at once (no API calls), so the daemon knows n jobs fast."""
    src = os.path.join(env.dir, "src")
    os.makedirs(src, exist_ok=True)
    for i in range(n):
        p = os.path.join(src, f"bad{i:03d}.jsonl")
        with open(p, "w") as f:
            f.write("this is not json\n")
        env.daemon.drop(p)


def refusal_lines(log):
    """(uid, second) of every logged refusal on the control socket."""
    out = []
    for line in log.splitlines():
        m = re.match(r"(\S+?)\.\d+Z .*control connection \(uid (\d+), pid -?\d+\): (.*)", line)
        if m and ("refused" in m.group(3) or "closed" in m.group(3)):
            out.append((int(m.group(2)), m.group(1)))
    return out


def test_flood():
    """The flood described at the top of the file."""
    if os.geteuid() != 0:
        raise Skipped("needs root to run as other uids")
    if not shutil.which("setpriv"):
        raise Skipped("setpriv (util-linux) is missing")
    with Env(extra_conf=f"control.group = {GROUP}", start=False, other_uid=True) as env:
        os.chmod(env.dir, 0o711)
        d, sock = env.daemon, env.daemon.socket
        # Under AddressSanitizer, freed memory waits in a quarantine and would count as growth.
        asan = os.environ.get("ASAN_OPTIONS", "")
        d.start(env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                     "quarantine_size_mb=4:thread_local_quarantine_size_kb=64"})
        drop_failing_jobs(env, N_JOBS)
        wait_for(lambda: len(d.dir_entries("failed")) == N_JOBS, 120, f"{N_JOBS} jobs failed")
        wait_for(lambda: len(call(sock, "io.batchd.ListJobs")["parameters"]["jobs"]) == N_JOBS,
                 30, "ListJobs shows every job")
        t0 = time.monotonic()
        reply = call(sock, "io.batchd.ListJobs")
        lj_ms = (time.monotonic() - t0) * 1000
        size = len(json.dumps(reply))
        for _ in range(20):  # warm the allocator up before measuring
            call(sock, "io.batchd.ListJobs")
        rss0 = rss_kib(d.proc.pid)
        base = [getinfo_ms(sock) for _ in range(10)]

        procs = []
        try:
            for i, uid in enumerate(FLOODERS):
                # Each asks for more than its share: the per-uid cap turns the rest away.
                procs.append(start_flooder(sock, uid, PIPELINERS, PER_UID - PIPELINERS + 8,
                                           i == 0, FLOOD_S * 6, probe=i == 1))
            kept = []
            for p in procs:
                line = read_line(p, 60)
                if not line or not line.startswith("ready"):
                    p.kill()
                    check(False, f"flooder not ready: {line!r} {p.stderr.read()}")
                kept.append(int(line.split()[1]))
            # Every ordinary slot is taken: one more member is turned away...
            p = subprocess.run(
                ["setpriv", "--reuid=65530", f"--regid={GROUP}", "--clear-groups",
                 "/usr/bin/python3", "-c",
                 "import socket,sys\n"
                 "s=socket.socket(socket.AF_UNIX);s.settimeout(10);s.connect(sys.argv[1])\n"
                 "s.sendall(b'{\"method\":\"io.batchd.GetInfo\"}\\0');b=b''\n"
                 "while b'\\0' not in b:\n"
                 "  c=s.recv(65536)\n"
                 "  if not c: break\n"
                 "  b+=c\n"
                 "print(b.split(b'\\0')[0].decode())\n", sock],
                capture_output=True, text=True, timeout=30)
            check(p.returncode == 0 and "io.batchd.TooManyConnections" in p.stdout,
                  f"a fifth member was let in while four hold every slot: {p.stdout} {p.stderr}")

            # ... while root always gets in, and is answered fast.
            lat, rss = [], []
            end = time.monotonic() + FLOOD_S
            while time.monotonic() < end:
                lat.append(getinfo_ms(sock))
                rss.append(rss_kib(d.proc.pid))
                time.sleep(0.02)  # pacing of the samples, not synchronisation
            ctl = subprocess.run([binary("batchctl"), "-s", sock, "status"], capture_output=True,
                                 text=True, timeout=30)
            check(ctl.returncode == 0, f"batchctl status as root under the flood: {ctl.stderr}")
            for p in procs:
                if p.poll() is not None:  # (the reads would block while it runs)
                    check(False, f"a flooder stopped early ({p.returncode}): "
                          f"{p.stdout.read()} {p.stderr.read()}")
        finally:
            for p in procs:
                try:
                    p.stdin.close()
                except OSError:
                    pass
            done = []
            for p in procs:
                try:
                    p.wait(30)
                    out = p.stdout.read().strip()
                    done.append(out.splitlines()[-1] if out else "")
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
                    done.append("")
        lat.sort()
        print(f"     ListJobs of {N_JOBS} jobs: {size} bytes in {lj_ms:.1f} ms unloaded; "
              f"GetInfo {max(base):.1f} ms unloaded; under the flood {len(lat)} samples, median "
              f"{lat[len(lat) // 2]:.1f} ms, p99 {lat[len(lat) * 99 // 100]:.1f} ms, max "
              f"{lat[-1]:.1f} ms; idle kept per uid {kept}; "
              f"rss {rss0} -> max {max(rss)} KiB", flush=True)
        check(kept[0] == PER_UID - PIPELINERS - 1 and
              all(k == PER_UID - PIPELINERS for k in kept[1:]),
              f"each flooding uid holds its {PER_UID} slots and no more: {kept}")
        bound = LATENCY_MS * (ASAN_SLOWDOWN if sanitized(d.proc.pid) else 1)
        if bound != LATENCY_MS:
            print(f"     AddressSanitizer build: latency bound {bound} ms instead of {LATENCY_MS}",
                  flush=True)
        slow = [x for x in lat if x > bound]
        check(not slow, f"{len(slow)} of {len(lat)} GetInfo calls took more than {bound} ms "
              f"under the flood: {slow[:10]}")
        # A member's own GetInfo is answered as fast: it never waits behind the ListJobs flood.
        probe = done[1].split() if len(done) > 1 else []
        check(len(probe) >= 5 and probe[0] == "done" and int(probe[-1]) > 0,
              f"the member's probe reported nothing: {done[1] if len(done) > 1 else None!r}")
        print(f"     a member's GetInfo under the flood: {probe[-1]} samples, max {probe[-2]} ms",
              flush=True)
        check(float(probe[-2]) <= bound,
              f"a member's GetInfo took {probe[-2]} ms under the flood (bound {bound} ms)")
        if not VALGRIND:  # under valgrind the RSS is valgrind's own
            check(max(rss) - rss0 <= RSS_GROWTH_KIB,
                  f"batchd's RSS grew from {rss0} KiB to {max(rss)} KiB under the flood")

        # Refusals were logged, at most once a second per uid.
        lines = refusal_lines(d.logs())
        for uid in FLOODERS + (65530,):
            check(any(u == uid for u, _ in lines), f"no refusal logged for uid {uid}")
        seen = set()
        for key in lines:
            check(key not in seen, f"two refusals logged for uid {key[0]} in second {key[1]}")
            seen.add(key)
        # The flood is over: its connections are gone and the daemon serves as before.
        check(getinfo_ms(sock) < 10 * LATENCY_MS, "GetInfo after the flood")
        check(len(call(sock, "io.batchd.ListJobs", {"limit": 7})["parameters"]["jobs"]) == 7,
              "ListJobs limit after the flood")


if __name__ == "__main__":
    run([test_flood])
