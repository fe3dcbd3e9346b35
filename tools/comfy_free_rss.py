"""Does "Free model and node cache" give the memory back? The ComfyUI server's RSS before a
workflow, after it, and after POST /free.

    python tools/comfy_free_rss.py --pid 12345 --server http://127.0.0.1:8188 example_workflows/droplet_image_to_video.json \\
        --overrides '{"width": 128, "height": 128, "frames": 13, "length": 13, "steps": 3}' [--frontend]

Start the server fresh so that "before" is the RSS with nothing loaded. The workflow is queued
as an API prompt (converted with tools/run_workflow.py and the server's /object_info; overrides
replace every widget input of that name), or with --frontend through tools/comfy_frontend.py
(the real web page). Then POST /free {"unload_models": true, "free_memory": true}, wait
--settle seconds and read the RSS again. Prints one JSON line: the RSS figures in MiB (VmRSS
of /proc/PID/status; VmHWM is the peak), and after-free / before. Exits 1 if the run failed.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))
from run_workflow import ui_to_api  # noqa: E402 (tools/ is not a package)


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status (kB there) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise ValueError(f"no {field} in /proc/{pid}/status: is {pid} a running process?")


def request(url: str, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as response:  # a loaded CPU answers slowly
        body = response.read()
    return json.loads(body) if body.strip() else None


def override(api: dict, overrides: dict) -> dict:
    """Every non-linked input named in overrides takes the given value."""
    for node in api.values():
        for name, value in overrides.items():
            if name in node["inputs"] and not isinstance(node["inputs"][name], list):
                node["inputs"][name] = value
    return api


def run_api(server: str, workflow: Path, overrides: dict, timeout: float) -> str:
    """Queues the workflow as an API prompt; 'success' or the error, once it has finished."""
    api = override(ui_to_api(json.loads(workflow.read_text()), request(f"{server}/object_info")), overrides)
    try:
        prompt_id = request(f"{server}/prompt", {"prompt": api, "client_id": str(uuid.uuid4())})["prompt_id"]
    except urllib.error.HTTPError as error:
        return f"rejected: {error.read().decode(errors='replace')[:2000]}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            entry = request(f"{server}/history/{prompt_id}").get(prompt_id)
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            entry = None  # a busy server can miss a poll
        if entry:
            status = entry.get("status", {})
            errors = [m[1] for m in status.get("messages", []) if m[0] == "execution_error"]
            return "success" if status.get("status_str") == "success" else json.dumps(errors or status)[:2000]
        time.sleep(2)
    return f"not finished within {timeout:.0f} s"


def run_frontend(server: str, workflow: Path, overrides: dict, timeout: float) -> str:
    """Queues the workflow through the web page (tools/comfy_frontend.py, same Python)."""
    command = [sys.executable, str(TOOLS / "comfy_frontend.py"), "--server", server, "--timeout", str(timeout),
               "--overrides", json.dumps(overrides), str(workflow)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return f"comfy_frontend.py exited {done.returncode}: {done.stderr.strip()[-2000:]}"
    report = json.loads(lines[-1])
    return "success" if report["status"] == "success" else str(report["error"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workflow", type=Path, help="UI-format workflow file")
    p.add_argument("--pid", type=int, required=True, help="the ComfyUI server's process id")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--overrides", type=json.loads, default={}, help="JSON {widget name: value}")
    p.add_argument("--frontend", action="store_true", help="queue through the web page (selenium)")
    p.add_argument("--settle", type=float, default=5.0, help="seconds to wait after POST /free")
    p.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the prompt")
    args = p.parse_args(argv)
    server = args.server.rstrip("/")
    before = rss_mib(args.pid)
    start = time.monotonic()
    status = (run_frontend if args.frontend else run_api)(server, args.workflow, args.overrides, args.timeout)
    seconds = round(time.monotonic() - start, 1)
    after_run, peak = rss_mib(args.pid), rss_mib(args.pid, "VmHWM")
    request(f"{server}/free", {"unload_models": True, "free_memory": True})
    time.sleep(args.settle)
    after_free = rss_mib(args.pid)
    print(json.dumps({"workflow": args.workflow.name, "status": status, "seconds": seconds,
                      "rss_before_mib": before, "rss_after_run_mib": after_run, "rss_peak_mib": peak,
                      "rss_after_free_mib": after_free, "after_free_over_before": round(after_free / before, 2)}))
    return 0 if status == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
