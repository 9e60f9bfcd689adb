"""Privacy mode: the `privacy` tool and resource, policy on lifting it, the cached snapshot reused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from tests.support.fakes import FakeAdapter
from tests.support.gateway import fake_server

pytestmark = pytest.mark.anyio
ROUTES = {"routes": {"embed": ["cloud/m", "local/m"]}}
ALLOW_REMOTE = {"default_remote": "allow"}


def adapters() -> dict[str, FakeAdapter]:
    return {"cloud": FakeAdapter("cloud", privacy="remote"), "local": FakeAdapter("local")}


async def test_switching_privacy_on_reroutes_the_next_call_to_local_without_rediscovery(tmp_path: Path) -> None:
    fakes = adapters()
    server, ref = fake_server(tmp_path, fakes, routes=ROUTES, policy=ALLOW_REMOTE)
    async with Client(server) as c:
        before = await c.call_tool("embed", {"input": ["x"]})
        probes = {n: a.probes for n, a in fakes.items()}
        switched = await c.call_tool("privacy", {"enable": True})
        after = await c.call_tool("embed", {"input": ["x"]})
        resource = json.loads((await c.read_resource("gateway://privacy")).contents[0].text)
        audit = [json.loads(x) for x in ref.get().audit.path.read_text().splitlines()]
    assert before.structured_content["adapter"] == "cloud"
    assert switched.structured_content == {
        "privacy_mode": True,
        "changed": True,
        "operator": False,
        "local_adapters": ["local"],
    }
    assert after.structured_content["adapter"] == "local"
    assert {n: a.probes for n, a in fakes.items()} == probes
    assert resource["privacy_mode"] is True
    assert any(r["event"] == "privacy" and r["model"] == "on" for r in audit)


async def test_lifting_privacy_mode_is_refused_by_the_shipped_policy_and_audited(tmp_path: Path) -> None:
    server, ref = fake_server(tmp_path, adapters(), routes=ROUTES)
    ref_state = None
    async with Client(server) as c:
        await c.call_tool("privacy", {"enable": True})
        refused = await c.call_tool("privacy", {"enable": False})
        read = await c.call_tool("privacy", {})
        ref_state = ref.get()
        audit = [json.loads(x) for x in ref_state.audit.path.read_text().splitlines()]
    assert refused.is_error and "rule:privacy-off-needs-operator" in refused.content[0].text
    assert read.structured_content["privacy_mode"] is True
    assert audit[-1]["event"] == "deny" and audit[-1]["tool"] == "privacy"


async def test_a_user_rule_that_allows_privacy_does_not_outvote_the_shipped_guard(tmp_path: Path) -> None:
    policy = {"rules": [{"id": "ops-may", "effect": "allow", "match": {"tool": ["privacy"]}}], **ALLOW_REMOTE}
    server, _ = fake_server(tmp_path, adapters(), routes=ROUTES, policy=policy)
    async with Client(server) as c:
        await c.call_tool("privacy", {"enable": True})
        refused = await c.call_tool("privacy", {"enable": False})
    assert refused.is_error and "rule:privacy-off-needs-operator" in refused.content[0].text


async def test_an_override_naming_the_guard_lets_privacy_mode_be_lifted(tmp_path: Path) -> None:
    policy = {"override": [{"id": "privacy-off-needs-operator", "reason": "one operator"}], **ALLOW_REMOTE}
    server, _ = fake_server(tmp_path, adapters(), routes=ROUTES, policy=policy)
    async with Client(server) as c:
        await c.call_tool("privacy", {"enable": True})
        lifted = await c.call_tool("privacy", {"enable": False})
        call = await c.call_tool("embed", {"input": ["x"]})
        health = json.loads((await c.read_resource("gateway://health")).contents[0].text)
    assert not lifted.is_error and lifted.structured_content["privacy_mode"] is False
    assert call.structured_content["adapter"] == "cloud"
    assert health["policy"]["guards"] == []
    [shown] = health["policy"]["lifted"]
    assert shown["id"] == "privacy-off-needs-operator" and shown["reason"] == "one operator"
    assert shown["by"].endswith("policy.json")
