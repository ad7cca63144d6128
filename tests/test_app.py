"""The Voilà app as a server (superdiff.app): Host/Origin allowlist, token, kernel cap, culling, and a
client that sends out-of-range widget values. Plain HTTP and websocket requests on a free localhost
port, no browser: fast enough (≈ 40 s) for `make pytest`; every server is stopped also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import html
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from servers import free_port, jupyter_dirs, log_tail, running

from superdiff import app

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "test-token-0123456789"
PLAYGROUND = str(ROOT / "notebooks" / "04_playground.ipynb")  # a notebook the launcher accepts
START_TIMEOUT, REPLY_TIMEOUT = 60, 60  # seconds
TINY_NOTEBOOK = {
    "cells": [{"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": "1"}],
    "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
    "nbformat": 4,
    "nbformat_minor": 4,
}


@dataclass
class App:
    """A running app: its process, port and log."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self) -> str:
        return log_tail(self.log, 30)

    def kernels(self) -> list[psutil.Process]:
        """The live kernel processes the server started (a culled one that is exiting does not count)."""
        return [p for p in psutil.Process(self.proc.pid).children() if is_kernel(p)]


def is_kernel(process: psutil.Process) -> bool:
    """A running ipykernel; False for a zombie or a process gone while being read."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(process.cmdline())
    except (psutil.ZombieProcess, psutil.NoSuchProcess):
        return False


XSRF: dict[str, str] = {}  # kernel id -> the _xsrf cookie its page set, as a browser keeps it


def read_within(response, timeout: float) -> bytes:
    """A reply's body, or TimeoutError if it is not complete within ``timeout`` s."""
    deadline, chunks = time.monotonic() + timeout, []
    while chunk := response.read1(2**16):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{response.url}: the reply went on for more than {timeout} s")
    return b"".join(chunks)


def get(url: str, host: str | None = None, timeout: float = REPLY_TIMEOUT) -> tuple[int, str]:
    """(status, body) of a GET, errors included; ``host`` replaces the Host header. A page's _xsrf cookie
    goes into XSRF under its kernel id. The whole reply must come within ``timeout`` s: Voilà streams a page
    while its kernel starts, and one whose kernel died at start streamed on without end."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, body = response.status, read_within(response, timeout).decode(errors="replace")
            cookies = response.headers.get_all("Set-Cookie") or []
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    xsrf = [c.split(";", 1)[0].split("=", 1)[1] for c in cookies if c.startswith("_xsrf=")]
    if xsrf and '"kernelId": "' in body:
        XSRF[kernel_of(body)] = xsrf[0]
    return status, body


@contextmanager
def serve(tmp: Path, *options: str, notebook: Path | None = None):
    """``python -m superdiff.app`` on a free localhost port; stopped (with its kernels) afterwards."""
    if notebook is None:
        notebook = tmp / "tiny.ipynb"
        notebook.write_text(json.dumps(TINY_NOTEBOOK))
    port, log = free_port(), tmp / "app.log"
    args = [sys.executable, "-m", "superdiff.app", "--port", str(port), "--notebook", str(notebook), *options]
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        return get(url + "/voila/static/voila.js", timeout=2)[0] == 200  # cheap: no kernel

    with running(args, tmp, log, up, START_TIMEOUT) as proc:
        yield App(proc, port, log)


def open_page(server: App, token: str = "") -> str:
    """Load the app's page (this starts a kernel); returns the kernel's id."""
    status, body = get(f"{server.url}/?token={token}")
    assert status == 200, f"{status}: {body[:300]}\n{server.log_tail()}"
    return kernel_of(body)


def kernel_of(page: str) -> str:
    """The kernel id in a Voilà page."""
    return page.split('"kernelId": "', 1)[1].split('"', 1)[0]


def shutdown(server: App, kernel_id: str, token: str = "") -> None:
    """Shut a kernel down as Voilà's page does when it is closed: a POST of the _xsrf cookie its page set
    (the page reads it from document.cookie; without one the server refused the POST and kept the kernel)."""
    url = f"{server.url}/voila/api/shutdown/{kernel_id}?token={token}"
    xsrf = XSRF.get(kernel_id, "")
    headers = {"Cookie": f"_xsrf={xsrf}"} if xsrf else {}
    data = urllib.parse.urlencode({"_xsrf": xsrf}).encode()
    request = urllib.request.Request(url, method="POST", headers=headers, data=data)
    with urllib.request.urlopen(request, timeout=REPLY_TIMEOUT) as response:
        assert response.status == 204


# ----------------------------------------------------------------------------- a widget client


def message(msg_type: str, content: dict, channel: str = "shell") -> dict:
    header = {"msg_id": uuid.uuid4().hex, "msg_type": msg_type, "username": "test", "session": "s"}
    header.update(date="2026-01-01T00:00:00Z", version="5.3")
    return {"header": header, "parent_header": {}, "metadata": {}, "content": content, "channel": channel}


class WidgetClient:
    """Speaks the Jupyter widget protocol over the kernel websocket, as a browser (or anyone) can."""

    def __init__(self, ws):
        self.ws, self.states = ws, {}

    @classmethod
    async def connect(cls, server: App, kernel_id: str, token: str = "", session: str = "s", **headers: str):
        """Open the kernel's websocket; ``headers``: e.g. Host, Origin. Raises HTTPClientError if refused.
        A connection of the same ``session`` replaces this one, as a page's reconnect does."""
        from tornado.httpclient import HTTPRequest
        from tornado.websocket import websocket_connect

        url = f"ws://127.0.0.1:{server.port}/api/kernels/{kernel_id}/channels?session_id={session}"
        request = HTTPRequest(url + (f"&token={token}" if token else ""), headers=headers)
        request.connect_timeout = REPLY_TIMEOUT
        return cls(await websocket_connect(request))

    async def kernel_info(self) -> dict:
        await self.send("kernel_info_request", {})
        return await self.receive(lambda m: m["msg_type"] == "kernel_info_reply")

    async def send(self, msg_type: str, content: dict) -> None:
        await self.ws.write_message(json.dumps(message(msg_type, content)))

    async def receive(self, until, timeout: float = REPLY_TIMEOUT) -> dict:
        """Read messages (keeping widget states up to date) until ``until(msg)``; returns that message."""
        deadline = time.monotonic() + timeout
        while True:
            raw = await asyncio.wait_for(self.ws.read_message(), max(0.1, deadline - time.monotonic()))
            assert raw is not None, "the server closed the websocket"
            msg = json.loads(raw)
            data = msg["content"].get("data", {}) if msg["msg_type"] == "comm_msg" else {}
            if data.get("method") == "update":
                self.states.setdefault(msg["content"]["comm_id"], {}).update(data["state"])
            if until(msg):
                return msg

    async def load_states(self) -> None:
        """Every widget's state: the comm ids from comm_info, then request_state for each."""
        await self.send("comm_info_request", {"target_name": "jupyter.widget"})
        reply = await self.receive(lambda m: m["msg_type"] == "comm_info_reply")
        for comm_id in reply["content"]["comms"]:
            await self.send("comm_msg", {"comm_id": comm_id, "data": {"method": "request_state"}})
            await self.receive(lambda m, c=comm_id: m["content"].get("comm_id") == c)

    def playground(self, name: str) -> list[str]:
        """The widget ids of the playground titled "— <name>:"."""
        for box in self.states.values():
            children = [c.removeprefix("IPY_MODEL_") for c in box.get("children", [])]
            if box.get("_model_name") == "VBoxModel" and f"— {name}:" in self.value(children[0]):
                return self.descendants(children)
        raise AssertionError(f"no {name} playground among {len(self.states)} widgets")

    def find(self, ids: list[str], **state) -> str:
        """The one widget among ``ids`` whose state has these values."""
        found = [i for i in ids if all(self.states[i].get(k) == v for k, v in state.items())]
        assert len(found) == 1, f"{len(found)} widgets with {state}"
        return found[0]

    def status_line(self, ids: list[str]) -> str:
        """The playground's status line: "Press Generate.", or a coloured span once it has run."""
        found = [i for i in ids if self.value(i).startswith(("Press Generate.", '<span style="color:'))]
        assert len(found) == 1, f"{len(found)} status lines"
        return found[0]

    def descendants(self, ids: list[str]) -> list[str]:
        out = []
        for i in ids:
            out.append(i)
            out += self.descendants(
                [c.removeprefix("IPY_MODEL_") for c in self.states[i].get("children", [])]
            )
        return out

    def value(self, comm_id: str) -> str:
        return str(self.states.get(comm_id, {}).get("value", ""))

    async def update(self, comm_id: str, **state) -> None:
        await self.send("comm_msg", {"comm_id": comm_id, "data": {"method": "update", "state": state}})

    async def click(self, comm_id: str) -> None:
        data = {"method": "custom", "content": {"event": "click"}}
        await self.send("comm_msg", {"comm_id": comm_id, "data": data})

    async def run(self, button: str, status: str) -> str:
        """Press the button and wait until the status line is set to Done or Error; returns its text."""
        await self.click(button)

        def finished(msg) -> bool:
            content = msg["content"]
            value = str(content.get("data", {}).get("state", {}).get("value", ""))
            return content.get("comm_id") == status and any(word in value for word in ("Done:", "Error"))

        await self.receive(finished, timeout=300)
        return re.sub(r"<[^>]+>", "", html.unescape(self.value(status)))


# ----------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The app as `make app` runs it (localhost, no token) on a tiny notebook, with at most 2 kernels."""
    with serve(tmp_path_factory.mktemp("app"), "--max-kernels", "2") as running:
        yield running


def test_files_beside_the_notebook_are_not_served(server):
    """Voilà's default serves the notebook folder's images to anyone, token or not (the playground's own
    images are attachments in the notebook)."""
    image = server.log.parent / "private.png"  # the folder of the notebook, as serve() writes both
    image.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert get(f"{server.url}/voila/files/{image.name}")[0] == 403
    assert "DeprecationWarning" not in server.log.read_text()  # the allowlist's `=[]` warned at every start


def test_voila_paths_that_failed_are_answered_without_a_traceback(server):
    """Voilà answered 500 to /voila/templates/ and to /logout, and printed a traceback in the teacher's
    terminal, as often as a student cared to ask."""
    for path in ["", "lab", "lab/x/y", "lab/static/", "lab/static/no-such-file.js", "lab/static/../../x"]:
        assert get(f"{server.url}/voila/templates/{path}")[0] == 404, path
    status, body = get(f"{server.url}/voila/templates/lab/static/voila.js")
    assert status == 200 and len(body) > 1000  # the page's own script is still served
    status, page = get(f"{server.url}/logout")  # back to the start page (without a token: the playground)
    assert status == 200 and '"kernelId": "' in page
    shutdown(server, kernel_of(page))
    assert "Traceback" not in server.log.read_text()


def test_a_wrong_host_is_refused(server):
    evil = f"evil.example:{server.port}"  # what a page using DNS rebinding sends
    assert get(server.url + "/", host=evil)[0] == 403 and server.kernels() == []
    kernel_id = open_page(server)
    assert get(f"{server.url}/api/kernels/{kernel_id}", host=evil)[0] == 403
    assert get(f"{server.url}/api/kernels/{kernel_id}", host=f"localhost:{server.port}")[0] == 200
    shutdown(server, kernel_id)


def test_the_kernel_websocket_refuses_a_wrong_host_or_origin(server):
    kernel_id = open_page(server)
    port, seen = server.port, {}
    cases = {  # (Host, Origin)
        "rebinding": (f"evil.example:{port}", f"http://evil.example:{port}"),
        "cross-site": (f"127.0.0.1:{port}", "http://evil.example"),
        "other port": (f"127.0.0.1:{port}", f"http://127.0.0.1:{port + 1}"),
        "same origin": (f"127.0.0.1:{port}", f"http://127.0.0.1:{port}"),
    }

    async def connect_all() -> None:
        from tornado.httpclient import HTTPClientError

        for name, (host, origin) in cases.items():
            try:
                client = await WidgetClient.connect(server, kernel_id, Host=host, Origin=origin)
            except HTTPClientError as err:
                seen[name] = err.code
                continue
            seen[name] = (await client.kernel_info())["content"]["status"]
            client.ws.close()

    try:
        asyncio.run(connect_all())
    finally:
        shutdown(server, kernel_id)
    assert seen == {"rebinding": 403, "cross-site": 403, "other port": 403, "same origin": "ok"}


def test_the_kernel_count_never_exceeds_the_cap(server):
    counts = []

    def load(_) -> tuple[int, str]:
        counts.append(len(server.kernels()))
        return get(server.url + "/")

    with ThreadPoolExecutor(4) as pool:
        pages = list(pool.map(load, range(4)))  # at once: the cap holds for kernels still starting
    counts.append(len(server.kernels()))
    assert sorted(status for status, _ in pages) == [200, 200, 503, 503] and max(counts) == 2
    assert "Too many playgrounds open (2 at most)" in get(server.url + "/")[1]
    kernel_ids = [
        body.split('"kernelId": "', 1)[1].split('"', 1)[0] for status, body in pages if status == 200
    ]
    shutdown(server, kernel_ids[0])
    shutdown(server, open_page(server))  # a closed page frees its place
    shutdown(server, kernel_ids[1])
    assert server.kernels() == []


def test_with_a_token_requests_without_it_are_refused_and_idle_kernels_are_culled(tmp_path):
    with serve(tmp_path, "--token", TOKEN, "--cull-idle", "2") as server:
        for url in (server.url + "/", server.url + "/?token=wrong"):
            status, page = get(url)  # the login page, after a redirect
            assert "kernelId" not in page and "token" in page.lower() and server.kernels() == []
        kernel_id = open_page(server, TOKEN)
        assert get(f"{server.url}/api/kernels/{kernel_id}")[0] == 403
        assert get(f"{server.url}/api/kernels/{kernel_id}?token={TOKEN}")[0] == 200
        deadline = time.monotonic() + 30
        while server.kernels() and time.monotonic() < deadline:
            time.sleep(0.5)
        assert server.kernels() == [], "an idle kernel was not culled within 30 s"
        assert "Culling kernels with idle durations > 2 seconds" in server.log.read_text()


def test_out_of_range_widget_values_from_a_client_are_rejected_by_the_kernel(tmp_path):
    """The issue's attack: raise steps.max and ask for 5000 steps, set batch_size to 10**12 or -5."""
    notebook = tmp_path / "playground.ipynb"
    source = "from superdiff.widgets import playground\nplayground('toy')"
    notebook.write_text(json.dumps({**TINY_NOTEBOOK, "cells": [code(source)]}))
    with serve(tmp_path, notebook=notebook) as server:
        statuses = asyncio.run(attack(server, open_page(server)))
    assert statuses == [
        "Error: steps: expected an integer from 1 to 1000, got 5000",
        "Error: batch_size: expected an integer from 1 to 2000, got 1000000000000",
        "Error: batch_size: expected an integer from 1 to 2000, got -5",
        "Done: 10 samples, 20 steps",
    ]


# 3 GiB, which the machine has; the words split so that the page cannot show them unless printed
GREEDY = (
    "try:\n    bytearray(3 * 2**30)\n    print('allo' 'cated')\nexcept MemoryError:\n    print('ref' 'used')"
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and oom_score_adj are Linux's")
def test_a_kernel_cannot_hold_more_than_its_memory_cap(tmp_path):
    """--kernel-memory caps what a page's kernel holds, whatever makes it allocate (the page, or a client's
    widget messages), and the out-of-memory killer stops a kernel before the server."""
    notebook = tmp_path / "greedy.ipynb"
    notebook.write_text(json.dumps({**TINY_NOTEBOOK, "cells": [code(GREEDY)]}))
    with serve(tmp_path, "--kernel-memory", "1", notebook=notebook) as server:
        status, page = get(server.url + "/")
        (kernel,) = server.kernels()
        limits = Path(f"/proc/{kernel.pid}/limits").read_text()
        adj = Path(f"/proc/{kernel.pid}/oom_score_adj").read_text().strip()
        shutdown(server, kernel_of(page))
    assert status == 200 and "refused" in page and "allocated" not in page
    assert re.search(rf"Max data size\s+{2**30}\s+{2**30}\s", limits) and adj == "1000"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and oom_score_adj are Linux's")
def test_a_kernel_that_cannot_be_capped_is_shut_down_before_it_runs_the_notebook(tmp_path, monkeypatch):
    """The server caps each kernel it starts; where it cannot, the page gets a 500, not an uncapped kernel."""
    from tornado import web

    started = []

    def refuse(n_bytes: int, pid: int) -> bool:
        started.append(psutil.Process(pid))
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(app, "limit_memory", refuse)
    for name, folder in jupyter_dirs(tmp_path).items():
        monkeypatch.setenv(name, folder)

    async def start() -> tuple[int, list[str]]:
        manager = app.CappedKernelManager(kernel_memory=1.0, connection_dir=str(tmp_path))
        with pytest.raises(web.HTTPError) as refused:
            await manager.start_kernel(kernel_name="python3")
        return refused.value.status_code, manager.list_kernel_ids()

    assert asyncio.run(start()) == (500, []) and len(started) == 1
    started[0].wait(30)  # the kernel's process has exited (else psutil.TimeoutExpired)


def test_cells_tagged_for_the_notebook_alone_are_neither_run_nor_shown(tmp_path):
    """The playground notebook's code demos of its own widgets would leave them in the demos' settings, and
    its screenshots would stand beside the live widgets: cells tagged superdiff-app-hidden are left out."""
    ran, hidden = tmp_path / "ran", {"metadata": {"tags": [app.APP_HIDDEN_TAG]}}
    cells = [
        {"cell_type": "markdown", "source": "screenshot-" + "7f3a", **hidden},
        {**code(f"open({str(ran)!r}, 'w').close()\nprint('demo-' '7f3a')"), **hidden},
        code("print('playground-' '7f3a')"),
    ]
    notebook = tmp_path / "tagged.ipynb"
    notebook.write_text(json.dumps({**TINY_NOTEBOOK, "cells": cells}))
    with serve(tmp_path, notebook=notebook) as server:
        status, page = get(server.url + "/")
        shutdown(server, kernel_of(page))
    assert status == 200 and "playground-7f3a" in page
    assert "screenshot-7f3a" not in page and "demo-7f3a" not in page and not ran.exists()


async def attack(server: App, kernel_id: str) -> list[str]:
    """Send the out-of-range values over the websocket, press Generate each time; the status lines."""
    client = await WidgetClient.connect(server, kernel_id)
    await client.load_states()
    ids = client.playground("toy")
    button, status = client.find(ids, description="Generate"), client.status_line(ids)
    steps, batch = client.find(ids, description="steps"), client.find(ids, description="batch size")
    seen = []
    for widget, state in (
        (steps, {"max": 10**6, "value": 5000}),
        (batch, {"max": 10**13, "value": 10**12}),
        (batch, {"min": -10, "value": -5}),
        (batch, {"value": 10}),
    ):
        await client.update(widget, **state)
        if widget == batch:
            await client.update(steps, value=20)
        seen.append((await client.run(button, status)).split(" in ")[0].rstrip("."))
    client.ws.close()
    return seen


def code(source: str) -> dict:
    return {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": None, "source": source}


def test_a_client_that_never_reads_is_disconnected_before_the_server_grows(tmp_path):
    """request_state of the playground's figure (≈ 80 kB) 6000 times, reading nothing: tornado kept every
    reply (the server grew by 441 MiB); now the websocket is closed past app.MAX_UNREAD bytes unread."""
    notebook = tmp_path / "playground.ipynb"
    source = "from superdiff.widgets import playground\nplayground('toy')"
    notebook.write_text(json.dumps({**TINY_NOTEBOOK, "cells": [code(source)]}))
    with serve(tmp_path, notebook=notebook) as server:
        kernel_id = open_page(server)
        requested, growth, received = asyncio.run(never_read(server, kernel_id, 6000))
        log = server.log.read_text()
        info = asyncio.run(reconnect(server, kernel_id))
    assert requested > 400 * 2**20 and growth < 150 * 2**20, (requested, growth)
    assert "Closing a websocket of kernel" in log and received < 6000 and info == "ok"


async def never_read(server: App, kernel_id: str, n: int) -> tuple[int, int, int]:
    """Ask for the largest widget's state ``n`` times without reading; (bytes asked for, the server's growth
    in RSS until the websocket is closed, the replies received when read afterwards)."""
    client = await WidgetClient.connect(server, kernel_id)
    await client.load_states()
    ids = client.playground("toy")
    await client.run(client.find(ids, description="Generate"), client.status_line(ids))
    await client.load_states()
    size, largest = max((len(json.dumps(state)), i) for i, state in client.states.items())
    process = psutil.Process(server.proc.pid)
    before = peak = process.memory_info().rss
    for _ in range(n):
        await client.send("comm_msg", {"comm_id": largest, "data": {"method": "request_state"}})
    deadline = time.monotonic() + REPLY_TIMEOUT
    while "Closing a websocket" not in server.log.read_text() and time.monotonic() < deadline:
        peak = max(peak, process.memory_info().rss)
        await asyncio.sleep(0.1)
    received = 0
    while await asyncio.wait_for(client.ws.read_message(), REPLY_TIMEOUT) is not None:
        received += 1
    assert (client.ws.close_code, client.ws.close_reason) == (1008, "Too many replies unread")  # a policy's
    return n * size, peak - before, received


async def reconnect(server: App, kernel_id: str) -> str:
    """A page whose websocket was closed connects again: the kernel's status in kernel_info_reply. While the
    kernel still answers the requests of the closed one, their replies may close the new one too (the same
    unread limit): it connects again until REPLY_TIMEOUT."""
    deadline = time.monotonic() + REPLY_TIMEOUT
    while True:
        client = await WidgetClient.connect(server, kernel_id)
        try:
            return (await client.kernel_info())["content"]["status"]
        except AssertionError:  # receive(): "the server closed the websocket"
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)
        finally:
            client.ws.close()


def test_a_kernel_takes_at_most_two_websockets(server):
    """Each websocket may hold app.MAX_UNREAD bytes in the server: a client cannot open any number of them."""
    from tornado.httpclient import HTTPClientError

    kernel_id = open_page(server)

    async def connect_three() -> list:
        clients, seen = [], []
        for session in "abc":  # three pages, say
            try:
                clients.append(await WidgetClient.connect(server, kernel_id, session=session))
                seen.append((await clients[-1].kernel_info())["content"]["status"])
            except HTTPClientError as err:
                seen.append(err.code)
        clients.pop().ws.close()
        await asyncio.sleep(1)  # the server sees the close
        seen.append(await reconnect(server, kernel_id))
        clients[0].ws.close()
        return seen

    try:
        seen = asyncio.run(connect_three())
    finally:
        shutdown(server, kernel_id)
    assert seen == ["ok", "ok", 429, "ok"]


def test_a_kernel_that_dies_is_not_restarted_so_its_page_can_say_it_stopped(tmp_path):
    """Killed (e.g. by the out-of-memory killer), a kernel restarted under its id would not have run the
    notebook: its page would look alive and do nothing. Removed, its REST resource answers 404."""
    with serve(tmp_path) as server:
        kernel_id = open_page(server)
        (kernel,) = server.kernels()
        kernel.kill()
        deadline = time.monotonic() + 30
        while get(f"{server.url}/api/kernels/{kernel_id}")[0] != 404 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert get(f"{server.url}/api/kernels/{kernel_id}")[0] == 404 and server.kernels() == []


def test_a_hangup_stops_the_server_as_ctrl_c_does(tmp_path):
    """Closing the terminal (SIGHUP) shuts the kernels down and removes Voilà's connection files, as SIGTERM
    and Ctrl-C do; the default action left the /tmp/voila_* folder behind."""
    ignored = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # under nohup the server would inherit SIG_IGN
    try:
        with serve(tmp_path) as server:
            kernel_id = open_page(server)
            (kernel,) = server.kernels()
            log = server.log.read_text()
            files = Path(re.search(r"Storing connection files in (\S+?)\.?$", log, re.M)[1])
            assert (files / f"kernel-{kernel_id}.json").is_file()
            server.proc.send_signal(signal.SIGHUP)
            server.proc.wait(30)
            kernel.wait(30)
    finally:
        signal.signal(signal.SIGHUP, ignored)
    assert not files.exists() and "Handle signal 1." in server.log.read_text()


# ----------------------------------------------------------------------------- the launcher's options


def test_classroom_mode_requires_a_token_and_prints_the_url_to_share():
    local = app.parse_args(["--notebook", PLAYGROUND])
    assert local.token is None and "--Voila.token" not in " ".join(app.voila_argv(local))
    classroom = app.parse_args(["--host", "0.0.0.0", "--notebook", PLAYGROUND])
    assert len(classroom.token) >= 20 and f"--Voila.token={classroom.token}" in app.voila_argv(classroom)
    url = app.share_url(classroom)
    assert url.startswith("Share this URL with the class: http://") and f"/?token={classroom.token}" in url
    assert f"at most {classroom.max_kernels} open pages" in url
    with pytest.raises(SystemExit):
        app.parse_args(["--host", "0.0.0.0", "--token", ""])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--port", "0"], "--port: expected an integer from 1 to 65535, got 0"),
        (["--port", "99999"], "--port: expected an integer from 1 to 65535, got 99999"),
        (["--max-kernels", "0"], "--max-kernels: expected an integer from 1 to 7, got 0"),
        (["--max-kernels", "8"], "--max-kernels: expected an integer from 1 to 7, got 8 (7 kernels fit"),
        (["--cull-idle", "0"], "--cull-idle: expected an integer from 1 to 86400 (a day), got 0"),
        (["--cull-idle", "86401"], "--cull-idle: expected an integer from 1 to 86400 (a day), got 86401"),
        (["--host", "nonsense.invalid"], "--host: 'nonsense.invalid' is not an address of this machine"),
        (
            ["--host", "192.0.2.1", "--token", "x" * 8],
            "--host: '192.0.2.1' is not an address of this machine",
        ),
        (
            ["--host", "0.0.0.0", "--token", ""],
            "--token: classroom mode (a non-local --host) requires a token",
        ),
        (["--host", "0.0.0.0", "--token", "abc1234"], "requires a token of 8 or more characters"),
        (["--kernel-memory", "0.5"], "--kernel-memory: expected GiB from 1 to this machine's 8.0, got 0.5"),
        (["--kernel-memory", "9"], "--kernel-memory: expected GiB from 1 to this machine's 8.0, got 9"),
        (["--kernel-memory", "nan"], "--kernel-memory: expected GiB from 1"),
        (["--notebook", "{tmp}/missing.ipynb"], "--notebook: expected an existing .ipynb file"),
        (["--notebook", "{tmp}/notes.txt"], "--notebook: expected an existing .ipynb file"),
        (["--notebook", "{tmp}/broken.ipynb"], "is not a Jupyter notebook"),
    ],
)
def test_the_launcher_refuses_bad_options_with_the_range(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(app, "memory_gib", lambda: 8.0)  # (8 − 3.5) / 0.61: 7 kernels fit
    (tmp_path / "notes.txt").write_text("{}")
    (tmp_path / "broken.ipynb").write_text('{"cells": 1}')
    argv = [a.format(tmp=tmp_path) for a in argv]
    with pytest.raises(SystemExit) as info:
        app.parse_args(argv)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_a_port_in_use_is_refused_before_the_server_starts(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit) as info:
            app.parse_args(["--host", "127.0.0.1", "--port", str(port), "--notebook", PLAYGROUND])
    assert info.value.code == 2
    assert (
        f"--port: cannot listen on 127.0.0.1 port {port}: in use (another server?)" in capsys.readouterr().err
    )
    assert app.parse_args(["--host", "127.0.0.1", "--port", str(port), "--notebook", PLAYGROUND]).port == port


def test_localhost_without_ipv6_is_usable_and_a_missing_address_is_not(monkeypatch):
    """As tornado binds: localhost's ::1 is skipped where the machine has no IPv6; another name whose address
    is not this machine's is refused."""
    real = socket.getaddrinfo

    class NoIPv6(socket.socket):
        def bind(self, address):
            if address[0] == "::1":
                raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
            return super().bind(address)

    def resolve(host, port, *args, **kwargs):
        v6 = (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", port, 0, 0))
        if host == "localhost":
            return [v6, *real("127.0.0.1", port, *args, **kwargs)]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("192.0.2.1", port))]  # TEST-NET: not ours

    monkeypatch.setattr(app.socket, "socket", NoIPv6)
    monkeypatch.setattr(app.socket, "getaddrinfo", resolve)
    assert app.listen_error("localhost") is None and app.listen_error("localhost", free_port()) is None
    assert app.listen_error("elsewhere") == "not an address of this machine"


@pytest.mark.parametrize("memory, default", [(8.0, 7), (16.0, 20), (64.0, app.MAX_KERNELS)])
def test_the_kernel_cap_is_what_fits_in_memory(memory, default, monkeypatch):
    monkeypatch.setattr(app, "memory_gib", lambda: memory)
    assert app.parse_args(["--notebook", PLAYGROUND]).max_kernels == default
    assert app.parse_args(["--notebook", PLAYGROUND, "--max-kernels", str(default)]).max_kernels == default
    classroom = app.parse_args(["--host", "0.0.0.0", "--token", "12345678", "--notebook", PLAYGROUND])
    assert classroom.token == "12345678" and f"at most {default} open pages" in app.share_url(classroom)


def test_allowed_hosts():
    assert app.allowed_hosts("localhost", ["class.example"]) == ["127.0.0.1", "::1", "localhost"]
    # another loopback address: the only one the server listens on, so the one the URL names
    assert app.allowed_hosts("127.0.0.2", []) == ["127.0.0.1", "127.0.0.2", "::1", "localhost"]
    url = app.share_url(app.parse_args(["--host", "127.0.0.2", "--port", "8870", "--notebook", PLAYGROUND]))
    assert url.startswith("SuperDiff playground: http://127.0.0.2:8870/ ")
    url = app.share_url(app.parse_args(["--host", "::1", "--port", "8870", "--notebook", PLAYGROUND]))
    assert url.startswith("SuperDiff playground: http://localhost:8870/ ")
    hosts = app.allowed_hosts("0.0.0.0", ["Class.Example:8866"])
    assert {"localhost", "class.example", app.lan_address()} <= set(hosts) and "0.0.0.0" not in hosts
    names = ("A.b:88", "[::1]:8866", "x", "::1", "fe80::1", "[fe80::1]")  # Host headers and bare names
    assert [app.host_name(h) for h in names] == ["a.b", "::1", "x", "::1", "fe80::1", "fe80::1"]


def test_pages_of_the_app_leave_stable_diffusion_out(monkeypatch, capsys):
    """Every open page is a kernel: on a GPU machine, SD v1-4 would load once per student."""
    import nbformat
    import torch

    notebook = ROOT / "notebooks" / "04_playground.ipynb"
    monkeypatch.setenv(app.APP_ENV, "0")  # restored after the test
    monkeypatch.delenv(app.APP_CULL_ENV, raising=False)
    monkeypatch.setattr(app.AppVoila, "launch_instance", lambda **kwargs: None)
    app.main(["--notebook", str(notebook)])
    assert app.os.environ[app.APP_ENV] == "1"  # what the kernels inherit from the server
    (cell,) = [c for c in nbformat.read(notebook, as_version=4).cells if 'playground("sd")' in c.source]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)

    def never(*args):
        raise AssertionError("the app's page built the Stable Diffusion playground")

    exec(cell.source, {"torch": torch, "playground": never, "display": never})
    assert "by the app: the Stable Diffusion playground is left out" in capsys.readouterr().out
    monkeypatch.setenv(app.APP_ENV, "0")  # in Jupyter: the GPU branch
    with pytest.raises(AssertionError, match="built the Stable Diffusion playground"):
        exec(cell.source, {"torch": torch, "playground": never, "display": never})


def test_the_server_prints_the_url_once_it_listens(server):
    assert f"SuperDiff playground: http://localhost:{server.port}/ " in server.log.read_text()
    assert "(at most 2 open pages;" in server.log.read_text()


def test_a_page_that_reads_its_replies_may_receive_more_than_the_unread_limit(tmp_path):
    """app.MAX_UNREAD bounds the replies waiting for a client, not all that a page receives while open."""
    notebook = tmp_path / "megabyte.ipynb"
    notebook.write_text(
        json.dumps({**TINY_NOTEBOOK, "cells": [code("import ipywidgets\nipywidgets.Text('x' * 2**20)")]})
    )

    async def read_megabytes(server: App, n: int) -> tuple[int, str]:
        client = await WidgetClient.connect(server, open_page(server))
        await client.load_states()
        (text,) = [i for i, state in client.states.items() if state.get("_model_name") == "TextModel"]
        received = 0
        for _ in range(n):  # one at a time: never more than a megabyte unread
            await client.send("comm_msg", {"comm_id": text, "data": {"method": "request_state"}})
            reply = await client.receive(lambda m: m["content"].get("comm_id") == text)
            received += len(reply["content"]["data"]["state"]["value"])
        status = (await client.kernel_info())["content"]["status"]
        client.ws.close()
        return received, status

    with serve(tmp_path, notebook=notebook) as server:
        received, status = asyncio.run(read_megabytes(server, app.MAX_UNREAD // 2**20 + 2))
    assert received > app.MAX_UNREAD and status == "ok"


def test_logging_out_asks_for_the_token_again(tmp_path):
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the login cookie
    with serve(tmp_path, "--token", TOKEN) as server:
        with browser.open(f"{server.url}/?token={TOKEN}", timeout=REPLY_TIMEOUT) as response:
            first = response.read().decode()
        with browser.open(server.url + "/", timeout=REPLY_TIMEOUT) as response:
            again = response.read().decode()  # the cookie stands for the token
        with browser.open(server.url + "/logout", timeout=REPLY_TIMEOUT) as response:
            after = response.read().decode()
    assert '"kernelId": "' in first and '"kernelId": "' in again
    assert "kernelId" not in after and "token" in after.lower()


def test_a_kernel_id_chosen_by_the_caller_does_not_pass_the_cap(tmp_path, monkeypatch):
    from tornado import web

    for name, folder in jupyter_dirs(tmp_path).items():
        monkeypatch.setenv(name, folder)

    async def start_two() -> tuple[int, int]:
        manager = app.CappedKernelManager(max_kernels=1, connection_dir=str(tmp_path))
        try:
            await manager.start_kernel(kernel_name="python3")
            with pytest.raises(web.HTTPError) as refused:
                await manager.start_kernel(kernel_name="python3", kernel_id=str(uuid.uuid4()))
            return refused.value.status_code, len(manager.list_kernel_ids())
        finally:
            await manager.shutdown_all(now=True)

    assert asyncio.run(start_two()) == (503, 1)


def test_a_kernel_without_a_process_id_is_shut_down_as_one_that_cannot_be_capped(monkeypatch):
    """A provisioner that runs no local process has no pid to cap: its kernel is not left running uncapped."""
    from types import SimpleNamespace

    from tornado import web

    manager, stopped = app.CappedKernelManager(), []

    async def shutdown_kernel(kernel_id: str, now: bool = False) -> None:
        stopped.append(kernel_id)

    monkeypatch.setattr(
        manager, "get_kernel", lambda kernel_id: SimpleNamespace(provisioner=SimpleNamespace(pid=None))
    )
    monkeypatch.setattr(manager, "shutdown_kernel", shutdown_kernel)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(manager.cap_memory("remote"))
    assert refused.value.status_code == 500 and stopped == ["remote"]


def test_voila_gets_the_launchers_settings():
    """What Voilà and the kernel manager make of voila_argv: a typo in an option's name would be ignored."""
    from jupyter_client.restarter import KernelRestarter
    from voila.configuration import VoilaConfiguration

    argv = ["--host", "0.0.0.0", "--token", TOKEN, "--max-kernels", "3", "--kernel-memory", "1.25"]
    for cull_idle in (1, 7, 900, app.MAX_CULL_IDLE):
        args = app.parse_args([*argv, "--cull-idle", str(cull_idle), "--notebook", PLAYGROUND])
        voila = app.AppVoila()
        voila.parse_command_line(app.voila_argv(args))
        assert (voila.ip, voila.port, voila.token, voila.open_browser) == ("0.0.0.0", args.port, TOKEN, False)
        assert voila.port_retries == 0  # the URL printed names this port: no other one
        configuration = VoilaConfiguration(config=voila.config)
        assert configuration.multi_kernel_manager_class is app.CappedKernelManager
        assert configuration.preheat_kernel is False  # a kernel only for an open page
        kernels = app.CappedKernelManager(config=voila.config)
        assert (kernels.max_kernels, kernels.kernel_memory, kernels.cull_idle_timeout) == (3, 1.25, cull_idle)
        assert kernels.cull_connected and not kernels.buffer_offline_messages
        assert 1 <= kernels.cull_interval <= min(60, cull_idle)  # an idle kernel is found within a minute
        assert KernelRestarter(config=voila.config).restart_limit == 0


def test_the_launcher_hands_its_options_to_voila(monkeypatch):
    launched = {}
    monkeypatch.setattr(app.AppVoila, "launch_instance", lambda **kwargs: launched.update(kwargs))
    monkeypatch.setenv(app.APP_ENV, "0")  # restored after the test
    monkeypatch.setenv(app.APP_CULL_ENV, "0")
    argv = ["--host", "0.0.0.0", "--token", TOKEN, "--cull-idle", "120", "--allow-host", "Class.Example:80"]
    app.main([*argv, "--notebook", PLAYGROUND])
    assert app.os.environ[app.APP_CULL_ENV] == "120"  # the page says when its kernel is shut down
    assert app.host_name("class.example") in launched["allowed_hosts"]
    assert f"--Voila.token={TOKEN}" in launched["argv"] and f"?token={TOKEN}" in launched["share_url"]


def test_the_url_to_share_names_the_limits(monkeypatch):
    monkeypatch.setattr(app, "memory_gib", lambda: 8.0)
    options = ["--max-kernels", "3", "--cull-idle", "120", "--kernel-memory", "1.25"]
    for host in ("localhost", "0.0.0.0"):
        url = app.share_url(
            app.parse_args(["--host", host, "--token", TOKEN, *options, "--notebook", PLAYGROUND])
        )
        assert "at most 3 open pages; a page idle for 120 s loses its kernel" in url
        assert ("each holds at most 1.25 GiB" in url) == sys.platform.startswith("linux")


@pytest.mark.parametrize("memory", [2.0, 4.0, 4.2, 5.0, 8.0, 12.0, 16.0, 24.0, 64.0])
def test_the_default_kernel_cap_fits_in_memory_and_serves_one_page_at_least(memory, monkeypatch):
    monkeypatch.setattr(app, "memory_gib", lambda: memory)
    n = app.parse_args(["--notebook", PLAYGROUND]).max_kernels
    assert 1 <= n <= app.MAX_KERNELS
    assert n == 1 or n * app.KERNEL_GIB + app.RESERVE_GIB <= memory


def test_the_launcher_accepts_the_bounds_its_messages_name(monkeypatch):
    monkeypatch.setattr(app, "memory_gib", lambda: 8.0)  # (8 − 3.5) / 0.61: 7 kernels fit
    monkeypatch.setattr(app, "listen_error", lambda host, port=0: None)  # any port, even one in use or root's
    for option, value in [
        ("--port", 1),
        ("--port", 65535),
        ("--max-kernels", 1),
        ("--max-kernels", 7),
        ("--cull-idle", 1),
        ("--cull-idle", app.MAX_CULL_IDLE),
        ("--kernel-memory", 1.0),
        ("--kernel-memory", 8.0),
    ]:
        args = app.parse_args([option, str(value), "--notebook", PLAYGROUND])
        assert getattr(args, option[2:].replace("-", "_")) == value, option


def test_host_names_are_compared_without_case_or_spaces(monkeypatch):
    """Students type a name as they like; a Host header arrives lower case (host_name) and must match."""
    monkeypatch.setattr(app.socket, "gethostname", lambda: "Class-PC")
    monkeypatch.setattr(app.socket, "getfqdn", lambda *a: "Class-PC.School.Example")
    hosts = app.allowed_hosts("Teacher.School.Example", [" Projector.School.Example "])
    for name in ("Class-PC", "CLASS-PC.school.example", "Teacher.School.Example", "projector.school.example"):
        assert app.host_name(f"{name}:8866") in hosts, name
    assert "::" not in app.allowed_hosts("::", []) and "0.0.0.0" not in app.allowed_hosts("0.0.0.0", [])


def test_malformed_host_headers_name_no_allowed_host():
    allowed = app.allowed_hosts("localhost", [])
    for header in ("[::1", "[::1x", "::1]", "[localhost", "[127.0.0.1:8866"):
        assert app.host_name(header) not in allowed, header


def test_classroom_mode_works_on_a_machine_offline_whose_name_does_not_resolve(monkeypatch):
    class Offline(socket.socket):
        def connect(self, address):
            raise OSError(errno.ENETUNREACH, "Network is unreachable")

    def unresolvable(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    args = app.parse_args(["--host", "0.0.0.0", "--notebook", PLAYGROUND])
    monkeypatch.setattr(app.socket, "socket", Offline)
    monkeypatch.setattr(app.socket, "getaddrinfo", unresolvable)
    hosts = app.allowed_hosts("0.0.0.0", [])
    url = urllib.parse.urlsplit(app.share_url(args).split()[6])
    assert "localhost" in hosts and url.port == args.port and url.hostname in hosts


def tornado_listens(host: str, port: int) -> bool:
    """Whether tornado, as Voilà calls it, would listen on ``host`` at ``port`` (on one address at least)."""
    from tornado.netutil import bind_sockets

    try:
        sockets = bind_sockets(port, host)
    except OSError:
        return False
    for s in sockets:
        s.close()
    return bool(sockets)


class IPv6Unassigned(socket.socket):
    """A machine whose IPv6 is switched off (sysctl): ::1 cannot be bound."""

    def bind(self, address):
        if address[0] == "::1":
            raise OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address")
        return super().bind(address)


class IPv6Absent(socket.socket):
    """A machine booted without IPv6 (ipv6.disable=1): no IPv6 socket can be made."""

    def __init__(self, family=socket.AF_INET, *args, **kwargs):
        if family == socket.AF_INET6:
            raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
        super().__init__(family, *args, **kwargs)


def listening(address: str, reuse: bool = False) -> socket.socket:
    """A socket listening on a free port of ``address``; ``reuse``: with SO_REUSEADDR, as tornado's."""
    s = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, int(reuse))
    s.bind((address, 0))
    s.listen()
    return s


def left_in_time_wait() -> int:
    """A loopback port whose server closed a connection first, as a stopped server does: in TIME_WAIT."""
    with (
        listening("127.0.0.1", reuse=True) as listener,
        socket.create_connection(listener.getsockname()) as client,
    ):
        connection, _ = listener.accept()
        connection.close()
        assert client.recv(1) == b""
        port = listener.getsockname()[1]
    with socket.socket() as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", port))  # taken, without SO_REUSEADDR
    return port


@pytest.mark.parametrize(
    "situation",
    [
        "ipv4 wildcard taken",
        "time wait",
        "one address taken",
        "ipv6 off",
        "localhost elsewhere",
        "ipv6 absent",
    ],
)
def test_the_port_check_agrees_with_how_tornado_listens(situation, monkeypatch):
    """listen_error(host, port) is None where the server would listen: no --host or --port refused that would
    work, none accepted that would not."""
    real, names, held = socket.getaddrinfo, {}, []

    def resolve(host, port, *args, **kwargs):
        return [i for a in names.get(host, [host]) for i in real(a, port, *args, **kwargs)]

    monkeypatch.setattr(app.socket, "getaddrinfo", resolve)  # the socket module: tornado's too
    if situation == "ipv4 wildcard taken":
        held.append(listening("0.0.0.0"))
        port, hosts = held[0].getsockname()[1], ["::", "::1", "0.0.0.0", "127.0.0.1", "localhost"]
    elif situation == "time wait":
        port, hosts = left_in_time_wait(), ["127.0.0.1", "0.0.0.0", "localhost"]
    elif situation == "one address taken":
        names["class.test"] = ["::1", "127.0.0.1"]
        held.append(listening("127.0.0.1"))
        port, hosts = held[0].getsockname()[1], ["class.test"]
    elif situation == "ipv6 absent":
        monkeypatch.setattr(app.socket, "socket", IPv6Absent)
        names["localhost"] = ["::1", "127.0.0.1"]  # as /etc/hosts names it, with IPv6 off at boot
        port, hosts = free_port(), ["localhost", "::1", "127.0.0.1"]
    else:
        monkeypatch.setattr(app.socket, "socket", IPv6Unassigned)
        names["localhost"] = ["::1", "127.0.0.1" if situation == "ipv6 off" else "192.0.2.1"]  # TEST-NET
        port, hosts = free_port(), ["localhost", "::1"]
    try:
        for host in hosts:
            assert (app.listen_error(host, port) is None) == tornado_listens(host, port), (host, situation)
    finally:
        for s in held:
            s.close()


def test_a_port_the_system_refuses_is_named_with_its_reason(monkeypatch, capsys):
    class Privileged(socket.socket):
        def bind(self, address):
            if address[1] == 80:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
            return super().bind(address)

    monkeypatch.setattr(app.socket, "socket", Privileged)
    with pytest.raises(SystemExit):
        app.parse_args(["--host", "127.0.0.1", "--port", "80", "--notebook", PLAYGROUND])
    reason = os.strerror(errno.EACCES)
    assert (
        f"--port: cannot listen on 127.0.0.1 port 80: {reason}; choose another --port"
        in capsys.readouterr().err
    )


def test_a_kernel_id_is_forgotten_once_its_websockets_are_gone(monkeypatch):
    """The websockets are counted by kernel id, which the client chooses: an id with none left is dropped,
    else asking for made-up kernels would grow the server without end."""
    from jupyter_server.services.kernels.websocket import KernelWebsocketHandler
    from tornado import web

    async def get(self, kernel_id):  # jupyter_server's, once the request is authenticated
        self.kernel_id = kernel_id
        await self.pre_get()

    async def pre_get(self):
        raise web.HTTPError(404)  # no such kernel

    monkeypatch.setattr(KernelWebsocketHandler, "get", get)
    monkeypatch.setattr(KernelWebsocketHandler, "pre_get", pre_get)
    made_up = str(uuid.uuid4())
    with pytest.raises(web.HTTPError):
        asyncio.run(object.__new__(app.BoundedKernelWebsocket).get(made_up))
    assert made_up not in app.BoundedKernelWebsocket.sockets


def test_the_url_to_share_reaches_the_server():
    """tornado listens on "::" for IPv6 only: the URL printed must name an address it answers on."""
    from tornado.netutil import bind_sockets

    for host in ("0.0.0.0", "::"):
        (listener,) = bind_sockets(0, host)  # as Voilà listens
        port = listener.getsockname()[1]
        args = argparse.Namespace(
            host=host, port=port, token=TOKEN, max_kernels=2, cull_idle=900, kernel_memory=1
        )
        url = urllib.parse.urlsplit(app.share_url(args).split()[6])
        try:
            socket.create_connection((url.hostname, url.port), timeout=5).close()
        finally:
            listener.close()
    args = argparse.Namespace(
        host="2001:db8::5", port=8870, token="", max_kernels=2, cull_idle=900, kernel_memory=1
    )
    url = urllib.parse.urlsplit(app.share_url(args).split()[6])
    assert (url.hostname, url.port) == ("2001:db8::5", 8870)
