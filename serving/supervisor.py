"""Run N daphne processes on one listening socket: the production server for one host.

    python -m serving.supervisor --processes 2 --bind 0.0.0.0:8000

Daphne serves one process; a chat server wants one per core. This parent binds the port
and hands a listening socket to each of N `daphne --fd` children, and all of them share
the rooms through Redis. On Linux each child gets a socket of its own on the one port
(SO_REUSEPORT), so the kernel spreads new connections evenly over them: children sharing
one socket race to accept, and one of them took two thirds of a burst, or all of it.
A child that dies is restarted after a pause (its clients reconnect, to any child, and
catch up from the database); children that keep dying at start are given up on, with a
non-zero exit, instead of a port that accepts connections and never answers. It refuses
to start on a port something already listens on (SO_REUSEPORT would let a second serve
quietly take half the connections), with settings that do not load, with a Redis that
does not answer, or in production mode over plain HTTP beyond loopback (serving.startup).
With REDIS_URL unset it starts the embedded redis-server, as `dev.py run` does, and stops
it after its children. SIGINT or SIGTERM stops every child. It does not migrate.

Behind a reverse proxy, list it in CHAT_TRUSTED_PROXIES (an nginx on this host:
CHAT_TRUSTED_PROXIES=127.0.0.1) and have it replace X-Forwarded-For with the client's
address (nginx: `proxy_set_header X-Forwarded-For $remote_addr;`): the children then see
the client's address, not the proxy's (mysite.proxies). Do not pass daphne's
--proxy-headers: it believes that header from anyone.
"""

import argparse
import os
import resource
import signal
import socket
import subprocess
import sys
import time

from serving.metrics_files import fresh_metrics_directory, process_exited
from serving.processes import killed_with_parent, stop_processes
from serving.startup import is_loopback_only

# A child that dies is restarted after RESTART_DELAY_SECONDS, doubled for each child in a
# row that died within FAST_FAILURE_SECONDS of its start: that one never got going, and
# its successor will not either unless something outside changes. After
# GIVE_UP_AFTER_FAST_FAILURES of those (1 + 2 + 4 s of waiting) the cause is not going
# away by itself: stop, and say so, as supervisord's startretries does.
RESTART_DELAY_SECONDS = 1.0
FAST_FAILURE_SECONDS = 10.0
GIVE_UP_AFTER_FAST_FAILURES = 4
STOP_TIMEOUT_SECONDS = 10.0
POLL_SECONDS = 0.2
LISTEN_BACKLOG = 4096  # a reconnect storm arrives all at once
# Daphne drops a handshake the application has not accepted within 5 s. In a storm the
# sync consumers accept one at a time, so late ones wait longer than that: let them.
HANDSHAKE_TIMEOUT_SECONDS = 60
DEFAULT_DAPHNE_ARGS = ["--websocket_connect_timeout", str(HANDSHAKE_TIMEOUT_SECONDS)]


class _Stop(Exception):
    pass


def _raise_stop(signum, frame):
    raise _Stop


def raise_open_file_limit():
    """Every socket is a file descriptor: allow as many as the hard limit does."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def spreads_connections_over_sockets() -> bool:
    """Whether SO_REUSEPORT balances one port's connections over its sockets (Linux does)."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def listening_sockets(host: str, port: int, count: int) -> list[socket.socket]:
    """Sockets listening on one port, one per child where the kernel balances them."""
    balanced = spreads_connections_over_sockets()
    sockets = []
    for _ in range(count if balanced else 1):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if balanced:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # Accepted sockets inherit it: chat frames are small and must not wait for Nagle.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
        port = sock.getsockname()[1]  # port 0 picked one: the others join it
        sock.listen(LISTEN_BACKLOG)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def debug_bind_refusal(host: str) -> str | None:
    """Why `host` must not be listened on with DEBUG on; None where it may.

    DEBUG pages show settings and tracebacks to whoever gets one (a bad Host header is
    enough), and DEBUG is the default with a development key: only this machine may ask.
    """
    from django.conf import settings  # here: the parent reads settings for this only

    if not settings.DEBUG or is_loopback_only(host):
        return None
    return (
        f"refusing to listen on {host or 'every address'!r} with DEBUG on: other machines "
        "would get debug pages (settings, tracebacks) and a server running on the "
        "development secret key. Bind 127.0.0.1, or set DJANGO_DEBUG=false with "
        "DJANGO_SECRET_KEY and DJANGO_ALLOWED_HOSTS (docs/operations.md, Configuration)"
    )


def start_child(fd: int, extra_args: list[str], application: str) -> subprocess.Popen:
    """One daphne process serving the ASGI application on the shared socket."""
    command = [
        sys.executable,
        "-m",
        "serving.chat_daphne",
        "--fd",
        str(fd),
        *DEFAULT_DAPHNE_ARGS,
        *extra_args,
    ]
    # If this parent is killed outright, its children go too: no orphan keeps the port.
    return subprocess.Popen([*command, application], pass_fds=(fd,), preexec_fn=killed_with_parent)


class GaveUp(Exception):
    """Children kept dying at start: serving cannot go on without a fix."""


def supervise(
    sockets: list[socket.socket],
    processes: int,
    extra_args: list[str],
    application: str = "mysite.asgi:application",
):
    """Keep `processes` children alive until told to stop; GaveUp when they keep dying.

    A child restarts on the socket it had: connections the kernel queued there meanwhile
    wait for it instead of being lost.
    """
    fds = [sockets[index % len(sockets)].fileno() for index in range(processes)]
    children = [start_child(fd, extra_args, application) for fd in fds]
    started = [time.monotonic()] * processes
    fast_failures = 0  # children in a row that died within FAST_FAILURE_SECONDS of starting
    address = sockets[0].getsockname()
    print(f"serving on {address} with pids {[c.pid for c in children]}", flush=True)
    try:
        while True:
            time.sleep(POLL_SECONDS)
            for index, child in enumerate(children):
                if child.poll() is None:
                    continue
                process_exited(child.pid)
                lived = time.monotonic() - started[index]
                fast_failures = fast_failures + 1 if lived < FAST_FAILURE_SECONDS else 0
                if fast_failures >= GIVE_UP_AFTER_FAST_FAILURES:
                    raise GaveUp(
                        f"{fast_failures} server processes in a row exited within"
                        f" {FAST_FAILURE_SECONDS:g} s of starting (the last with status"
                        f" {child.returncode}); giving up. Their errors are above."
                    )
                delay = RESTART_DELAY_SECONDS * 2 ** max(fast_failures - 1, 0)
                print(
                    f"pid {child.pid} exited with {child.returncode}; restarting in {delay:g} s",
                    flush=True,
                )
                time.sleep(delay)
                children[index] = start_child(fds[index], extra_args, application)
                started[index] = time.monotonic()
    except _Stop:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_processes(children, STOP_TIMEOUT_SECONDS)


def start_up_problem(host: str, port: int) -> str | None:
    """Why serving on host:port would fail or mislead, in one line; None when it can start."""
    # Imported here, so that a Python without the project's dependencies gets this line
    # instead of a traceback (its children could only die at start, one after another).
    try:
        from django.conf import settings

        from chat.redis_clients import redis_problem
        from serving.embedded_redis import port_is_free
        from serving.startup import plain_http_problem, settings_problem
    except ImportError as error:
        return f"{error}: run it with the virtualenv's Python (python3 dev.py serve ...)"
    if problem := settings_problem() or debug_bind_refusal(host) or plain_http_problem(host):
        return problem
    # A plain bind, without SO_REUSEPORT: our children's sockets would share the port
    # with another serve's (each getting half the connections), never with this probe.
    if port and not port_is_free(port, host):
        return f"{host}:{port} is already in use (another supervisor?); stop it or change --bind"
    # Unset, the embedded Redis is started after these checks.
    return redis_problem(settings.REDIS_URLS) if os.environ.get("REDIS_URL") else None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--bind", default="127.0.0.1:8000", help="host:port")
    parser.add_argument(
        "--application",
        default="mysite.asgi:application",
        help="module:attribute of the ASGI application (the benchmarks' reference serves another)",
    )
    parser.add_argument("daphne_args", nargs="*", help="passed to daphne, after --")
    args = parser.parse_args(argv)
    host, _, port = args.bind.rpartition(":")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    signal.signal(signal.SIGINT, _raise_stop)
    signal.signal(signal.SIGTERM, _raise_stop)
    raise_open_file_limit()
    host, port = host.strip("[]"), int(port)
    problem = start_up_problem(host, port)
    if problem is not None:
        print(f"serving.supervisor: {problem}.", file=sys.stderr)
        return 1
    from serving.startup import plain_http_environment

    if plain := plain_http_environment(host):
        os.environ.update(plain)  # the children's
        print(
            "Production mode over plain HTTP on loopback: no redirect to HTTPS; only this"
            " machine reaches it (docs/operations.md).",
            flush=True,
        )
    try:
        sockets = listening_sockets(host, port, args.processes)
    except OSError as error:  # taken since the check above
        print(f"serving.supervisor: cannot listen on {host}:{port}: {error}.", file=sys.stderr)
        return 1
    redis_server = None
    try:
        if not os.environ.get("REDIS_URL"):
            from serving.devserver import start_embedded_redis

            redis_server = start_embedded_redis()
            os.environ["REDIS_URL"] = redis_server.url
        with fresh_metrics_directory():
            supervise(sockets, args.processes, args.daphne_args, args.application)
    except GaveUp as error:
        print(f"serving.supervisor: {error}", file=sys.stderr)
        return 1
    finally:
        for sock in sockets:
            sock.close()
        if redis_server is not None:  # after the children: their last flush needs it
            redis_server.stop()
            print("Stopped the embedded Redis.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
