"""Build the book and check its pages in headless Chromium, driven over the DevTools protocol.

The book is built from the committed results into a temporary folder, served on 127.0.0.1, and
every page is opened in Chromium. A page fails on a console error, an uncaught exception, a
failed or non-local request, an image that did not load, a link to a missing page or anchor,
or an equation that MathJax did not typeset. Screenshots of the title page, the Table 3 page,
the attention page and the discrepancies chapter go to results/screenshots/ (gitignored), and
the test prints their paths.

Chromium runs with a proxy on a closed local port and a host resolver that resolves nothing
but 127.0.0.1, so a request to another host cannot leave the machine, and the test fails on it.

The test needs /usr/bin/chromium (or MSDGCN_CHROMIUM) and the MathJax copy that
scripts/fetch_mathjax.sh puts into _vendor/mathjax/. It skips when Chromium is missing, except
with MSDGCN_REQUIRE_BROWSER=1 (set by .ci/run), where it fails.
"""

from __future__ import annotations

import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

try:
    import websocket  # the websocket-client package
except ImportError:  # pragma: no cover - depends on the environment
    websocket = None

REPO_ROOT = Path(__file__).resolve().parents[1]
SCREENSHOT_DIR = REPO_ROOT / "results" / "screenshots"
MATHJAX_ENTRY = REPO_ROOT / "_vendor" / "mathjax" / "tex-mml-chtml.js"
# Pages saved as screenshots, by paths inside the built HTML folder.
SCREENSHOT_PAGES = {
    "title": "book/intro.html",
    "table3": "results/cpu/tables.html",
    "attention": "results/cpu/attention.html",
    "discrepancies": "results/discrepancies/discrepancies.html",
}
# Pages that state equations, so MathJax must have typeset at least one on each.
PAGES_WITH_MATH = ("book/method.html", "results/figures/figures.html", "results/discrepancies/discrepancies.html")
VIEWPORT = {"width": 1280, "height": 900}
# A full-page screenshot is cut at this height (CSS pixels) to keep the PNG small.
MAX_SCREENSHOT_HEIGHT = 3000
PAGE_TIMEOUT_S = 20.0


def _find_chromium() -> str | None:
    candidate = os.environ.get("MSDGCN_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    return candidate if Path(candidate).is_file() else None


def _require_chromium() -> str:
    """Return the Chromium executable; skip without it, or fail under MSDGCN_REQUIRE_BROWSER=1."""
    chromium = _find_chromium()
    message = None
    if chromium is None:
        message = (
            "Chromium not found (looked at MSDGCN_CHROMIUM, chromium on PATH and /usr/bin/chromium); "
            "install it with bash scripts/install_system_packages.sh, or set MSDGCN_CHROMIUM"
        )
    elif websocket is None:
        message = "websocket-client is not installed; run: pip install websocket-client"
    if message is not None:
        if os.environ.get("MSDGCN_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return chromium


# --------------------------------------------------------------------------- build and serve


@pytest.fixture(scope="module")
def built_book(tmp_path_factory) -> Path:
    """Build the book from the committed results into a temporary folder; return its html/."""
    _require_chromium()
    if not MATHJAX_ENTRY.is_file():
        pytest.fail(f"{MATHJAX_ENTRY} is missing; run scripts/fetch_mathjax.sh (setup_env.sh runs it)")
    output = tmp_path_factory.mktemp("book")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), os.environ.get("PYTHONPATH")])))
    jupyter_book = Path(sys.executable).with_name("jupyter-book")
    command = [str(jupyter_book), "build", str(REPO_ROOT), "--path-output", str(output), "--quiet"]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, f"jupyter-book build failed:\n{completed.stdout}\n{completed.stderr}"
    html = output / "_build" / "html"
    assert (html / "index.html").is_file(), f"no index.html in {html}"
    return html


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's signature
        pass


@pytest.fixture(scope="module")
def book_server(built_book: Path):
    """Serve the built book on 127.0.0.1 at a free port; yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(built_book))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- DevTools client


class DevTools:
    """A minimal DevTools protocol client: commands by id, and every event kept for inspection."""

    def __init__(self, websocket_url: str):
        self.connection = websocket.create_connection(websocket_url, timeout=PAGE_TIMEOUT_S, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, **params) -> dict:
        """Send one command and return its result; raise RuntimeError on a protocol error."""
        self.next_id += 1
        command_id = self.next_id
        self.connection.send(json.dumps({"id": command_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.connection.recv())
            if message.get("id") == command_id:
                if "error" in message:
                    raise RuntimeError(f"DevTools {method} failed: {message['error']}")
                return message.get("result", {})
            if "method" in message:
                self.events.append(message)

    def evaluate(self, expression: str):
        """Evaluate JavaScript in the page, awaiting a promise, and return its JSON value."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        self.connection.close()


@pytest.fixture(scope="module")
def browser(built_book: Path, tmp_path_factory):
    """Start headless Chromium and yield a DevTools client attached to one page."""
    chromium = _require_chromium()
    profile = tmp_path_factory.mktemp("chromium-profile")
    command = [
        chromium,
        "--headless=new",
        "--remote-debugging-port=0",
        f"--user-data-dir={profile}",
        f"--window-size={VIEWPORT['width']},{VIEWPORT['height']}",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-default-apps",
        "--disable-sync",
        "--disable-extensions",
        "--metrics-recording-only",
        "--no-pings",
        # Everything but loopback goes to a closed local port, and no other name resolves.
        "--proxy-server=http://127.0.0.1:9",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "about:blank",
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        command.insert(1, "--no-sandbox")  # Chromium refuses to start its sandbox as root
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if process.poll() is not None:
                pytest.fail(f"Chromium exited with {process.returncode}: {process.stderr.read()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("Chromium wrote no DevToolsActivePort within 30 s")
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])

        browser_client = DevTools(_browser_websocket_url(port))
        target = browser_client.send("Target.createTarget", url="about:blank")
        page_url = f"ws://127.0.0.1:{port}/devtools/page/{target['targetId']}"
        browser_client.close()

        client = DevTools(page_url)
        for domain in ("Page", "Network", "Runtime", "Log"):
            client.send(f"{domain}.enable")
        client.send("Emulation.setDeviceMetricsOverride", deviceScaleFactor=1, mobile=False, **VIEWPORT)
        yield client
        client.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _browser_websocket_url(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/version", timeout=10) as response:
        return json.load(response)["webSocketDebuggerUrl"]


# --------------------------------------------------------------------------- page checks


# Collected in the page after MathJax finished: images, links, typeset equations and page height.
PAGE_FACTS_JS = """
(() => ({
  images: Array.from(document.images).map(image => ({
    src: image.currentSrc || image.src, loaded: image.complete && image.naturalWidth > 0})),
  links: Array.from(document.querySelectorAll('a[href]')).map(anchor => anchor.href),
  typeset: document.querySelectorAll('mjx-container').length,
  untypeset: Array.from(document.querySelectorAll('.math'))
    .filter(element => !element.querySelector('mjx-container'))
    .map(element => element.textContent.trim().slice(0, 80)),
  rawDisplayMath: document.body.innerText.includes('$$'),
  height: document.documentElement.scrollHeight,
}))()
"""
# Resolves once MathJax has typeset the page, or at once on a page without MathJax.
MATHJAX_DONE_JS = "window.MathJax && MathJax.startup && MathJax.startup.promise ? MathJax.startup.promise.then(() => true) : false"


class _AnchorParser(HTMLParser):
    """Collect every id and a-name attribute of an HTML file, the targets of #fragment links."""

    def __init__(self):
        super().__init__()
        self.anchors: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if value and (name == "id" or (tag == "a" and name == "name")):
                self.anchors.add(value)


@functools.lru_cache(maxsize=None)
def _anchors(path: Path) -> frozenset[str]:
    parser = _AnchorParser()
    parser.feed(path.read_text(encoding="utf-8", errors="replace"))
    return frozenset(parser.anchors)


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome-error"):
        return True
    return parts.hostname == "127.0.0.1"


def _broken_link(link: str, base_url: str, html_root: Path) -> str | None:
    """Return why an internal link is broken, or None when it is fine or not internal."""
    if not link.startswith(base_url):
        return None
    parts = urlsplit(link)
    relative = unquote(parts.path)[len(urlsplit(base_url).path):]
    target = html_root / relative
    if relative == "" or relative.endswith("/"):
        target = target / "index.html"
    if not target.is_file():
        return f"link to missing file {relative or '/'}: {link}"
    if parts.fragment and target.suffix == ".html" and unquote(parts.fragment) not in _anchors(target):
        return f"link to missing anchor #{parts.fragment} in {relative}: {link}"
    return None


def _screenshot(client: DevTools, height: int, path: Path) -> Path:
    """Save the top of the page, at most MAX_SCREENSHOT_HEIGHT pixels, as a PNG."""
    clip = {"x": 0, "y": 0, "width": VIEWPORT["width"], "height": min(height, MAX_SCREENSHOT_HEIGHT), "scale": 1}
    result = client.send("Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(result["data"]))
    return path


def _wait_until_loaded(client: DevTools, url: str) -> None:
    """Poll until the page at `url` has fired its load event; raise TimeoutError otherwise."""
    deadline = time.monotonic() + PAGE_TIMEOUT_S
    while time.monotonic() < deadline:
        state = client.evaluate("[location.href, document.readyState]")
        if state == [url, "complete"]:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{url} did not finish loading within {PAGE_TIMEOUT_S} s; last state {state}")


def visit(client: DevTools, url: str, html_root: Path, base_url: str, screenshot: Path | None = None) -> dict:
    """Open one page and return its facts and a list of problems (empty when the page is clean)."""
    client.events.clear()
    client.send("Page.navigate", url=url)
    _wait_until_loaded(client, url)
    client.evaluate(MATHJAX_DONE_JS)
    facts = client.evaluate(PAGE_FACTS_JS)
    # A last round trip collects the events that arrived while the page settled.
    time.sleep(0.2)
    client.evaluate("true")

    problems = []
    url_of_request = {}
    for event in client.events:
        method, params = event["method"], event.get("params", {})
        if method == "Network.requestWillBeSent":
            url_of_request[params["requestId"]] = params["request"]["url"]
        if method == "Network.requestWillBeSent" and not _is_local(params["request"]["url"]):
            problems.append(f"request to a non-local host: {params['request']['url']}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            if urlsplit(params["response"]["url"]).path == "/favicon.ico":
                continue  # Chromium requests /favicon.ico from every site; the book declares none
            problems.append(f"HTTP {params['response']['status']} for {params['response']['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            failed_url = url_of_request.get(params["requestId"], params.get("type"))
            problems.append(f"request failed ({params.get('errorText')}): {failed_url}")
        elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"])
            problems.append(f"console {params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            problems.append(f"uncaught exception: {details.get('exception', {}).get('description', details.get('text'))}")
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            if params["entry"].get("url", "").endswith("/favicon.ico"):
                continue
            problems.append(f"console error: {params['entry']['text']} {params['entry'].get('url', '')}".strip())

    for image in facts["images"]:
        if not image["loaded"]:
            problems.append(f"image not loaded: {image['src']}")
    for link in sorted(set(facts["links"])):
        reason = _broken_link(link, base_url, html_root)
        if reason:
            problems.append(reason)
    for source in facts["untypeset"]:
        problems.append(f"equation not typeset by MathJax: {source}")
    if facts["rawDisplayMath"]:
        problems.append("raw $$ in the page text")

    if screenshot is not None:
        _screenshot(client, facts["height"], screenshot)
    return {"facts": facts, "problems": problems}


@pytest.fixture(scope="module")
def page_reports(browser: DevTools, built_book: Path, book_server: str) -> dict[str, dict]:
    """Visit every page of the built book once; return the reports by path inside html/."""
    pages = sorted(
        path.relative_to(built_book).as_posix()
        for path in built_book.rglob("*.html")
        if not path.relative_to(built_book).parts[0].startswith("_")
        # index.html only redirects, and test_book_index_redirects follows it.
        and path.relative_to(built_book).as_posix() != "index.html"
    )
    screenshots = {page: SCREENSHOT_DIR / f"{name}.png" for name, page in SCREENSHOT_PAGES.items()}
    reports = {}
    for page in pages:
        reports[page] = visit(browser, book_server + page, built_book, book_server, screenshots.get(page))
    return reports


# --------------------------------------------------------------------------- tests


def test_book_pages_clean(page_reports):
    assert "book/intro.html" in page_reports
    assert "results/cpu/tables.html" in page_reports
    problems = {page: report["problems"] for page, report in page_reports.items() if report["problems"]}
    assert problems == {}, "problems found in the built book:\n" + json.dumps(problems, indent=1)


def test_book_index_redirects(browser, page_reports, book_server):
    # page_reports first, so this runs after the page loop on the same browser tab.
    browser.send("Page.navigate", url=book_server + "index.html")
    _wait_until_loaded(browser, book_server + "book/intro.html")
    assert browser.evaluate("document.title").startswith("MSD-GCN")


@pytest.mark.parametrize("page", PAGES_WITH_MATH)
def test_book_equations_typeset(page_reports, page):
    facts = page_reports[page]["facts"]
    assert facts["typeset"] > 0, f"MathJax typeset no equation on {page}"
    assert facts["untypeset"] == []
    assert not facts["rawDisplayMath"]


@pytest.mark.parametrize("name", sorted(SCREENSHOT_PAGES))
def test_book_screenshot(page_reports, name):
    page = SCREENSHOT_PAGES[name]
    if page not in page_reports:
        pytest.skip(f"{page} is not in the built book (its notebook has not been executed into results/)")
    path = SCREENSHOT_DIR / f"{name}.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    # PNG header: width and height are big-endian 32-bit integers at bytes 16 and 20.
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width == VIEWPORT["width"]
    assert height >= VIEWPORT["height"] // 2
    # A blank white 1280 x 900 PNG is about 5 kB (PIL, measured), and rendered text is far larger.
    assert len(data) > 40_000, f"{path} is only {len(data)} bytes; the page may be blank"
    print(f"screenshot of {page}: {path}")


def test_checks_catch_broken_page(browser, built_book, book_server):
    # A page with a missing image, a dead internal link and a script from another host must
    # produce a problem for each, and the script's request must fail at the closed proxy.
    page = built_book / "broken-check.html"
    page.write_text(
        '<html><body><img src="missing.png"><a href="no-such-page.html">x</a>'
        '<script src="https://cdn.example.org/x.js"></script></body></html>'
    )
    try:
        report = visit(browser, book_server + "broken-check.html", built_book, book_server)
    finally:
        page.unlink()
    problems = "\n".join(report["problems"])
    assert "image not loaded" in problems
    assert "link to missing file no-such-page.html" in problems
    assert "request to a non-local host: https://cdn.example.org/x.js" in problems
    failed = [problem for problem in report["problems"] if problem.startswith("request failed")]
    assert any(problem.endswith("https://cdn.example.org/x.js") for problem in failed), failed
