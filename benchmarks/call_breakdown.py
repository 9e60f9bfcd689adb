"""What one in-process gateway call spends its time on: the p50 with each part switched off in turn.

    python -m benchmarks.call_breakdown [--rounds 7] [--calls 400] [--fsync never|group]

One gateway over the stub adapter and one bare MCPServer no-op, driven by the
in-memory `Client` (benchmark 2's setup). Each round measures the bare no-op,
the full gateway call, and the gateway with one part replaced by a no-op (the
audit sink's write, metrics, spans, the attempt deadline, the coalescer, the
client's check of the result against the published outputSchema); the
difference to the full call is that part's cost; each figure comes from the
quietest round. A measuring tool, not a
configuration: nothing here is a way to run the gateway.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
from mcp import Client

from benchmarks.bare import bare_server
from benchmarks.stub import ROUTES, StubAdapter, performance

ARGS = {"input": "the quick brown fox"}


class _NoMetric:
    def inc(self, *_: Any) -> None: ...
    def dec(self, *_: Any) -> None: ...
    def observe(self, *_: Any) -> None: ...


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def parts(gateway: Any) -> dict[str, Callable[[], contextlib.AbstractContextManager[None]]]:
    """Each part's switch: a context manager that replaces it with a no-op while it is held."""
    import mcp.client.session as client_session

    from server import router as router_module
    from server import telemetry
    from server.audit import AuditLog

    state = gateway.get()

    async def no_write(self: Any, body: Any, durable: bool = True, *, alone: bool = False) -> None:
        return None

    def no_write_now(self: Any, body: Any, durable: bool = True, *, alone: bool = False) -> bool:
        return True

    @contextlib.contextmanager
    def no_audit() -> Iterator[None]:
        with _patched(AuditLog, "write", no_write), _patched(AuditLog, "write_now", no_write_now):
            yield

    async def no_check(self: Any, name: str, result: Any) -> None:
        return None

    @contextlib.contextmanager
    def no_metrics() -> Iterator[None]:
        metrics = state.metrics
        with (
            _patched(metrics, "child", lambda *_: _NoMetric()),
            _patched(metrics, "in_flight", _NoMetric()),
            _patched(metrics, "observe_batch", lambda *_: None),
        ):
            yield

    @contextlib.contextmanager
    def no_spans() -> Iterator[None]:
        null = lambda *_: contextlib.nullcontext(telemetry.trace.INVALID_SPAN)  # noqa: E731
        with _patched(router_module, "attempt_span", null):
            from server import pipeline

            with _patched(pipeline, "call_span", null):
                yield

    @contextlib.contextmanager
    def no_coalescer() -> Iterator[None]:
        raw = {name: adapter for name, adapter in state.adapters.items()}
        with _patched(state.router, "adapters", raw):
            yield

    return {
        "audit sink write (2 records)": no_audit,
        "client's outputSchema check": lambda: _patched(client_session.ClientSession, "validate_tool_result", no_check),
        "metrics": no_metrics,
        "spans (no tracer installed)": no_spans,
        "attempt deadline (a cancel scope)": lambda: _patched(
            router_module, "attempt_deadline", lambda *_: contextlib.nullcontext()
        ),
        "coalescer around the adapter": no_coalescer,
    }


async def p50_us(client: Client, tool: str, n: int) -> float:
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await client.call_tool(tool, ARGS)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


async def measure(rounds: int, calls: int, fsync: str) -> dict[str, float]:
    from tests.support.gateway import fake_server

    with tempfile.TemporaryDirectory(prefix="breakdown-") as home:
        server, gateway = fake_server(
            Path(home), {"stub": StubAdapter()}, routes=ROUTES, performance=performance(fsync)
        )
        async with Client(server) as gw, Client(bare_server()) as bare:
            for _ in range(200):
                await gw.call_tool("embed", ARGS)
                await bare.call_tool("noop", ARGS)
            switches = parts(gateway)
            results: dict[str, list[float]] = {"bare no-op": [], "gateway": [], **{k: [] for k in switches}}
            for _ in range(rounds):
                results["bare no-op"].append(await p50_us(bare, "noop", calls))
                results["gateway"].append(await p50_us(gw, "embed", calls))
                for name, switch in switches.items():
                    with switch():
                        results[name].append(await p50_us(gw, "embed", calls))
    # the quietest round of each: on a shared machine a busy spell can cover a whole round
    return {k: min(v) for k, v in results.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--fsync", choices=["never", "group", "always"], default="never")
    args = parser.parse_args(argv)
    found = anyio.run(measure, args.rounds, args.calls, args.fsync)
    bare, full = found.pop("bare no-op"), found.pop("gateway")
    print(f"bare MCPServer no-op p50: {bare:.0f} us; gateway embed p50: {full:.0f} us ({full / bare:.2f}x)")
    for name, without in found.items():
        print(f"  {name:34s} {full - without:6.0f} us")
    print(f"  {'the rest (SDK plumbing, routing, policy, results)':34s} {without_all(full, bare, found):6.0f} us")


def without_all(full: float, bare: float, found: dict[str, float]) -> float:
    return full - bare - sum(full - v for v in found.values())


if __name__ == "__main__":
    main()
