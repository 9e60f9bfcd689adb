"""Where shared state is configured: MODEL_GATEWAY_SHARED_STATE over performance-config, checked, never echoed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.config import load_settings
from server.errors import ConfigError
from server.governance import redactor_for
from server.shared_state import display_url


def manifests_with(tmp_path: Path, shared_state: dict[str, object]) -> Path:
    root = tmp_path / "manifests"
    root.mkdir()
    (root / "performance-config.json").write_text(json.dumps({"shared_state": shared_state}))
    return root


def test_without_a_url_state_stays_in_the_process(tmp_path: Path) -> None:
    assert load_settings(env={"HOME": str(tmp_path)}).shared_state_url is None


def test_the_environment_overrides_the_manifest(tmp_path: Path) -> None:
    root = manifests_with(tmp_path, {"url": "redis://file-host:6379/1"})
    from_file = load_settings(manifests_dir=root, env={"HOME": str(tmp_path)}).shared_state_url
    env = {"HOME": str(tmp_path), "MODEL_GATEWAY_SHARED_STATE": "redis://10.0.0.5:6380/2"}
    from_env = load_settings(manifests_dir=root, env=env).shared_state_url
    assert from_file is not None and display_url(from_file.get_secret_value()) == "redis://file-host:6379/1"
    assert from_env is not None and display_url(from_env.get_secret_value()) == "redis://10.0.0.5:6380/2"


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://:hunter2@cache:6379/0", "scheme 'http' is not redis"),
        ("redis://:hunter2@/0", "needs a host"),
        ("redis://:hunter2@cache:6379/zero", "needs a host and at most a database number"),
        ("redis://:hunter2@cache:99999/0", "not a valid URL"),
        ("unix://", "needs a socket path"),
    ],
)
def test_a_bad_url_is_refused_by_name_without_echoing_it(tmp_path: Path, url: str, why: str) -> None:
    env = {"HOME": str(tmp_path), "MODEL_GATEWAY_SHARED_STATE": url}
    with pytest.raises(ConfigError, match=why) as err:
        load_settings(env=env)
    assert "MODEL_GATEWAY_SHARED_STATE" in err.value.message and "hunter2" not in err.value.message


def test_a_password_in_the_url_or_its_variable_is_masked_everywhere(tmp_path: Path) -> None:
    root = manifests_with(tmp_path, {"password_env": "REDIS_PASSWORD"})
    env = {
        "HOME": str(tmp_path),
        "MODEL_GATEWAY_SHARED_STATE": "redis://:url-secret-123@cache.internal:6379/3",
        "REDIS_PASSWORD": "env-secret-456",
    }
    settings = load_settings(manifests_dir=root, env=env)
    assert settings.shared_state_url is not None
    assert display_url(settings.shared_state_url.get_secret_value()) == "redis://cache.internal:6379/3"
    redactor = redactor_for(settings)
    masked = redactor.text("failed: url-secret-123 and env-secret-456")
    assert "url-secret-123" not in masked and "env-secret-456" not in masked
    assert "url-secret-123" not in repr(settings)
