#!/usr/bin/env python3
"""batchctl submit and validate, without the daemon: the real binary on temporary
directories. Runs $BATCHD_BUILD_DIR/batchctl (or $BATCHCTL)."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

from harness import binary, check, run

BATCHCTL = os.environ.get("BATCHCTL") or binary("batchctl")

TEMPLATE = {
    "dataset": {"schema": {"strict": True, "fields": {
        "prompt": {"type": "text"}, "response": {"type": "text"},
        "source": {"type": "metadata"}}}},
    "batch": {
        "task_details": {"task_name": "Rate", "task_introduction": "<p>i</p>",
                         "task_steps": "<ol><li>s</li></ol>"},
        "batch_items": [{"rows": [{"columns": [{"items": [
            {"type": "dataset_field", "field": "prompt"},
            {"type": "multiple_choice", "description": "Good?", "answer_limit": 1,
             "options": [{"label": "Yes", "value": "yes"}, {"label": "No", "value": "no"}]}]}]}]}],
    },
}
GOOD = '{"prompt": "p", "response": "r", "source": "s"}\n'

def eq(got, want, what=""):
    check(got == want, f"{what + ': ' if what else ''}got {got!r}, want {want!r}")


def ok(cond, what=""):
    check(cond, f"not true: {what!r}" if what else "not true")


def has(needle, hay):
    check(needle in hay, f"{needle!r} not in {hay!r}")


def matches(text, regex):
    check(re.search(regex, text), f"{text!r} does not match {regex!r}")


class Scratch:
    """A temporary directory with a template, a config and a spool path; removed again on
    exit, also when a test fails."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="batchctl-offline.")
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(os.path.join(self.dir, "templates"))
        self.write("templates/default.json", json.dumps(TEMPLATE))
        self.conf = self.write("batchd.conf", "\n".join([
            "[api]", "workspace_id = 6278acb09062db3b35bcbeb0",
            "[spool]", "dir = " + self.spool,
            "[job]", "template = " + os.path.join(self.dir, "templates/default.json"), ""]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        for root, dirs, files in os.walk(self.dir):
            for n in dirs + files:
                p = os.path.join(root, n)
                if not os.path.islink(p):
                    os.chmod(p, 0o700)
        shutil.rmtree(self.dir)

    def write(self, rel, data, mode=None):
        p = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
        if mode is not None:
            os.chmod(p, mode)
        return p

    def run_ctl(self, *args, conf=True, env=None):
        cmd = [BATCHCTL] + (["-c", self.conf] if conf else []) + list(args)
        e = dict(os.environ)
        e.pop("BATCHD_CONFIG", None)
        if env:
            e.update(env)
        return subprocess.run(cmd, capture_output=True, text=True, env=e, timeout=120)

    def incoming(self):
        return sorted(os.listdir(os.path.join(self.spool, "incoming")))


# ---- validate ----

def test_validate_valid_job_dir_and_bare_file():
    with Scratch() as t:
        t.write("j/data.jsonl", GOOD * 3)
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 0, p.stdout + p.stderr)
        eq(p.stdout, "")
        bare = t.write("loose.csv", "prompt,response,source\na,b,c\n")
        p = t.run_ctl("--json", "validate", bare)
        eq(p.returncode, 0, p.stdout + p.stderr)
        out = json.loads(p.stdout)
        ok(out["valid"])
        eq(out["records"], 1)
        eq(out["errors"], [])


def test_validate_record_problems_one_per_line():
    with Scratch() as t:
        # 2: missing key, 3: an array, 4: a number, 5: fine, 6: invalid UTF-8
        data = t.write("j/data.jsonl", (GOOD + '{"prompt": "p"}\n[1, 2]\n42\n' + GOOD).encode()
                       + b'{"prompt": "\xc3\x28", "response": "r", "source": "s"}\n')
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 65, p.stderr)
        lines = p.stdout.splitlines()
        ok(any(l.startswith(data + ":2: response: ") for l in lines), lines)
        ok(any(l.startswith(data + ":3: ") for l in lines), lines)
        ok(any(l.startswith(data + ":4: ") for l in lines), lines)
        ok(any(l.startswith(data + ":6: ") and "UTF-8" in l for l in lines), lines)
        for l in lines:
            matches(l, r"^.+:\d+: .+$")


def test_validate_manifest_problems():
    with Scratch() as t:
        t.write("j/data.jsonl", GOOD)
        t.write("j/job.json", json.dumps({"batch": {"batch_items": [{"rows": [{"columns": [
            {"items": [{"type": "dataset_field", "field": "source"}]}]}]}]}}))
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 65)
        has("job.json: batch.batch_items[0].rows[0].columns[0].items[0]", p.stdout)
        t.write("j/job.json", '{\n "batch": {\n  "name": "x",\n }\n}\n')
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 65)
        matches(p.stdout, r"^job\.json:4:\d+: malformed JSON")
        t.write("j/job.json", '{"template": "nosuch"}')
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 65)
        has('unknown template "nosuch"', p.stdout)


def test_validate_file_problems():
    with Scratch() as t:
        t.write("j/a.jsonl", GOOD)
        t.write("j/b.csv", "prompt\nx\n")
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 65)
        has("2 data files (a.jsonl, b.csv)", p.stdout)
        empty = t.write("empty.jsonl", "")
        p = t.run_ctl("validate", empty)
        eq(p.returncode, 65)
        has("is empty", p.stdout)
        locked = t.write("locked.jsonl", GOOD, mode=0)
        p = t.run_ctl("validate", locked)
        eq(p.returncode, 66)
        # Root may open any file, so batchd looks at the mode itself; anyone else is refused
        # by open(2) first.
        has("has no read permission" if os.geteuid() == 0 else "cannot be read: Permission denied",
            p.stdout)
        p = t.run_ctl("validate", os.path.join(t.dir, "missing.jsonl"))
        eq(p.returncode, 66)


def test_validate_csv_ragged_newlines_bom():
    with Scratch() as t:
        f = t.write("d.csv", '\ufeffprompt,response,source\r\n"multi\nline",b,c\r\nshort\r\n')
        p = t.run_ctl("validate", f)
        eq(p.returncode, 65, p.stdout + p.stderr)
        eq(len(p.stdout.splitlines()), 1, p.stdout)
        ok(p.stdout.startswith(f + ":4: "), p.stdout)


def test_validate_long_line_and_binary():
    with Scratch() as t:
        f = t.write("big.jsonl", '{"prompt": "' + "a" * (10 * 1024 * 1024) + '"}\n' + GOOD)
        p = t.run_ctl("validate", f)
        eq(p.returncode, 65)
        ok(p.stdout.startswith(f + ":1: "), p.stdout[:200])
        b = t.write("bin.jsonl", bytes(range(256)) * 64)
        p = t.run_ctl("validate", b)
        eq(p.returncode, 65)


def test_validate_without_config_uses_defaults():
    with Scratch() as t:
        t.write("j/data.jsonl", GOOD)
        # No config: no templates directory either, so job.json carries the whole job (job.json
        # may name a template, never give a path to one: see batchd(8)).
        with open(os.path.join(t.dir, "templates/default.json")) as f:
            spec = json.load(f)
        spec["workspace_id"] = "abc"
        t.write("j/job.json", json.dumps(spec))
        p = t.run_ctl("validate", os.path.join(t.dir, "j"), conf=False,
                         env={"BATCHD_CONFIG": os.path.join(t.dir, "absent.conf")})
        eq(p.returncode, 0, p.stdout + p.stderr)


def test_validate_bad_config():
    with Scratch() as t:
        t.write("batchd.conf", "[api]\nbogus = 1\n")
        t.write("j/data.jsonl", GOOD)
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 78)
        has("batchd.conf:2: unknown key 'bogus'", p.stderr)


def test_validate_skip_mode_writes_nothing():
    with Scratch() as t:
        with open(t.conf, "a") as f:
            f.write("invalid_records = skip\n")
        t.write("j/data.jsonl", GOOD + '{"prompt": 1}\n')
        p = t.run_ctl("validate", os.path.join(t.dir, "j"))
        eq(p.returncode, 0, p.stdout + p.stderr)
        has(":2: ", p.stdout)
        eq(sorted(os.listdir(os.path.join(t.dir, "j"))), ["data.jsonl"])

# ---- submit ----

def test_submit_file_and_dir():
    with Scratch() as t:
        f = t.write("prompts.jsonl", GOOD)
        p = t.run_ctl("submit", f)
        eq(p.returncode, 0, p.stderr)
        eq(p.stdout, "prompts\n")
        t.write("job1/data.jsonl", GOOD)
        t.write("job1/job.json", "{}")
        t.write("job1/.swp", "ignored")
        p = t.run_ctl("--json", "submit", os.path.join(t.dir, "job1"))
        eq(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        eq(out["job"], "job1")
        eq(out["path"], os.path.join(t.spool, "incoming", "job1"))
        eq(t.incoming(), ["job1", "prompts.jsonl"])
        eq(sorted(os.listdir(out["path"])), ["data.jsonl", "job.json"])
        with open(os.path.join(out["path"], "data.jsonl")) as fh:
            eq(fh.read(), GOOD)
        # nothing left behind in tmp/
        eq(os.listdir(os.path.join(t.spool, "tmp")), [])
        # the source is untouched
        ok(os.path.exists(f))


def test_submit_name_clash_gets_suffix():
    with Scratch() as t:
        f = t.write("p.csv", "prompt,response,source\na,b,c\n")
        names = [t.run_ctl("submit", f, "--name", "same").stdout.strip() for _ in range(3)]
        eq(names, ["same", "same-2", "same-3"])
        eq(t.incoming(), ["same-2.csv", "same-3.csv", "same.csv"])


def test_submit_names():
    with Scratch() as t:
        f = t.write("p.jsonl", GOOD)
        for good in ["with space", "ünïcødé ✓", "a" * 200]:
            p = t.run_ctl("submit", f, "--name", good)
            eq(p.returncode, 0, p.stderr)
            eq(p.stdout, good + "\n")
            has(good + ".jsonl", t.incoming())
        for bad in ["a\nb", ".hidden", "a/b", "", "a" * 201, "tab\there"]:
            p = t.run_ctl("submit", f, "--name", bad)
            eq(p.returncode, 65, bad)
            has("--name", p.stderr)
        eq(len(t.incoming()), 3)


def test_submit_refuses_odd_sources():
    with Scratch() as t:
        t.write("j/data.jsonl", GOOD)
        os.symlink(os.path.join(t.dir, "j/data.jsonl"), os.path.join(t.dir, "j/link.jsonl"))
        p = t.run_ctl("submit", os.path.join(t.dir, "j"))
        eq(p.returncode, 65)
        has("link.jsonl is not a regular file", p.stderr)
        p = t.run_ctl("submit", t.write("notes.txt", "x"))
        eq(p.returncode, 65)
        p = t.run_ctl("submit", os.path.join(t.dir, "nope.jsonl"))
        eq(p.returncode, 66)
        p = t.run_ctl("submit")
        eq(p.returncode, 64)
        ok(not (os.path.exists(os.path.join(t.spool, "incoming")) and t.incoming()))


if __name__ == "__main__":
    if not os.access(BATCHCTL, os.X_OK):
        print("batchctl not built at " + BATCHCTL, file=sys.stderr)
        sys.exit(1)
    run([test_validate_valid_job_dir_and_bare_file, test_validate_record_problems_one_per_line,
         test_validate_manifest_problems, test_validate_file_problems,
         test_validate_csv_ragged_newlines_bom, test_validate_long_line_and_binary,
         test_validate_without_config_uses_defaults, test_validate_bad_config,
         test_validate_skip_mode_writes_nothing, test_submit_file_and_dir,
         test_submit_name_clash_gets_suffix, test_submit_names, test_submit_refuses_odd_sources])
