"""End to end: producers are semi-trusted (PRODUCT.md §9 "Producers"). What was validated is
what is uploaded: a data file changed in active/ after validation never completes its upload
and fails the job; entries batchd cannot claim never block the others; names of any length
get derived names that fit."""

import json
import os
import subprocess

from harness import Env, check, run, wait_for

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


def changed_after_validation(edit, how):
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
        wait_for(lambda: d.dir_entries("failed") == ["edited"], 30, "the job in failed/")
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


def test_same_size_edit_is_not_uploaded():
    changed_after_validation(edit_same_size, "SHA-256 differs")


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


if __name__ == "__main__":
    run([test_same_size_edit_is_not_uploaded, test_extended_file_is_not_uploaded,
         test_truncated_file_is_not_uploaded, test_result_has_sha256_of_upload])
