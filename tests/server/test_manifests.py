from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

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
    shipped = load_manifests()
    assert m.routes.routes == {**shipped.routes.routes, "embed": ["mine"]}
    assert "mine" in {a.name for a in m.adapters}
    assert m.policy == shipped.policy  # untouched files come from the shipped dir
    assert m.performance == shipped.performance and m.models == shipped.models


def _shipped_copy(tmp_path: Path, performance: dict[str, Any]) -> Path:
    """The shipped manifests, with performance-config values that differ from the model's own defaults."""
    shipped = tmp_path / "shipped"
    shutil.copytree(shipped_manifests_dir(), shipped, ignore=shutil.ignore_patterns("schema"))
    (shipped / "performance-config.json").write_text(json.dumps(performance))
    return shipped


def test_a_user_performance_config_that_sets_one_field_keeps_every_other_shipped_value(tmp_path: Path) -> None:
    shipped = _shipped_copy(tmp_path, {"deadlines": {"chat_s": 77.0, "embed_s": 7.0}, "batching": {"batch_limit": 99}})
    d = _user_dir(tmp_path / "user")
    (d / "performance-config.json").write_text(json.dumps({"deadlines": {"embed_s": 3.0}}))
    perf = load_manifests(d, shipped_dir=shipped).performance
    assert perf.deadlines.embed_s == 3.0  # the user's value
    assert perf.deadlines.chat_s == 77.0 and perf.batching.batch_limit == 99  # the shipped ones, not model defaults
    expected = load_manifests(None, shipped_dir=shipped).performance.model_dump()
    expected["deadlines"]["embed_s"] = 3.0
    assert perf.model_dump() == expected


def test_lists_in_a_user_performance_config_replace_the_shipped_list(tmp_path: Path) -> None:
    rule = {"id": "shipped-calls", "rate_per_s": 1, "burst": 5}
    shipped = _shipped_copy(tmp_path, {"rate_limits": {"rules": [rule], "max_buckets": 50}})
    d = _user_dir(tmp_path / "user")
    mine = {"id": "mine", "unit": "texts", "rate_per_s": 10, "burst": 100}
    (d / "performance-config.json").write_text(json.dumps({"rate_limits": {"rules": [mine]}}))
    limits = load_manifests(d, shipped_dir=shipped).performance.rate_limits
    assert [r.id for r in limits.rules] == ["mine"] and limits.max_buckets == 50


def test_user_routes_merge_by_capability_and_alias_and_an_empty_alias_removes_it(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    (d / "routes.json").write_text(
        json.dumps({"aliases": {"fast": ["ollama/llama3.2:1b"], "local-embed": []}, "routes": {"chat": ["ollama"]}})
    )
    shipped = load_manifests().routes
    routes = load_manifests(d).routes
    assert routes.routes == {**shipped.routes, "chat": ["ollama"]}
    assert routes.aliases["fast"] == ["ollama/llama3.2:1b"] and routes.aliases["default"] == shipped.aliases["default"]
    assert "local-embed" not in routes.aliases


def test_user_model_packs_merge_by_name(tmp_path: Path) -> None:
    shipped = load_manifests().models.packs
    mine = {
        "name": "mine",
        "package": "my-pack",
        "version": "1.0",
        "sha256": "0" * 64,
        "filename": "my_pack-1.0-py3-none-any.whl",
        "subdir": "my_pack/model",
    }
    replaced = {**shipped[0].model_dump(), "version": "9.9"}
    d = _user_dir(tmp_path)
    (d / "models.json").write_text(json.dumps({"packs": [mine, replaced]}))
    packs = {p.name: p for p in load_manifests(d).models.packs}
    assert set(packs) == {p.name for p in shipped} | {"mine"}
    assert packs[shipped[0].name].version == "9.9"


def test_a_user_policy_is_a_layer_over_the_shipped_guards(tmp_path: Path) -> None:
    d = _user_dir(tmp_path)
    (d / "policy.json").write_text(
        json.dumps({"rules": [{"id": "allow-x", "effect": "allow", "match": {"adapter": ["x"]}}]})
    )
    policy = load_manifests(d).policy
    assert [layer.name for layer in policy.layers] == ["shipped", "user"]
    assert [g.id for g in policy.layers[0].manifest.guards] == ["privacy-off-needs-operator"]
    assert policy.lifted() == ()


@pytest.mark.parametrize(
    ("policy", "needles"),
    [
        (
            {"override": [{"id": "no-such-guard", "reason": "because"}]},
            ["policy.json", "override.0.id", "no-such-guard", "privacy-off-needs-operator"],
        ),
        ({"override": [{"id": "privacy-off-needs-operator"}]}, ["policy.json", "override.0.reason", "required"]),
        (
            {"rules": [{"id": "privacy-off-needs-operator", "effect": "allow"}]},
            ["policy.json", "privacy-off-needs-operator", "already used", "override"],
        ),
        ({"guards": [{"id": "g", "effect": "allow"}]}, ["policy.json", "guards", "only deny"]),
    ],
)
def test_a_user_policy_cannot_lift_a_guard_except_by_a_named_override_with_a_reason(
    tmp_path: Path, policy: dict[str, Any], needles: list[str]
) -> None:
    d = _user_dir(tmp_path)
    (d / "policy.json").write_text(json.dumps(policy))
    with pytest.raises(ConfigError) as info:
        load_manifests(d)
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("filename", "content", "needles"),
    [
        ("routes.json", {"routez": {}}, ["routes.json", "routez", "Extra inputs"]),
        ("performance-config.json", {"discovery": {"ttl_s": -1}}, ["discovery.ttl_s", "greater than 0"]),
        ("adapters/bad.json", {"name": "Bad Name!", "kind": "ollama"}, ["bad.json", "ollama.name"]),
        ("adapters/bad.json", {"name": "x", "kind": "telepathy"}, ["bad.json", "kind"]),
        ("policy.json", {"rules": [{"id": "r", "effect": "maybe"}]}, ["policy.json", "rules.0.effect"]),
        ("models.json", {"packs": [{"name": "p"}]}, ["models.json", "packs.0.package", "required"]),
        ("performance-config.json", {"limitz": {}}, ["performance-config.json", "limitz", "Extra inputs"]),
    ],
)
def test_manifest_errors_name_the_file_and_the_field(
    tmp_path: Path, filename: str, content: dict, needles: list
) -> None:
    d = _user_dir(tmp_path)
    (d / filename).write_text(json.dumps(content))
    with pytest.raises(ConfigError) as info:
        load_manifests(d)
    assert str(info.value).startswith(str(d / filename))  # the user's file, not the shipped one it merges into
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
