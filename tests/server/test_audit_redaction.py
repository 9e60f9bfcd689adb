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


@pytest.mark.parametrize(
    "value",
    [
        {"tool": "embed", "usage": {"input_tokens": 4, "output_tokens": 0}, "attempts": [["stub", "ok"]]},
        {"call_id": "0123456789abcdef" * 2, "response_sha256": "e" * 64, "latency_ms": 0.3, "error": None},
        {"token": "abcdefgh12", "model": "m"},  # a key is never masked: nothing to do
        {"model": "api_key=abcdefgh12"},
        {"attempts": [["cloud", "failed", "Authorization: Bearer abcdefghijk"]]},
        {"request": {"input": ["my key is sk-abcdefgh12345"]}},
        {"request_sha256": "00aa" + "sk-live-not-a-shape" + "ff"},  # mixed: not hex, so scanned whole
        {"digest": "ab12" + "deadbeefcafe" + "99"},  # hex holding a known secret
        ("plain", ["words", ("only", 3, 4.5, True, None)]),
        {"caps": "SK-ABCDEFGH12345"},
    ],
)
def test_the_per_string_scan_agrees_with_redacting_the_value(value: object) -> None:
    redactor = Redactor(["sk-live-not-a-shape", "deadbeefcafe"])
    for _ in range(2):  # the second time from what it remembered
        assert redactor.needs(value) == (redactor.value(value) != _plain(value))


def _plain(value: object) -> object:
    """The value as `Redactor.value` shapes it when it masks nothing (tuples become lists)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def test_the_per_string_scan_remembers_a_bounded_number_of_short_strings() -> None:
    from server import redact

    redactor = Redactor()
    long_text = "x" * (redact.KNOWN_MAX_CHARS + 1)
    assert not redactor.needs({"a": long_text, "id": "ab" * 16})
    assert long_text not in redactor._known and "ab" * 16 not in redactor._known  # neither kept
    for i in range(redact.KNOWN_CAP):
        redactor.needs(f"name-{i}")
    assert len(redactor._known) == redact.KNOWN_CAP
    assert redactor.needs("secret=abcdefgh12") and len(redactor._known) == 1  # full: started over
