"""A client's privacy switch holds for its own session only; the operator's holds for all and stays on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from server.app import Gateway
from tests.support.fakes import FakeAdapter
from tests.support.gateway import serving_http, settings_for
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["cloud/m", "local/m"]}}
ALLOW_REMOTE = {"default_remote": "allow"}


def gateway(
    tmp_path: Path, policy: dict[str, Any] | None = None, **load: Any
) -> tuple[Gateway, dict[str, FakeAdapter]]:
    fakes = {"cloud": FakeAdapter("cloud", privacy="remote"), "local": FakeAdapter("local")}
    load = {"transport": "streamable-http", "port": free_port(), **load}
    settings = settings_for(tmp_path, routes=ROUTES, policy=policy or ALLOW_REMOTE, load=load)
    return Gateway(settings, fakes), fakes


async def served_by(client: Client) -> str:
    result = await client.call_tool("embed", {"input": "x"})
    assert not result.is_error, result.content
    return str(result.structured_content["adapter"])


async def test_privacy_switched_by_one_http_session_leaves_the_other_sessions_alone(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path)
    with anyio.fail_after(30):
        async with serving_http(gw) as base:
            async with Client(base + "/mcp", mode="legacy") as a, Client(base + "/mcp", mode="legacy") as b:
                switched = await a.call_tool("privacy", {"enable": True})
                routes = [await served_by(a), await served_by(b), await served_by(a)]
                views = [(await c.call_tool("privacy", {})).structured_content["privacy_mode"] for c in (a, b)]
                listed = [(await c.call_tool("models", {})).structured_content for c in (a, b)]
                health = json.loads((await b.read_resource("gateway://health")).contents[0].text)
            audit = [json.loads(line) for line in gw.get().audit.path.read_text().splitlines()]
    assert switched.structured_content["changed"] is True and switched.structured_content["operator"] is False
    assert routes == ["local", "cloud", "local"] and views == [True, False]
    assert [{m["name"]: m["routable"] for m in x["models"]}["cloud/m"] for x in listed] == [False, True]
    assert health["privacy_mode"] is False  # the gateway as a whole is not in privacy mode
    assert [r["model"] for r in audit if r["event"] == "privacy"] == ["on"]


async def test_the_operators_privacy_mode_holds_for_every_session_and_no_client_lifts_it(tmp_path: Path) -> None:
    lift = {"rules": [{"id": "ops-may", "effect": "allow", "match": {"tool": ["privacy"]}}], **ALLOW_REMOTE}
    gw, fakes = gateway(tmp_path, lift, privacy_mode=True)
    with anyio.fail_after(30):
        async with serving_http(gw) as base, Client(base + "/mcp", mode="legacy") as client:
            lifted = await client.call_tool("privacy", {"enable": False})
            read = (await client.call_tool("privacy", {})).structured_content
            served = await served_by(client)
            audit = [json.loads(line) for line in gw.get().audit.path.read_text().splitlines()]
    assert lifted.is_error and "operator" in lifted.content[0].text
    assert read["privacy_mode"] is True and read["operator"] is True and served == "local"
    assert fakes["cloud"].probes == 0  # remote adapters are not even probed under the operator's mode
    assert audit[0]["event"] == "deny" and audit[0]["rule"] == "operator"


async def test_without_a_session_a_privacy_switch_is_refused_and_says_why(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, stateless=True)
    with anyio.fail_after(30):
        async with serving_http(gw) as base, Client(base + "/mcp", mode="legacy") as client:
            refused = await client.call_tool("privacy", {"enable": True})
            served = await served_by(client)
    assert refused.is_error and "no session" in refused.content[0].text and served == "cloud"


async def test_over_stdio_the_one_session_switches_privacy_for_its_next_calls(tmp_path: Path) -> None:
    gw, _ = gateway(tmp_path, transport="stdio")
    async with Client(gw.server) as client:  # each request of the modern protocol is its own connection
        before = await served_by(client)
        await client.call_tool("privacy", {"enable": True})
        after = await served_by(client)
        resource = json.loads((await client.read_resource("gateway://privacy")).contents[0].text)
    assert (before, after) == ("cloud", "local") and resource["privacy_mode"] is True
