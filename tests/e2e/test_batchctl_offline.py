#!/usr/bin/env python3
"""batchctl submit and validate, without the daemon: the real binary on temporary
directories. Runs $BATCHD_BUILD_DIR/batchctl (or $BATCHCTL)."""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import unittest

BUILD = os.environ.get("BATCHD_BUILD_DIR", os.path.join(os.path.dirname(__file__), "../../build"))
BATCHCTL = os.environ.get("BATCHCTL", os.path.join(BUILD, "batchctl"))
SOURCE = os.environ.get("BATCHD_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "../.."))

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


class Offline(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="batchctl-offline.")
        self.spool = os.path.join(self.dir, "spool")
        os.makedirs(os.path.join(self.dir, "templates"))
        self.write("templates/default.json", json.dumps(TEMPLATE))
        self.conf = self.write("batchd.conf", "\n".join([
            "[api]", "workspace_id = 6278acb09062db3b35bcbeb0",
            "[spool]", "dir = " + self.spool,
            "[job]", "template = " + os.path.join(self.dir, "templates/default.json"), ""]))

    def tearDown(self):
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

    # ---- validate ----

    def test_validate_valid_job_dir_and_bare_file(self):
        self.write("j/data.jsonl", GOOD * 3)
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertEqual(p.stdout, "")
        bare = self.write("loose.csv", "prompt,response,source\na,b,c\n")
        p = self.run_ctl("--json", "validate", bare)
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        out = json.loads(p.stdout)
        self.assertTrue(out["valid"])
        self.assertEqual(out["records"], 1)
        self.assertEqual(out["errors"], [])

    def test_validate_record_problems_one_per_line(self):
        # 2: missing key, 3: an array, 4: a number, 5: fine, 6: invalid UTF-8
        data = self.write("j/data.jsonl", (GOOD + '{"prompt": "p"}\n[1, 2]\n42\n' + GOOD).encode()
                          + b'{"prompt": "\xc3\x28", "response": "r", "source": "s"}\n')
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 65, p.stderr)
        lines = p.stdout.splitlines()
        self.assertTrue(any(l.startswith(data + ":2: response: ") for l in lines), lines)
        self.assertTrue(any(l.startswith(data + ":3: ") for l in lines), lines)
        self.assertTrue(any(l.startswith(data + ":4: ") for l in lines), lines)
        self.assertTrue(any(l.startswith(data + ":6: ") and "UTF-8" in l for l in lines), lines)
        for l in lines:
            self.assertRegex(l, r"^.+:\d+: .+$")

    def test_validate_manifest_problems(self):
        self.write("j/data.jsonl", GOOD)
        self.write("j/job.json", json.dumps({"batch": {"batch_items": [{"rows": [{"columns": [
            {"items": [{"type": "dataset_field", "field": "source"}]}]}]}]}}))
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 65)
        self.assertIn("job.json: batch.batch_items[0].rows[0].columns[0].items[0]", p.stdout)
        self.write("j/job.json", '{\n "batch": {\n  "name": "x",\n }\n}\n')
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 65)
        self.assertRegex(p.stdout, r"^job\.json:4:\d+: malformed JSON")
        self.write("j/job.json", '{"template": "nosuch"}')
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 65)
        self.assertIn('unknown template "nosuch"', p.stdout)

    def test_validate_file_problems(self):
        self.write("j/a.jsonl", GOOD)
        self.write("j/b.csv", "prompt\nx\n")
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 65)
        self.assertIn("2 data files (a.jsonl, b.csv)", p.stdout)
        empty = self.write("empty.jsonl", "")
        p = self.run_ctl("validate", empty)
        self.assertEqual(p.returncode, 65)
        self.assertIn("is empty", p.stdout)
        locked = self.write("locked.jsonl", GOOD, mode=0)
        p = self.run_ctl("validate", locked)
        self.assertEqual(p.returncode, 66)
        self.assertIn("read permission", p.stdout)
        p = self.run_ctl("validate", os.path.join(self.dir, "missing.jsonl"))
        self.assertEqual(p.returncode, 66)

    def test_validate_csv_ragged_newlines_bom(self):
        f = self.write("d.csv", '\ufeffprompt,response,source\r\n"multi\nline",b,c\r\nshort\r\n')
        p = self.run_ctl("validate", f)
        self.assertEqual(p.returncode, 65, p.stdout + p.stderr)
        self.assertEqual(len(p.stdout.splitlines()), 1, p.stdout)
        self.assertTrue(p.stdout.startswith(f + ":4: "), p.stdout)

    def test_validate_long_line_and_binary(self):
        f = self.write("big.jsonl", '{"prompt": "' + "a" * (10 * 1024 * 1024) + '"}\n' + GOOD)
        p = self.run_ctl("validate", f)
        self.assertEqual(p.returncode, 65)
        self.assertTrue(p.stdout.startswith(f + ":1: "), p.stdout[:200])
        b = self.write("bin.jsonl", bytes(range(256)) * 64)
        p = self.run_ctl("validate", b)
        self.assertEqual(p.returncode, 65)

    def test_validate_without_config_uses_defaults(self):
        self.write("j/data.jsonl", GOOD)
        # No config: no templates directory either, so job.json carries the whole job (job.json
        # may name a template, never give a path to one: see batchd(8)).
        with open(os.path.join(self.dir, "templates/default.json")) as f:
            spec = json.load(f)
        spec["workspace_id"] = "abc"
        self.write("j/job.json", json.dumps(spec))
        p = self.run_ctl("validate", os.path.join(self.dir, "j"), conf=False,
                         env={"BATCHD_CONFIG": os.path.join(self.dir, "absent.conf")})
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)

    def test_validate_bad_config(self):
        self.write("batchd.conf", "[api]\nbogus = 1\n")
        self.write("j/data.jsonl", GOOD)
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 78)
        self.assertIn("batchd.conf:2: unknown key 'bogus'", p.stderr)

    def test_validate_skip_mode_writes_nothing(self):
        with open(self.conf, "a") as f:
            f.write("invalid_records = skip\n")
        self.write("j/data.jsonl", GOOD + '{"prompt": 1}\n')
        p = self.run_ctl("validate", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 0, p.stdout + p.stderr)
        self.assertIn(":2: ", p.stdout)
        self.assertEqual(sorted(os.listdir(os.path.join(self.dir, "j"))), ["data.jsonl"])

    # ---- submit ----

    def incoming(self):
        return sorted(os.listdir(os.path.join(self.spool, "incoming")))

    def test_submit_file_and_dir(self):
        f = self.write("prompts.jsonl", GOOD)
        p = self.run_ctl("submit", f)
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertEqual(p.stdout, "prompts\n")
        self.write("job1/data.jsonl", GOOD)
        self.write("job1/job.json", "{}")
        self.write("job1/.swp", "ignored")
        p = self.run_ctl("--json", "submit", os.path.join(self.dir, "job1"))
        self.assertEqual(p.returncode, 0, p.stderr)
        out = json.loads(p.stdout)
        self.assertEqual(out["job"], "job1")
        self.assertEqual(out["path"], os.path.join(self.spool, "incoming", "job1"))
        self.assertEqual(self.incoming(), ["job1", "prompts.jsonl"])
        self.assertEqual(sorted(os.listdir(out["path"])), ["data.jsonl", "job.json"])
        with open(os.path.join(out["path"], "data.jsonl")) as fh:
            self.assertEqual(fh.read(), GOOD)
        # nothing left behind in tmp/
        self.assertEqual(os.listdir(os.path.join(self.spool, "tmp")), [])
        # the source is untouched
        self.assertTrue(os.path.exists(f))

    def test_submit_name_clash_gets_suffix(self):
        f = self.write("p.csv", "prompt,response,source\na,b,c\n")
        names = [self.run_ctl("submit", f, "--name", "same").stdout.strip() for _ in range(3)]
        self.assertEqual(names, ["same", "same-2", "same-3"])
        self.assertEqual(self.incoming(), ["same-2.csv", "same-3.csv", "same.csv"])

    def test_submit_names(self):
        f = self.write("p.jsonl", GOOD)
        for good in ["with space", "ünïcødé ✓", "a" * 200]:
            p = self.run_ctl("submit", f, "--name", good)
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertEqual(p.stdout, good + "\n")
            self.assertIn(good + ".jsonl", self.incoming())
        for bad in ["a\nb", ".hidden", "a/b", "", "a" * 201, "tab\there"]:
            p = self.run_ctl("submit", f, "--name", bad)
            self.assertEqual(p.returncode, 65, bad)
            self.assertIn("--name", p.stderr)
        self.assertEqual(len(self.incoming()), 3)

    def test_submit_refuses_odd_sources(self):
        self.write("j/data.jsonl", GOOD)
        os.symlink(os.path.join(self.dir, "j/data.jsonl"), os.path.join(self.dir, "j/link.jsonl"))
        p = self.run_ctl("submit", os.path.join(self.dir, "j"))
        self.assertEqual(p.returncode, 65)
        self.assertIn("link.jsonl is not a regular file", p.stderr)
        p = self.run_ctl("submit", self.write("notes.txt", "x"))
        self.assertEqual(p.returncode, 65)
        p = self.run_ctl("submit", os.path.join(self.dir, "nope.jsonl"))
        self.assertEqual(p.returncode, 66)
        p = self.run_ctl("submit")
        self.assertEqual(p.returncode, 64)
        self.assertFalse(os.path.exists(os.path.join(self.spool, "incoming")) and self.incoming())


if __name__ == "__main__":
    if not os.access(BATCHCTL, os.X_OK):
        print("batchctl not built at " + BATCHCTL, file=sys.stderr)
        sys.exit(1)
    unittest.main(verbosity=2)
