"""End to end: producers are semi-trusted (batchd(8), HOSTILE AND ACCIDENTAL INPUT). What was validated is
what is uploaded: a data file changed in active/ after validation never completes its upload
and fails the job; entries batchd cannot claim never block the others; names of any length
get derived names that fit."""

import json
import os
import shutil
import subprocess

from harness import Env, Skipped, call, check, other_uid_bin_dir, run, wait_for

NOBODY = 65534

CHANGED = "changed after it was validated"


def write_jsonl(path, n, prefix="p"):
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"{prefix} prompt {i}", "response": f"answer {i}"}) + "\n")


def edit_same_size(path):
    with open(path, "r+b") as f:
        data = f.read()
        # The same length, different bytes, still valid JSON lines.
        f.seek(0)
        f.write(data.replace(b"answer", b"ANSWER"))
    return data


def edit_extend(path):
    with open(path, "ab") as f:
        f.write(json.dumps({"prompt": "smuggled", "response": "in"}).encode() + b"\n")


def edit_truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def changed_after_validation(edit, how, retry=False):
    """A producer edits the data file in active/ while the dataset create is slow."""
    with Env(sim_args=("--slow", "2s")) as env:
        d = env.daemon
        env.sim.set_faults([{"kind": "slow", "count": 1, "endpoint": "create_dataset"}])
        src = os.path.join(env.dir, "edited.jsonl")
        write_jsonl(src, 20)
        d.drop(src)
        # The sim has made the dataset and holds its reply: validation is over.
        wait_for(lambda: len(env.sim.state()["datasets"]) == 1, 20, "the slow dataset create")
        data = os.path.join(d.spool, "active", "edited", "edited.jsonl")
        check(os.path.exists(data), f"active/: {d.dir_entries('active')}")
        edit(data)
        d.wait_finished("edited", "failed", 30)
        err = d.error("edited")
        check(err["code"] == "invalid_job", err)
        check(CHANGED in err["message"], f"message: {err['message']}")
        check(how in err["message"], f"message says {how!r}: {err['message']}")
        check("batchctl retry" in err["message"], f"says what to do: {err['message']}")
        check(err["stage"] == "uploading", err)
        st = env.sim.state()
        ups = [r for r in st["requests"] if r["endpoint"] == "upload"]
        check(all(not (200 <= r["status"] < 300) for r in ups), f"an upload completed: {ups}")
        # The upload URL made an import that never received its file.
        imports = [i for ds in st["datasets"] for i in ds.get("imports") or []]
        check(all(i["status"] == "uninitialised" for i in imports), f"imports: {imports}")
        check(st["batches"] == [], "no batch was created")
        check(d.dir_entries("done") == [], d.dir_entries("done"))
        if retry:
            # What the message says to do: retry validates the data as it is now, takes
            # its digest afresh and uploads it.
            r = call(d.socket, "io.batchd.Retry", {"job": err["id"]})
            check("error" not in r, f"Retry: {r}")
            wait_for(lambda: d.dir_entries("done") == ["edited"], 30, "the retried job in done/")
            res = d.result("edited")
            want = sha256_of(os.path.join(d.spool, "done", "edited", "edited.jsonl"))
            check(res["sha256"] == want, f"sha256 after retry: {res['sha256']} != {want}")


def test_same_size_edit_is_not_uploaded():
    changed_after_validation(edit_same_size, "SHA-256 differs", retry=True)


def test_extended_file_is_not_uploaded():
    changed_after_validation(edit_extend, "grew")


def test_truncated_file_is_not_uploaded():
    changed_after_validation(edit_truncate, "shrank")


def sha256_of(path):
    out = subprocess.run(["sha256sum", path], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def test_result_has_sha256_of_upload():
    """result.json names the SHA-256 of what was validated and uploaded."""
    with Env() as env:
        d = env.daemon
        src = os.path.join(env.dir, "plain.jsonl")
        write_jsonl(src, 5)
        d.drop(src)
        wait_for(lambda: d.dir_entries("done") == ["plain"], 30, "plain in done/")
        res = d.result("plain")
        want = sha256_of(os.path.join(d.spool, "done", "plain", "plain.jsonl"))
        check(res.get("sha256") == want, f"sha256 {res.get('sha256')} != {want}")


def drop_long(d, src, name):
    """As a producer does it, with a short temporary name (name is up to NAME_MAX)."""
    tmp = os.path.join(d.spool, "tmp", "t")
    os.makedirs(os.path.join(d.spool, "tmp"), exist_ok=True)
    if os.path.isdir(src):
        shutil.copytree(src, tmp)
    else:
        shutil.copy(src, tmp)
    os.rename(tmp, os.path.join(d.spool, "incoming", name))


def test_longest_bare_name_in_skip_mode():
    """A bare data file named 255 bytes (NAME_MAX) with an invalid record, in skip mode: the
    cleaned file and its temporary name are derived to fit, and the job goes READY."""
    stem = "\u00e9" * 100 + "x" * 49  # 249 bytes, two-byte characters up to the cut
    name = stem + ".jsonl"
    check(len(name.encode()) == 255, "a 255-byte name")
    with Env(extra_conf="job.invalid_records = skip") as env:
        d = env.daemon
        src = os.path.join(env.dir, "src.jsonl")
        with open(src, "w") as f:
            f.write(json.dumps({"prompt": "p1", "response": "r1"}) + "\n")
            f.write(json.dumps({"prompt": 7}) + "\n")
            f.write(json.dumps({"prompt": "p2", "response": "r2"}) + "\n")
        drop_long(d, src, name)
        wait_for(lambda: d.dir_entries("done") == [stem], 30, "the job in done/")
        check(d.dir_entries("failed") == [], f"failed/: {d.dir_entries('failed')}")
        files = os.listdir(os.path.join(d.spool, "done", stem))
        cleaned = [f for f in files if f.endswith(".cleaned.jsonl")]
        check(len(cleaned) == 1 and len(cleaned[0].encode()) <= 255, f"files: {files}")
        check("rejected.jsonl" in files and name in files, f"files: {files}")
        res = d.result(stem)
        check(res["records"] == 2, res)
        want = sha256_of(os.path.join(d.spool, "done", stem, cleaned[0]))
        check(res["sha256"] == want, f"sha256 of the cleaned file: {res['sha256']} != {want}")


def test_longest_name_clash_in_done():
    """A 255-byte job directory whose name is taken in done/ gets a -2 that fits; a 255-byte
    name that is not UTF-8 is rejected next to its namesake in failed/ with one too."""
    with Env() as env:
        d = env.daemon
        long_name = "d" * 255
        check(len(long_name.encode()) == 255, "a 255-byte name")
        os.makedirs(os.path.join(d.spool, "done", long_name))
        src = os.path.join(env.dir, "job")
        os.makedirs(src)
        write_jsonl(os.path.join(src, "data.jsonl"), 2)
        drop_long(d, src, long_name)
        bad = os.fsdecode(b"\x80" * 255)
        os.makedirs(os.path.join(d.spool, "failed", bad))
        badsrc = os.path.join(env.dir, "bad")
        os.makedirs(badsrc)
        drop_long(d, badsrc, bad)
        suffixed = long_name[:253] + "-2"
        wait_for(lambda: suffixed in d.dir_entries("done"), 30, "the job in done/ with -2")
        check(d.result(suffixed)["state"] == "ready", "ready")
        wait_for(lambda: len(d.dir_entries("failed")) == 2, 30, "the rejected entry in failed/")
        other = [n for n in d.dir_entries("failed") if n != bad][0]
        raw = os.fsencode(other)
        check(len(raw) <= 255 and raw.endswith(b"-2") and raw.startswith(b"\x80" * 200),
              f"failed/ name {raw!r}")


def chown_tree(top, uid, gid):
    for root, dirs, files in os.walk(top):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, gid)
    os.lchown(top, uid, gid)


def start_as_nobody(env, keep_root=()):
    """Starts batchd as another uid (from a copy outside the build tree), so that entries
    made by root with the default umask are ones it cannot rename."""
    d = env.daemon
    with open(d.conf) as f:
        conf = f.read().replace("group = root", f"group = {NOBODY}")
    with open(d.conf, "w") as f:
        f.write(conf)
    for sub in ("tmp", "incoming", "active", "done", "failed"):
        os.makedirs(os.path.join(d.spool, sub), exist_ok=True)
    os.chmod(env.dir, 0o755)
    chown_tree(env.dir, NOBODY, NOBODY)
    for p in keep_root:
        os.lchown(p, 0, 0)
    log = open(d.log_path, "ab")
    d.proc = subprocess.Popen([os.path.join(other_uid_bin_dir(), "batchd"), "-c", d.conf],
                              stdout=log, stderr=log, user=NOBODY, group=NOBODY,
                              extra_groups=[])
    log.close()
    wait_for(d.answers, 20, "batchd's control socket")


def test_stuck_entries_do_not_block():
    """400 directories batchd cannot rename, then a good entry: it is claimed at once, the
    400 are counted in GetInfo and each is logged once."""
    if os.geteuid() != 0:
        raise Skipped("needs root to run batchd as another uid")
    n_bad = 400
    with Env(start=False, other_uid=True) as env:
        d = env.daemon
        os.makedirs(os.path.join(d.spool, "incoming"), exist_ok=True)
        # Made by root with the default umask: batchd's user may not rename them.
        old = os.umask(0o022)
        try:
            for i in range(n_bad):
                bad = os.path.join(d.spool, "incoming", f"bad{i:03d}")
                os.mkdir(bad)
                with open(os.path.join(bad, "data.jsonl"), "w") as f:
                    f.write(json.dumps({"prompt": "p", "response": "r"}) + "\n")
        finally:
            os.umask(old)
        bad_dirs = [f"bad{i:03d}" for i in range(n_bad)]
        start_as_nobody(env, [os.path.join(d.spool, "incoming", b) for b in bad_dirs])

        def stuck():
            return call(d.socket, "io.batchd.GetInfo")["parameters"].get("stuck")

        wait_for(lambda: stuck() == n_bad, 20, f"GetInfo stuck == {n_bad}")
        src = os.path.join(env.dir, "good.jsonl")
        write_jsonl(src, 3)
        os.chown(src, NOBODY, NOBODY)
        d.drop(src)
        wait_for(lambda: d.dir_entries("done") == ["good"], 10, "the good job in done/")
        check(stuck() == n_bad, f"stuck: {stuck()}")
        check(d.dir_entries("incoming") == bad_dirs, "the stuck entries stay in incoming/")
        logs = d.logs()
        for b in bad_dirs:
            k = logs.count(f"claim incoming/{b}:")
            check(k == 1, f"incoming/{b} is logged {k} times, not once")
        out = subprocess.run([os.path.join(other_uid_bin_dir(), "batchctl"), "-c", d.conf,
                              "status"], capture_output=True, text=True, timeout=20)
        check(f"{n_bad} stuck" in out.stdout, f"batchctl status: {out.stdout!r} {out.stderr!r}")
        # A clean exit: the stuck set is freed (a leak fails a sanitizer or valgrind build).
        rc = d.stop()
        check(rc == 0, f"batchd exited {rc}")


if __name__ == "__main__":
    tests = [test_same_size_edit_is_not_uploaded, test_extended_file_is_not_uploaded,
             test_truncated_file_is_not_uploaded, test_result_has_sha256_of_upload,
             test_longest_bare_name_in_skip_mode, test_longest_name_clash_in_done,
             test_stuck_entries_do_not_block]
    run(tests)
