"""Open a report in a headless Chromium (the system's, never a downloaded one) over the Chrome DevTools
protocol: evaluate script in the page, record what the page requested, take screenshots. Used by the
report's browser tests and its benchmark; needs the ``websocket-client`` package (the dev extra).

Chromium runs with a proxy that leads nowhere (``--proxy-server=127.0.0.1:9``), so a page that tried to
fetch anything from the network would fail, and every request it makes is recorded in ``requests``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

READY = "document.body && document.body.dataset.ready"  # the report sets it once its samples are drawn
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """``$STEERLAB_CHROMIUM``, else the first of :data:`NAMES` on the PATH, else None."""
    given = os.environ.get("STEERLAB_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    return next((p for p in (shutil.which(n) for n in NAMES) if p), None)


class Browser:
    """One headless Chromium and one page (tab) driven over the DevTools protocol."""

    def __init__(
        self, binary: str, width: int = 1400, height: int = 1000, timeout: float = 30.0, sandbox: bool | None = None
    ) -> None:
        """``sandbox``: Chromium's sandbox; by default off for root (where Chromium refuses to start with it)."""
        import websocket

        self.profile = tempfile.mkdtemp(prefix="steerlab-chromium-")
        args = [binary, "--headless=new", "--remote-debugging-port=0", f"--user-data-dir={self.profile}",
                "--no-first-run", "--no-default-browser-check", "--disable-gpu", "--disable-extensions",
                "--disable-background-networking", "--disable-sync", "--proxy-server=127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>", f"--window-size={width},{height}", "about:blank"]  # fmt: skip
        if sandbox is False or (sandbox is None and os.geteuid() == 0):
            args.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.events: list[dict[str, Any]] = []
        self._id = 0
        try:
            port_file, deadline = Path(self.profile) / "DevToolsActivePort", time.monotonic() + timeout
            while not (port_file.is_file() and len(port_file.read_text().split("\n")) >= 2):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"chromium did not start ({binary}, exit {self.proc.poll()})")
                time.sleep(0.05)
            port, path = port_file.read_text().split("\n")[:2]
            self.ws = websocket.create_connection(f"ws://127.0.0.1:{port}{path}", timeout=timeout, suppress_origin=True)
            target = self.call("Target.createTarget", {"url": "about:blank"}, session=False)["targetId"]
            self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True}, session=False)[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Network"):
                self.call(f"{domain}.enable")
            self.call("Emulation.setDeviceMetricsOverride",
                      {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})  # fmt: skip
        except BaseException:
            self.close()
            raise

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = True) -> dict[str, Any]:
        """Send one command and wait for its answer; events that arrive meanwhile go to ``events``."""
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self.ws.send(json.dumps(message))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def evaluate(self, expression: str, await_promise: bool = False) -> Any:
        """The value of a script expression in the page (an exception in it is a RuntimeError)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True,
                                                "awaitPromise": await_promise})  # fmt: skip
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised: {result['exceptionDetails']}")
        return result["result"].get("value")

    def open(self, url: str, ready: str = READY, timeout: float = 30.0, fresh: bool = True) -> float:
        """Navigate to ``url`` and wait until the ``ready`` expression is truthy; returns the seconds it took.

        ``fresh``: load the page anew (by way of about:blank), even where only its fragment changes; without
        it, a new fragment is a same-document navigation (the page's ``hashchange``)."""
        if fresh:
            self.open("about:blank", ready="document.readyState === 'complete' && location.href === 'about:blank'",
                      timeout=timeout, fresh=False)  # fmt: skip
        started = time.perf_counter()
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.evaluate(ready):
                    return time.perf_counter() - started
            except RuntimeError:  # the old document went away mid-evaluation
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} was not ready within {timeout:.0f} s")
            time.sleep(0.02)

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", {"format": "png"})["data"])

    def requests(self) -> list[str]:
        """Every URL the page requested so far."""
        return [e["params"]["request"]["url"] for e in self.events if e.get("method") == "Network.requestWillBeSent"]

    def of(self, method: str) -> list[dict[str, Any]]:
        """The events of one kind received so far (``Page.javascriptDialogOpening``, ``Runtime.exceptionThrown``)."""
        return [e for e in self.events if e.get("method") == method]

    def close(self) -> None:
        """Stop this Chromium (its whole process group, which this object started) and drop its profile."""
        ws = getattr(self, "ws", None)
        if ws is not None:
            try:
                ws.close()
            except Exception:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait(timeout=10)
        shutil.rmtree(self.profile, ignore_errors=True)
