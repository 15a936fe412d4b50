"""`lmforge serve` as a user runs it (a subprocess on a saved checkpoint, an API key from the environment), and
its chat page in a real headless Chromium: type a message, see the streamed reply, a second turn sends the
history, model output containing HTML is shown as text and never run."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time

import pytest
from conftest import http, openai

import lmforge
from lmforge.generate.chat import ChatSession

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
KEY = "page-key-123"


@pytest.fixture(scope="module")
def cli_server(tmp_path_factory):
    from _generate_models import lmforge_decoder

    folder = tmp_path_factory.mktemp("serve") / "tiny"
    lmforge.save(lmforge_decoder("llama", context=256), folder)
    log = folder.parent / "server.log"
    env = {**os.environ, "LMFORGE_API_KEY": KEY, "OMP_NUM_THREADS": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lmforge", "serve", str(folder), "--port", "0", "--max-batch",
                                 "4"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 60
        url = None
        while url is None:
            m = re.search(r"on (http://127\.0\.0\.1:\d+)", log.read_text())
            url = m.group(1) if m else None
            if url is None:
                assert proc.poll() is None and time.time() < deadline, log.read_text()
                time.sleep(0.1)
        yield url, log, lmforge.load(folder)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_cli_serves_on_loopback_with_the_key(cli_server):
    url, log, model = cli_server
    assert "API key required" in log.read_text() and "127.0.0.1" in url
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    c = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
    assert c.models.list().data[0].id == "tiny"
    r = c.completions.create(model="tiny", prompt="The quick brown", max_tokens=8, temperature=0)
    assert r.choices[0].text == lmforge.generate(model, "The quick brown", max_new_tokens=8)


def test_cli_errors_are_one_line(tmp_path, capsys):
    from lmforge.cli import main

    assert main(["serve", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main(["bench", "serve", "http://127.0.0.1:9", "--prompts", str(tmp_path / "none.jsonl")]) == 2
    assert "--prompts" in capsys.readouterr().err
    (tmp_path / "p.txt").write_text("hello\n")
    assert main(["bench", "serve", "http://127.0.0.1:9", "--prompts", str(tmp_path / "p.txt"),
                 "--concurrency", "1,x"]) == 2
    assert "--concurrency" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "missing"), "--max-batch", "0"]) == 2
    assert "--max-batch" in capsys.readouterr().err


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install chromium)")
def test_chat_page_in_headless_chromium(cli_server, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, _, model = cli_server
    sent, errors = [], []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 700})
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: sent.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions")
                    else None)
            page.route(re.compile(r"^(?!http://127\.0\.0\.1).*"), lambda route: route.abort())  # loopback only
            page.goto(url + "/")
            page.wait_for_selector(".msg.error")  # no key yet: the server's 401 is shown
            assert "API key" in page.locator(".msg.error").first.inner_text()
            page.click("#reset")
            page.fill("#key", KEY)
            page.dispatch_event("#key", "change")
            page.wait_for_function("() => document.getElementById('model').textContent === 'tiny'")
            page.fill("#temperature", "0")
            page.fill("#max_tokens", "12")
            page.fill("#input", "The quick brown fox")
            page.keyboard.press("Enter")
            page.wait_for_function("() => !document.getElementById('send').disabled && "
                                   "document.querySelectorAll('.msg.assistant').length === 1")
            first = page.locator(".msg.assistant").nth(0).text_content()
            session = ChatSession(model, max_new_tokens=12)
            assert first == session.reply("The quick brown fox") and first
            page.fill("#input", "<img src=x onerror=\"window.pwned=1\"> again")
            page.click("#send")
            page.wait_for_function("() => !document.getElementById('send').disabled && "
                                   "document.querySelectorAll('.msg.assistant').length === 2")
            # the second turn carried the history: user, assistant (the streamed reply), user
            assert [m["role"] for m in sent[-1]["messages"]] == ["user", "assistant", "user"]
            assert sent[-1]["messages"][1]["content"] == first and sent[-1]["temperature"] == 0
            assert page.locator(".msg.user").nth(1).text_content().startswith("<img src=x")
            assert page.locator("#log img").count() == 0
            page.screenshot(path=str(tmp_path / "chat.png"))
            # model output that looks like HTML is shown as text, never run
            evil = "<script>window.pwned=2</script><img src=x onerror=\"window.pwned=3\">"
            chunk = {"choices": [{"index": 0, "delta": {"content": evil}, "finish_reason": None}]}
            page.route("**/v1/chat/completions", lambda route: route.fulfill(
                status=200, content_type="text/event-stream",
                body=f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n"))
            page.fill("#input", "show html")
            page.click("#send")
            page.wait_for_function("() => !document.getElementById('send').disabled && "
                                   "document.querySelectorAll('.msg.assistant').length === 3")
            assert page.locator(".msg.assistant").nth(2).text_content() == evil
            assert page.evaluate("() => window.pwned") is None and page.locator("#log img, #log script").count() == 0
        except Exception:
            print("PAGE:", page.locator("body").inner_text(), errors)
            raise
        finally:
            browser.close()
    assert errors == []
    assert http("GET", url + "/health").status_code == 200
