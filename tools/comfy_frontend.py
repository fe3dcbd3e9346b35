"""Run workflows through the real ComfyUI web frontend in headless Chromium, as a user would.

    python tools/comfy_frontend.py --server http://127.0.0.1:8188 example_workflows/*.json \\
        --overrides '{"width": 128, "height": 128, "frames": 13, "length": 13, "steps": 3}' \\
        --screenshots shots [--timeout 1800] [--no-queue]

For each workflow file: opens it with the page's own `app.loadGraphData`, reports node types the
frontend does not know (a pack that did not load, a renamed node) and nodes whose boxes overlap,
sets every widget named in --overrides to the given value, saves a screenshot, presses Queue
(`app.queuePrompt(0, 1)`, so the frontend converts the graph itself) and polls GET /history until
the prompt is done. Prints one JSON line per workflow; exits 1 if any workflow fails to load, has
unknown nodes or overlapping nodes, is rejected, or fails to run.

Needs selenium (pip) and Debian's chromium + chromium-driver; standard library otherwise.
"""

import argparse
import json
import signal
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

# In-page scripts (run with execute_async_script: the last argument is the callback) ------------

LOAD_JS = """
const [workflow, name, done] = arguments;
(async () => {
  const known = LiteGraph.registered_node_types;
  const unknown = [...new Set(workflow.nodes.map(n => n.type).filter(t => !(t in known)))];
  await app.loadGraphData(workflow, true, true, name);
  const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
  const nodes = app.graph._nodes.map(n => ({id: n.id, type: n.type, title: n.title,
    box: [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]}));
  done({unknown, nodes});
})().catch(e => done({error: String(e && e.stack || e)}));
"""

OVERRIDE_JS = """
const [overrides, done] = arguments;
const applied = [];
for (const node of app.graph._nodes) {
  for (const w of node.widgets || []) {
    if (!(w.name in overrides)) continue;
    w.value = overrides[w.name];
    if (w.callback) w.callback(w.value, app.canvas, node);
    applied.push(`${node.id}:${node.type}.${w.name}=${JSON.stringify(w.value)}`);
  }
}
app.graph.setDirtyCanvas(true, true);
done(applied);
"""

# app.queuePrompt shows the server's answer in a dialog and returns no prompt id: record what
# the page's API client gets back (the id, or the rejection) on the window.
QUEUE_JS = """
const done = arguments[0];
(async () => {
  const client = app.api;
  if (!client.__dropletWrapped) {
    const original = client.queuePrompt.bind(client);
    client.queuePrompt = async (...args) => {
      try { const r = await original(...args); window.__dropletQueued = r; return r; }
      catch (e) { window.__dropletRejected = e && e.response ? e.response : String(e); throw e; }
    };
    client.__dropletWrapped = true;
  }
  window.__dropletQueued = null; window.__dropletRejected = null;
  await app.queuePrompt(0, 1);
  done({queued: window.__dropletQueued, rejected: window.__dropletRejected});
})().catch(e => done({rejected: String(e && e.stack || e)}));
"""


# Browser ---------------------------------------------------------------------------------------

# Zoom the canvas to `scale` with the graph's top-left corner in view (readable screenshots: the
# frontend draws no widget names below about 60%).
FIT_JS = """
const scale = arguments[0];
const nodes = app.graph._nodes;
const left = Math.min(...nodes.map(n => n.pos[0])), top = Math.min(...nodes.map(n => n.pos[1])) - 40;
app.canvas.ds.scale = scale;
app.canvas.ds.offset = [90 / scale - left, 20 / scale - top];  // clear of the sidebar
app.canvas.setDirty(true, true);
"""

def open_frontend(server: str, args) -> webdriver.Chrome:
    """Headless Chromium on the server's page, once `app.graph` exists, dialogs dismissed."""
    options = webdriver.ChromeOptions()
    options.binary_location = args.chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", f"--window-size={args.window}",
                 "--disable-dev-shm-usage"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    driver.command_executor.client_config.timeout = args.page_timeout + 60  # selenium's own: 120 s
    driver.set_script_timeout(args.page_timeout)
    driver.set_page_load_timeout(args.page_timeout)
    driver.get(server)
    deadline = time.monotonic() + args.page_timeout
    while not driver.execute_script("return !!(window.app && window.app.graph && window.LiteGraph)"):
        if time.monotonic() > deadline:
            driver.quit()
            raise SystemExit(f"{server}: the frontend did not start within {args.page_timeout:.0f} s")
        time.sleep(0.5)
    time.sleep(2)  # the templates dialog opens shortly after the graph
    press_escape(driver)
    return driver


def press_escape(driver) -> None:
    """Closes an open dialog (the templates dialog on a first start, an error dialog)."""
    for _ in range(2):
        ActionChains(driver).send_keys(Keys.ESCAPE).perform()
        time.sleep(0.3)


# Checks ------------------------------------------------------------------------------------------

def overlaps(nodes: list) -> list:
    """Pairs "id:type / id:type" of nodes whose boxes (title bar included) intersect."""
    found = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["box"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw and bx < ax + aw and ay < by + bh and by < ay + ah:
                found.append(f"{a['id']}:{a['type']} / {b['id']}:{b['type']}")
    return found


# Server ------------------------------------------------------------------------------------------

def get_json(url: str):
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def error_text(status: dict) -> str:
    """The execution_error message of a /history status, one line."""
    for kind, data in status.get("messages", []):
        if kind == "execution_error":
            return (f"node {data.get('node_id')} ({data.get('node_type')}): {data.get('exception_type')}: "
                    f"{data.get('exception_message', '').strip()}")
        if kind == "execution_interrupted":
            return "interrupted"
    return f"status {status.get('status_str')}"


def output_files(outputs: dict) -> list:
    """subfolder/filename of every file the output nodes report (images, videos, audio...)."""
    files = []
    for node_output in outputs.values():
        for items in node_output.values():
            for item in items if isinstance(items, list) else []:
                if isinstance(item, dict) and "filename" in item:
                    files.append(str(Path(item.get("subfolder", ""), item["filename"])))
    return files


def wait_for(server: str, prompt_id: str, timeout: float) -> dict:
    """The prompt's /history entry once it has finished; {} after the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entry = get_json(f"{server}/history/{prompt_id}").get(prompt_id)
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            entry = None  # a server busy computing on a loaded CPU can miss a poll
        if entry:  # the server files a prompt in the history once it has finished or failed
            return entry
        time.sleep(2)
    return {}


# One workflow ------------------------------------------------------------------------------------

def run_one(driver, server: str, path: Path, args) -> dict:
    """Load, check, override, screenshot, queue and wait: the JSON line for one workflow."""
    start = time.monotonic()
    report = {"workflow": path.name, "status": "error", "error": None}
    loaded = driver.execute_async_script(LOAD_JS, json.loads(path.read_text()), path.stem)
    press_escape(driver)  # a missing-nodes or missing-models dialog
    if "error" in loaded:
        report["error"] = f"loadGraphData failed: {loaded['error']}"
        return report
    report["unknown_node_types"] = loaded["unknown"]
    report["overlapping_nodes"] = overlaps(loaded["nodes"])
    report["overrides"] = driver.execute_async_script(OVERRIDE_JS, args.overrides)
    if args.screenshots:
        if args.scale:
            driver.execute_script(FIT_JS, args.scale)
        time.sleep(1)
        shot = Path(args.screenshots) / f"{path.stem}.png"
        driver.save_screenshot(str(shot))
        report["screenshot"] = str(shot)
    if loaded["unknown"]:
        report["error"] = f"unknown node types: {', '.join(loaded['unknown'])}"
    elif args.no_queue:
        report["status"], report["error"] = "loaded", None
    else:
        run_queued(driver, server, report, args.timeout)
    report["seconds"] = round(time.monotonic() - start, 1)
    return report


def run_queued(driver, server: str, report: dict, timeout: float) -> None:
    """Presses Queue and fills status, error, prompt_id and outputs into the report."""
    answer = driver.execute_async_script(QUEUE_JS)
    press_escape(driver)
    if answer.get("rejected") or not answer.get("queued"):
        report["error"] = f"prompt rejected: {json.dumps(answer.get('rejected'))[:2000]}"
        return
    prompt_id = report["prompt_id"] = answer["queued"]["prompt_id"]
    entry = wait_for(server, prompt_id, timeout)
    if not entry:
        report["error"] = f"not finished within {timeout:.0f} s"
        return
    report["outputs"] = output_files(entry.get("outputs", {}))
    if entry["status"].get("status_str") == "success":
        report["status"], report["error"] = "success", None
    else:
        report["error"] = error_text(entry["status"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workflows", nargs="+", type=Path, help="UI-format workflow files")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--overrides", type=json.loads, default={},
                   help='JSON {widget name: value}, applied to every widget of that name')
    p.add_argument("--screenshots", help="folder for one PNG per workflow (after loading)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for each prompt")
    p.add_argument("--page-timeout", type=float, default=300,
                   help="seconds for the page to start, and for each in-page script")
    p.add_argument("--no-queue", action="store_true", help="only load, check and screenshot")
    p.add_argument("--scale", type=float, help="canvas zoom for the screenshots (e.g. 0.8), graph at the top left")
    p.add_argument("--window", default="1600,1000", help="browser window size, width,height")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args(argv)
    server = args.server.rstrip("/")
    if args.screenshots:
        Path(args.screenshots).mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that `finally` closes the browser
    driver = open_frontend(server, args)
    failed = 0
    try:
        for path in args.workflows:
            try:
                report = run_one(driver, server, path, args)
            except (WebDriverException, OSError, ValueError) as error:
                report = {"workflow": path.name, "status": "error", "error": f"harness: {error!r}"[:2000]}
            failed += report["status"] == "error" or bool(report.get("overlapping_nodes"))
            print(json.dumps(report), flush=True)
    finally:
        driver.quit()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
