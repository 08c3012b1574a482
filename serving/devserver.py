"""The run command's second half, inside the virtualenv: Redis, migrate, runserver.

Refuses settings that do not load (a bad DJANGO_DEBUG, DATABASE_URL...), a port that is
taken and a REDIS_URL that does not answer, each in one line;
starts the embedded redis-server when REDIS_URL is unset, migrates, and runs
`manage.py runserver` (daphne's, so WebSockets work). Ctrl-C or SIGTERM stops the
server and the Redis it started; nothing is left running and no pid file is written.
A server that stops by itself is a failure: the exit status says so.
"""

import argparse
import os
import signal
import subprocess
import sys

from django.core.management.commands.runserver import naiveip_re

from chat.redis_clients import redacted_url, redis_problem, redis_urls
from serving.embedded_redis import DEFAULT_PORT, EmbeddedRedis, free_port, port_is_free
from serving.processes import stop_processes
from serving.startup import plain_http_environment, plain_http_problem, settings_problem

SERVER_STOP_TIMEOUT_SECONDS = 10.0


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def start_embedded_redis() -> EmbeddedRedis:
    """Start redis-server on 6379, or on a free port (and say so) when 6379 is taken."""
    port = DEFAULT_PORT
    if not port_is_free(port):
        port = free_port()
        print(f"Port {DEFAULT_PORT} is taken; the embedded Redis uses port {port} instead.")
    server = EmbeddedRedis(port).start()
    print(f"Embedded Redis listening on {server.url} (pid {server.process.pid}).", flush=True)
    return server


def address_to_check(addrport: str) -> tuple[str, int]:
    """The host and port runserver will bind for addrport, read as runserver reads it
    ("8000", "0:8000", "localhost:8000", "[::1]:8000"); ValueError for what it refuses."""
    match = naiveip_re.match(addrport)
    if match is None:
        raise ValueError(addrport)
    host, _, ipv6, _, port = match.groups()
    if ipv6:
        host = host[1:-1]
    elif host == "0":  # runserver's shorthand for every IPv4 address
        host = "0.0.0.0"
    return host or "127.0.0.1", int(port)


def chat_url(host: str, port: int) -> str:
    """The chat's address for a browser on this machine, for a server listening on host:port."""
    # Every address includes loopback, and a browser cannot open "every address".
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{f'[{host}]' if ':' in host else host}:{port}/chat/"


def exit_status_of_server(returncode: int) -> int:
    """run's exit status when the server stopped without Ctrl-C: never 0, since it only
    stops by itself when it failed (a listen failure, for one, makes daphne exit 0)."""
    return returncode if returncode > 0 else 1


def main(argv: list[str]) -> int:
    """Run the development stack until the server exits or the user presses Ctrl-C."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("addrport", nargs="?", default="127.0.0.1:8000")
    parser.add_argument("--noreload", action="store_true", help="no autoreloader")
    args = parser.parse_args(argv)

    # Explicitly: a shell that starts us in the background may have set SIGINT to "ignore".
    signal.signal(signal.SIGINT, _raise_keyboard_interrupt)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    env = dict(os.environ)
    # Checked here, before anything starts: runserver would only log a CRITICAL line and
    # wait for file changes for ever, and the page would loop on 1006.
    try:
        host, port = address_to_check(args.addrport)
    except ValueError:
        parser.error(f"{args.addrport!r} is not a port, host:port or [IPv6 address]:port")
    if problem := settings_problem() or plain_http_problem(host):
        print(f"{problem}.", file=sys.stderr)
        return 1
    env.update(plain_http_environment(host))
    if not port_is_free(port, host):
        print(
            f"Port {port} on {host} is already in use: stop what holds it, or run on another"
            f" port (python3 dev.py run 127.0.0.1:{free_port()}).",
            file=sys.stderr,
        )
        return 1
    if env.get("REDIS_URL"):
        problem = redis_problem(env["REDIS_URL"])
        if problem is not None:
            print(f"{problem}. Fix REDIS_URL, or unset it for the embedded Redis.", file=sys.stderr)
            return 1
        shown = ", ".join(map(redacted_url, redis_urls(env["REDIS_URL"])))
        print(f"Using Redis at REDIS_URL={shown}.", flush=True)
    redis_server = None
    server = None
    try:
        if not env.get("REDIS_URL"):
            redis_server = start_embedded_redis()
            env["REDIS_URL"] = redis_server.url
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, check=True)
        command = [sys.executable, "manage.py", "runserver", args.addrport]
        if args.noreload:
            command.append("--noreload")
        print(f"Chat: {chat_url(host, port)} (Ctrl-C stops the server and Redis)", flush=True)
        # Its own process group, so that stopping it also stops the autoreloader's child.
        server = subprocess.Popen(command, env=env, start_new_session=True)
        returncode = server.wait()
        print(f"The server stopped by itself (exit status {returncode}).", file=sys.stderr)
        return exit_status_of_server(returncode)
    except KeyboardInterrupt:
        return 0
    except subprocess.CalledProcessError as failure:
        return failure.returncode
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if server is not None:
            # runserver and its autoreloader child: the whole group, SIGINT as Ctrl-C would.
            stop_processes([server], SERVER_STOP_TIMEOUT_SECONDS, signal.SIGINT, group=True)
        if redis_server is not None:
            redis_server.stop()
            print("Stopped the embedded Redis.", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
