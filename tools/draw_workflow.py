"""Draws a UI-format workflow as a PNG (for the README): node boxes, their widget values, links.

    python tools/draw_workflow.py workflows/droplet_i2v.json docs/workflow_i2v.png
"""

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

SCALE, MARGIN, TITLE_H, LINE_H = 0.5, 20, 18, 13
COLORS = {"DROPLET_MODEL": "#b39ddb", "DROPLET_VAE": "#ef9a9a", "DROPLET_TEXT_ENCODER": "#ffcc80",
          "DROPLET_COND": "#ffe082", "DROPLET_IMAGE_COND": "#80cbc4", "LATENT": "#f48fb1", "IMAGE": "#90caf9",
          "VIDEO": "#a5d6a7"}


def _box(node, origin):
    x, y = node["pos"]
    w, h = node.get("size", [300, 120])
    left, top = (x - origin[0]) * SCALE + MARGIN, (y - origin[1]) * SCALE + MARGIN
    return left, top, left + w * SCALE, top + h * SCALE


def _text_lines(node, width_chars):
    if node["type"] in ("Note", "MarkdownNote"):
        text = " ".join(str(v) for v in node.get("widgets_values", []))
        words, lines, line = text.split(), [], ""
        for word in words:
            if len(line) + len(word) + 1 > width_chars:
                lines.append(line)
                line = word
            else:
                line = f"{line} {word}".strip()
        return lines + [line]
    return [str(v)[:width_chars] for v in node.get("widgets_values", []) if v not in ("fixed", "randomize")]


def draw(workflow: dict) -> Image.Image:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    origin = (min(n["pos"][0] for n in nodes.values()), min(n["pos"][1] for n in nodes.values()))
    boxes = {i: _box(n, origin) for i, n in nodes.items()}
    width = int(max(b[2] for b in boxes.values()) + MARGIN)
    height = int(max(b[3] for b in boxes.values()) + MARGIN)
    image = Image.new("RGB", (width, height), "#202020")
    pen = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for _, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        a, b = boxes[src], boxes[dst]
        start = (a[2], a[1] + TITLE_H + 6 + src_slot * LINE_H)
        end = (b[0], b[1] + TITLE_H + 6 + dst_slot * LINE_H)
        mid = (start[0] + end[0]) / 2
        pen.line([start, (mid, start[1]), (mid, end[1]), end], fill=COLORS.get(kind, "#bbbbbb"), width=2)
    for node_id, node in nodes.items():
        box = boxes[node_id]
        note = node["type"] in ("Note", "MarkdownNote")
        pen.rectangle(box, fill="#3a3a2a" if note else "#353535", outline="#777777")
        pen.rectangle((box[0], box[1], box[2], box[1] + TITLE_H), fill="#4a4a4a")
        pen.text((box[0] + 5, box[1] + 3), node.get("title", node["type"]), fill="white", font=font)
        chars = max(int((box[2] - box[0]) / 6), 10)
        for row, line in enumerate(_text_lines(node, chars)):
            y = box[1] + TITLE_H + 4 + row * LINE_H
            if y + LINE_H > box[3]:
                break
            pen.text((box[0] + 6, y), line, fill="#dddddd", font=font)
    return image


def main():
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.parent.mkdir(parents=True, exist_ok=True)
    draw(json.loads(source.read_text())).save(target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
