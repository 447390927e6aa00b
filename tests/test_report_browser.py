"""The membership report rendered in a real browser (headless Chromium over the DevTools protocol): the page
loads, every <img> loads (naturalWidth > 0), and nothing is logged to the console or the network log as an
error. Skips (saying why) where Chromium or websocket-client is missing; `.ci/run` installs Chromium when it can.

Run as a script to refresh the README's screenshot from the demo sample:
    IMPRINT_MODELS_DIR=models/onnx python tests/test_report_browser.py --screenshot docs/report_membership.png
"""
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import ct_like, save_png  # noqa: E402

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0", "--remote-allow-origins=*"]


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Browser:
    """A headless Chromium driven over the DevTools protocol (websocket-client), one page."""

    def __init__(self, exe: str, timeout: float = 60.0):
        import websocket

        self.profile = tempfile.mkdtemp(prefix="imprint-chromium-")
        self.proc = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        t_end = time.monotonic() + timeout
        while not port_file.exists() or len(port_file.read_text().split()) < 2:
            if self.proc.poll() is not None or time.monotonic() > t_end:
                self.close()
                raise RuntimeError("chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        while True:
            try:
                targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5))
                page = next(t for t in targets if t.get("type") == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > t_end:
                    self.close()
                    raise
                time.sleep(0.2)
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout, suppress_origin=True)
        self.timeout = timeout
        self._id = 0
        self.events = []

    def call(self, method, **params):
        self._id += 1
        my = self._id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, event, timeout=None):
        t_end = time.monotonic() + (timeout or self.timeout)
        for e in self.events:
            if e["method"] == event:
                return e
        while time.monotonic() < t_end:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == event:
                    return msg
        raise TimeoutError(event)

    def close(self):
        try:
            if getattr(self, "ws", None):
                self.ws.close()
        finally:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            shutil.rmtree(self.profile, ignore_errors=True)


def render(url: str, screenshot: str | None = None, width: int = 1200):
    """Load ``url``; return (images: list of {src, complete, naturalWidth}, problems: list of str)."""
    b = Browser(find_chromium())
    try:
        for domain in ("Page", "Runtime", "Log"):
            b.call(f"{domain}.enable")
        b.call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
        b.call("Page.navigate", url=url)
        b.wait_for("Page.loadEventFired")
        imgs = b.call("Runtime.evaluate", returnByValue=True, awaitPromise=True, expression="""
            Promise.all(Array.from(document.images).map(i => i.complete ? null :
                new Promise(r => { i.onload = i.onerror = r; }))).then(() =>
            Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                                   naturalWidth: i.naturalWidth})))""")["result"]["value"]
        title = b.call("Runtime.evaluate", expression="document.title", returnByValue=True)["result"]["value"]
        if screenshot:
            h = b.call("Runtime.evaluate", expression="document.documentElement.scrollHeight",
                       returnByValue=True)["result"]["value"]
            b.call("Emulation.setDeviceMetricsOverride", width=width, height=int(h), deviceScaleFactor=1,
                   mobile=False)
            data = b.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
            Path(screenshot).write_bytes(base64.b64decode(data))
        problems = []
        for e in b.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                problems.append(f"exception: {p.get('exceptionDetails', {}).get('text')}")
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                problems.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                problems.append(f"log {p['entry']['level']}: {p['entry'].get('text')} {p['entry'].get('url', '')}")
        return {"title": title, "images": imgs, "problems": problems}
    finally:
        b.close()


def _skip_reason():
    if find_chromium() is None:
        return "headless Chromium not installed (Debian: apt-get install chromium; .ci/run installs it when it can)"
    try:
        import websocket  # noqa: F401
    except ImportError:
        return "websocket-client not installed (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    """A membership report with a reference null, planted copies, truth (ROC) and flagged images."""
    from imprint.engine.ingest import IngestPolicy
    from imprint.engine.pipeline import run_membership

    rng = np.random.default_rng(3)
    root = tmp_path_factory.mktemp("report")
    reals = ct_like(rng, 20)
    refs = ct_like(rng, 24)
    used = reals[:8]
    for sub in ("gen", "real", "ref"):
        (root / sub).mkdir()
    for i in range(30):
        g = (np.clip(used[i % 8].astype(np.int16) + rng.integers(-3, 4, used.shape[1:]), 0, 255).astype(np.uint8)
             if i < 16 else ct_like(rng, 1)[0])
        save_png(root / "gen" / f"g{i:03d}.png", g)
    truth = {}
    for i, r in enumerate(reals):
        save_png(root / "real" / f"r{i:03d}.png", r)
        truth[f"r{i:03d}.png"] = int(i < 8)
    for i, r in enumerate(refs):
        save_png(root / "ref" / f"n{i:03d}.png", r)
    s = run_membership(gen_dir=str(root / "gen"), real_dir=str(root / "real"), out=str(root / "scores.csv"),
                       ref_dirs=[str(root / "ref")], policy=IngestPolicy(size=(64, 64)), decision="fpr:0.05",
                       report_dir=str(root / "report"), truth=truth)
    assert s["n_flagged"] >= 1
    return root / "report"


def test_report_has_null_and_evidence_breakdown(report_dir):
    facts = json.loads((report_dir / "report.json").read_text())
    assert facts["null_scores"]["n"] == 24          # the reference non-members are the null
    rows = facts["evidence_breakdown"]
    flagged = {r["image"] for r in rows}
    import csv

    with open(report_dir.parent / "scores.csv", newline="") as fh:
        decided = {r["image"] for r in csv.DictReader(fh) if r["used"] == "1"}
    assert flagged == decided                       # one breakdown per flagged image, no other
    assert len(flagged & {f"r{i:03d}.png" for i in range(8)}) >= 6  # the planted copies are among them
    for r in rows:
        assert r["score"] > 0 and max(r["contribution"].values()) > 0
    html = (report_dir / "index.html").read_text()
    assert "null distribution" in html and "evidence_breakdown.png" in html


def test_report_renders_in_headless_chromium(report_dir):
    why = _skip_reason()
    if why:
        pytest.skip(why)
    got = render((report_dir / "index.html").as_uri())
    assert got["title"] == "imprint membership audit"
    srcs = {i["src"] for i in got["images"]}
    assert {"score_histogram.png", "evidence_breakdown.png", "roc_pr.png", "top_matches.png"} <= srcs
    bad = [i for i in got["images"] if not (i["complete"] and i["naturalWidth"] > 0)]
    assert not bad, bad
    assert got["problems"] == []


def test_browser_check_detects_a_broken_image(report_dir, tmp_path):
    """The check can fail: a report whose plot is missing is caught (naturalWidth 0 and a network error)."""
    why = _skip_reason()
    if why:
        pytest.skip(why)
    broken = tmp_path / "broken"
    shutil.copytree(report_dir, broken)
    (broken / "roc_pr.png").unlink()
    (broken / "index.html").write_text((broken / "index.html").read_text().replace(
        "</body>", "<script>console.error('planted')</script></body>"))
    got = render((broken / "index.html").as_uri())
    bad = [i["src"] for i in got["images"] if i["naturalWidth"] == 0]
    assert bad == ["roc_pr.png"]
    assert any("planted" in p for p in got["problems"])


if __name__ == "__main__":  # refresh docs/report_membership.png from the demo sample
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--screenshot", default="docs/report_membership.png")
    ap.add_argument("--out", default=None, help="demo output folder (default: a temporary one)")
    ap.add_argument("--max-height", type=int, default=2200, help="crop the screenshot to this height")
    a = ap.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's imprint, not an installed one
    from imprint.engine.demo import run_demo

    out = a.out or tempfile.mkdtemp(prefix="imprint-demo-")
    run_demo(out_dir=out, report=True)
    got = render((Path(out) / "report_membership" / "index.html").resolve().as_uri(), screenshot=a.screenshot)
    from PIL import Image

    im = Image.open(a.screenshot)   # the README shows the top of the page; a palette PNG keeps the file small
    im = im.crop((0, 0, im.width, min(im.height, a.max_height))).convert("RGB")
    im.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(a.screenshot, optimize=True)
    print(json.dumps({"images": got["images"], "problems": got["problems"]}, indent=1))
