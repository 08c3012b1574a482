"""docker-compose.yml, the Dockerfile and deploy/nginx.conf, checked by reading them.

No Docker engine runs here, so the stack's wiring is checked as files; nginx's own parser
checks the nginx configuration where nginx is installed.
"""

import importlib
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from django.urls import resolve

from mysite.health import healthz
from mysite.proxies import trusted_networks

ROOT = Path(__file__).resolve().parents[2]
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
# What an operator must export before `docker compose up`; nothing else is needed.
REQUIRED = {"DJANGO_SECRET_KEY": "a-secret-key", "POSTGRES_PASSWORD": "a-password"}
SECRETS = tuple(REQUIRED)
ONE_SHOT = {"migrate"}
# ${NAME}, ${NAME:-default}, ${NAME:?error}: the forms of compose interpolation used here.
VARIABLE = re.compile(r"\$\{(?P<name>\w+)(?:(?P<op>:[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: str, environment: dict[str, str]) -> str:
    """Substitute variables as `docker compose` does; a missing required one is an error."""

    def substitute(match: re.Match) -> str:
        if environment.get(match["name"]):
            return environment[match["name"]]
        if match["op"] == ":?":
            raise KeyError(f"{match['name']}: {match['arg']}")
        return match["arg"] or ""

    return VARIABLE.sub(substitute, value)


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def web_environment(**environment: str) -> dict[str, str]:
    """The web service's environment as the containers would see it."""
    variables = {**REQUIRED, **environment}
    return {
        name: interpolate(value, variables)
        for name, value in services()["web"]["environment"].items()
    }


def parse_nginx(text: str) -> list[tuple[str, list[str], list]]:
    """An nginx configuration as nested (name, arguments, block) directives."""
    tokens = re.findall(r'"[^"]*"|[{};]|[^\s{};"]+', re.sub(r"#[^\n]*", "", text))

    def block(position: int) -> tuple[list, int]:
        directives, words = [], []
        while position < len(tokens):
            token = tokens[position]
            position += 1
            if token == ";":
                directives.append((words[0], words[1:], []))
                words = []
            elif token == "{":
                children, position = block(position)
                directives.append((words[0], words[1:], children))
                words = []
            elif token == "}":
                break
            else:
                words.append(token.strip('"'))
        return directives, position

    return block(0)[0]


def arguments(block: list, name: str) -> list[list[str]]:
    """The arguments of every `name` directive directly in block."""
    return [args for directive, args, _ in block if directive == name]


def inner(block: list, name: str) -> list:
    """The block of the one `name` directive directly in block."""
    (children,) = [children for directive, _, children in block if directive == name]
    return children


def nginx_server() -> tuple[list, list, dict[str, list]]:
    """The http block, its one server block, and that server's locations by path."""
    http = inner(parse_nginx(NGINX_CONF.read_text()), "http")
    server = inner(http, "server")
    locations = {args[-1]: children for name, args, children in server if name == "location"}
    return http, server, locations


def effective(name: str, *blocks: list) -> list[list[str]]:
    """What nginx applies for an inherited directive: the innermost block that sets it wins,
    wholesale (a location with one proxy_set_header drops every header set above it)."""
    for block in reversed(blocks):
        if found := arguments(block, name):
            return found
    return []


def proxy_headers(location: str) -> dict[str, str]:
    http, server, locations = nginx_server()
    headers = effective("proxy_set_header", http, server, locations[location])
    return {header: value for header, value in headers}


def proxy_target(location: str) -> str:
    """Where a location proxies to, with the server's `set` variables filled in."""
    _, server, locations = nginx_server()
    ((target,),) = arguments(locations[location], "proxy_pass")
    variables = {name: value for name, value in arguments(server, "set")}
    return variables.get(target, target)


def serving_location(path: str) -> str:
    """The prefix location nginx picks for path: the longest one that matches."""
    _, _, locations = nginx_server()
    return max((prefix for prefix in locations if path.startswith(prefix)), key=len)


def test_every_long_running_service_has_a_healthcheck():
    for name, service in services().items():
        if name not in ONE_SHOT:
            assert service["healthcheck"]["test"], name


def test_postgres_counts_as_healthy_only_once_it_accepts_tcp_connections():
    test = services()["postgres"]["healthcheck"]["test"]
    assert "pg_isready" in test
    assert test[test.index("-h") + 1] == "127.0.0.1"


def test_migrate_and_web_read_one_configuration():
    compose = services()
    assert compose["migrate"]["environment"] == compose["web"]["environment"]


def test_every_service_command_runs_a_module_or_script_that_exists():
    # python -m <module> and python <script> alike, with their ASGI application's module.
    for name, service in services().items():
        command = service.get("command") or []
        if command[:1] != ["python"]:
            continue
        target = command[2] if command[1] == "-m" else command[1]
        path = ROOT / (target.replace(".", "/") + ".py" if command[1] == "-m" else target)
        assert path.is_file(), (name, target)
        for word in command:
            if ":" in word and "." in word.partition(":")[0]:  # module:attribute
                module, _, attribute = word.partition(":")
                assert hasattr(importlib.import_module(module), attribute), (name, word)


def test_web_runs_several_replicas_by_default_and_as_many_as_asked():
    replicas = str(services()["web"]["deploy"]["replicas"])
    assert int(interpolate(replicas, {})) >= 2
    assert int(interpolate(replicas, {"WEB_REPLICAS": "5"})) == 5
    assert "ports" not in services()["web"]  # replicas cannot share a host port


def test_every_http_healthcheck_asks_an_endpoint_the_project_serves():
    urls = [
        word
        for service in services().values()
        for word in service.get("healthcheck", {}).get("test", [])
        for word in re.findall(r"https?://[^\s'\"]+", word)
    ]
    assert urls  # web's, and nginx's through it
    for url in urls:
        path = urlsplit(url).path
        assert resolve(path).func is healthz, url
        assert proxy_target(serving_location(path)) == "http://web:8000", url


def test_every_variable_the_stack_sets_is_one_settings_reads():
    read = set(re.findall(r'"([A-Z][A-Z0-9_]+)"', (ROOT / "mysite" / "settings.py").read_text()))
    for name in ("migrate", "web"):
        assert set(services()[name]["environment"]) <= read, name


def test_web_reaches_redis_and_postgres_by_their_service_names():
    environment = web_environment()
    redis = urlsplit(environment["REDIS_URL"])
    database = urlsplit(environment["DATABASE_URL"])
    assert (redis.scheme, redis.hostname, redis.port) == ("redis", "redis", 6379)
    assert (database.scheme, database.hostname, database.port) == ("postgres", "postgres", 5432)
    postgres = services()["postgres"]["environment"]
    assert database.username == postgres["POSTGRES_USER"]
    assert database.path == f"/{postgres['POSTGRES_DB']}"
    assert database.password == interpolate(postgres["POSTGRES_PASSWORD"], REQUIRED)


def test_web_starts_once_migrations_succeeded_and_redis_and_postgres_are_healthy():
    depends_on = services()["web"]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"
    assert depends_on["postgres"]["condition"] == "service_healthy"


def test_health_checks_address_an_allowed_host_whatever_hosts_are_configured():
    for configured in ({}, {"DJANGO_ALLOWED_HOSTS": "chat.example.com"}):
        hosts = web_environment(**configured)["DJANGO_ALLOWED_HOSTS"].split(",")
        assert "127.0.0.1" in hosts
        assert configured.get("DJANGO_ALLOWED_HOSTS", "localhost") in hosts


def test_web_runs_in_production_mode_behind_the_proxy_over_plain_http_by_default():
    environment = web_environment()
    assert environment["DJANGO_DEBUG"] == "false"
    assert environment["DJANGO_SECURE_PROXY_SSL_HEADER"] == "true"
    assert environment["DJANGO_SECURE_SSL_REDIRECT"] == "false"
    behind_tls = web_environment(DJANGO_SECURE_SSL_REDIRECT="true")
    assert behind_tls["DJANGO_SECURE_SSL_REDIRECT"] == "true"


def test_web_trusts_forwarding_headers_from_the_proxy_network_that_nginx_alone_shares():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    [ipam] = compose["networks"]["proxy"]["ipam"]["config"]
    subnet = ipam["subnet"]
    for variables in ({}, {"PROXY_SUBNET": "10.99.0.0/24"}):
        trusted = web_environment(**variables)["CHAT_TRUSTED_PROXIES"]
        assert trusted == interpolate(subnet, variables)
        assert trusted_networks([trusted])  # one network, as the settings read it
    on_proxy = {
        name for name, service in compose["services"].items()
        if "proxy" in service.get("networks", [])
    }  # fmt: skip
    assert on_proxy == {"nginx", "web"}
    assert compose["services"]["nginx"]["networks"] == ["proxy"]
    # Redis and Postgres stay on the default network, which the replicas need too.
    assert "default" in compose["services"]["web"]["networks"]


def test_secrets_are_required_variables_never_literals():
    text = (ROOT / "docker-compose.yml").read_text()
    for secret in SECRETS:
        uses = re.findall(rf"\$\{{{secret}[^}}]*\}}", text)
        assert uses, secret
        assert all(use.startswith(f"${{{secret}:?") for use in uses), uses
        with pytest.raises(KeyError, match=secret):
            interpolate(text, {name: value for name, value in REQUIRED.items() if name != secret})
    assert services()["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith(
        "${POSTGRES_PASSWORD:?"
    )
    assert services()["web"]["environment"]["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")


def test_nginx_conf_listens_on_the_port_compose_publishes():
    _, server, _ = nginx_server()
    assert arguments(server, "listen") == [["80"]]


def test_nginx_conf_proxies_pages_websockets_and_healthz_to_the_web_service():
    for path in ("/chat/lobby/", "/ws/chat/lobby/", "/healthz", "/static/chat/room.js"):
        assert proxy_target(serving_location(path)) == "http://web:8000", path


def test_nginx_conf_resolves_web_at_request_time_through_dockers_dns():
    http, _, locations = nginx_server()
    (resolver,) = arguments(http, "resolver")
    assert resolver[0] == "127.0.0.11"
    assert "valid=10s" in resolver
    # A variable in proxy_pass is what makes nginx use the resolver for every request.
    for location in locations.values():
        ((target,),) = arguments(location, "proxy_pass")
        assert target.startswith("$")


def test_nginx_conf_upgrades_websockets_on_ws_and_keeps_them_open_for_an_hour():
    http, server, locations = nginx_server()
    websocket = locations["/ws/"]
    assert effective("proxy_http_version", http, server, websocket) == [["1.1"]]
    headers = proxy_headers("/ws/")
    assert headers["Upgrade"] == "$http_upgrade"
    assert headers["Connection"] == "$connection_upgrade"
    (connection,) = [
        children for name, args, children in http
        if name == "map" and args == ["$http_upgrade", "$connection_upgrade"]
    ]  # fmt: skip
    assert {name: args for name, args, _ in connection} == {
        "default": ["upgrade"],
        "": ["close"],
    }
    for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
        assert effective(timeout, http, server, websocket) == [["1h"]]


def test_nginx_conf_sets_host_client_address_and_scheme_on_every_location():
    _, _, locations = nginx_server()
    for location in locations:
        headers = proxy_headers(location)
        # With its port, as the browser's Origin has it, so Django's CSRF check matches.
        assert headers["Host"] == "$http_host", location
        # Replaced, never appended to: what a client sends in it is not passed on.
        assert headers["X-Forwarded-For"] == "$remote_addr", location
        assert headers["X-Forwarded-Proto"] == "$scheme", location


def _nginx_binary() -> str:
    """Debian's nginx, or a skip; in CI, where .ci/run installs it, a missing one fails."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found is None:
        reason = "the nginx -t check needs Debian's nginx (apt-get install nginx)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


def test_nginx_accepts_the_config(tmp_path):
    nginx = _nginx_binary()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # `nginx -t` binds its listen ports, and port 80 is root's: the one line changed.
    text = NGINX_CONF.read_text()
    assert text.count("listen 80;") == 1
    conf = tmp_path / "nginx.conf"
    conf.write_text(text.replace("listen 80;", f"listen 127.0.0.1:{port};"))
    result = subprocess.run(
        [nginx, "-t", "-c", str(conf), "-p", f"{tmp_path}/", "-e", str(tmp_path / "error.log"),
         "-g", f"pid {tmp_path / 'nginx.pid'};"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr


def test_dockerfile_installs_the_pinned_requirements_and_ships_the_apps():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    for folder in ("mysite", "chat", "serving"):
        assert f"COPY {folder} ./{folder}" in dockerfile


def test_image_has_the_postgres_driver_that_compose_databases_need():
    requirements = (ROOT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("psycopg[binary]==") for line in requirements)


def test_image_runs_as_a_non_root_user_and_serves_without_migrating():
    dockerfile = (ROOT / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert user not in ("root", "0")
    (command,) = re.findall(r"^CMD (.+)$", dockerfile, re.MULTILINE)
    assert "serving.chat_daphne" in command
    assert "migrate" not in command
