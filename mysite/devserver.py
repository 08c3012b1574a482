"""The run command's second half, inside the virtualenv: Redis, migrate, runserver.

Starts the embedded redis-server when REDIS_URL is unset, migrates, and runs
`manage.py runserver` (daphne's, so WebSockets work). Ctrl-C or SIGTERM stops the
server and the Redis it started; nothing is left running and no pid file is written.
"""

import argparse
import os
import signal
import subprocess
import sys

from mysite.embedded_redis import DEFAULT_PORT, EmbeddedRedis, free_port, port_is_free
from mysite.processes import stop_processes

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
    redis_server = None
    server = None
    try:
        if not env.get("REDIS_URL"):
            redis_server = start_embedded_redis()
            env["REDIS_URL"] = redis_server.url
        else:
            print(f"Using Redis at REDIS_URL={env['REDIS_URL']}.")
        subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], env=env, check=True)
        command = [sys.executable, "manage.py", "runserver", args.addrport]
        if args.noreload:
            command.append("--noreload")
        print(f"Chat: http://{args.addrport}/chat/ (Ctrl-C stops the server and Redis)", flush=True)
        # Its own process group, so that stopping it also stops the autoreloader's child.
        server = subprocess.Popen(command, env=env, start_new_session=True)
        return server.wait()
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
