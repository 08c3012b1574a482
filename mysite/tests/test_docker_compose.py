"""docker-compose.yml wiring, checked by reading it: no Docker engine runs here."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def load_compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_redis_service_runs_a_current_redis_image_with_a_healthcheck():
    redis = load_compose()["services"]["redis"]
    image, _, tag = redis["image"].partition(":")
    assert image == "redis"
    assert int(tag.split("-")[0].split(".")[0]) >= 7
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_web_service_builds_the_project_and_runs_daphne_on_all_interfaces():
    web = load_compose()["services"]["web"]
    assert web["build"] == "."
    assert "daphne -b 0.0.0.0 -p 8000 mysite.asgi:application" in web["command"]
    assert "8000:8000" in web["ports"]


def test_web_service_reaches_redis_by_its_service_name_once_it_is_healthy():
    web = load_compose()["services"]["web"]
    assert web["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert web["depends_on"]["redis"]["condition"] == "service_healthy"


def test_web_service_runs_in_production_mode_with_a_required_secret():
    environment = load_compose()["services"]["web"]["environment"]
    assert environment["DJANGO_DEBUG"] == "false"
    assert environment["DJANGO_SECRET_KEY"].startswith("${DJANGO_SECRET_KEY:?")


def test_dockerfile_installs_the_pinned_requirements_and_ships_the_apps():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements.txt" in dockerfile
    for folder in ("mysite", "chat"):
        assert f"COPY {folder} ./{folder}" in dockerfile
