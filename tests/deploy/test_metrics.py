"""Metrics as a scraper sees them: a live /metrics, its zero-valued counters, and the dashboard.

One ``cosyvoice-sidecar serve --emulator`` runs with the manifests' Prometheus
settings (on loopback and a free port here) and the fleet quota on a real
redis-server, is scraped before any call and again after two calls that succeed
and one that DashScope fails; the Grafana dashboard's every query must name only
metrics and labels found there.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from cosyvoice.sidecar.v1 import synthesizer_pb2 as pb
from cosyvoice_sidecar_client import AsyncSynthesizerClient

from sidecar.telemetry import _names as names
from tests.deploy.conftest import BASE, REPO, env_of, kustomize_build, pod_spec, sidecar_container
from tests.deploy.serving import serving_address
from tests.fleet.redis_server import RedisServer
from tests.helpers import require_executable
from tests.timing import scaled

DASHBOARD = REPO / "deploy" / "grafana" / "cosyvoice-sidecar.json"
# Labels Prometheus adds from the scrape target, not the exporter.
TARGET_LABELS = {"namespace", "pod", "instance", "job", "container"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
}
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass
class Scrape:
    """One /metrics text, as samples: name -> list of (labels, value)."""

    samples: dict[str, list[tuple[dict[str, str], float]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Scrape:
        scrape = cls()
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            match = SAMPLE.match(line)
            assert match, line
            labels = dict(LABEL.findall(match.group(2) or ""))
            scrape.samples.setdefault(match.group(1), []).append((labels, float(match.group(3))))
        return scrape

    def value(self, metric: str, **labels: str) -> float:
        """The one sample of ``metric`` whose labels include ``labels``."""
        found = [
            v
            for have, v in self.samples.get(metric, [])
            if all(have.get(k) == want for k, want in labels.items())
        ]
        assert len(found) == 1, (metric, labels, self.samples.get(metric))
        return found[0]

    def labels(self, metric: str) -> set[str]:
        return {name for have, _ in self.samples.get(metric, []) for name in have}


@dataclass
class Scrapes:
    before: Scrape
    after: Scrape


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=scaled(5)) as response:  # noqa: S310 - loopback
        text: str = response.read().decode()
        return text


def _metrics_url(stderr: Path) -> str:
    match = re.search(r"metrics for Prometheus on (http://\S+/metrics)", stderr.read_text())
    assert match, stderr.read_text()[-3000:]
    return match.group(1)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def scrapes(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Scrapes]:
    """The sidecar with the manifests' metrics settings and the fleet quota (the dashboard's
    fleet panels), scraped before and after some calls."""
    manifest = env_of(sidecar_container(pod_spec(kustomize_build(BASE))))
    otel = {k: v for k, v in manifest.items() if k.startswith("OTEL_")}
    assert otel["OTEL_METRICS_EXPORTER"] == "prometheus"
    otel |= {"OTEL_EXPORTER_PROMETHEUS_HOST": "127.0.0.1", "OTEL_EXPORTER_PROMETHEUS_PORT": "0"}
    program = Path(sys.executable).parent / "cosyvoice-sidecar"
    stderr = tmp_path_factory.mktemp("metrics") / "sidecar.stderr"
    redis = RedisServer(require_executable("redis-server"))
    await redis.start()
    with stderr.open("wb") as errors:
        proc = await asyncio.create_subprocess_exec(
            str(program),
            "serve",
            "--emulator",
            "--listen",
            "127.0.0.1:0",
            f"--fleet-redis-url={redis.url}",
            "--fleet-quota=4",
            env={"PATH": "/usr/bin:/bin", **otel},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=errors,
        )
    try:
        address = await serving_address(proc, stderr, within=30)
        url = _metrics_url(stderr)
        before = Scrape.parse(await asyncio.to_thread(_get, url))
        async with AsyncSynthesizerClient(address) as client:
            await client.synthesize("One sentence.", timeout=scaled(10))
            stream = await client.open_stream(timeout=scaled(10))
            await stream.send_text("Another, ")
            await stream.send_text("in two fragments.")
            await stream.finish()
            async for _ in stream:
                pass
            # DashScope's task-failed (the emulator rejects this voice), for the error codes.
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await client.synthesize(
                    "Rejected.", pb.SynthesisConfig(voice="bad-voice"), timeout=scaled(10)
                )
            assert failed.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        after = Scrape.parse(await asyncio.to_thread(_get, url))
        yield Scrapes(before, after)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(scaled(20)):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        await redis.close()


@pytest.mark.asyncio(loop_scope="module")
async def test_counters_are_exported_at_zero_from_the_start(scrapes: Scrapes) -> None:
    """Before any call, every counter's known series is there at 0 (absent() alerts work)."""
    before = scrapes.before
    for outcome in names.SYNTHESIS_OUTCOMES:
        labels = {"cosyvoice_synthesis_outcome": outcome}
        assert before.value("cosyvoice_synthesis_tasks_total", **labels) == 0, outcome
    assert before.value("cosyvoice_pool_connection_timeouts_total") == 0
    for reason in names.CLOSE_REASONS:
        labels = {"cosyvoice_connection_close_reason": reason}
        assert before.value("cosyvoice_pool_connection_closed_total", **labels) == 0, reason
    assert before.value("cosyvoice_pool_stale_retries_total") == 0
    assert before.value("cosyvoice_pool_connection_opened_total") >= 1  # the warm-up
    # The calls then count on top of (and beside) those series.
    after = scrapes.after
    finished = after.samples["cosyvoice_synthesis_tasks_total"]
    assert sum(v for labels, v in finished if labels["cosyvoice_synthesis_outcome"] == "finished")
    assert (
        after.value(
            "cosyvoice_synthesis_tasks_total",
            cosyvoice_synthesis_outcome="failed",
            dashscope_error_code="InvalidParameter",
        )
        == 1
    )


@pytest.mark.asyncio(loop_scope="module")
async def test_the_fleet_quota_is_exported_from_the_start(scrapes: Scrapes) -> None:
    """With the fleet quota on: its quota, enforcement and error counters before any call,
    then one slot wait recorded per DashScope task (the failed one too), all given back."""
    before, after = scrapes.before, scrapes.after
    assert before.value("cosyvoice_fleet_slots_quota") == 4
    assert before.value("cosyvoice_fleet_enforced") == 1
    assert before.value("cosyvoice_fleet_redis_errors_total") == 0
    assert before.value("cosyvoice_fleet_slots_reclaimed_total") == 0
    waits = after.samples["cosyvoice_fleet_wait_time_seconds_count"]
    assert sum(v for _, v in waits) == 3
    assert after.value("cosyvoice_fleet_slots_held") == 0
    assert after.value("cosyvoice_fleet_slots_waiting") == 0


def test_close_reasons_are_the_pools() -> None:
    """The reasons exported at 0 are exactly the ones the pool closes connections with."""
    used: set[str] = set()
    for path in (REPO / "sidecar" / "pool").rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        # The pool's own closes, and the ones its plan decides (close.append((c, "why"))).
        for call in re.findall(r"\b_close\(([^()]*)\)", source):
            used |= set(re.findall(r'"(\w+)"', call))
        used |= set(re.findall(r'close\.append\(\(.*,\s*"(\w+)"\)\)', source))
    assert used == set(names.CLOSE_REASONS)


def _expressions(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    found = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            found.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"]
            inner = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", query)
            assert inner, query
            found.append((f"variable {variable['name']}", inner.group(1)))
    return found


def _names_in(expr: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names one PromQL expression uses."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # no identifiers inside strings
    labels: set[str] = set()
    for matchers in re.findall(r"\{([^}]*)\}", text):
        labels |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", matchers))
    text = re.sub(r"\{[^}]*\}", " ", text)
    for grouping in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", text):
        labels |= {label.strip() for label in grouping.split(",") if label.strip()}
    text = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range selectors ($__rate_interval)
    metrics = {
        token
        for token in re.findall(r"(?<![\w$.:])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
        if token not in PROMQL_KEYWORDS
    }
    return metrics, labels


@pytest.mark.asyncio(loop_scope="module")
async def test_dashboard_queries_name_what_the_sidecar_exports(scrapes: Scrapes) -> None:
    """Valid JSON; every metric and label in every query is in a live scrape of the sidecar."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    exported = scrapes.after
    used: set[str] = set()
    for where, expr in _expressions(dashboard):
        metrics, labels = _names_in(expr)
        assert metrics, f"{where}: no metric in {expr}"
        for metric in metrics:
            assert metric in exported.samples, f"{where}: {metric} is not exported"
        known = set().union(*(exported.labels(m) for m in metrics)) | TARGET_LABELS
        assert labels <= known, f"{where}: {labels - known} not on {metrics}"
        used |= metrics
    # What the dashboard is for: the pool, calls by status, first-audio latency,
    # upstream errors by DashScope code, connections closed by reason.
    assert {
        "cosyvoice_pool_connection_count",
        "cosyvoice_pool_connection_pending_requests",
        "rpc_server_call_duration_seconds_count",
        "cosyvoice_synthesis_time_to_first_audio_seconds_bucket",
        "cosyvoice_synthesis_tasks_total",
        "cosyvoice_pool_connection_closed_total",
        "cosyvoice_fleet_slots_in_use",
        "cosyvoice_fleet_slots_quota",
        "cosyvoice_fleet_wait_time_seconds_bucket",
        "cosyvoice_fleet_enforced",
        "cosyvoice_fleet_redis_errors_total",
    } <= used
    exprs = " ".join(expr for _, expr in _expressions(dashboard))
    for grouping in ("cosyvoice_connection_state", "rpc_response_status_code"):
        assert f"by ({grouping})" in exprs, grouping
    assert "dashscope_error_code" in exprs
    assert "cosyvoice_connection_close_reason" in exprs


def test_dashboard_panels_fit_the_grid() -> None:
    """Every panel has a data source, a place on the 24-column grid, and unique ids."""
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
