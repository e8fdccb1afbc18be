"""perceus.native.nodeset against ClusterShell's NodeSet, side by side in one run.

Three workloads: expand a 1,000,000-name expression, fold 1,000,000 contiguous names,
fold 100,000 scattered names (a seeded 10% sample of the same range, shuffled).  Each
has a pytest-benchmark group holding ours and ClusterShell's timings; the ratio is the
median ClusterShell time over our median, both timed with perf_counter in alternation
(ours, theirs, ours, theirs, ...) so machine load hits both alike.  Nothing here asserts
on timing: the ratios are reported (bench/conftest.py prints them, also under -q).
"""

import random
import statistics
import time

import pytest
from ClusterShell.NodeSet import NodeSet

from perceus.native.nodeset import expand, fold

EXPR_1M = "n[0000000-0999999]"
OUR_ROUNDS = 5
SIDE_BY_SIDE_ROUNDS = 3  # ClusterShell takes seconds per million names


@pytest.fixture(scope="module")
def names_1m():
    return expand(EXPR_1M)


@pytest.fixture(scope="module")
def scattered_100k(names_1m):
    rng = random.Random(20240607)
    names = rng.sample(names_1m, 100_000)
    rng.shuffle(names)
    return names


@pytest.fixture(scope="module")
def workloads(names_1m, scattered_100k):
    """name -> (ours, ClusterShell's); each returns something comparable with the other."""
    return {
        "expand-1M": (lambda: expand(EXPR_1M), lambda: list(NodeSet(EXPR_1M))),
        "fold-1M-contiguous": (lambda: fold(names_1m), lambda: str(NodeSet.fromlist(names_1m))),
        "fold-100k-scattered": (lambda: fold(scattered_100k), lambda: str(NodeSet.fromlist(scattered_100k))),
    }


WORKLOADS = ["expand-1M", "fold-1M-contiguous", "fold-100k-scattered"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_nodeset_ours(benchmark, workloads, workload):
    ours, _ = workloads[workload]
    benchmark.group = workload
    benchmark.pedantic(ours, rounds=OUR_ROUNDS, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("workload", WORKLOADS)
def test_nodeset_clustershell(benchmark, workloads, workload, record_property):
    """ClusterShell's timing, with ours run just before each of its rounds for the ratio."""
    ours, theirs = workloads[workload]
    ours_times, theirs_times, results = [], [], {}

    def run_ours():  # pedantic's setup: untimed by pytest-benchmark, timed by us
        start = time.perf_counter()
        results["ours"] = ours()
        ours_times.append(time.perf_counter() - start)

    def run_theirs():
        start = time.perf_counter()
        results["theirs"] = theirs()
        theirs_times.append(time.perf_counter() - start)

    benchmark.group = workload
    benchmark.pedantic(run_theirs, setup=run_ours, rounds=SIDE_BY_SIDE_ROUNDS, iterations=1)

    assert results["ours"] == results["theirs"]  # same answer; timing is only reported
    ratio = statistics.median(theirs_times) / statistics.median(ours_times)
    line = (
        f"nodeset ratio {workload}: {ratio:.1f}x faster than ClusterShell "
        f"(median {statistics.median(ours_times) * 1e3:.1f} ms vs "
        f"{statistics.median(theirs_times) * 1e3:.0f} ms, {SIDE_BY_SIDE_ROUNDS} rounds side by side)"
    )
    benchmark.extra_info["ratio_vs_clustershell"] = round(ratio, 2)
    benchmark.extra_info["ours_median_s"] = statistics.median(ours_times)
    benchmark.extra_info["clustershell_median_s"] = statistics.median(theirs_times)
    record_property("ratio_line", line)
