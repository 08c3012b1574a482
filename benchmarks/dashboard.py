"""The Grafana dashboard's panels (deploy/grafana-dashboard.json), drawn from a real run.

    python3 dev.py bench dashboard                 # writes docs/screenshots/dashboard.png
    python3 dev.py bench dashboard --rates 1,2,4 --step-seconds 20

Grafana cannot run here, so this plays Prometheus and Grafana in small: it starts the
stack (two `serving.supervisor` processes), runs load steps (benchmarks.load) with a few
faults a client makes (bad frames, a foreign Origin, a catch-up, sockets closing), scrapes
/metrics every second, evaluates each panel's queries over the scrapes (the few PromQL
forms the dashboard uses, each over RATE_WINDOW_SECONDS) and draws the panels in the
dashboard's grid.
"""

import argparse
import asyncio
import json
import re
import sys
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

import websockets
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.load import Load
from benchmarks.stack import start_stack
from mysite.channel_layers import DEFAULT_LAYER

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana-dashboard.json"
SCRAPE_SECONDS = 1.0
# $__rate_interval for one-second scrapes: Grafana's is four scrape intervals at least.
RATE_WINDOW_SECONDS = 5.0
BAD_FRAMES = 30
FOREIGN_HANDSHAKES = 5
CATCH_UP_SOCKETS = 5
QUIET_SECONDS = 4.0  # between the phases, so that each shows in the panels on its own

UNIT_LABELS = {"s": "ms", "ops": "per second", "short": f"in {RATE_WINDOW_SECONDS:g} s"}
QUANTILE = re.compile(r"histogram_quantile\(([\d.]+), sum by \(le\) \(rate\((\w+)\[[^\]]+\]\)\)\)")
RATE = re.compile(r"sum(?: by \((\w+)\) )?\((rate|increase)\((\w+)\[[^\]]+\]\)\)")
GAUGE = re.compile(r"sum\((\w+)\)")

Scrape = tuple[float, list[tuple[str, dict[str, str], float]]]


def scrape(url: str) -> list[tuple[str, dict[str, str], float]]:
    """Every sample /metrics serves: (name, labels, value)."""
    with urllib.request.urlopen(f"{url}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def summed(samples, name: str, by: str | None) -> dict[str, float]:
    """The samples of `name`, added up per value of label `by` (all together without one)."""
    totals: dict[str, float] = defaultdict(float)
    for sample_name, labels, value in samples:
        if sample_name == name:
            totals[labels.get(by, "") if by else ""] += value
    return totals


def quantile(q: float, buckets: dict[str, float]) -> float | None:
    """Prometheus's histogram_quantile over cumulative bucket increases."""
    bounds = sorted((float(le), count) for le, count in buckets.items())
    if not bounds or bounds[-1][1] <= 0:
        return None
    rank = q * bounds[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in bounds:
        if count >= rank:
            if upper == float("inf"):
                return lower
            return lower + (upper - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = upper, count
    return lower


def evaluate(expr: str, legend: str, scrapes: list[Scrape]) -> dict[str, list]:
    """A panel query over the scrapes: {legend: [(seconds, value), ...]}."""
    series: dict[str, list] = defaultdict(list)
    start = scrapes[0][0]
    if match := GAUGE.fullmatch(expr):
        for at, samples in scrapes:
            series[legend].append((at - start, summed(samples, match[1], None).get("", 0.0)))
        return series
    for index, (at, samples) in enumerate(scrapes):
        earlier = [s for s in scrapes[:index] if at - s[0] >= RATE_WINDOW_SECONDS]
        if not earlier:
            continue
        then, old = earlier[-1]
        if match := QUANTILE.fullmatch(expr):
            now, before = summed(samples, match[2], "le"), summed(old, match[2], "le")
            value = quantile(float(match[1]), {le: now[le] - before.get(le, 0) for le in now})
            if value is not None:
                series[legend].append((at - start, value))
        elif match := RATE.fullmatch(expr):
            by, function, name = match[1], match[2], match[3]
            now, before = summed(samples, name, by), summed(old, name, by)
            for key, value in now.items():
                change = value - before.get(key, 0.0)
                label = re.sub(r"\{\{\w+\}\}", key, legend)
                series[label].append(
                    (at - start, change / (at - then) if function == "rate" else change)
                )
        else:
            raise ValueError(f"a PromQL form this drawing does not know: {expr}")
    return series


def draw(scrapes: list[Scrape], path: Path, subtitle: str):
    """The dashboard's panels in its grid, from the scrapes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dashboard = json.loads(DASHBOARD.read_text())
    panels = dashboard["panels"]
    end = scrapes[-1][0] - scrapes[0][0]
    columns = 24 // panels[0]["gridPos"]["w"]
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(5.2 * columns, 3.2 * rows), squeeze=False)
    for panel, axis in zip(panels, axes.flat, strict=False):
        unit = panel["fieldConfig"]["defaults"]["unit"]
        scale = 1000 if unit == "s" else 1
        for target in panel["targets"]:
            for label, points in sorted(
                evaluate(target["expr"], target["legendFormat"], scrapes).items()
            ):
                if points:
                    axis.plot([p[0] for p in points], [p[1] * scale for p in points], label=label)
        axis.set_title(panel["title"], fontsize=9)
        axis.set_ylabel(UNIT_LABELS.get(unit, unit), fontsize=8)
        axis.set_xlim(0, end)
        axis.set_ylim(bottom=0)
        axis.tick_params(labelsize=7)
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=7, loc="upper left")
        else:
            axis.text(
                0.5, 0.5, "none in this run", ha="center", va="center", transform=axis.transAxes
            )
    for axis in axes[-1]:
        axis.set_xlabel("seconds into the run", fontsize=8)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    figure.suptitle(f"{dashboard['title']}: {subtitle}", fontsize=11)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=80)


async def faults(load: Load, url: str):
    """What clients get wrong, each once in a while: bad frames, a foreign page, a catch-up."""
    ws_url = url.replace("http://", "ws://")
    for _, _, ws in load.sockets[:BAD_FRAMES]:
        await ws.send("not json")
    for _ in range(FOREIGN_HANDSHAKES):
        try:
            await websockets.connect(f"{ws_url}/ws/chat/bench-0/", origin="http://evil.example")
        except websockets.exceptions.InvalidStatus:
            pass
    catch_ups = await asyncio.gather(
        *(
            websockets.connect(f"{ws_url}/ws/chat/bench-0/?after=0", origin=url, max_size=2**20)
            for _ in range(CATCH_UP_SOCKETS)
        )
    )
    await asyncio.sleep(QUIET_SECONDS)
    await asyncio.gather(*(ws.close() for ws in catch_ups))


async def run(args) -> tuple[list[Scrape], str]:
    stack = start_stack(args.processes, args.layer)
    scrapes: list[Scrape] = []

    async def scrape_every_second():
        while True:
            scrapes.append((time.monotonic(), await asyncio.to_thread(scrape, stack.url)))
            await asyncio.sleep(SCRAPE_SECONDS)

    try:
        scraper = asyncio.create_task(scrape_every_second())
        load = Load(stack, args.rooms, args.clients)
        await asyncio.sleep(QUIET_SECONDS)
        await load.connect()
        receivers = load.start_receiving()
        for rate in args.rates:
            await load.run_step(rate, args.step_seconds)
        await faults(load, stack.url)
        for task in receivers:
            task.cancel()
        half = len(load.sockets) // 2
        await asyncio.gather(*(ws.close() for _, _, ws in load.sockets[:half]))
        await asyncio.sleep(QUIET_SECONDS)
        await asyncio.gather(*(ws.close() for _, _, ws in load.sockets[half:]))
        await asyncio.sleep(QUIET_SECONDS + RATE_WINDOW_SECONDS)
        scraper.cancel()
    finally:
        stack.stop()
    rates = ", ".join(f"{rate:g}" for rate in args.rates)
    subtitle = (
        f"{args.processes} processes, {args.rooms} rooms x {args.clients} clients at {rates} "
        f"messages/s each ({args.step_seconds:g} s steps), then faults, then closes"
    )
    return scrapes, subtitle


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rooms", type=int, default=10)
    parser.add_argument("--clients", type=int, default=10, help="clients per room")
    parser.add_argument("--rates", default="0.5,1,2", help="per-client messages/s, comma-separated")
    parser.add_argument("--step-seconds", type=float, default=10.0)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--layer", default=DEFAULT_LAYER)
    parser.add_argument(
        "--output", type=Path, default=ROOT / "docs" / "screenshots" / "dashboard.png"
    )
    args = parser.parse_args(argv)
    args.rates = [float(rate) for rate in args.rates.split(",")]
    scrapes, subtitle = asyncio.run(run(args))
    draw(scrapes, args.output, subtitle)
    print(f"{len(scrapes)} scrapes; panels: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
