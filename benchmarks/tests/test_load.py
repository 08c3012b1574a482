"""benchmarks/load.py's output: figures rounded, artefacts where git ignores them."""

import subprocess

from benchmarks.load import median_p99_ms, parse_args
from conftest import ROOT


def test_the_median_p99_of_an_even_number_of_steps_is_rounded_like_every_figure():
    rows = [{"p99_ms": 3962.8}, {"p99_ms": 3962.9}, {"p99_ms": 10.0}, {"p99_ms": 9000.5}]
    assert str(median_p99_ms(rows)) == "3962.9"  # not 3962.8500000000004


def test_a_run_writes_its_plot_where_git_ignores_it():
    plot = parse_args(["--layer", "redis"]).plot
    assert plot.name == "load-redis.png"
    ignored = subprocess.run(["git", "check-ignore", "-q", str(plot)], cwd=ROOT)
    assert ignored.returncode == 0
