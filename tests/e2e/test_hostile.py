"""End to end: batchd against a hostile API (batchd-sim's hostile fault kinds, batchd(8), HOSTILE AND ACCIDENTAL INPUT
"The API and the network"). Each test drives jobs into one kind of hostile reply and then
checks the properties batchd promises, all of them, reporting every one that does not hold:
the token appears nowhere in any form; error.json is at most 64 KiB and each text in what
batchd keeps at most 4 KiB; every JSON document batchd writes or sends is strict UTF-8 JSON;
log lines carry no raw control characters; an id that is not safe in a URL path fails its job
(naming the id) and never reaches a request path; and every job is still listed after a
restart, and can be retried."""

import json
import os
import re
import subprocess
import unicodedata
import urllib.parse

from harness import (SLOW, WORKSPACE, Env, TestFailure, assert_no_token_anywhere, binary, call,
                     call_raw, check, regular_files, run, wait_for)

MIB = 1024 * 1024
TEXT_CAP = 4096
# A message may wrap a capped text in a short sentence of batchd's own ("the API rejected
# create_dataset with HTTP 400: <detail>"): that much slack over the 4 KiB cap.
TEXT_SLACK = 512
ERROR_JSON_CAP = 64 * 1024
JOB_DEADLINE = 20 * SLOW
# A job given an odd id fails at its next step, within a second or two: a shorter deadline
# keeps the suite short when a daemon retries such a job forever (that is reported).
ODD_DEADLINE = 10 * SLOW
TERMINAL = ("ready", "failed", "cancelled")


class Checks:
    """Collects every property that does not hold, so that one run reports them all."""

    def __init__(self, what):
        self.what = what
        self.problems = []

    def check(self, cond, msg):
        # The same property is checked before and after a restart: report each once.
        if not cond and msg not in self.problems:
            self.problems.append(msg)
        return cond

    def attempt(self, fn, *args):
        try:
            return fn(*args)
        except TestFailure as e:
            self.problems.append(str(e))
        except (OSError, ValueError) as e:
            self.problems.append(f"{fn.__name__}: {type(e).__name__}: {e}")
        return None

    def done(self):
        if self.problems:
            lines = "\n  - ".join(p[:600] for p in self.problems)
            raise TestFailure(f"{self.what}: {len(self.problems)} check(s) failed:\n  - {lines}")


# ------------------------------------------------------------------ jobs


def make_job(env, name):
    src = os.path.join(env.dir, "src")
    os.makedirs(src, exist_ok=True)
    p = os.path.join(src, f"{name}.jsonl")
    with open(p, "w") as f:
        for k in range(3):
            f.write(json.dumps({"prompt": f"{name} q{k}", "response": f"a{k}"}) + "\n")
    env.daemon.drop(p)
    return name


def job_named(env, name):
    for j in env.daemon.jobs():
        if j["name"] == name:
            return j
    return None


def run_job(env, name, faults, ck, deadline=JOB_DEADLINE, **settings):
    """Sets the sim's fault table (and settings such as hostile_status), drops job name and
    waits for it to end. Returns its final Job, or None (reported) when it did not end: a
    job that is retried forever is cancelled so that the next one starts clean."""
    env.sim.set_faults(faults, **settings)
    make_job(env, name)
    try:
        return wait_for(lambda: (lambda j: j if j and j["state"] in TERMINAL else None)(
            job_named(env, name)), deadline, f"job {name} to end")
    except TestFailure as e:
        j = job_named(env, name)
        ck.check(False, f"job {name} did not end within {deadline}s (retried forever?): "
                        f"state {j and j['state']}, last_error {j and j.get('last_error')!r}; {e}")
        if j:
            call(env.daemon.socket, "io.batchd.Cancel", {"job": j["id"]})
            wait_for(lambda: (job_named(env, name) or {}).get("state") in TERMINAL, JOB_DEADLINE,
                     f"cancelled job {name} to end")
        return None


def error_path(env, name):
    return os.path.join(env.daemon.spool, "failed", name, "error.json")


def read_error(env, name, ck):
    """error.json of a failed job: exists, at most 64 KiB, strict UTF-8 JSON; or None."""
    p = error_path(env, name)
    try:
        # The move into failed/ may be published a moment after the state shows failed.
        wait_for(lambda: os.path.isfile(p), 10 * SLOW, f"failed/{name}/error.json")
    except TestFailure:
        ck.check(False, f"{name}: failed/{name}/error.json does not exist")
        return None
    with open(p, "rb") as f:
        data = f.read()
    ck.check(len(data) <= ERROR_JSON_CAP,
             f"{name}: error.json is {len(data)} bytes (cap {ERROR_JSON_CAP})")
    where = os.path.relpath(p, env.dir)
    doc = strict_json(data, where, ck)
    if doc is not None:
        texts_capped(doc, where, ck)
    return doc


# ------------------------------------------------------------------ properties


def strict_json(data, where, ck):
    """data decodes as strict UTF-8 and parses as JSON; the document, or None."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        ck.check(False, f"{where} is not valid UTF-8: {e} near {data[max(0, e.start - 30):e.end + 30]!r}")
        return None
    try:
        return json.loads(text)
    except ValueError as e:
        ck.check(False, f"{where} is not valid JSON: {e}")
    except RecursionError:
        ck.check(False, f"{where} nests JSON about 1000 levels deep or more (a deep body must "
                        f"be reduced to text, not stored as-is)")
    return None


def _strings(v, path="$"):
    if isinstance(v, str):
        yield path, v
    elif isinstance(v, dict):
        for k, x in v.items():
            yield from _strings(x, f"{path}.{k}")
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _strings(x, f"{path}[{i}]")


def texts_capped(doc, where, ck, skip=()):
    for path, s in _strings(doc):
        if any(path.startswith(p) for p in skip):
            continue
        n = len(s.encode("utf-8", errors="surrogatepass"))
        if n > TEXT_CAP + TEXT_SLACK:
            ck.check(False, f"{where}: {path} is {n} bytes (cap {TEXT_CAP})")
            return


def no_surrogates(doc, where, ck):
    """A lone surrogate (\\ud800) parses in Python's json, but is not UTF-8 text."""
    for path, s in _strings(doc):
        if any(0xD800 <= ord(c) <= 0xDFFF for c in s):
            ck.check(False, f"{where}: {path} holds a lone surrogate: {s[:80]!r}")
            return


def socket_replies(env, ck):
    """The raw bytes of GetInfo, ListJobs, GetJob (with history) of every job, and the first
    reply of Watch (the current jobs): each strict UTF-8 JSON, texts capped."""
    sock = env.daemon.socket
    replies = []
    for method, params, more in (("io.batchd.GetInfo", {}, False),
                                 ("io.batchd.ListJobs", {}, False),
                                 ("io.batchd.Watch", {}, True)):
        r = ck.attempt(call_raw, sock, method, params, more)
        if r is not None:
            replies.append((method, r))
    for j in env.daemon.jobs():
        r = ck.attempt(call_raw, sock, "io.batchd.GetJob", {"job": j["id"]})
        if r is not None:
            replies.append((f"GetJob {j['name']}", r))
    for what, r in replies:
        doc = strict_json(r, f"socket reply to {what}", ck)
        if doc is not None:
            no_surrogates(doc, f"socket reply to {what}", ck)
            texts_capped(doc, f"socket reply to {what}", ck)
    return [r for _w, r in replies]


def files_written(env):
    """(path, bytes) of every JSON file batchd wrote: result.json and error.json in done/ and
    failed/, and every file under the state dir (regular_files: one renamed away meanwhile
    is passed over)."""
    for sub in ("done", "failed"):
        for name in env.daemon.dir_entries(sub):
            for fn in ("result.json", "error.json"):
                p = os.path.join(env.daemon.spool, sub, name, fn)
                try:
                    with open(p, "rb") as f:
                        yield p, f.read()
                except (FileNotFoundError, IsADirectoryError):
                    pass
    for p, data in regular_files(env.daemon.state_dir):
        if p.endswith(".json"):
            yield p, data


def check_files(env, ck):
    for p, data in files_written(env):
        where = os.path.relpath(p, env.dir)
        doc = strict_json(data, where, ck)
        if doc is not None:
            no_surrogates(doc, where, ck)
            # A job record holds the job's own spec (the operator's template): not API text.
            texts_capped(doc, where, ck, skip=("$.spec",))


def check_log(env, ck):
    """batchd's log: strict UTF-8, no raw control character (C0 but tab, DEL, C1) in a line."""
    with open(env.daemon.log_path, "rb") as f:
        data = f.read()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        ck.check(False, f"batchd's log is not valid UTF-8: {data[max(0, e.start - 40):e.end + 20]!r}")
    for line in data.decode("utf-8", errors="replace").split("\n"):
        bad = [c for c in line if (ord(c) < 0x20 and c != "\t") or 0x7F <= ord(c) <= 0x9F]
        if bad:
            ck.check(False, f"a log line holds raw control characters {sorted(set(bad))!r}: "
                            f"{line[:200]!r}")
            return


def check_all(env, ck):
    """The properties every test ends with, while the daemon runs."""
    replies = socket_replies(env, ck)
    check_files(env, ck)
    check_log(env, ck)
    ck.attempt(assert_no_token_anywhere, env, replies)


def restart_keeps_jobs(env, ck):
    """Every job listed before a stop is listed after the next start, in the same state."""
    before = {j["id"]: j for j in env.daemon.jobs()}
    env.daemon.stop()
    env.daemon.start()
    after = {j["id"]: j for j in env.daemon.jobs()}
    for jid, j in before.items():
        if ck.check(jid in after, f"job {j['name']} ({jid}, {j['state']}) is not listed after a "
                                  f"restart"):
            ck.check(after[jid]["state"] == j["state"],
                     f"job {j['name']} was {j['state']} before the restart, "
                     f"{after[jid]['state']} after")


def retry_works(env, name, ck):
    """batchctl retry on a failed job (the hostile reply spent) takes it to ready."""
    j = job_named(env, name)
    if not ck.check(j is not None, f"{name}: not listed, cannot be retried"):
        return
    r = subprocess.run([binary("batchctl"), "-s", env.daemon.socket, "retry", j["id"]],
                       capture_output=True, text=True, errors="replace", timeout=30)
    if not ck.check(r.returncode == 0, f"{name}: batchctl retry exited {r.returncode}: "
                                       f"{r.stderr.strip()[:300]}"):
        return
    try:
        wait_for(lambda: (job_named(env, name) or {}).get("state") == "ready", JOB_DEADLINE,
                 f"{name} ready after the retry")
    except TestFailure as e:
        ck.check(False, str(e))


def expect_failed(env, name, j, ck):
    if j is None:
        return None
    if not ck.check(j["state"] == "failed", f"{name}: ended {j['state']}, not failed "
                                            f"(last_error {j.get('last_error')!r})"):
        return None
    return read_error(env, name, ck)


def expect_ready(env, name, j, ck):
    if j is not None:
        ck.check(j["state"] == "ready", f"{name}: ended {j['state']}, not ready "
                                        f"(last_error {j.get('last_error')!r})")


def sim_env():
    # Quick retries: a retried hostile reply costs little time.
    return Env(extra_conf="poll.initial = 50ms\npoll.max = 200ms")


# ------------------------------------------------------------------ echo

ECHOES = ("echo-raw", "echo-json", "echo-pct", "echo-b64", "echo-header")


def test_echo_on_create():
    """Each echo variant as the 400 answer to create_dataset: the job fails, error.json is
    valid, and the token is nowhere in any form."""
    ck = Checks("echo on create_dataset")
    with sim_env() as env:
        for kind in ECHOES:
            name = f"ec-{kind}"
            j = run_job(env, name, [{"kind": kind, "count": 1, "endpoint": "create_dataset"}], ck,
                        hostile_status=400)
            expect_failed(env, name, j, ck)
        check_all(env, ck)
        restart_keeps_jobs(env, ck)
        check_all(env, ck)
    ck.done()


def test_echo_on_poll():
    """Each echo variant as the answer to an import poll (404, then 403 for the last): the job
    fails, error.json is valid, and the token is nowhere in any form."""
    ck = Checks("echo on get_import")
    with sim_env() as env:
        for i, kind in enumerate(ECHOES + ("echo",)):
            name = f"ep-{kind}"
            j = run_job(env, name, [{"kind": kind, "count": 1, "endpoint": "get_import"}], ck,
                        hostile_status=404 if i % 2 == 0 else 403)
            expect_failed(env, name, j, ck)
        check_all(env, ck)
        restart_keeps_jobs(env, ck)
        check_all(env, ck)
    ck.done()


def test_echo_on_429_and_5xx():
    """Echoes that batchd retries: a 429 with the token in Retry-After, X-Echo-Authorization
    and the body, and each echo variant as a 503: the jobs end ready, and the token is in no
    last_error, history note, log line or file."""
    ck = Checks("echo on 429 and 5xx")
    with sim_env() as env:
        name = "e429"
        j = run_job(env, name, [{"kind": "echo-429", "count": 2, "endpoint": "create_batch"},
                                {"kind": "echo-429", "count": 1, "endpoint": "get_import"}], ck,
                    retry_after=0)
        expect_ready(env, name, j, ck)
        for kind in ECHOES:
            name = f"e5-{kind}"
            j = run_job(env, name, [{"kind": kind, "count": 1, "endpoint": "batch_status"},
                                    {"kind": kind, "count": 1, "endpoint": "create_dataset"}],
                        ck, hostile_status=503)
            expect_ready(env, name, j, ck)
        st = env.sim.state()
        faults = {r["fault"] for r in st["requests"] if r["fault"]}
        check(faults >= set(ECHOES) | {"echo-429"}, f"the sim did not send every echo: {faults}")
        check_all(env, ck)
        restart_keeps_jobs(env, ck)
        check_all(env, ck)
    ck.done()


# ------------------------------------------------------------------ huge and deep


def hostile_error_jobs(what, cases):
    """cases: (name, fault rules, settings). Each job fails on its hostile reply; then every
    property holds, before and after a restart, and batchctl retry takes each to ready."""
    ck = Checks(what)
    with sim_env() as env:
        names = []
        for name, faults, settings in cases:
            j = run_job(env, name, faults, ck, **settings)
            expect_failed(env, name, j, ck)
            names.append(name)
        env.sim.set_faults([])
        check_all(env, ck)
        restart_keeps_jobs(env, ck)
        # The properties are checked once more after the retries, which also covers the
        # state the restart left.
        for name in names:
            retry_works(env, name, ck)
        check_all(env, ck)
    ck.done()


def test_huge_bodies():
    """A 9 MiB error body (past the client's 8 MiB cap) and a 7 MiB one (just under it, JSON
    text in detail): error.json at most 64 KiB, texts at most 4 KiB, listed across a restart,
    retry works."""
    hostile_error_jobs("huge error bodies", [
        ("huge9", [{"kind": "huge", "count": 1, "endpoint": "create_dataset"}],
         {"huge_bytes": 9 * MIB, "hostile_status": 400}),
        ("huge7", [{"kind": "huge", "count": 1, "endpoint": "create_dataset"}],
         {"huge_bytes": 7 * MIB, "hostile_status": 400}),
    ])


def test_deep_bodies():
    """JSON error bodies nested 100,000 levels, 1,001 (one past cJSON's limit) and 998 (parses,
    but one more level of nesting in a record would not read back): same properties."""
    hostile_error_jobs("deep error bodies", [
        ("deep100k", [{"kind": "deep", "count": 1, "endpoint": "create_dataset"}],
         {"deep_levels": 100000, "hostile_status": 400}),
        ("deep1001", [{"kind": "deep", "count": 1, "endpoint": "create_dataset"}],
         {"deep_levels": 1001, "hostile_status": 400}),
        ("deep998", [{"kind": "deep", "count": 1, "endpoint": "create_dataset"}],
         {"deep_levels": 998, "hostile_status": 400}),
        ("deep998poll", [{"kind": "deep", "count": 1, "endpoint": "get_import"}],
         {"deep_levels": 998, "hostile_status": 404}),
    ])


# ------------------------------------------------------------------ invalid UTF-8


def test_invalid_utf8_bodies():
    """Invalid UTF-8 and control characters in error bodies (JSON with them inside strings and
    as escapes; text/plain with a NUL byte): every JSON file batchd wrote and every socket reply
    is strict UTF-8 JSON, log lines hold no raw control characters; across a restart too."""
    hostile_error_jobs("invalid UTF-8 bodies", [
        ("bad-create", [{"kind": "badutf8", "count": 1, "endpoint": "create_dataset"}],
         {"hostile_status": 400}),
        ("bad-text", [{"kind": "badutf8-text", "count": 1, "endpoint": "create_dataset"}],
         {"hostile_status": 400}),
        ("bad-poll", [{"kind": "badutf8", "count": 1, "endpoint": "get_import"}],
         {"hostile_status": 404}),
        ("bad-batch", [{"kind": "badutf8-text", "count": 1, "endpoint": "create_batch"}],
         {"hostile_status": 403}),
    ])


# ------------------------------------------------------------------ odd ids

ID_RE = r"[A-Za-z0-9_-]{1,128}"
API = "/api/v1/data-collection"


def issued_ids(st):
    ids = set()
    for d in st["datasets"]:
        ids.add(d["id"])
        for imp in d.get("imports") or []:
            ids.add(imp["import_id"])
    for b in st["batches"]:
        ids.add(b["id"])
    return ids


def check_request_paths(env, ck):
    """Every request the sim saw went to one of the API's routes, with ids the sim issued: no
    dot segment (plain or percent-encoded), no query or fragment smuggled in from an id."""
    st = env.sim.state()
    ids = issued_ids(st)
    routes = [
        ("POST", re.compile(rf"^{API}/datasets$"), 0),
        ("GET", re.compile(rf"^{API}/datasets/({ID_RE})$"), 1),
        ("GET", re.compile(rf"^{API}/datasets/({ID_RE})/upload-url/[A-Za-z0-9._-]+$"), 1),
        ("GET", re.compile(rf"^{API}/datasets/({ID_RE})/imports/({ID_RE})$"), 2),
        ("POST", re.compile(rf"^{API}/batches/?$"), 0),
        ("GET", re.compile(rf"^{API}/batches/?$"), 0),
        ("GET", re.compile(rf"^{API}/batches/({ID_RE})(?:/status)?$"), 1),
        ("POST", re.compile(rf"^{API}/batches/({ID_RE})/setup$"), 1),
    ]
    bad = []
    for r in st["requests"]:
        uri = r.get("uri")
        if uri is None:
            bad.append(f"#{r['seq']}: the sim logged no request target")
            continue
        path, _, query = uri.partition("?")
        why = None
        segs = path.split("/")
        if "." in segs or ".." in segs or "%2e" in uri.lower():
            why = "a dot segment"
        elif "#" in uri:
            why = "a fragment"
        elif r["endpoint"] == "upload":
            if r["method"] != "PUT" or not path.startswith("/_upload/") or \
                    not query.startswith("X-Amz-Algorithm="):
                why = "not the presigned upload URL"
        else:
            for method, rx, n in routes:
                m = rx.match(path)
                if m and method == r["method"]:
                    unknown = [g for g in m.groups()[:n] if g not in ids]
                    if unknown:
                        why = f"id(s) {unknown} the sim never issued"
                    break
            else:
                why = "not one of the API's routes"
            if why is None and query:
                if not (r["endpoint"] == "list_batches" and
                        urllib.parse.parse_qs(query, keep_blank_values=True) ==
                        {"workspace_id": [WORKSPACE]}):
                    why = f"a query ({query!r})"
            if why is None and r["status"] in (404, 405):
                why = f"HTTP {r['status']}"
        if why:
            bad.append(f"#{r['seq']} {r['method']} {uri!r} -> {r['status']}: {why}")
    ck.check(not bad, f"{len(bad)} request(s) outside the API's routes: " + "; ".join(bad[:12]))


def printable(s):
    return all(unicodedata.category(c)[0] != "C" for c in s)


def named(odd, msg):
    """Whether msg names the id: as it is (a long one at least by its first 64 characters),
    or escaped the way batchd escapes text (\\xNN bytes, \\uNNNN)."""
    if isinstance(odd, (int, float)):
        return str(odd) in msg or "not a string" in msg
    if odd == "":
        return any(q in msg for q in ("''", '""', "empty"))
    if not printable(odd):
        return "ctl" in msg
    head = odd[:64]
    forms = {head, json.dumps(head)[1:-1],
             "".join(c if ord(c) < 0x80 else "".join(f"\\x{b:02x}" for b in c.encode())
                     for c in head)}
    return any(f in msg for f in forms)


ODD_IDS = [
    "../../etc", "a/b", "%2e%2e", "x?y=1", "id#frag", "a" * 200, "", "id with spaces",
    "\u00efd-\u00fcn\u00efc\u00f8d\u00e9", 12345, "..", ".", "a%2Fb", "id\x01ctl",
]


def odd_job(env, ck, name, endpoint, odd):
    j = run_job(env, name, [{"kind": "oddid", "count": 1, "endpoint": endpoint}], ck,
                ODD_DEADLINE, odd_id=odd)
    err = expect_failed(env, name, j, ck)
    if err is None:
        return
    msg = err.get("message") or ""
    ck.check(named(odd, msg), f"{name}: the error does not name the id {odd!r}: {msg[:300]!r}")
    if endpoint != "create_dataset":
        ck.check(bool(err.get("dataset_id")),
                 f"{name}: the error does not name the dataset already created: {err}")


def test_odd_ids():
    """Ids that are not letters, digits, '-' and '_' (1 to 128) in a create_dataset,
    upload_url (import id) and create_batch reply: the job fails, naming the id, and no request
    ever carries it in its path (no dot segment, no query or fragment, only the API's routes).
    """
    ck = Checks("odd ids")
    with sim_env() as env:
        for i, odd in enumerate(ODD_IDS):
            odd_job(env, ck, f"odd-ds{i:02d}", "create_dataset", odd)
        for i, odd in enumerate(("../../etc", "a/b", "x?y=1", "id#frag", 12345)):
            odd_job(env, ck, f"odd-imp{i}", "upload_url", odd)
        for i, odd in enumerate(("../..", "a/b", "%2e%2e", "id#frag", "")):
            odd_job(env, ck, f"odd-batch{i}", "create_batch", odd)
        env.sim.set_faults([], odd_id=None)
        check_request_paths(env, ck)
        check_all(env, ck)
        restart_keeps_jobs(env, ck)
        check_all(env, ck)
    ck.done()


if __name__ == "__main__":
    run([test_echo_on_create, test_echo_on_poll, test_echo_on_429_and_5xx, test_huge_bodies,
         test_deep_bodies, test_invalid_utf8_bodies, test_odd_ids])
