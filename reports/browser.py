"""Open a report in headless Chromium and report what a reader would see go wrong.

Speaks the Chrome DevTools Protocol over ``--remote-debugging-pipe`` (JSON messages separated by NUL on
file descriptors 3 and 4), so it needs nothing but the system ``chromium`` binary: no driver, no Python
browser package, no download. Collected: uncaught exceptions and console errors, every network request
that is not to the file itself (an offline report makes none), and for every plot container whether
plotly drew an SVG or canvas with content in it.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reports.page import PLOT_CLASS

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
    "--window-size=1280,1000",
)
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")

#: Evaluated in the page: one record per plot container.
_PLOT_PROBE = f"""
Array.from(document.querySelectorAll("div.{PLOT_CLASS}")).map(function (div) {{
  var svg = div.querySelector("svg.main-svg");
  var marks = div.querySelectorAll(
    "g.trace, g.hm image, g.heatmaplayer image, g.imagelayer image, path.point, path.box, g.bars path, "
    + "g.table, canvas");
  var box = div.getBoundingClientRect();
  return {{id: div.id, rendered: div.getAttribute("data-rendered") === "1", has_svg: !!svg,
          marks: marks.length, width: box.width, height: box.height,
          traces: (div._fullData || []).length}};
}})
"""


@dataclass(frozen=True)
class PlotState:
    """What one plot container holds after loading: ``ok`` when plotly drew marks into a visible SVG."""

    plot_id: str
    rendered: bool
    has_svg: bool
    marks: int
    traces: int
    width: float
    height: float

    @property
    def ok(self) -> bool:
        return self.rendered and self.has_svg and self.marks > 0 and self.traces > 0 and self.width > 0


@dataclass
class PageCheck:
    """Everything the browser reported while loading the page."""

    errors: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    plots: list[PlotState] = field(default_factory=list)

    @property
    def blank_plots(self) -> list[str]:
        return [p.plot_id for p in self.plots if not p.ok]


class BrowserError(RuntimeError):
    """Chromium could not be started or stopped answering."""


def find_chromium() -> str | None:
    """Path of a Chromium-family browser on PATH (or $CHROMIUM), or None."""
    explicit = os.environ.get("CHROMIUM")
    if explicit:
        return explicit
    for name in CHROMIUM_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def check_page(
    path: str | os.PathLike[str], timeout_s: float = 60.0, chromium: str | None = None
) -> PageCheck:
    """Load ``path`` in headless Chromium, wait until every plot rendered (or ``timeout_s``), report."""
    binary = chromium or find_chromium()
    if binary is None:
        raise BrowserError("no chromium binary found (install Debian's 'chromium' or set $CHROMIUM)")
    url = Path(path).resolve().as_uri()
    with tempfile.TemporaryDirectory(prefix="mp-chromium-") as profile, _DevToolsPipe(binary, profile) as cdp:
        return _load_and_probe(cdp, url, timeout_s)


def _load_and_probe(cdp: _DevToolsPipe, url: str, timeout_s: float) -> PageCheck:
    deadline = time.monotonic() + timeout_s
    target = cdp.call("Target.createTarget", {"url": "about:blank"}, deadline)["targetId"]
    session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True}, deadline)["sessionId"]
    for domain in ("Runtime", "Log", "Network", "Page"):
        cdp.call(f"{domain}.enable", {}, deadline, session)
    check = PageCheck()
    cdp.on_event = lambda message: _record_event(check, message, url)
    cdp.forget_events()
    cdp.call("Page.navigate", {"url": url}, deadline, session)
    cdp.wait_for_event("Page.loadEventFired", deadline)
    while True:
        states = _probe_plots(cdp, session, deadline)
        if all(s.ok for s in states) or time.monotonic() > deadline - 1.0:
            break
        time.sleep(0.2)
    # give late errors (for example from a resize callback) a moment to arrive
    cdp.drain(min(deadline, time.monotonic() + 0.5))
    check.plots = states
    return check


def _probe_plots(cdp: _DevToolsPipe, session: str, deadline: float) -> list[PlotState]:
    probe = {"expression": _PLOT_PROBE, "returnByValue": True}
    reply = cdp.call("Runtime.evaluate", probe, deadline, session)
    if "exceptionDetails" in reply:
        raise BrowserError(f"plot probe failed: {reply['exceptionDetails'].get('text', '?')}")
    return [
        PlotState(
            plot_id=r["id"],
            rendered=bool(r["rendered"]),
            has_svg=bool(r["has_svg"]),
            marks=int(r["marks"]),
            traces=int(r["traces"]),
            width=float(r["width"]),
            height=float(r["height"]),
        )
        for r in reply["result"]["value"]
    ]


def _record_event(check: PageCheck, message: dict[str, Any], page_url: str) -> None:
    method, params = message.get("method"), message.get("params", {})
    if method == "Runtime.exceptionThrown":
        details = params.get("exceptionDetails", {})
        description = details.get("exception", {}).get("description") or details.get("text", "exception")
        check.errors.append(f"uncaught: {description.splitlines()[0]}")
    elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
        text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
        check.errors.append(f"console.{params['type']}: {text}")
    elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
        entry = params["entry"]
        where = entry.get("url", "")
        check.errors.append(f"log ({entry.get('source')}): {entry.get('text')} {where}".strip())
    elif method == "Network.requestWillBeSent":
        request_url = params.get("request", {}).get("url", "")
        if request_url != page_url and not request_url.startswith(LOCAL_SCHEMES):
            check.external_requests.append(request_url)


class _DevToolsPipe:
    """A minimal DevTools Protocol client over Chromium's debugging pipe (fd 3: commands, fd 4: replies)."""

    def __init__(self, binary: str, profile_dir: str) -> None:
        self.binary = binary
        self.profile_dir = profile_dir
        self.on_event = lambda message: None
        self._next_id = 0
        self._buffer = b""
        self._pending_events: list[dict[str, Any]] = []

    def __enter__(self) -> _DevToolsPipe:
        to_browser_r, self._to_browser = _pipe_above(10)
        self._from_browser, from_browser_w = _pipe_above(10)
        # bash moves our pipe ends onto fds 3 and 4 of the browser, as --remote-debugging-pipe expects
        # (the ends sit at fd >= 10 so they never collide with 3 and 4 themselves)
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w} {to_browser_r}<&- {from_browser_w}>&-'
        command = ["bash", "-c", script, self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.profile_dir}"]
        self._process = subprocess.Popen(
            command,
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._send({"id": self._new_id(), "method": "Browser.close"})
            self._process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self._process.kill()
            self._process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)

    def call(self, method: str, params: dict[str, Any], deadline: float, session: str | None = None) -> dict:
        """Send one command and return its result, dispatching events that arrive meanwhile."""
        message_id = self._new_id()
        message: dict[str, Any] = {"id": message_id, "method": method, "params": params}
        if session:
            message["sessionId"] = session
        self._send(message)
        while True:
            reply = self._receive(deadline)
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            self._dispatch(reply)

    def wait_for_event(self, method: str, deadline: float) -> None:
        for index, event in enumerate(self._pending_events):
            if event.get("method") == method:
                del self._pending_events[index]
                return
        while True:
            message = self._receive(deadline)
            self._dispatch(message)
            if message.get("method") == method:
                return

    def forget_events(self) -> None:
        """Drop events already received (so an earlier page's load event is not mistaken for ours)."""
        self._pending_events.clear()

    def drain(self, until: float) -> None:
        """Dispatch whatever events arrive before ``until``."""
        try:
            while True:
                self._dispatch(self._receive(until))
        except TimeoutError:
            return

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "method" in message:
            self._pending_events.append(message)
            del self._pending_events[:-64]
            self.on_event(message)

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _send(self, message: dict[str, Any]) -> None:
        data = json.dumps(message).encode() + b"\0"
        while data:
            written = os.write(self._to_browser, data)
            data = data[written:]

    def _receive(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("chromium did not answer in time")
            ready, _, _ = select.select([self._from_browser], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"chromium exited (code {self._process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)


def _pipe_above(lowest: int) -> tuple[int, int]:
    """A pipe whose two ends are file descriptors >= ``lowest`` (close-on-exec; pass_fds reopens them)."""
    read_end, write_end = os.pipe()
    try:
        return (
            fcntl.fcntl(read_end, fcntl.F_DUPFD_CLOEXEC, lowest),
            fcntl.fcntl(write_end, fcntl.F_DUPFD_CLOEXEC, lowest),
        )
    finally:
        os.close(read_end)
        os.close(write_end)
