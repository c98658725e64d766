"""End to end: batchd --check-config refuses an [api] url with user info or a non-loopback
http:// host (judged as libcurl parses the URL), and a configuration in which no workspace is
named for bare data files; it accepts loopback in curl's numeric forms."""

import os
import shutil
import subprocess
import tempfile

from harness import SOURCE, binary, check, run


def check_config(url, workspace=True, template_ws=False):
    d = tempfile.mkdtemp(prefix="batchd-checkconf-")
    try:
        tok = os.path.join(d, "api-token")
        with open(tok, "w") as f:
            f.write("check-config-token\n")
        os.chmod(tok, 0o600)
        tmpl = os.path.join(d, "default.json")
        shutil.copy(os.path.join(SOURCE, "conf", "templates", "default.json"), tmpl)
        if template_ws:
            with open(os.path.join(d, "ws.json"), "w") as f:
                f.write('{"template": "default", "workspace_id": "6278acb09062db3b35bcbeb0"}')
            tmpl = os.path.join(d, "ws.json")
        conf = os.path.join(d, "batchd.conf")
        with open(conf, "w") as f:
            f.write(f"[api]\nurl = {url}\ntoken_file = {tok}\n")
            if workspace:
                f.write("workspace_id = 6278acb09062db3b35bcbeb0\n")
            f.write(f"[spool]\ndir = {d}/spool\n[state]\ndir = {d}/state\n"
                    f"[control]\ngroup =\n[job]\ntemplate = {tmpl}\n")
        env = {k: v for k, v in os.environ.items()
               if k not in ("BATCHD_API_TOKEN", "CREDENTIALS_DIRECTORY", "BATCHD_CONFIG")}
        p = subprocess.run([binary("batchd"), "--check-config", "-c", conf],
                           capture_output=True, text=True, timeout=30, env=env)
        return p.returncode, p.stdout + p.stderr
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_user_info_refused():
    for url in ("http://127.0.0.1@evil.example/", "https://user:secret@api.prolific.com",
                "http://user@127.0.0.1:8080"):
        code, out = check_config(url)
        check(code == 78, f"{url}: exit {code}\n{out}")
        check("user info" in out and "token_file" in out, f"{url}: {out}")
        check("batchd.conf:2:" in out, f"{url}: no file:line in {out}")
        check("secret" not in out, f"the password is echoed: {out}")


def test_non_loopback_http_refused():
    for url in ("http://localhost.evil.example/", "http://evil.example#@127.0.0.1",
                "http://10.0.0.1:8080"):
        code, out = check_config(url)
        check(code == 78, f"{url}: exit {code}\n{out}")
        check("loopback" in out or "fragment" in out, f"{url}: {out}")


def test_loopback_forms_accepted():
    for url in ("http://127.1:8080", "http://0x7f.1", "http://[::1]:8080", "HTTP://LOCALHOST",
                "https://api.prolific.com"):
        code, out = check_config(url)
        check(code == 0 and "configuration OK" in out, f"{url}: exit {code}\n{out}")


def test_workspace_needed_for_bare_files():
    code, out = check_config("https://api.prolific.com", workspace=False)
    check(code == 78, f"exit {code}\n{out}")
    check("[api] workspace_id is not set" in out and "add workspace_id" in out, out)
    code, out = check_config("https://api.prolific.com", workspace=False, template_ws=True)
    check(code == 0, f"the template names a workspace: exit {code}\n{out}")


if __name__ == "__main__":
    run([test_user_info_refused, test_non_loopback_http_refused, test_loopback_forms_accepted,
         test_workspace_needed_for_bare_files])
