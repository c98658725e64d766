"""End to end: bad input dropped into a running batchd. Every invalid job lands in failed/
with an error.json (batchd(8), RESULTS) naming the right line, field or JSON path, costs no API
request, keeps its files byte for byte, and the daemon stays up and keeps processing valid
jobs. Also: odd but valid input (CSV with a BOM and quoted newlines, names with spaces or
unicode) reaches READY, invalid_records = skip, and 10,000 entries dropped at once.

One daemon serves all the bad-input cases (as in production, they arrive one after another
into the same spool); each case is its own named test."""

import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
import time

from harness import TSAN, Env, Skipped, check, run_tests, skipped, wait_for, wait_progress

ERROR_KEYS = {"job", "id", "state", "stage", "code", "message", "errors", "http_status",
              "api_error", "dataset_id", "batch_id", "at"}
DUMP = []
AT_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")

GOOD_ROWS = [{"prompt": f"prompt {i}", "response": f"answer {i}"} for i in range(3)]


def jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


# The default template's layout, used by job.json files that replace batch_items.
def layout(*items):
    return [{"rows": [{"columns": [{"items": list(items)}]}]}]


SHOW_PROMPT = {"type": "dataset_field", "field": "prompt"}
SCHEMA = {"strict": True, "fields": {"prompt": {"type": "text"}, "response": {"type": "text"}}}


# ---- file trees: what a producer dropped, hashed without following anything ----

def tree(path):
    """{relative path: description} of everything under path (lstat only, never follows)."""
    out = {}

    def describe(p):
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(p))
        if stat.S_ISFIFO(st.st_mode):
            return ("fifo", stat.S_IMODE(st.st_mode))
        if stat.S_ISDIR(st.st_mode):
            return ("dir", None)
        mode = stat.S_IMODE(st.st_mode)
        h = hashlib.sha256()
        # Mode 000 files are read as root here (the tests run as any user: chmod back if not).
        try:
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        except PermissionError:
            os.chmod(p, 0o600)
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
            os.chmod(p, mode)
        return ("file", mode, st.st_size, h.hexdigest())

    if not os.path.isdir(path) or os.path.islink(path):
        out[""] = describe(path)
        return out
    for root, dirs, files in os.walk(path):
        for n in dirs + files:
            p = os.path.join(root, n)
            out[os.path.relpath(p, path)] = describe(p)
    return out


class Case:
    """One bad (or odd) input: built in src/, hashed, dropped, then checked."""

    def __init__(self, name, entry, expect):
        self.name = name      # job name
        self.entry = entry    # name in incoming/
        self.expect = expect  # callable(case, env, err) doing the case's own checks
        self.before = None


def error_json_ok(env, name, code, stage):
    d = env.daemon
    err = d.error(name)
    # batchd(8) RESULTS' keys, all of them; the job record may name more remote resources
    # (workspace_id, import_id) and counts, never fewer.
    check(ERROR_KEYS <= set(err), f"{name}: error.json lacks {sorted(ERROR_KEYS - set(err))}")
    DUMP.append(err)
    check(err["job"] == name, f"{name}: job {err['job']!r}")
    check(err["state"] == "failed", f"{name}: state {err['state']!r}")
    check(err["code"] == code, f"{name}: code {err['code']!r}, expected {code!r}: {err}")
    check(err["stage"] == stage, f"{name}: stage {err['stage']!r}, expected {stage!r}")
    check(isinstance(err["message"], str) and err["message"], f"{name}: empty message")
    check(isinstance(err["errors"], list), f"{name}: errors is not a list")
    for k in ("http_status", "api_error", "dataset_id", "batch_id"):
        check(err[k] is None, f"{name}: {k} = {err[k]!r}, expected null")
    check(isinstance(err["id"], str) and len(err["id"]) >= 20, f"{name}: id {err['id']!r}")
    check(AT_RE.match(err["at"] or ""), f"{name}: at {err['at']!r}")
    return err


def has_error(err, **want):
    """True when some entry of err.errors has every key in want (message: a substring)."""
    for e in err["errors"]:
        ok = True
        for k, v in want.items():
            if k == "message":
                ok = ok and isinstance(e.get("message"), str) and v.lower() in e["message"].lower()
            else:
                ok = ok and e.get(k) == v
        if ok:
            return True
    return False


def need(err, **want):
    check(has_error(err, **want), f"{err['job']}: no error with {want}: {err['errors']}")


# ---- the shared daemon ----

class Shared:
    env = None
    src = None
    requests_before = 0


def env():
    return Shared.env


def api_requests():
    return len(Shared.env.sim.state()["requests"])


def write(path, data, mode=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())
    if mode is not None:
        os.chmod(path, mode)


def job_dir(name, job=None, files=None):
    """src/NAME/ with job.json (dict, or raw text/bytes) and files {name: bytes}."""
    p = os.path.join(Shared.src, name)
    os.makedirs(p)
    if job is not None:
        text = job if isinstance(job, (str, bytes)) else json.dumps(job, indent=1)
        write(os.path.join(p, "job.json"), text)
    for fn, data in (files or {}).items():
        write(os.path.join(p, fn), data)
    return p


def bare(fn, data, mode=None):
    p = os.path.join(Shared.src, fn)
    write(p, data, mode)
    return p


def drop_and_fail(src, entry, name, code="invalid_job", stage="validating", move=False):
    """Drops src as incoming/entry, waits for failed/name, checks error.json, the files and
    that no API request was spent. Returns error.json."""
    d = env().daemon
    before = tree(src)
    n_req = api_requests()
    if move:
        os.rename(src, os.path.join(d.spool, "incoming", entry))
    else:
        d.drop(src, entry)
    wait_for(lambda: os.path.exists(os.path.join(d.spool, "failed", name, "error.json")), 20,
             f"failed/{name}/error.json")
    check(entry not in d.dir_entries("incoming"), f"{entry} still in incoming/")
    check(name not in d.dir_entries("active") and name not in d.dir_entries("done"),
          f"{name} also in active/ or done/")
    err = error_json_ok(env(), name, code, stage)
    # The job's own files, byte for byte, nothing deleted (a bare file sits in the job dir).
    after = tree(os.path.join(d.spool, "failed", name))
    after.pop("error.json")
    if "" in before:
        check(after == {entry: before[""]}, f"{name}: files changed: {before} -> {after}")
    else:
        check(after == before, f"{name}: files changed:\n{before}\n->\n{after}")
    check(api_requests() == n_req, f"{name}: API requests were spent on an invalid job")
    check(env().daemon.proc.poll() is None, "batchd exited")
    # The job is known to the control socket as failed, with the same id. A rejected entry is
    # in failed/ as soon as its claim batch has run on the pool; the job is listed once the
    # claim's end reaches the loop, a moment later.
    jobs = wait_for(lambda: [j for j in d.jobs(["failed"]) if j["name"] == name], 10,
                    f"{name} listed as failed")
    check(len(jobs) == 1 and jobs[0]["id"] == err["id"], f"{name}: ListJobs {jobs}")
    return err


# ---- manifest and template cases ----

def test_malformed_job_json():
    p = job_dir("badjson", '{"dataset": {"name": "x",\n  "file": "data.jsonl"\n',
                {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "badjson", "badjson")
    check(any(e.get("file") == "job.json" and isinstance(e.get("line"), int) and e["line"] >= 2
              for e in err["errors"]), f"job.json syntax error without file/line: {err}")
    check("job.json" in err["message"], err["message"])


def test_job_json_not_object():
    p = job_dir("jobarray", "[1, 2]", {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "jobarray", "jobarray")
    check(any(e.get("file") == "job.json" for e in err["errors"]), err)


def test_unknown_template():
    p = job_dir("notemplate", {"template": "no-such-template"}, {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "notemplate", "notemplate")
    check("no-such-template" in json.dumps(err["errors"]) + err["message"],
          f"the missing template is not named: {err}")
    need(err, path="template")


def test_template_cycle():
    tdir = os.path.join(env().dir, "templates")
    write(os.path.join(tdir, "cyc-a.json"), json.dumps({"template": "cyc-b"}))
    write(os.path.join(tdir, "cyc-b.json"), json.dumps({"template": "cyc-a"}))
    p = job_dir("cycle", {"template": "cyc-a"}, {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "cycle", "cycle")
    check("cycle" in (err["message"] + json.dumps(err["errors"])).lower()
          or "loop" in (err["message"] + json.dumps(err["errors"])).lower(),
          f"the cycle is not named: {err}")
    check("cyc-a" in json.dumps(err["errors"]), err)


def test_template_broken_json():
    tdir = os.path.join(env().dir, "templates")
    write(os.path.join(tdir, "broken.json"), '{"batch": {"tasks_per_group": 2,,}}')
    p = job_dir("brokentpl", {"template": "broken"}, {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "brokentpl", "brokentpl")
    check(any((e.get("file") or "").endswith("broken.json") and e.get("line") == 1
              for e in err["errors"]), f"template syntax error without file/line: {err}")


def schema_case(name, job, path, message=None):
    p = job_dir(name, job, {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, name, name)
    want = {"path": path}
    if message:
        want["message"] = message
    need(err, **want)
    check(path in err["message"], f"{name}: the message does not name {path}: {err['message']}")
    return err


def test_schema_unknown_field_type():
    schema_case("s-type", {"dataset": {"schema": {"strict": True, "fields": {
        "prompt": {"type": "number"}, "response": {"type": "text"}}}}},
        "dataset.schema.fields.prompt.type", "number")


def test_schema_two_task_group_ids():
    schema_case("s-tgid", {"dataset": {"schema": {"strict": True, "fields": {
        "prompt": {"type": "text"}, "response": {"type": "text"},
        "a": {"type": "task_group_id"}, "b": {"type": "task_group_id"}}}}},
        "dataset.schema.fields.b.type", "task_group_id")


def test_schema_strict_not_boolean():
    schema_case("s-strict", {"dataset": {"schema": {"strict": "yes", "fields": SCHEMA["fields"]}}},
                "dataset.schema.strict")


def test_schema_no_fields():
    schema_case("s-nofields", {"dataset": {"schema": {"strict": True, "fields": {}}}},
                "dataset.schema.fields")


def test_dataset_field_unknown():
    schema_case("df-unknown", {"batch": {"batch_items": layout(
        {"type": "dataset_field", "field": "nope"})}},
        "batch.batch_items[0].rows[0].columns[0].items[0].field", "nope")


def test_dataset_field_metadata():
    schema_case("df-metadata", {
        "dataset": {"schema": {"strict": True, "fields": {
            "prompt": {"type": "text"}, "response": {"type": "text"},
            "source": {"type": "metadata"}}}},
        "batch": {"batch_items": layout(SHOW_PROMPT, {"type": "dataset_field",
                                                     "field": "source"})}},
        "batch.batch_items[0].rows[0].columns[0].items[1].field", "metadata")


def test_answer_limit_too_big():
    schema_case("answer-limit", {"batch": {"batch_items": layout(
        SHOW_PROMPT,
        {"type": "multiple_choice", "description": "Pick", "answer_limit": 3,
         "options": [{"label": "A", "value": "a"}, {"label": "B", "value": "b"}]})}},
        "batch.batch_items[0].rows[0].columns[0].items[1].answer_limit")


def test_item_missing_required():
    schema_case("mc-nooptions", {"batch": {"batch_items": layout(
        SHOW_PROMPT, {"type": "multiple_choice", "description": "Pick", "answer_limit": 1})}},
        "batch.batch_items[0].rows[0].columns[0].items[1].options")


def test_item_unknown_type():
    schema_case("item-type", {"batch": {"batch_items": layout(
        SHOW_PROMPT, {"type": "slider", "description": "How much?"})}},
        "batch.batch_items[0].rows[0].columns[0].items[1].type", "slider")


def test_three_columns():
    col = {"items": [SHOW_PROMPT]}
    schema_case("columns", {"batch": {"batch_items": [{"rows": [{"columns": [col, col, col]}]}]}},
                "batch.batch_items[0].rows[0].columns")


def test_task_details_missing():
    schema_case("no-task-name", {"batch": {"task_details": {
        "task_introduction": "<p>x</p>", "task_steps": "<ol></ol>"}}},
        "batch.task_details.task_name")


def test_tasks_per_group_zero():
    schema_case("tpg-zero", {"batch": {"tasks_per_group": 0}}, "batch.tasks_per_group")


def test_workspace_id_wrong_type():
    schema_case("ws-type", {"workspace_id": 42}, "workspace_id")


def test_job_json_fifo():
    p = job_dir("jobfifo", None, {"data.jsonl": jsonl(GOOD_ROWS)})
    os.mkfifo(os.path.join(p, "job.json"))
    err = drop_and_fail(p, "jobfifo", "jobfifo", move=True)
    need(err, file="job.json", message="regular file")


def test_job_json_too_big():
    p = job_dir("jobbig", '{"batch": {"name": "' + "x" * (2 << 20) + '"}}',
                {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "jobbig", "jobbig")
    need(err, file="job.json", message="larger")


def test_two_data_files_no_job_json():
    p = job_dir("twofiles", None, {"a.jsonl": jsonl(GOOD_ROWS), "b.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "twofiles", "twofiles")
    text = err["message"] + json.dumps(err["errors"])
    check("a.jsonl" in text and "b.jsonl" in text, f"the two files are not named: {err}")
    need(err, path="dataset.file")


def test_no_data_file():
    p = job_dir("nodata", None, {"notes.txt": b"hello\n"})
    err = drop_and_fail(p, "nodata", "nodata")
    need(err, path="dataset.file")


def test_job_json_names_missing_file():
    p = job_dir("missingfile", {"dataset": {"file": "gone.jsonl"}}, {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "missingfile", "missingfile")
    check("gone.jsonl" in err["message"] + json.dumps(err["errors"]), err)


def test_job_json_file_escapes_dir():
    p = job_dir("escape", {"dataset": {"file": "../../../etc/passwd"}},
                {"data.jsonl": jsonl(GOOD_ROWS)})
    err = drop_and_fail(p, "escape", "escape")
    need(err, path="dataset.file")


def test_data_file_symlink_in_dir():
    p = job_dir("linkdata", None)
    os.symlink("/etc/passwd", os.path.join(p, "data.jsonl"))
    # Renamed, not copied: a copy would follow the link.
    err = drop_and_fail(p, "linkdata", "linkdata", move=True)
    check("link" in err["message"], err["message"])
    need(err, path="dataset.file", message="data.jsonl")


def test_data_file_fifo_in_dir():
    p = job_dir("fifodata", None)
    os.mkfifo(os.path.join(p, "data.jsonl"))
    err = drop_and_fail(p, "fifodata", "fifodata", move=True)
    check("FIFO" in err["message"] and "data.jsonl" in err["message"], err["message"])
    need(err, path="dataset.file", message="FIFO")


# ---- the data ----

def records_case(fn, data, line, field=None, message=None, mode=None, code="invalid_records"):
    name = fn.rsplit(".", 1)[0]
    p = bare(fn, data, mode)
    err = drop_and_fail(p, fn, name, code=code)
    if line is not None:
        want = {"line": line, "field": field}
        if message:
            want["message"] = message
        need(err, **want)
        check(f":{line}" in err["message"] or "record" in err["message"], err["message"])
    return err


def test_empty_file():
    err = records_case("empty.jsonl", b"", None)
    check("empty" in err["message"] and "empty.jsonl" in err["message"], err["message"])
    need(err, path="dataset.file", file="empty.jsonl", message="empty")


def test_only_blank_lines():
    err = records_case("blank.jsonl", b"\n\n  \n", None)
    check("no records" in err["message"] and ":0" not in err["message"], err["message"])
    need(err, path="dataset.file", file="blank.jsonl", message="no records")


def test_ten_megabyte_line():
    big = b'{"prompt": "' + b"x" * (10 << 20) + b'", "response": "r"}\n'
    records_case("bigline.jsonl", jsonl(GOOD_ROWS[:1]) + big + jsonl(GOOD_ROWS[1:]), 2)


def test_invalid_utf8():
    bad = b'{"prompt": "caf\xe9", "response": "r"}\n'
    records_case("latin1.jsonl", jsonl(GOOD_ROWS) + bad, 4, message="UTF-8")


def test_binary_file():
    data = bytes(range(256)) * 64 + b"\x00\x01\x02"
    records_case("binary.jsonl", data, 1)


def test_jsonl_array_line():
    records_case("array.jsonl", jsonl(GOOD_ROWS[:2]) + b'["prompt", "response"]\n', 3,
                 message="object")


def test_jsonl_number_line():
    records_case("number.jsonl", b"42\n" + jsonl(GOOD_ROWS), 1, message="object")


def test_jsonl_broken_json():
    records_case("broken.jsonl", jsonl(GOOD_ROWS) + b'{"prompt": "p", "response": \n', 4)


def test_jsonl_value_not_string():
    records_case("notstring.jsonl", jsonl(GOOD_ROWS) + b'{"prompt": 7, "response": "r"}\n', 4,
                 field="prompt")


def test_jsonl_missing_strict_field():
    records_case("missing.jsonl", b'\n' + jsonl(GOOD_ROWS) + b'{"prompt": "p"}\n', 5,
                 field="response", message="missing")


def test_jsonl_unknown_key():
    records_case("unknownkey.jsonl",
                 jsonl(GOOD_ROWS) + b'{"prompt": "p", "response": "r", "extra": "e"}\n', 4,
                 field="extra")


def test_jsonl_duplicate_key():
    records_case("dupkey.jsonl",
                 jsonl(GOOD_ROWS) + b'{"prompt": "a", "prompt": "b", "response": "r"}\n', 4,
                 field="prompt", message="more than once")


def test_csv_ragged():
    data = b"prompt,response\na,b\nc,d,e\nf\n"
    err = records_case("ragged.csv", data, 3)
    need(err, line=4)


def test_csv_bad_header():
    records_case("badheader.csv", b"prompt,answer\na,b\n", 1, field="answer")


def test_csv_unterminated_quote():
    records_case("openquote.csv", b'prompt,response\na,b\n"c,d\ne,f\n', 3)


def test_csv_error_after_embedded_newline():
    # Line numbers are physical lines: the record at line 2 spans lines 2-4.
    data = b'prompt,response\n"multi\nline\nprompt",r\nonly-one-column\n'
    records_case("nlthenbad.csv", data, 5)


def test_jsonl_bom():
    records_case("bom.jsonl", b"\xef\xbb\xbf" + jsonl(GOOD_ROWS), 1, message="byte-order mark")


def test_csv_header_only():
    err = records_case("headeronly.csv", b"prompt,response\n", None)
    need(err, path="dataset.file", file="headeronly.csv", message="header")


def test_image_url_not_http():
    job = {"dataset": {"schema": {"strict": True, "fields": {
        "prompt": {"type": "text"}, "picture": {"type": "image_url"}}}},
        "batch": {"batch_items": layout(SHOW_PROMPT, {"type": "dataset_field",
                                                     "field": "picture"})}}
    rows = [{"prompt": "p", "picture": "https://example.com/a.png"},
            {"prompt": "p", "picture": "ftp://example.com/b.png"}]
    p = job_dir("imgurl", job, {"data.jsonl": jsonl(rows)})
    err = drop_and_fail(p, "imgurl", "imgurl", code="invalid_records")
    need(err, line=2, field="picture")


def test_own_file_name_dropped():
    """incoming/rejected.jsonl: a name batchd writes itself; said so, never overwritten."""
    err = records_case("rejected.jsonl", jsonl(GOOD_ROWS), None, code="invalid_job")
    need(err, path="dataset.file", message="a name batchd writes itself")


def test_mode_000_file():
    """Root may open a mode 000 file, so batchd looks at the mode itself; any other uid is
    refused by open(2). Moved in, not copied: a test that is not root cannot read it."""
    p = bare("mode000.jsonl", jsonl(GOOD_ROWS), mode=0)
    err = drop_and_fail(p, "mode000.jsonl", "mode000", move=True)
    want = "has no read permission" if os.geteuid() == 0 else "cannot be read: Permission denied"
    check(want in err["message"], err["message"])
    need(err, path="dataset.file", file="mode000.jsonl", message=want)


def test_unsupported_extension():
    p = bare("notes.txt", b"hello\n")
    drop_and_fail(p, "notes.txt", "notes.txt", code="unsupported_entry", stage="queued")


def test_symlink_to_etc_passwd():
    link = os.path.join(Shared.src, "passwd.jsonl")
    os.symlink("/etc/passwd", link)
    err = drop_and_fail(link, "passwd.jsonl", "passwd", code="unsupported_entry",
                        stage="queued", move=True)
    check("link" in err["message"], err["message"])
    check(os.readlink(os.path.join(env().daemon.spool, "failed", "passwd",
                                   "passwd.jsonl")) == "/etc/passwd", "the link was changed")


def test_fifo_does_not_block():
    fifo = os.path.join(Shared.src, "pipe.jsonl")
    os.mkfifo(fifo)
    err = drop_and_fail(fifo, "pipe.jsonl", "pipe", code="unsupported_entry",
                        stage="queued", move=True)
    check("FIFO" in err["message"] or "fifo" in err["message"].lower(), err["message"])


def test_name_with_newline():
    p = bare("new\nline.jsonl", jsonl(GOOD_ROWS))
    drop_and_fail(p, "new\nline.jsonl", "new\nline", code="invalid_job", stage="queued")


def test_name_not_utf8():
    """A name that is not UTF-8: rejected, error.json valid UTF-8 with the name escaped, and
    the control socket still answers with valid JSON (the job listed by that name)."""
    d = env().daemon
    raw = b"caf\xe9.jsonl"
    p = os.path.join(Shared.src.encode(), raw)
    with open(p, "wb") as f:
        f.write(jsonl(GOOD_ROWS))
    os.rename(p, os.path.join(d.spool.encode(), b"incoming", raw))
    failed = os.path.join(d.spool.encode(), b"failed", b"caf\xe9")
    wait_for(lambda: os.path.exists(os.path.join(failed, b"error.json")), 20,
             "failed/caf\\xe9/error.json")
    with open(os.path.join(failed, b"error.json"), "rb") as f:
        err = json.loads(f.read().decode("utf-8"))
    check(err["job"] == "caf\\xe9" and err["code"] == "invalid_job", err)
    with open(os.path.join(failed, raw), "rb") as f:
        check(f.read() == jsonl(GOOD_ROWS), "the file changed")
    # Listed once the claim's end reaches the loop, a moment after failed/ has it.
    jobs = wait_for(lambda: [j for j in d.jobs(["failed"]) if j["name"] == "caf\\xe9"], 10,
                    "caf\\xe9 listed as failed")
    check(len(jobs) == 1 and jobs[0]["id"] == err["id"], f"ListJobs: {jobs}")


def test_no_api_request_so_far():
    """Every case above was rejected locally: the sim has seen nothing at all."""
    check(api_requests() == 0, f"{api_requests()} API requests for invalid jobs")
    check(env().daemon.proc.poll() is None, "batchd exited")
    check(env().daemon.dir_entries("incoming") == [], env().daemon.dir_entries("incoming"))
    check(env().daemon.dir_entries("active") == [], env().daemon.dir_entries("active"))


# ---- valid but odd input, after all the bad ----

def drop_and_ready(src, entry, name, records):
    d = env().daemon
    before = tree(src)
    d.drop(src, entry)
    wait_for(lambda: name in d.dir_entries("done") or name in d.dir_entries("failed"), 30,
             f"{name} finished")
    if name in d.dir_entries("failed"):
        raise AssertionError(f"{name} failed: {d.error(name)}")
    res = d.result(name)
    check(res["state"] == "ready" and res["records"] == records, f"{name}: {res}")
    after = tree(os.path.join(d.spool, "done", name))
    after.pop("result.json")
    if "" in before:
        before = {entry: before[""]}
    check(after == before, f"{name}: files changed:\n{before}\n->\n{after}")
    return res


def uploaded(env_, dataset_id):
    """The bytes the sim received for a dataset, if it keeps them; else None."""
    for ds in env_.sim.state()["datasets"]:
        if ds["id"] == dataset_id:
            return ds
    return None


def test_csv_bom_and_embedded_newlines_ready():
    data = ('\ufeffprompt,response\n"first, with comma",a\n"multi\nline\r\nprompt",'
            '"say ""hi"""\nplain,"b"\n').encode()
    p = bare("bomcsv.csv", data)
    res = drop_and_ready(p, "bomcsv.csv", "bomcsv", 3)
    check(res["total_task_count"] == 3, res)


def test_name_with_spaces_ready():
    p = bare("my job 1.jsonl", jsonl(GOOD_ROWS))
    res = drop_and_ready(p, "my job 1.jsonl", "my job 1", 3)
    check(res["job"] == "my job 1", res)
    ds = uploaded(env(), res["dataset_id"])
    check(ds is None or ds.get("name") == "my job 1", f"dataset name {ds and ds.get('name')}")


def test_name_with_unicode_ready():
    p = bare("überprüfung-数据-✓.jsonl", jsonl(GOOD_ROWS))
    res = drop_and_ready(p, "überprüfung-数据-✓.jsonl", "überprüfung-数据-✓", 3)
    check(res["job"] == "überprüfung-数据-✓", res)


def test_extension_any_case_ready():
    p = bare("Export.CSV", b"prompt,response\r\na,b\r\nc,d\r\n")
    drop_and_ready(p, "Export.CSV", "Export", 2)


def test_job_json_names_its_file():
    p = job_dir("named", {"dataset": {"file": "second.jsonl"}},
                {"first.jsonl": b"not json at all\n", "second.jsonl": jsonl(GOOD_ROWS * 2)})
    drop_and_ready(p, "named", "named", 6)


def test_still_up_after_everything():
    d = env().daemon
    check(d.proc.poll() is None, "batchd exited")
    info = __import__("harness").call(d.socket, "io.batchd.GetInfo")["parameters"]
    check(info["jobs"].get("failed", 0) >= 40, f"GetInfo jobs: {info['jobs']}")
    check(d.dir_entries("incoming") == [] and d.dir_entries("active") == [],
          "incoming/ and active/ are empty")


def test_pickup_latency():
    """A rename into incoming/ is noticed by its file event, not at the next rescan: with the
    rescan an hour away, each entry is claimed all the same (the latency is printed)."""
    with Env(extra_conf="spool.rescan_interval = 1h") as e:
        d = e.daemon
        worst = 0.0
        for i in range(5):
            p = bare(f"latency{i}.txt", b"x\n")
            os.rename(p, os.path.join(d.spool, "incoming", f"latency{i}.txt"))
            t0 = time.monotonic()
            wait_for(lambda i=i: f"latency{i}.txt" not in d.dir_entries("incoming"), 30,
                     "the entry to be claimed without a rescan", interval=0.001)
            worst = max(worst, time.monotonic() - t0)
        print(f"     pickup latency, worst of 5: {worst * 1000:.1f} ms", flush=True)


SHARED_TESTS = [
    test_malformed_job_json, test_job_json_not_object, test_unknown_template,
    test_template_cycle, test_template_broken_json, test_schema_unknown_field_type,
    test_schema_two_task_group_ids, test_schema_strict_not_boolean, test_schema_no_fields,
    test_dataset_field_unknown, test_dataset_field_metadata, test_answer_limit_too_big,
    test_item_missing_required, test_item_unknown_type, test_three_columns,
    test_task_details_missing, test_tasks_per_group_zero, test_workspace_id_wrong_type,
    test_job_json_fifo, test_job_json_too_big, test_two_data_files_no_job_json, test_no_data_file, test_job_json_names_missing_file,
    test_job_json_file_escapes_dir, test_data_file_symlink_in_dir, test_data_file_fifo_in_dir,
    test_empty_file, test_only_blank_lines, test_ten_megabyte_line, test_invalid_utf8,
    test_binary_file, test_jsonl_array_line, test_jsonl_number_line, test_jsonl_broken_json,
    test_jsonl_value_not_string, test_jsonl_missing_strict_field, test_jsonl_unknown_key,
    test_jsonl_duplicate_key,
    test_csv_ragged, test_csv_bad_header, test_csv_unterminated_quote,
    test_csv_error_after_embedded_newline, test_jsonl_bom, test_csv_header_only,
    test_image_url_not_http, test_own_file_name_dropped, test_mode_000_file, test_unsupported_extension,
    test_symlink_to_etc_passwd, test_fifo_does_not_block, test_name_with_newline,
    test_name_not_utf8, test_no_api_request_so_far,
    test_csv_bom_and_embedded_newlines_ready, test_name_with_spaces_ready,
    test_name_with_unicode_ready, test_extension_any_case_ready, test_job_json_names_its_file, test_pickup_latency,
    test_still_up_after_everything,
]


def shared_setup():
    Shared.env = Env()
    Shared.src = os.path.join(Shared.env.dir, "src")
    os.makedirs(Shared.src)


def shared_teardown(ok):
    e = Shared.env
    if os.environ.get("BATCHD_E2E_DUMP"):
        with open(os.environ["BATCHD_E2E_DUMP"], "w") as f:
            json.dump(DUMP, f, indent=1, ensure_ascii=False)
    if e:
        e.daemon.stop()
        e.assert_no_token_leak()
        e.ok = ok
        e.close()


# ---- own daemons ----

def test_skip_invalid_records():
    """invalid_records = skip: the valid records are uploaded as a cleaned file, the rejected
    ones written to rejected.jsonl with line and reason; the job is READY."""
    with Env(extra_conf="job.invalid_records = skip") as e:
        d = e.daemon
        src = os.path.join(e.dir, "src")
        rows = (jsonl(GOOD_ROWS[:2]) + b'{"prompt": 1, "response": "r"}\n' + b"\n"
                + jsonl(GOOD_ROWS[2:]) + b"[1]\n" + b'{"prompt": "p"}\n' + jsonl(GOOD_ROWS[:1]))
        p = os.path.join(src, "mixed.jsonl")
        write(p, rows)
        before = tree(p)[""]
        d.drop(p)
        wait_for(lambda: "mixed" in d.dir_entries("done") or "mixed" in d.dir_entries("failed"),
                 30, "mixed finished")
        check("mixed" in d.dir_entries("done"), f"mixed failed: {d.dir_entries('failed')}")
        res = d.result("mixed")
        check(res["records"] == 4 and res["total_task_count"] == 4, res)
        jd = os.path.join(d.spool, "done", "mixed")
        check(tree(os.path.join(jd, "mixed.jsonl"))[""] == before, "the original was changed")
        with open(os.path.join(jd, "rejected.jsonl")) as f:
            rej = [json.loads(x) for x in f]
        check([r["line"] for r in rej] == [3, 6, 7], f"rejected lines {rej}")
        check(rej[0]["errors"][0]["field"] == "prompt", rej[0])
        check(rej[2]["errors"][0]["field"] == "response", rej[2])
        check(rej[0]["record"] == '{"prompt": 1, "response": "r"}', rej[0])
        with open(os.path.join(jd, "mixed.cleaned.jsonl"), "rb") as f:
            cleaned = f.read()
        check(cleaned == jsonl(GOOD_ROWS[:2]) + jsonl(GOOD_ROWS[2:]) + jsonl(GOOD_ROWS[:1]),
              f"cleaned file {cleaned!r}")
        st = e.sim.state()
        check(len(st["datasets"]) == 1, st["datasets"])
        ups = [r for r in st["requests"] if r["endpoint"] == "upload"]
        check(len(ups) == 1, f"uploads: {ups}")
        # A job whose records are all bad still fails, naming every line.
        p = os.path.join(src, "allbad.jsonl")
        write(p, b"1\n2\n")
        d.drop(p)
        wait_for(lambda: "allbad" in d.dir_entries("failed"), 20, "allbad in failed/")
        err = error_json_ok(e, "allbad", "invalid_records", "validating")
        check(has_error(err, line=1) and has_error(err, line=2), err)
        check(len(e.sim.state()["datasets"]) == 1, "a dataset for the all-bad job")


def test_ten_thousand_entries():
    """10,000 entries renamed into incoming/ at once: every one ends in done/ or failed/
    exactly once, none lost, none claimed twice, incoming/ empty, the daemon up."""
    n_bad, n_good = 10000, 5
    with Env(extra_conf="job.max_active = 2000\nspool.rescan_interval = 1s") as e:
        d = e.daemon
        src = os.path.join(e.dir, "src")
        os.makedirs(src)
        names = []
        for i in range(n_bad):
            # Cheap: the first line is invalid, so validation fails without any API call.
            fn = f"bad{i:05d}.jsonl"
            with open(os.path.join(src, fn), "wb") as f:
                f.write(b"[]\n")
            names.append(fn)
        for i in range(n_good):
            fn = f"good{i}.jsonl"
            write(os.path.join(src, fn), jsonl(GOOD_ROWS))
            names.append(fn)
        t0 = time.monotonic()
        inc = os.path.join(d.spool, "incoming")
        for fn in names:
            os.rename(os.path.join(src, fn), os.path.join(inc, fn))
        total = n_bad + n_good

        def finished():
            return len(d.dir_entries("done")) + len(d.dir_entries("failed"))

        # Typically 40-60 s under ASan, much more on a loaded machine: it fails only if no
        # entry finishes for a minute.
        wait_progress(finished, total, 60, f"{total} jobs in done/ or failed/")
        took = time.monotonic() - t0
        done, failed = d.dir_entries("done"), d.dir_entries("failed")
        check(done == sorted(f"good{i}" for i in range(n_good)), f"done/: {done[:10]}")
        check(failed == sorted(f"bad{i:05d}" for i in range(n_bad)),
              f"failed/ has {len(failed)}, first {failed[:5]}")
        check(d.dir_entries("incoming") == [], "incoming/ not empty")
        check(d.dir_entries("active") == [], f"active/: {d.dir_entries('active')[:5]}")
        for i in (0, 4999, 9999):
            err = d.error(f"bad{i:05d}")
            check(err["code"] == "invalid_records" and has_error(err, line=1), err)
            files = sorted(os.listdir(os.path.join(d.spool, "failed", f"bad{i:05d}")))
            check(files == [f"bad{i:05d}.jsonl", "error.json"], files)
        # Claimed once each: one error.json per entry, each with its own id and its name.
        ids = set()
        for name in failed:
            err = d.error(name)
            check(err["job"] == name, f"{name}: error.json names {err['job']!r}")
            ids.add(err["id"])
        ids.update(d.result(name)["id"] for name in done)
        check(len(ids) == total, f"{total - len(ids)} duplicate job ids")
        jobs = d.jobs()  # the daemon may forget old finished jobs; those it lists are unique
        check(len({j["id"] for j in jobs}) == len(jobs), "ListJobs lists a job twice")
        st = e.sim.state()
        check(len(st["datasets"]) == n_good and len(st["batches"]) == n_good,
              f"{len(st['datasets'])} datasets")
        check(d.proc.poll() is None, "batchd exited")
        print(f"     {total} entries finished in {took:.1f}s", flush=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_big_file_memory():
    """Validating a 1 GiB JSONL keeps the daemon's RSS within 16 MiB of idle. About 10-20 s;
    BATCHD_E2E_BIG=0 skips it, and so does a temporary directory with less than 3 GiB free."""
    size = 1 << 30
    if os.environ.get("BATCHD_E2E_BIG") == "0":
        raise Skipped("BATCHD_E2E_BIG=0")
    if TSAN:
        raise Skipped("under ThreadSanitizer the RSS is mostly its shadow memory")
    if shutil.disk_usage(tempfile.gettempdir()).free < 3 * size:
        raise Skipped("less than 3 GiB free for the 1 GiB file")
    # A last line that is invalid, so the job fails after the whole file was validated and
    # nothing is uploaded.
    with Env() as e:
        d = e.daemon
        src = os.path.join(e.dir, "src")
        os.makedirs(src)
        line = json.dumps({"prompt": "p" * 180, "response": "r" * 180}).encode() + b"\n"
        block = line * ((8 << 20) // len(line))
        p = os.path.join(src, "huge.jsonl")
        fd = os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)
        written = 0
        while written < size:
            written += os.write(fd, block)
        os.write(fd, b'{"prompt": 1}\n')
        os.close(fd)
        n_lines = written // len(line) + 1
        # Idle after a small job has been through every stage (so the code and heap the
        # daemon needs anyway are counted as idle).
        write(os.path.join(src, "warm.jsonl"), jsonl(GOOD_ROWS))
        d.drop(os.path.join(src, "warm.jsonl"))
        wait_for(lambda: "warm" in d.dir_entries("done"), 30, "warm-up job")
        idle = rss_kib(d.proc.pid)
        os.rename(p, os.path.join(d.spool, "incoming", "huge.jsonl"))
        peak = idle
        t0 = time.monotonic()
        deadline = t0 + 600
        while "huge" not in d.dir_entries("failed"):
            check(time.monotonic() < deadline, "validation of 1 GiB took over 10 minutes")
            check(d.proc.poll() is None, "batchd exited")
            peak = max(peak, rss_kib(d.proc.pid))
            time.sleep(0.02)
        took = time.monotonic() - t0
        err = error_json_ok(e, "huge", "invalid_records", "validating")
        need(err, line=n_lines, field="prompt")
        print(f"     idle {idle / 1024:.1f} MiB, peak {peak / 1024:.1f} MiB "
              f"(+{(peak - idle) / 1024:.1f} MiB) validating 1 GiB in {took:.1f}s", flush=True)
        check(peak - idle <= 16 * 1024, f"RSS grew by {(peak - idle) / 1024:.1f} MiB")


if __name__ == "__main__":
    own = [test_skip_invalid_records, test_ten_thousand_entries, test_big_file_memory]
    only = os.environ.get("BATCHD_E2E_ONLY")  # run just the named own tests while debugging
    if only:
        own = [t if t.__name__ in only.split(",") else skipped(t, "not in BATCHD_E2E_ONLY")
               for t in own]
    run_tests(SHARED_TESTS, shared_setup, shared_teardown, own)
