"""The chat page in headless Chromium: load it, type a message, press Enter, watch the
reply stream in, and check it equals the API's greedy answer.

Chromium is driven over the DevTools protocol through --remote-debugging-pipe (fd 3 in,
fd 4 out, NUL-separated JSON), so only the standard library is needed. Skipped, with the
reason, where no Chromium is installed on a developer's machine; under CI (CI set, as
.ci/run runs, which installs Debian's `chromium`) a missing Chromium fails the test.
"""

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

import pytest

from conftest import MODEL_ID, Server

CHROME = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
QUESTION = "What is the capital of France?"


class Browser:
    """A headless Chromium and the DevTools session of one page."""

    def __init__(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="dwarfstar-chromium-")
        # Pipes above fd 10, so that moving them onto fds 3 and 4 cannot clash.
        cmd_r, cmd_w = (self._high(fd) for fd in os.pipe())
        evt_r, evt_w = (self._high(fd) for fd in os.pipe())
        args = [CHROME, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-quic", "--no-first-run", "--remote-debugging-pipe",
                f"--user-data-dir={self.tmp.name}", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{evt_w}', *args],
            pass_fds=(cmd_r, evt_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        os.close(cmd_r)
        os.close(evt_w)
        self.out = os.fdopen(cmd_w, "wb", buffering=0)
        self.inp = os.fdopen(evt_r, "rb", buffering=0)
        self.next_id = 0
        self.replies = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    @staticmethod
    def _high(fd):
        hi = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
        os.close(fd)
        return hi

    def _read(self):
        buf = b""
        while True:
            data = self.inp.read(65536)
            if not data:
                self.replies.put(None)
                return
            buf += data
            while b"\0" in buf:
                msg, buf = buf.split(b"\0", 1)
                m = json.loads(msg)
                if "id" in m:
                    self.replies.put(m)

    def call(self, method, session=None, **params):
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        self.out.write(json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + 60
        while True:
            m = self.replies.get(timeout=max(0.1, deadline - time.monotonic()))
            assert m is not None, "chromium exited"
            if m["id"] == self.next_id:
                assert "error" not in m, m
                return m["result"]

    def page(self, method, **params):
        return self.call(method, session=self.session, **params)

    def js(self, expr):
        r = self.page("Runtime.evaluate", expression=expr, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in r, r
        return r["result"].get("value")

    def wait_for(self, expr, timeout=60):
        """Polls `expr` until truthy; errors (e.g. the page not loaded yet) count as false."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            v = self.js(f"(() => {{ try {{ return {expr}; }} catch (e) {{ return false; }} }})()")
            if v:
                return v
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {expr}")

    def close(self):
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.tmp.cleanup()


@pytest.fixture(scope="module")
def server():
    srv = Server()
    yield srv
    srv.stop()


@pytest.mark.skipif(CHROME is None and not os.environ.get("CI"),
                    reason="Chromium is not installed (apt-get install chromium); the page test needs it")
def test_the_chat_page_streams_a_reply(server):
    if CHROME is None:
        pytest.fail("CI must run the chat-page test, but Chromium is not installed (apt-get install chromium)")
    status, want = server.request("POST", "/v1/chat/completions", {
        "model": MODEL_ID, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 40,
    })
    assert status == 200
    want = want["choices"][0]["message"]["content"]
    assert want

    b = Browser()
    try:
        b.page("Page.enable")
        b.page("Page.navigate", url=server.base + "/")
        # The status panel has fetched /v1/status.
        b.wait_for(f"document.getElementById('st-model').textContent === {json.dumps(MODEL_ID)}")
        b.js("document.getElementById('temperature').value = '0';"
             "document.getElementById('max-tokens').value = '40';"
             "document.getElementById('input').focus(); true")
        b.page("Input.insertText", text=QUESTION)
        for kind in ("keyDown", "keyUp"):
            b.page("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
        seen = []
        deadline = time.monotonic() + 120
        while True:
            state = b.js("(() => { const m = document.querySelectorAll('.msg.assistant');"
                         " const last = m[m.length - 1];"
                         " return last ? {text: last.dataset.raw, done: last.dataset.done} : null; })()")
            if state and (not seen or seen[-1] != state["text"]):
                seen.append(state["text"])
            if state and state["done"] == "1":
                break
            assert time.monotonic() < deadline, f"no finished reply; saw {seen[-3:]}"
            time.sleep(0.01)
        assert b.js("document.querySelector('.msg.user').textContent") == QUESTION
        assert b.js("document.querySelectorAll('.msg.error').length") == 0
        print(f"the reply took {len(seen)} distinct states")
        assert seen[-1] == want
        partial = [s for s in seen if s and s != want]
        assert partial, "the reply appeared all at once, not streamed"
        assert all(want.startswith(s) for s in partial)
        # The input was cleared and the page can send again.
        assert b.js("document.getElementById('input').value") == ""
        assert b.js("document.getElementById('send').disabled") is False
        # The model picker lists the served model.
        assert b.js("[...document.querySelectorAll('#model-pick option')].map(o => o.value)") == [MODEL_ID]

        # The conversation is kept in the browser: a reload shows it again.
        b.page("Page.reload")
        b.wait_for("document.querySelectorAll('#chats li').length === 1")
        assert b.js("document.querySelector('.msg.user').textContent") == QUESTION
        assert b.js("document.querySelector('.msg.assistant').dataset.raw") == want
        # A new conversation starts empty; the old one comes back from the list.
        b.js("document.getElementById('clear').click(); true")
        assert b.js("document.querySelectorAll('.msg').length") == 0
        b.js("document.querySelector('#chats li').click(); true")
        assert b.js("document.querySelectorAll('.msg').length") == 2

        # Stop: a long sampled reply is cut, kept as far as it came, and the page sends again.
        b.js("document.getElementById('clear').click();"
             "document.getElementById('temperature').value = '1';"
             "document.getElementById('max-tokens').value = '2000';"
             "document.getElementById('input').value = 'Write a long story about a dragon.';"
             "document.getElementById('chat').requestSubmit(); true")
        b.wait_for("(document.querySelector('.msg.assistant') || {dataset: {}}).dataset.raw.length > 20")
        b.js("document.getElementById('stop').click(); true")
        b.wait_for("document.querySelector('.msg.assistant').dataset.done === '1'", timeout=30)
        assert b.js("document.getElementById('send').disabled") is False
        assert b.js("document.querySelectorAll('.msg.error').length") == 0
        assert b.js("JSON.parse(localStorage.getItem('dwarfstar.chats')).length") == 2

        # The picture of the page, kept as a CI artifact.
        shot = b.page("Page.captureScreenshot", format="png")["data"]
        out = os.environ.get("DWARFSTAR_ARTIFACTS") or os.path.join(
            os.path.dirname(__file__), "..", "..", "target", "artifacts")
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "chat-page.png"), "wb") as f:
            f.write(base64.b64decode(shot))
    finally:
        b.close()


MARKDOWN = """# Title
Some **bold**, *italic*, `code` and a [link](https://example.com), snake_case_name.

- one
- two <script>alert(1)</script>

1. first
2. second

```rust
fn main() { println!("<b>hi</b>"); }
```
"""


@pytest.mark.skipif(CHROME is None and not os.environ.get("CI"),
                    reason="Chromium is not installed (apt-get install chromium); the page test needs it")
def test_replies_render_as_markdown_without_markup_injection(server):
    if CHROME is None:
        pytest.fail("CI must run the chat-page test, but Chromium is not installed (apt-get install chromium)")
    b = Browser()
    try:
        b.page("Page.enable")
        b.page("Page.navigate", url=server.base + "/")
        b.wait_for("typeof renderMarkdown === 'function'")
        got = b.js("(() => { const d = document.createElement('div');"
                   f" d.appendChild(renderMarkdown({json.dumps(MARKDOWN)})); return {{"
                   " h: d.querySelector('h1').textContent,"
                   " strong: d.querySelector('strong').textContent,"
                   " em: [...d.querySelectorAll('em')].map(e => e.textContent),"
                   " code: d.querySelector('p code').textContent,"
                   " href: d.querySelector('a').href,"
                   " ul: [...d.querySelectorAll('ul li')].map(e => e.textContent),"
                   " ol: [...d.querySelectorAll('ol li')].map(e => e.textContent),"
                   " lang: d.querySelector('pre code').dataset.lang,"
                   " block: d.querySelector('pre code').textContent,"
                   " scripts: d.querySelectorAll('script, b').length }; })()")
        assert got["h"] == "Title"
        assert got["strong"] == "bold"
        assert got["em"] == ["italic"], "snake_case stays text"
        assert got["code"] == "code"
        assert got["href"] == "https://example.com/"
        assert got["ul"] == ["one", "two <script>alert(1)</script>"]
        assert got["ol"] == ["first", "second"]
        assert got["lang"] == "rust"
        assert got["block"] == 'fn main() { println!("<b>hi</b>"); }'
        assert got["scripts"] == 0, "model output never becomes markup"
        # A reply still streaming, inside an unclosed fence, renders as code so far.
        partial = b.js("(() => { const d = document.createElement('div');"
                       " d.appendChild(renderMarkdown('text\\n```py\\nx = 1')); "
                       " return d.querySelector('pre code').textContent; })()")
        assert partial == "x = 1"
    finally:
        b.close()
