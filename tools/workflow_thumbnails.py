"""Draw the Templates browser's thumbnail of each workflow: the graph as the frontend draws it.

    python tools/workflow_thumbnails.py --server http://127.0.0.1:8188 example_workflows/*.json \\
        [--size 400] [--quality 0.85] [--window 1200,1200]

ComfyUI's Templates browser (Templates -> Extensions -> this pack) shows `<name>.jpg`, found
beside `<name>.json` in the pack's example_workflows/, as the card of each bundled workflow, and
a placeholder gradient where there is none. For each workflow file this opens the workflow in the
real frontend (headless Chromium, as tools/comfy_frontend.py does), hides everything of the page
but the graph, zooms the whole graph into the thumbnail's graph area, takes a screenshot, and
writes that area scaled to --size pixels, with the first words of the workflow's Note as its
caption, as `<name>.jpg` beside the workflow. Run it again after editing a workflow.

The server must have this pack loaded, so that the frontend draws its nodes (an unknown node is
drawn as a red error box: the tool then refuses). A Load Image node shows the server's input
file of that name (ComfyUI ships the bundled workflows' example.png). Needs selenium and Debian's
chromium + chromium-driver, like tools/comfy_frontend.py.
"""

import argparse
import base64
import json
import re
import sys
import time
from pathlib import Path

from comfy_frontend import LOAD_JS, open_frontend, press_escape

# Only the graph is drawn: every other element of the page is made invisible (menus, side bar,
# minimap, zoom buttons, toasts), the canvas and the widgets the frontend places over it (text
# boxes) stay. Nodes keep their full drawing at any zoom (the frontend switches small nodes to
# plain boxes). Nothing is stored: the server's user settings stay as they are.
GRAPH_ONLY_JS = """
app.canvas.canvas.dataset.thumbnail = "graph";
const style = document.createElement("style");
style.textContent = `body * { visibility: hidden !important; }
  [data-thumbnail], .dom-widget, .dom-widget * { visibility: visible !important; }`;
document.head.appendChild(style);
app.canvas.min_font_size_for_lod = 0;
"""

# Zooms the canvas so that the graph's bounding box (nodes with their title bars, and groups)
# fills the largest rectangle of aspect `aspect` (width / height) centred in the canvas; returns
# that rectangle in CSS pixels.
FIT_JS = """
const aspect = arguments[0];
const graph = app.graph, canvas = app.canvas;
// A file the workflow names that this server lacks (an input video) outlines its node in red:
// that says nothing about the workflow, so the thumbnail draws it as on a server that has it.
for (const node of graph._nodes) node.has_errors = false;
const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
const boxes = graph._nodes.map(n => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
for (const g of graph._groups || graph.groups || []) boxes.push([g.pos[0], g.pos[1], g.size[0], g.size[1]]);
const left = Math.min(...boxes.map(b => b[0])), top = Math.min(...boxes.map(b => b[1]));
const right = Math.max(...boxes.map(b => b[0] + b[2])), bottom = Math.max(...boxes.map(b => b[1] + b[3]));
const rect = canvas.canvas.getBoundingClientRect();
const width = Math.min(rect.width, rect.height * aspect), height = width / aspect;
const scale = Math.min(width / (right - left), height / (bottom - top));
canvas.ds.scale = scale;
canvas.ds.offset = [rect.width / 2 / scale - (left + right) / 2, rect.height / 2 / scale - (top + bottom) / 2];
canvas.setDirty(true, true);
return {x: rect.left + (rect.width - width) / 2, y: rect.top + (rect.height - height) / 2, width, height,
        ratio: window.devicePixelRatio || 1};
"""

# The caption's lines, broken to fit `width` pixels in the caption's font.
WRAP_JS = """
const [text, font, width] = arguments;
const context = document.createElement("canvas").getContext("2d");
context.font = font;
const lines = [];
for (const word of text.split(/\\s+/)) {
  const last = lines.length ? lines[lines.length - 1] : null;
  if (last !== null && context.measureText(last + " " + word).width <= width) lines[lines.length - 1] += " " + word;
  else lines.push(word);
}
return lines;
"""

# The thumbnail: the graph's rectangle cut from the screenshot (a PNG of the viewport in device
# pixels) and scaled down with the browser's own resampling, the caption's lines under it, on the
# canvas's background colour. A JPEG, base64-encoded.
COMPOSE_JS = """
const [png, box, size, layout, quality, done] = arguments;
const image = new Image();
image.onload = () => {
  const out = document.createElement("canvas");
  out.width = out.height = size;
  const c = out.getContext("2d");
  const r = box.ratio;
  c.drawImage(image, box.x * r, box.y * r, 1, 1, 0, 0, size, size);  // the background colour
  c.fillStyle = layout.color; c.font = layout.font; c.textBaseline = "top";
  layout.lines.forEach((line, i) => c.fillText(line, layout.margin, layout.text_top + i * layout.line));
  c.imageSmoothingEnabled = true; c.imageSmoothingQuality = "high";
  const [x, y, w, h] = layout.graph;
  c.drawImage(image, box.x * r, box.y * r, box.width * r, box.height * r, x, y, w, h);
  done(out.toDataURL("image/jpeg", quality).split(",")[1]);
};
image.onerror = () => done(null);
image.src = "data:image/png;base64," + png;
"""


def caption(workflow: dict) -> str:
    """What the workflow does, in its own Note's words: the first line up to its first colon,
    bracket or full stop ("DropletVideo image-to-video for 12-16 GB GPUs"); "" without a Note."""
    for node in workflow["nodes"]:
        if node["type"] in ("Note", "MarkdownNote") and node.get("widgets_values"):
            first = str(node["widgets_values"][0]).strip().split("\n")[0]
            return re.split(r": | \(|\. ", first.rstrip(".:"), maxsplit=1)[0]
    return ""


def layout(driver, text: str, args) -> dict:
    """Where the graph and the caption's lines go in the thumbnail, in its pixels: the graph below
    the band where the card draws its "Node graph" badge, the caption at the bottom."""
    margin, font_px = round(args.size * 0.04), round(args.size * args.font)
    font = f"600 {font_px}px Inter, Arial, sans-serif"
    lines = driver.execute_script(WRAP_JS, text, font, args.size - 2 * margin) if text else []
    line = round(font_px * 1.25)
    text_top = args.size - margin - len(lines) * line
    badge = round(args.size * 0.16)
    graph = [margin, badge, args.size - 2 * margin, text_top - margin - badge]
    return {"lines": lines, "font": font, "line": line, "text_top": text_top, "margin": margin,
            "color": "#e6e6e6", "graph": graph}


def thumbnail(driver, path: Path, args) -> dict:
    """Opens one workflow, draws its thumbnail and writes it beside the file: a JSON report."""
    workflow = json.loads(path.read_text())
    loaded = driver.execute_async_script(LOAD_JS, workflow, path.stem)
    press_escape(driver)  # a missing-models dialog
    if "error" in loaded:
        return {"workflow": path.name, "error": f"loadGraphData failed: {loaded['error']}"}
    if loaded["unknown"]:
        return {"workflow": path.name, "error": f"unknown node types (is the pack loaded?): {loaded['unknown']}"}
    place = layout(driver, caption(workflow), args)
    _, _, width, height = place["graph"]
    box = driver.execute_script(FIT_JS, width / height)
    time.sleep(args.settle)  # the canvas redraws on the next animation frame; text boxes follow
    jpeg = driver.execute_async_script(COMPOSE_JS, driver.get_screenshot_as_base64(), box, args.size,
                                       place, args.quality)
    if not jpeg:
        return {"workflow": path.name, "error": "the browser could not decode its own screenshot"}
    out = path.with_suffix(".jpg")
    out.write_bytes(base64.b64decode(jpeg))
    return {"workflow": path.name, "thumbnail": str(out), "bytes": out.stat().st_size,
            "caption": " ".join(place["lines"])}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workflows", nargs="+", type=Path, help="UI-format workflow files")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--size", type=int, default=400, help="thumbnail side in pixels (core's templates use 350-400)")
    p.add_argument("--quality", type=float, default=0.85, help="JPEG quality, 0-1")
    p.add_argument("--font", type=float, default=0.075, help="caption font size, as a fraction of the side")
    p.add_argument("--settle", type=float, default=1.5, help="seconds between zooming and the screenshot")
    p.add_argument("--window", default="1200,1200", help="browser window size, width,height")
    p.add_argument("--page-timeout", type=float, default=300, help="seconds for the page to start")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    p.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    args = p.parse_args(argv)
    driver = open_frontend(args.server.rstrip("/"), args)
    failed = 0
    try:
        driver.execute_script(GRAPH_ONLY_JS)
        for path in args.workflows:
            report = thumbnail(driver, path, args)
            failed += "error" in report
            print(json.dumps(report), flush=True)
    finally:
        driver.quit()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
