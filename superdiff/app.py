"""The playground as a web app (Voilà): on localhost for one teacher, or as a classroom server.

    python -m superdiff.app                   # http://localhost:8866/ (make app)
    python -m superdiff.app --host 0.0.0.0    # classroom mode: prints the URL with its token to share

Both modes refuse a request whose Host is not one of this machine's names (a page using DNS rebinding
sends its own name), and a kernel websocket from another Origin; they cap the number of kernels (one per
open page), each kernel's memory (--kernel-memory, Linux) and the replies the server keeps for a client that
does not read, and shut down kernels idle for --cull-idle seconds. Classroom mode requires a token.
README, "Teaching with the app".
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import posixpath
import re
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import ClassVar

from ._io import user_path

try:
    import nbformat
    import psutil
    from jupyter_server.auth.logout import LogoutHandler
    from jupyter_server.base.handlers import JupyterHandler
    from jupyter_server.services.kernels.kernelmanager import AsyncMappingKernelManager
    from tornado import ioloop, web
    from traitlets import Float, Integer, List, Unicode
    from traitlets.config import Config
    from voila.app import Voila
    from voila.handler import VoilaHandler
    from voila.static_file_handler import TemplateStaticFileHandler
    from voila.tornado.kernel_websocket_handler import VoilaKernelWebsocketHandler
except ModuleNotFoundError as err:  # the app's extra is not installed
    raise SystemExit(
        f"superdiff.app: the app needs Voilà ({err.name} is missing): pip install 'superdiff-kit[app]'"
    ) from None

from .limits import APP_CULL_ENV, APP_ENV, limit_memory

PACKAGED = Path(__file__).resolve().parent / "notebooks" / "04_playground.ipynb"  # in a wheel (setup.py)
NOTEBOOK = PACKAGED if PACKAGED.is_file() else PACKAGED.parents[2] / "notebooks" / PACKAGED.name  # a checkout
PORT = 8866
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# Measured (benchmarks/app_memory.py, README): a kernel holds 334–345 MB RSS once both playgrounds ran, 619 MB
# after the sliders' largest runs, the digits judged on each model. 32 of those fit this 24 GB machine.
MAX_KERNELS = 36
KERNEL_GIB, RESERVE_GIB = 0.61, 3.5  # a kernel after the largest runs; the server, the OS and headroom
MIN_TOKEN = 8  # characters of a classroom token: the network can try short ones
MAX_CULL_IDLE = 86400  # a day: a longer one would never free the place of a page left open
KERNEL_MEMORY_GIB = 1.5  # the most data one kernel may hold: 1.9× the peak of the largest runs (801 MiB)
MIN_KERNEL_MEMORY_GIB = 1.0  # below, the largest runs may not fit (benchmarks/app_memory.py)
APP_HIDDEN_TAG = "superdiff-app-hidden"  # cells with this tag are left out of the app's pages
CULL_IDLE = 900  # seconds without a message to or from a kernel before it is shut down (an open tab too)
MAX_UNREAD = 8 * 2**20  # bytes of replies a websocket's client may leave unread: the largest are ≈ 80 kB
MAX_SOCKETS = 2  # websockets to one kernel: its page needs one, a reconnect may briefly hold two


class CappedKernelManager(AsyncMappingKernelManager):
    """Voilà's kernel manager with at most ``max_kernels`` kernels: a page past the cap gets a 503."""

    max_kernels = Integer(MAX_KERNELS, config=True, help="The most kernels (open pages) at once.")
    kernel_memory = Float(KERNEL_MEMORY_GIB, config=True, help="GiB of data one kernel may hold (Linux).")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._starting: set[str] = set()  # ids of kernels being started: counted before they are listed

    async def start_kernel(self, *args, kernel_id: str | None = None, **kwargs) -> str:
        """A new kernel only while fewer than ``max_kernels`` exist or are starting."""
        if kernel_id is not None and kernel_id in self:
            return await super().start_kernel(*args, kernel_id=kernel_id, **kwargs)
        # Checked and reserved with no await in between: requests on the event loop cannot interleave here.
        if len(set(self.list_kernel_ids()) | self._starting) >= self.max_kernels:
            reason = f"Too many playgrounds open ({self.max_kernels} at most); try again in a few minutes"
            raise web.HTTPError(503, reason=reason)
        kernel_id = self.new_kernel_id()
        self._starting.add(kernel_id)
        try:
            await super().start_kernel(*args, kernel_id=kernel_id, **kwargs)
        finally:
            self._starting.discard(kernel_id)
        await self.cap_memory(kernel_id)
        return kernel_id

    async def cap_memory(self, kernel_id: str) -> None:
        """Cap a new kernel's memory before it runs the notebook (Linux), else shut it down."""
        try:
            limit_memory(int(self.kernel_memory * 2**30), self.get_kernel(kernel_id).provisioner.pid)
        except (OSError, TypeError) as err:  # TypeError: a provisioner without a process id
            await self.shutdown_kernel(kernel_id, now=True)
            self.log.error("Could not cap the memory of kernel %s: %s", kernel_id, err)
            raise web.HTTPError(500, reason="Could not cap the playground's memory") from None


class BoundedKernelWebsocket(VoilaKernelWebsocketHandler):
    """Voilà's kernel websocket, at most MAX_SOCKETS to a kernel, and closed once its client leaves more than
    MAX_UNREAD bytes of replies unread: tornado would keep every reply of a client that never reads."""

    sockets: ClassVar[dict[str, set]] = {}  # kernel id -> its websockets, open or opening
    unread = 0  # bytes written that tornado has not yet handed to the network

    async def get(self, kernel_id: str):
        try:
            await super().get(kernel_id)  # returns once the websocket is closed, or was refused
        finally:
            sockets = self.sockets.get(kernel_id, set())
            sockets.discard(self)
            if not sockets:
                self.sockets.pop(kernel_id, None)

    async def pre_get(self):
        """Refuse a websocket past MAX_SOCKETS to its kernel (after authentication), before the upgrade."""
        sockets = self.sockets.setdefault(self.kernel_id, set())
        if len(sockets) >= MAX_SOCKETS:
            raise web.HTTPError(429, reason=f"At most {MAX_SOCKETS} connections to one playground")
        sockets.add(self)  # with no await since the count: handshakes cannot interleave here
        await super().pre_get()

    def write_message(self, message, binary: bool = False):
        """Send ``message``, or close the websocket if its client has left MAX_UNREAD bytes unread."""
        if self.ws_connection is None or self.ws_connection.is_closing():
            return None  # dropped: the websocket is closing
        if isinstance(message, dict):
            message = json.dumps(message)
        size = len(message)
        if self.unread + size > MAX_UNREAD:
            self.log.warning("Closing a websocket of kernel %s: %d bytes unread", self.kernel_id, self.unread)
            self.close(1008, "Too many replies unread")  # aborted after 5 s if the client reads nothing
            return None
        future = super().write_message(message, binary)
        if future is not None:  # None: a message Voilà does not send
            self.unread += size
            future.add_done_callback(lambda f: self._sent(f, size))
        return future

    def _sent(self, future, n: int) -> None:
        """``n`` bytes have left the server (or were dropped with the websocket)."""
        self.unread -= n
        if not future.cancelled():
            future.exception()  # retrieved: a websocket closed with replies pending is not an error


def host_name(host_header: str) -> str:
    """The name in a Host header (or a bare name or address), without port or IPv6 brackets, lower case."""
    name = host_header.strip().lower()
    if name.count(":") == 1 or name.startswith("["):  # a bare IPv6 address (::1) has no port to strip
        name = re.sub(r":\d+$", "", name)
    return name[1:-1] if name.startswith("[") and name.endswith("]") else name


def check_host(handler: JupyterHandler) -> bool:
    """Allow a request only if its Host names this server (settings["superdiff_allowed_hosts"])."""
    allowed = handler.settings.get("superdiff_allowed_hosts")
    if allowed is None:  # not the app's server: jupyter_server's own check
        return _JUPYTER_CHECK_HOST(handler)
    if host_name(handler.request.host) in allowed:
        return True
    handler.log.warning(
        "Refused a request with Host %r: not one of %s", handler.request.host, sorted(allowed)
    )
    return False


_JUPYTER_CHECK_HOST = JupyterHandler.check_host


async def prepare_page(handler: VoilaHandler, **kwargs) -> None:
    """Voilà's page request, also setting the ``_xsrf`` cookie: the page's shutdown POST on closing sends it
    back, and without it (Voilà never sets it, voila-dashboards/voila#1458) a closed tab kept its kernel."""
    await JupyterHandler.prepare(handler, **kwargs)
    if not handler._finished:  # not redirected to the login page
        handler.xsrf_token  # noqa: B018 - reading it sets the cookie


def without_hidden_cells(handler, notebook, cwd):
    """Voilà's prelaunch hook: the notebook without its cells tagged APP_HIDDEN_TAG, neither run nor shown
    (the notebook's code demos of its own widgets, and screenshots that stand in for them elsewhere)."""
    notebook.cells = [
        c for c in notebook.cells if APP_HIDDEN_TAG not in c.get("metadata", {}).get("tags", [])
    ]
    return notebook


class TemplateFiles(TemplateStaticFileHandler):
    """Voilà's template files at /voila/templates/<template>/static/<file>; another path is a 404 (Voilà
    answered 500 and printed a traceback in the teacher's terminal for each such request)."""

    def parse_url_path(self, path: str) -> str:
        template, static, file = (posixpath.normpath(path).split("/", 2) + ["", ""])[:3]
        if not (template and static == "static" and file):
            raise web.HTTPError(404)
        return super().parse_url_path(path)


class Logout(LogoutHandler):
    """/logout forgets the login and goes back to the start page, which asks for the token again
    (jupyter_server's logout page needs a static file that Voilà does not serve: it answered 500)."""

    def get(self) -> None:
        self.identity_provider.clear_login_cookie(self)
        self.redirect(self.base_url)


class AppVoila(Voila):
    """Voilà with a Host allowlist: Voilà sets allow_remote_access, which turns jupyter_server's check off."""

    allowed_hosts = List(Unicode(), list(LOCAL_HOSTS), config=True, help="Host names the app answers to.")
    share_url = Unicode("", config=True, help="The URL printed once the server listens.")

    def init_handlers(self) -> list:
        """Voilà's handlers, with BoundedKernelWebsocket for the kernels' websockets, TemplateFiles for the
        templates' files, and Logout."""
        ours = {
            VoilaKernelWebsocketHandler: BoundedKernelWebsocket,
            TemplateStaticFileHandler: TemplateFiles,
            LogoutHandler: Logout,
        }
        return [(h[0], ours.get(h[1], h[1]), *h[2:]) for h in super().init_handlers()]

    def start(self):
        JupyterHandler.check_host = check_host  # this process serves only the app
        VoilaHandler.prepare = prepare_page
        # a closed terminal stops the server as SIGTERM does (kernels, connection files), unless run by nohup
        if hasattr(signal, "SIGHUP") and signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
            signal.signal(signal.SIGHUP, self._handle_signal_stop)
        self.voila_configuration.prelaunch_hook = without_hidden_cells
        names = {host_name(h) for h in self.allowed_hosts}
        self.tornado_settings = {**self.tornado_settings, "superdiff_allowed_hosts": names}
        if self.share_url:
            ioloop.IOLoop.current().add_callback(print, f"\n{self.share_url}\n", flush=True)
        super().start()


def listen_error(host: str, port: int = 0) -> str | None:
    """Why a server could not listen on ``host`` at ``port`` (0: any free one), binding as tornado does, or
    None: a name that resolves to no address of this machine, or an address where the port is taken or
    not allowed. Like tornado, localhost's ::1 is skipped on a machine without IPv6."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:  # socket.gaierror: a name that does not resolve
        return "not an address of this machine"
    bound = False
    for family, _, _, _, address in infos:
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                if os.name != "nt":  # tornado's options: on Windows SO_REUSEADDR would share a busy port
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                s.bind(address[:2])  # released at once
                bound = True
        except OSError as err:
            if err.errno == errno.EAFNOSUPPORT:  # as tornado: a family this machine lacks (IPv6 off at boot)
                continue
            if err.errno == errno.EADDRNOTAVAIL and host == "localhost" and address[0] == "::1":
                continue
            if err.errno == errno.EADDRINUSE:
                return "in use (another server?)"
            if err.errno == errno.EADDRNOTAVAIL:
                return "not an address of this machine"
            return err.strerror or str(err)
    return None if bound else "not an address of this machine"  # tornado would listen nowhere


def is_local(host: str) -> bool:
    """Whether the server would listen on the loopback interface only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def lan_address(family: int = socket.AF_INET) -> str:
    """This machine's address on its default route (a UDP connect sends nothing), else the loopback one;
    ``family``: socket.AF_INET6 for its IPv6 address."""
    probe, loopback = (
        (("2001:db8::1", 1), "::1") if family == socket.AF_INET6 else (("10.255.255.255", 1), "127.0.0.1")
    )
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:  # OSError too where the family is missing
            s.connect(probe)
            return s.getsockname()[0]
    except OSError:
        return loopback


def machine_names() -> set[str]:
    """This machine's host names and addresses, as students may type them."""
    names = {socket.gethostname(), socket.getfqdn(), lan_address(), lan_address(socket.AF_INET6)}
    try:
        names |= {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)}
    except OSError:
        pass
    return {n.lower() for n in names if n}


def allowed_hosts(host: str, extra: list[str]) -> list[str]:
    """Localhost names and the listening address; in classroom mode also the machine's names and ``extra``."""
    names = set(LOCAL_HOSTS) | {host.lower()}
    if not is_local(host):
        names |= machine_names() | {host_name(h) for h in extra}
    return sorted(names - {"0.0.0.0", "::"})


def memory_gib() -> float:
    """This machine's physical memory in GiB."""
    return psutil.virtual_memory().total / 2**30


def kernels_that_fit() -> int:
    """Kernels that fit in memory if every student makes the largest runs: (memory − 3.5 GiB) / 0.61 GiB."""
    return max(1, int((memory_gib() - RESERVE_GIB) / KERNEL_GIB))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m superdiff.app", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="localhost", help="address to listen on; 0.0.0.0: classroom mode")
    p.add_argument("--port", type=int, default=PORT, help=f"1 to 65535 (default {PORT})")
    p.add_argument("--token", help="required to open the app (default: none on localhost, else a new one)")
    p.add_argument(
        "--max-kernels",
        type=int,
        help=f"most open pages at once (default {MAX_KERNELS}, or fewer where memory holds fewer)",
    )
    p.add_argument("--cull-idle", type=int, default=CULL_IDLE, help="seconds before an idle kernel stops")
    p.add_argument(
        "--kernel-memory",
        type=float,
        default=KERNEL_MEMORY_GIB,
        help=f"GiB of data one page's kernel may hold, Linux only (default {KERNEL_MEMORY_GIB})",
    )
    p.add_argument("--allow-host", action="append", default=[], help="another name students use (repeat)")
    p.add_argument(
        "--notebook", type=user_path, default=NOTEBOOK, help="the notebook to serve (default: the playground)"
    )
    args = p.parse_args(argv)
    if not 1 <= args.port <= 65535:
        p.error(f"--port: expected an integer from 1 to 65535, got {args.port}")
    fit = kernels_that_fit()
    if args.max_kernels is None:
        args.max_kernels = min(MAX_KERNELS, fit)
    if not 1 <= args.max_kernels <= fit:
        p.error(
            f"--max-kernels: expected an integer from 1 to {fit}, got {args.max_kernels} ({fit} kernels fit "
            f"in this machine's {memory_gib():.0f} GiB: {KERNEL_GIB} GiB each after the largest runs)"
        )
    if not MIN_KERNEL_MEMORY_GIB <= args.kernel_memory <= memory_gib():
        p.error(
            f"--kernel-memory: expected GiB from {MIN_KERNEL_MEMORY_GIB:g} to this machine's "
            f"{memory_gib():.1f}, got {args.kernel_memory:g}"
        )
    if not 1 <= args.cull_idle <= MAX_CULL_IDLE:
        p.error(f"--cull-idle: expected an integer from 1 to {MAX_CULL_IDLE} (a day), got {args.cull_idle}")
    if listen_error(args.host):
        p.error(f"--host: {args.host!r} is not an address of this machine (or a name of one)")
    if why := listen_error(args.host, args.port):
        p.error(f"--port: cannot listen on {args.host} port {args.port}: {why}; choose another --port")
    classroom = not is_local(args.host)
    if classroom and args.token is None:
        args.token = secrets.token_urlsafe(16)
    if classroom and len(args.token) < MIN_TOKEN:
        p.error(
            f"--token: classroom mode (a non-local --host) requires a token of {MIN_TOKEN} or more characters"
        )
    check_notebook(p, args.notebook)
    return args


def check_notebook(p: argparse.ArgumentParser, path: Path) -> None:
    """An existing Jupyter notebook (.ipynb that nbformat reads), else the parser's error."""
    if path.suffix != ".ipynb" or not path.is_file():
        p.error(f"--notebook: expected an existing .ipynb file, got {str(path)!r}")
    try:
        nbformat.read(path, as_version=4)
    except Exception as err:  # noqa: BLE001 (any way of not being a notebook)
        p.error(f"--notebook: {str(path)!r} is not a Jupyter notebook ({type(err).__name__})")


def share_url(args: argparse.Namespace) -> str:
    """What the launcher prints: the URL to open (classroom mode: to share, with its token) and the limits."""
    token = f"?token={args.token}" if args.token else ""
    limits = f"at most {args.max_kernels} open pages; a page idle for {args.cull_idle} s loses its kernel"
    if sys.platform.startswith("linux"):
        limits += f"; each holds at most {args.kernel_memory:g} GiB"
    if is_local(args.host):  # localhost answers on 127.0.0.1 and ::1; another loopback address only on itself
        name = "localhost" if args.host in LOCAL_HOSTS else args.host
        return f"SuperDiff playground: http://{name}:{args.port}/{token}  ({limits}; Ctrl-C stops it)"
    # tornado listens on "::" for IPv6 only (IPV6_V6ONLY): the URL names an IPv6 address then, in brackets
    host = {"0.0.0.0": lan_address(), "::": lan_address(socket.AF_INET6)}.get(args.host, args.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{args.port}/{token}"
    return f"Share this URL with the class: {url}\n({limits}; Ctrl-C stops the server)"


def voila_argv(args: argparse.Namespace) -> list[str]:
    """Voilà's command line: no browser, no preheated kernels, the capped and culled kernel manager."""
    interval = max(1, min(60, args.cull_idle // 4))
    argv = [str(args.notebook), "--no-browser", f"--Voila.ip={args.host}", f"--Voila.port={args.port}"]
    argv += ["--Voila.port_retries=0", "--VoilaConfiguration.preheat_kernel=False"]
    argv += ["--VoilaConfiguration.multi_kernel_manager_class=superdiff.app.CappedKernelManager"]
    argv += [f"--CappedKernelManager.max_kernels={args.max_kernels}"]
    argv += [f"--CappedKernelManager.kernel_memory={args.kernel_memory}"]
    argv += [f"--MappingKernelManager.cull_idle_timeout={args.cull_idle}"]
    argv += [f"--MappingKernelManager.cull_interval={interval}", "--MappingKernelManager.cull_connected=True"]
    # a kernel that dies (e.g. out of memory) is not restarted: a fresh one would not have run the notebook,
    # so its page would look alive and do nothing; removed, its page says it has stopped
    argv += ["--KernelRestarter.restart_limit=0"]
    # replies to a closed websocket are dropped, not kept for a reconnect: a client could grow the server
    argv += ["--MappingKernelManager.buffer_offline_messages=False"]
    if args.token:
        argv.append(f"--Voila.token={args.token}")
    return argv


def voila_config() -> Config:
    """What Voilà's command line cannot set without a DeprecationWarning at every start: an empty list."""
    # no files beside the notebook are served: Voilà's default serves its folder's images, without a token
    return Config({"VoilaConfiguration": {"file_allowlist": []}})


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ[APP_ENV] = "1"  # the kernels inherit it: the notebook leaves out what a class cannot share
    os.environ[APP_CULL_ENV] = str(args.cull_idle)  # for the page's notice once its kernel is gone
    AppVoila.launch_instance(
        argv=voila_argv(args),
        config=voila_config(),
        allowed_hosts=allowed_hosts(args.host, args.allow_host),
        share_url=share_url(args),
    )


if __name__ == "__main__":
    main(sys.argv[1:])
