"""Headless-Chromium harness for the tests of the offline HTML browser (index.html).

`check_page(html_path, actions_js)` copies the page next to itself with two scripts added: one at the
top of <head> that records every console.error / console.warn, uncaught exception and failed resource
load (an <img> that does not load fires 'error' on the element, caught in the capture phase), and one
at the end of <body> that, once the page has loaded, runs `actions_js` (a function body that returns a
JSON-able object: sort, filter, count images ...) and writes {result, errors} into a <pre> element.
Chromium prints the DOM after the page settles (--dump-dom with a virtual-time budget) and the harness
reads the <pre> back. The network is made unreachable (every host resolves to nothing), so a page that
fetched anything would show a failed load. Chromium's own console lines (stderr, --enable-logging) are
returned too.
"""
import html
import json
import os
import re
import shutil
import subprocess

# Debian's package installs /usr/bin/chromium; other systems name it differently
CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_RECORDER = """<script>window.__errors = [];
['error', 'warn'].forEach(k => { const f = console[k]; console[k] = function(...a) {
  window.__errors.push('console.' + k + ': ' + a.join(' ')); f.apply(console, a); }; });
window.addEventListener('error', e => window.__errors.push(e.message ? 'exception: ' + e.message
  : 'failed to load: ' + (e.target.src || e.target.href || e.target.tagName)), true);
</script>"""
_RUNNER = """<script>window.addEventListener('load', () => { let result;
  try { result = (function() { %s })(); } catch (e) { window.__errors.push('self-check: ' + e); }
  const pre = document.createElement('pre'); pre.id = '__selftest';
  pre.textContent = JSON.stringify({result: result, errors: window.__errors});
  document.body.appendChild(pre); });</script>"""


def find_chromium():
    """Path of a Chromium/Chrome binary, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


def chromium_args(binary):
    # --no-sandbox: CI containers run as root, where Chromium's sandbox refuses to start
    return [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND", "--enable-logging=stderr", "--v=0"]


def check_page(html_path, actions_js, timeout=120):
    """Open html_path in headless Chromium, run actions_js after load; -> (result, page errors, console lines)."""
    binary = find_chromium()
    html_path = os.path.abspath(html_path)
    with open(html_path, encoding="utf-8") as f:
        page = f.read()
    page = re.sub(r"<head>", "<head>" + _RECORDER, page, count=1)
    page = page.replace("</body>", (_RUNNER % actions_js) + "</body>", 1)
    probe = os.path.join(os.path.dirname(html_path), "_selftest_" + os.path.basename(html_path))
    with open(probe, "w", encoding="utf-8") as f:
        f.write(page)
    try:
        proc = subprocess.run(chromium_args(binary) + ["--virtual-time-budget=10000", "--dump-dom",
                                                       "file://" + probe],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        os.remove(probe)
    found = re.search(r'<pre id="__selftest">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"no self-check output from Chromium (exit {proc.returncode}): {proc.stderr[-2000:]}"
    report = json.loads(html.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return report["result"], report["errors"], console

