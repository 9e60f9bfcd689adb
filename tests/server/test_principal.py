from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from server.errors import ConfigError
from server.principal import SCOPE_KEY, load_tokens_file, principal_of, token_digest


def test_the_principal_is_the_subject_bearer_auth_left_in_the_scope_else_the_local_user() -> None:
    assert principal_of(SimpleNamespace(scope={SCOPE_KEY: "alice"}), "local") == "alice"
    assert principal_of(SimpleNamespace(scope={}), "local") == "local"
    assert principal_of(None, "bob") == "bob"  # stdio: no HTTP request at all
    assert principal_of(SimpleNamespace(scope={SCOPE_KEY: 7}), "local") == "local"


def test_a_tokens_file_maps_token_digests_to_subjects_and_names_what_is_wrong(tmp_path: Path) -> None:
    good = tmp_path / "tokens.json"
    good.write_text(json.dumps({"tokens": [{"sha256": token_digest("t0k3n"), "subject": "ops"}]}))
    assert load_tokens_file(good) == {token_digest("t0k3n"): "ops"}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tokens": [{"sha256": "nothex", "subject": "ops"}]}))
    with pytest.raises(ConfigError, match=r"bad\.json: tokens\.0\.sha256"):
        load_tokens_file(bad)
