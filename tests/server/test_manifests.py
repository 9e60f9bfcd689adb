from __future__ import annotations

import json
from pathlib import Path

import pytest

from server.config import check_bind, load_settings
from server.errors import ConfigError
from server.manifests import load_manifests, manifest_schemas, shipped_manifests_dir


def test_shipped_manifests_load_and_validate() -> None:
    m = load_manifests()
    assert m.routes.routes["embed"]
    assert m.performance.discovery.probe_deadline_s > 0


def test_generated_json_schemas_beside_the_manifests_are_current() -> None:
    schema_dir = shipped_manifests_dir() / "schema"
    for name, schema in manifest_schemas().items():
        on_disk = json.loads((schema_dir / name).read_text())
        assert on_disk == schema, f"{name} is stale: run `model-gateway manifests schema --write manifests/schema`"


def _user_dir(tmp_path: Path) -> Path:
    (tmp_path / "adapters").mkdir(parents=True)
    return tmp_path


def test_a_user_dir_overrides_shipped_files_and_adds_adapters(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    (d / "routes.json").write_text(json.dumps({"routes": {"embed": ["mine"]}}))
    (d / "adapters" / "mine.json").write_text(
        json.dumps({"name": "mine", "kind": "ollama", "endpoint": "http://127.0.0.1:9"})
    )
    m = load_manifests(d)
    assert m.routes.routes == {"embed": ["mine"]}
    assert "mine" in {a.name for a in m.adapters}
    assert m.policy == load_manifests().policy  # untouched files come from the shipped dir


@pytest.mark.parametrize(
    ("filename", "content", "needles"),
    [
        ("routes.json", {"routez": {}}, ["routes.json", "routez", "Extra inputs"]),
        ("performance-config.json", {"discovery": {"ttl_s": -1}}, ["discovery.ttl_s", "greater than 0"]),
        ("adapters/bad.json", {"name": "Bad Name!", "kind": "ollama"}, ["bad.json", "ollama.name"]),
        ("adapters/bad.json", {"name": "x", "kind": "telepathy"}, ["bad.json", "kind"]),
        ("policy.json", {"rules": [{"id": "r", "effect": "maybe"}]}, ["policy.json", "rules.0.effect"]),
    ],
)
def test_manifest_errors_name_the_file_and_the_field(
    tmp_path: Path, filename: str, content: dict, needles: list
) -> None:
    d = _user_dir(tmp_path)
    (d / filename).write_text(json.dumps(content))
    with pytest.raises(ConfigError) as info:
        load_manifests(d)
    for needle in needles:
        assert needle in str(info.value)


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    (d / "routes.json").write_text('{\n  "routes": ,\n}')
    with pytest.raises(ConfigError, match=r"routes.json: invalid JSON at line 2"):
        load_manifests(d)


def test_binding_beyond_loopback_needs_allowed_hosts_and_a_token() -> None:
    check_bind("127.0.0.1", (), authenticated=False)
    with pytest.raises(ConfigError, match=r"--allowed-host.*MODEL_GATEWAY_AUTH_TOKEN"):
        check_bind("0.0.0.0", (), authenticated=False)
    with pytest.raises(ConfigError, match="MODEL_GATEWAY_AUTH_TOKEN"):
        check_bind("0.0.0.0", ("gw.example:8765",), authenticated=False)
    check_bind("0.0.0.0", ("gw.example:8765",), authenticated=True)


def test_settings_derive_paths_from_home_only(tmp_path: Path) -> None:
    s = load_settings(env={"HOME": str(tmp_path)})
    assert s.cache_dir == tmp_path / ".cache" / "model-gateway"
    assert s.models_dir == tmp_path / ".cache" / "model-gateway" / "models"
    assert s.audit_path.is_relative_to(tmp_path / ".local" / "state")


def test_secrets_named_by_manifests_are_resolved_and_hidden(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    (d / "adapters" / "cloud.json").write_text(
        json.dumps({"name": "cloud", "kind": "openai", "endpoint": "https://api.example", "api_key_env": "CLOUD_KEY"})
    )
    s = load_settings(manifests_dir=d, env={"HOME": str(tmp_path), "CLOUD_KEY": "sk-very-secret"})
    assert s.secrets["CLOUD_KEY"].get_secret_value() == "sk-very-secret"
    assert "sk-very-secret" not in repr(s)
