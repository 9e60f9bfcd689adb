"""Planted secrets (env, arguments, provider error bodies) never reach audit records, logs or tool errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from mcp import Client

from server.app import Gateway
from server.config import load_settings
from server.redact import Redactor
from tests.support.fake_ollama import FakeOllama, Fault
from tests.support.gateway import write_manifests
from tests.support.processes import free_port

pytestmark = pytest.mark.anyio
ENV_KEY = "sk-envPLANTED0123456789abcdef"
AUTH = "authPLANTEDtoken0123456789"
BODY_KEY = "sk-bodyPLANTED0123456789abcdef"
BODY_BEARER = "bodyBEARERplanted0123456789"
ARG_KEY = "sk-argPLANTED0123456789abcdef"
PLANTED = (ENV_KEY, AUTH, BODY_KEY, BODY_BEARER, ARG_KEY)


def test_the_redactor_masks_known_values_and_credential_shapes() -> None:
    r = Redactor([AUTH])
    text = f"token={AUTH} Authorization: Bearer {BODY_BEARER} key {ENV_KEY} api_key: 'abcdefgh123'"
    cleaned = r.text(text)
    assert not any(p in cleaned for p in PLANTED) and "abcdefgh123" not in cleaned
    assert r.value({"a": [f"x {ARG_KEY}"]}) == {"a": ["x [redacted]"]}


async def test_planted_secrets_appear_in_no_record_log_or_tool_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeOllama() as ollama:
        message = f"upstream said Authorization: Bearer {BODY_BEARER} and key {BODY_KEY}"
        ollama.inject(Fault("status", path="/api/embed", status=400, message=message))
        root = write_manifests(
            tmp_path / "manifests",
            routes={"routes": {"embed": ["cloud/m", "ollama/all-minilm:latest"]}},
            policy={"default_remote": "allow"},
        )
        adapters = root / "adapters"
        (adapters / "ollama.json").write_text(json.dumps({"name": "ollama", "kind": "ollama", "endpoint": ollama.url}))
        (adapters / "cloud.json").write_text(
            json.dumps(
                {
                    "name": "cloud",
                    "kind": "openai",
                    "endpoint": f"http://127.0.0.1:{free_port()}",  # nothing listens: a refused connection
                    "api_key_env": "PLANTED_API_KEY",
                    "models": [{"name": "m", "capabilities": ["embed"]}],
                }
            )
        )
        env = {"HOME": str(tmp_path), "PLANTED_API_KEY": ENV_KEY, "MODEL_GATEWAY_AUTH_TOKEN": AUTH}
        settings = load_settings(manifests_dir=root, env=env)
        ref = Gateway(settings)
        caplog.set_level(logging.DEBUG)
        async with Client(ref.server) as c:
            failed = await c.call_tool("embed", {"input": [f"my key is {ARG_KEY}"]})
            named = await c.call_tool("embed", {"input": ["x"], "model": f"api_key={ARG_KEY}"})
            audit_text = "".join(p.read_text() for p in ref.get().audit.path.parent.glob("audit*.jsonl*"))
    assert failed.is_error and named.is_error
    shown = failed.content[0].text + named.content[0].text
    assert "400" in failed.content[0].text  # the error still says what went wrong
    for secret in PLANTED:
        assert secret not in shown, secret
        assert secret not in audit_text, secret
        assert secret not in caplog.text, secret


@pytest.mark.parametrize(
    "text",
    [
        "Bearer abcdefghijk",
        "BEARER abcdefghijk",
        "sk-abcdefgh12345",
        'api_key="abcdef123"',
        "Password: hunter2hunter2",
        "plain words only",
        '{"input_tokens":12,"output_tokens":3}',
        '{"input_tokens":12,"token":"abcdefgh12"}',
        "access_token=abcdefgh12",
        "capability adapter usage",
        '{"capability":"embed","candidates":["api/m"],"rapid":"apiary"}',
        "APIKEY=abcdefgh12",
        "x-Api-Key: abcdefgh12",
        "the known secret sk-live-not-a-shape xyz",
    ],
)
def test_the_one_pass_scan_agrees_with_full_redaction(text: str) -> None:
    from server.redact import Redactor

    redactor = Redactor(["sk-live-not-a-shape"])
    assert redactor.found_in(text) == (redactor.text(text) != text)
