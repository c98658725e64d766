"""Shared pieces of the batchd benchmarks: a Release build, the e2e harness (batchd-sim and
batchd in a temporary directory), /proc readings of a running batchd, data files valid for
the default template, and small statistics helpers. Benchmarks print ratios measured within
one run, because the machines they run on are shared and noisy."""

import json
import re
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CLK_TCK = os.sysconf("SC_CLK_TCK")


def build(build_dir, skip=False):
    """Configures and builds the Release programs the benchmarks drive (not the tests)."""
    if not skip:
        subprocess.run(["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release",
                        "-DBATCHD_SANITIZE=OFF", "-DBATCHD_TESTS=OFF"],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["cmake", "--build", build_dir, "--target", "batchd", "batchd-sim",
                        "-j2"], check=True, stdout=subprocess.DEVNULL)
    for prog in ("batchd", "batchd-sim"):
        if not os.access(os.path.join(build_dir, prog), os.X_OK):
            sys.exit(f"bench: {build_dir}/{prog} is missing; build it or drop --no-build")


def harness(build_dir):
    """Imports tests/e2e/harness.py pointed at build_dir (it reads the directory at import)."""
    os.environ["BATCHD_BUILD_DIR"] = build_dir
    os.environ["BATCHD_SOURCE_DIR"] = ROOT
    sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
    import harness as h  # noqa: E402 - needs the environment set above
    return h


def common_args(p):
    p.add_argument("--build", default=os.path.join(ROOT, "build-bench"),
                   help="Release build directory (default: build-bench/)")
    p.add_argument("--no-build", action="store_true", help="use the build as it is")
    p.add_argument("--dir", default=None,
                   help="where the temporary directory goes (default: $TMPDIR or /tmp); "
                        "e.g. /dev/shm to take the disk's fsync cost out")
    p.add_argument("--keep", action="store_true",
                   help="keep the temporary directory (logs, spool, state) and print its path")


def use_dir(directory):
    """Puts the harness's temporary directories (spool, state, logs) under directory."""
    if directory:
        import tempfile
        os.makedirs(directory, exist_ok=True)
        tempfile.tempdir = directory


def conf_lines(knobs):
    """'section.key = value' lines for harness.Env(extra_conf=...)."""
    return "\n".join(f"{k} = {v}" for k, v in knobs.items())


def print_knobs(knobs, sim_args):
    print("config: " + ", ".join(f"{k}={v}" for k, v in knobs.items()))
    print("sim:    " + " ".join(sim_args))


# ---- /proc readings ----

def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status(pid):
    """/proc/PID/status as a dict; memory values in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            value = value.strip()
            if value.endswith(" kB"):
                value = value[:-3]
            out[key] = value
    return out


def rss_kib(pid):
    return int(status(pid)["VmRSS"])


def rss_breakdown(pid):
    """What VmRSS is made of, in KiB, from /proc/PID/smaps_rollup and smaps: anonymous
    (heap, stacks, copied-on-write library pages), file pages (mostly shared libraries'
    code and data, shared with the page cache), Pss, and the largest mappings by RSS."""
    roll = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                roll[parts[0].rstrip(":")] = int(parts[1])
    per = {}
    name = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+$", parts[0]):
                name = parts[5] if len(parts) > 5 else "[anon]"
            elif parts[0] == "Rss:":
                per[name] = per.get(name, 0) + int(parts[1])
    top = sorted(per.items(), key=lambda kv: -kv[1])[:6]
    return {"rss": roll.get("Rss", 0), "pss": roll.get("Pss", 0),
            "anon": roll.get("Anonymous", 0), "file": roll.get("Rss", 0) - roll.get("Anonymous", 0),
            "top": [(os.path.basename(n), kb) for n, kb in top]}


def print_rss_breakdown(pid, title="RSS"):
    r = rss_breakdown(pid)
    print(f"{title}: {mib(r['rss'])} = anonymous {mib(r['anon'])} + file-backed {mib(r['file'])}"
          f" (Pss {mib(r['pss'])}); largest: " +
          ", ".join(f"{n} {kb} KiB" for n, kb in r["top"]))


def hwm_kib(pid):
    return int(status(pid)["VmHWM"])


def threads(pid):
    """Per thread: name, voluntary and involuntary context switches, CPU ns, times run."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                comm = f.read().strip()
            st = status(f"{pid}/task/{tid}")
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                run_ns, _wait_ns, slices = (int(x) for x in f.read().split())
        except FileNotFoundError:
            continue  # the thread ended while we looked
        out[tid] = {"comm": comm, "vol": int(st["voluntary_ctxt_switches"]),
                    "invol": int(st["nonvoluntary_ctxt_switches"]), "run_ns": run_ns,
                    "slices": slices}
    return out


# ---- data ----

def record(i, width=60):
    text = f"Record {i}: " + "lorem ipsum dolor sit amet " * (width // 27 + 1)
    return json.dumps({"prompt": text[:width], "response": f"Answer {i}. " + text[:width]})


def write_jsonl(path, records):
    with open(path, "w") as f:
        for i in range(records):
            f.write(record(i) + "\n")


def write_big_jsonl(path, size):
    """About `size` bytes of valid records, fast: one ~1 MiB block of lines written repeatedly
    (the records repeat, which the template does not forbid). Returns (bytes, records)."""
    lines = []
    n = 0
    block_len = 0
    while block_len < (1 << 20):
        line = record(n, 200) + "\n"
        lines.append(line)
        block_len += len(line)
        n += 1
    block = "".join(lines).encode()
    written = records = 0
    with open(path, "wb") as f:
        while written < size:
            f.write(block)
            written += len(block)
            records += n
        f.flush()
        os.fsync(f.fileno())
    return written, records


# ---- spool ----

def stage(daemon, src, name):
    """Copies src into tmp/ (not yet visible to batchd); returns the staged path."""
    import shutil
    os.makedirs(os.path.join(daemon.spool, "tmp"), exist_ok=True)
    os.makedirs(os.path.join(daemon.spool, "incoming"), exist_ok=True)
    staged = os.path.join(daemon.spool, "tmp", f".{name}")
    shutil.copy(src, staged)
    return staged


def publish(daemon, staged, name):
    """The producer's rename into incoming/: the only trigger batchd reacts to."""
    os.rename(staged, os.path.join(daemon.spool, "incoming", name))


def done_count(daemon):
    try:
        return len(os.listdir(os.path.join(daemon.spool, "done")))
    except FileNotFoundError:
        return 0


def failed_entries(daemon):
    return daemon.dir_entries("failed")


# ---- statistics ----

def percentile(values, p):
    """Nearest-rank percentile of a non-empty list."""
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(round(p / 100.0 * len(v) + 0.5)) - 1))
    return v[k]


def median(values):
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def ms(seconds):
    return f"{seconds * 1000:.1f} ms"


def mib(kib):
    return f"{kib / 1024:.1f} MiB"


def settle(pid, quiet_ms=300, timeout=10.0):
    """Waits until the process used no CPU for quiet_ms (start-up work done), or timeout."""
    deadline = time.monotonic() + timeout
    last = cpu_seconds(pid)
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        now = cpu_seconds(pid)
        if now != last:
            last = now
            quiet_since = time.monotonic()
        elif time.monotonic() - quiet_since >= quiet_ms / 1000:
            return True
    return False


def fsync_probe(directory, count=20):
    """The cost of one durable small-file write as fsutil_write_atomic does it (write, fsync,
    rename, fsync the directory), so that figures can be read against this disk's speed.
    Returns (median, p95) in milliseconds."""
    times = []
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(count):
            tmp = os.path.join(directory, f".bench-probe.{i}.tmp")
            final = os.path.join(directory, ".bench-probe")
            t = time.perf_counter()
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            os.write(fd, b"x" * 2048)
            os.fsync(fd)
            os.close(fd)
            os.rename(tmp, final)
            os.fsync(dfd)
            times.append((time.perf_counter() - t) * 1000)
        os.unlink(os.path.join(directory, ".bench-probe"))
    finally:
        os.close(dfd)
    return median(times), percentile(times, 95)


class SyscallTracer:
    """System calls of a running process per thread, with time spent in each: `perf trace -s`
    when perf works (low overhead), else `strace -c -f` (all threads merged, much slower)."""

    def __init__(self, pid, out):
        self.pid = pid
        self.out = out
        self.perf = subprocess.run(["perf", "trace", "-s", "--", "true"], capture_output=True
                                   ).returncode == 0 if _which("perf") else False
        if self.perf:
            cmd = ["perf", "trace", "-s", "-p", str(pid), "-o", out]
        else:
            cmd = ["strace", "-c", "-f", "-w", "-p", str(pid), "-o", out]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)  # attaching to every thread takes a moment

    def stop(self):
        self.proc.send_signal(2)
        self.proc.wait(60)

    def parse(self):
        """{tid: (comm, {syscall: (calls, total_ms, max_ms)})} from perf trace -s."""
        threads = {}
        cur = None
        with open(self.out) as f:
            for line in f:
                m = re.match(r"^\s*(\S.*) \((\d+)\), (\d+) events", line)
                if m:
                    cur = {}
                    threads[int(m.group(2))] = (m.group(1), cur)
                    continue
                m = re.match(r"^\s+(\w+)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+[\d.]+\s+[\d.]+\s+([\d.]+)",
                             line)
                if m and cur is not None:
                    cur[m.group(1)] = (int(m.group(2)), float(m.group(4)), float(m.group(5)))
        return threads

    def report(self, wall, jobs):
        if not self.perf:
            print("\nstrace -c -f -w of batchd (all threads):")
            with open(self.out) as f:
                print("".join(f.readlines()[:16]))
            return
        threads = self.parse()
        loop = threads.get(self.pid, ("?", {}))[1]
        print(f"\nsystem calls of the event-loop thread (perf trace -s), {wall:.2f}s wall, "
              f"{jobs} jobs:")
        print(f"  {'syscall':14s} {'per job':>8s} {'total':>9s} {'of wall':>8s} {'max':>9s}")
        top = sorted(loop.items(), key=lambda kv: -kv[1][1])[:10]
        for name, (calls, total, mx) in top:
            note = "  (idle: waiting for events)" if name == "epoll_wait" else ""
            print(f"  {name:14s} {calls / jobs:8.1f} {total:7.0f}ms {total / 10 / wall:7.1f}% "
                  f"{mx:7.1f}ms{note}")
        busy = sum(t for n, (_c, t, _m) in loop.items() if n not in ("epoll_wait",))
        print(f"  the loop spent {busy / 1000:.2f}s ({busy / 10 / wall:.0f}% of wall) inside "
              f"system calls other than epoll_wait")
        for tid, (comm, calls) in sorted(threads.items()):
            if tid == self.pid or not calls:
                continue
            fs = calls.get("fsync", (0, 0.0, 0.0))
            tot = sum(t for n, (_c, t, _m) in calls.items() if n != "futex")
            print(f"  thread {comm} ({tid}): {tot:.0f} ms in system calls (futex waits "
                  f"excluded), fsync {fs[0]} calls {fs[1]:.0f} ms")


def _which(prog):
    import shutil
    return shutil.which(prog) is not None


class SyscallCounter:
    """Counts chosen system calls of a running process (all threads) with `perf stat`, which
    only counts in the kernel and costs the process next to nothing. Inactive without perf."""

    def __init__(self, pid, calls, out):
        self.calls = calls
        self.out = out
        self.proc = None
        if not _which("perf"):
            return
        events = ",".join(f"syscalls:sys_enter_{c}" for c in calls)
        probe = subprocess.run(["perf", "stat", "-e", events, "--", "true"], capture_output=True)
        if probe.returncode != 0:
            return
        self.proc = subprocess.Popen(["perf", "stat", "-x", ",", "-e", events, "-p", str(pid),
                                      "-o", out], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # perf attaches to each thread

    def stop(self):
        """{syscall: count}, or {} without perf."""
        if not self.proc:
            return {}
        self.proc.send_signal(2)
        self.proc.wait(30)
        counts = {}
        with open(self.out) as f:
            for line in f:
                parts = line.strip().split(",")
                if len(parts) > 2 and parts[2].startswith("syscalls:sys_enter_"):
                    try:
                        counts[parts[2][len("syscalls:sys_enter_"):]] = int(parts[0])
                    except ValueError:
                        pass
        return counts


class Profiler:
    """`perf record -g` of a running process; report() prints the hottest symbols."""

    def __init__(self, pid, out):
        self.out = out
        self.proc = subprocess.Popen(["perf", "record", "-F", "999", "--call-graph", "dwarf,16384", "-p", str(pid),
                                      "-o", out], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        time.sleep(0.3)

    def stop(self):
        self.proc.send_signal(2)
        self.proc.wait(60)

    def report(self, lines=30):
        r = subprocess.run(["perf", "report", "-i", self.out, "--stdio", "--no-children",
                            "--sort", "dso,symbol", "-g", "none", "--percent-limit", "0.7"],
                           capture_output=True, text=True)
        rows = [ln for ln in r.stdout.splitlines() if ln.strip() and not ln.startswith("#")]
        print("\nperf record of batchd during the N jobs (self time by DSO and symbol):")
        print("\n".join(rows[:lines]))
