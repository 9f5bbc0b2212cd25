"""Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: JSON
messages ended by NUL on fds 3 and 4), with the standard library only: open a page, wait for it
to say it is done, read values out of it, take a screenshot. Imported by the playground test."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time


def run_page(chromium: str, url: str, shot, user_dir, done: str, read: str, timeout: float = 60.0):
    """Open ``url``; once the JavaScript expression ``done`` is true, return the JSON value of the
    expression ``read`` and write a PNG screenshot to ``shot``."""
    to_chrome_r, to_chrome_w = os.pipe()
    from_chrome_r, from_chrome_w = os.pipe()

    def child():  # chromium reads fd 3 and writes fd 4
        a, b = os.dup(to_chrome_r), os.dup(from_chrome_w)  # out of the way of 3 and 4 first
        os.dup2(a, 3)
        os.dup2(b, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={user_dir}",
            "--remote-debugging-pipe",
            "--window-size=1200,800",
            "about:blank",
        ],
        preexec_fn=child,
        close_fds=False,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    os.close(to_chrome_r)
    os.close(from_chrome_w)
    w = os.fdopen(to_chrome_w, "wb", buffering=0)
    r = os.fdopen(from_chrome_r, "rb", buffering=0)
    buf = b""
    ids = iter(range(1, 10**6))

    def call(method, params=None, session=None):
        nonlocal buf
        i = next(ids)
        msg = {"id": i, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        w.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in buf:
                chunk = r.read(65536)
                if not chunk:
                    raise RuntimeError("chromium closed the pipe")
                buf += chunk
            raw, buf = buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == i:
                if "error" in reply:
                    raise RuntimeError(reply["error"])
                return reply["result"]

    try:
        target = call("Target.createTarget", {"url": url})["targetId"]
        sid = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        deadline = time.monotonic() + timeout

        def value(expression):
            return call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, sid)["result"].get(
                "value"
            )

        while not value(done):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the page did not finish: {value('document.body.innerText')!r}")
            time.sleep(0.2)
        texts = value(f"JSON.stringify({read})")
        with open(shot, "wb") as f:
            f.write(base64.b64decode(call("Page.captureScreenshot", {"format": "png"}, sid)["data"]))
        return json.loads(texts)
    finally:
        try:
            call("Browser.close")
        except Exception:
            pass
        proc.kill()
        proc.wait()
