from __future__ import annotations

from pathlib import Path

from server.governance import open_audit, redactor_for
from tests.support.gateway import settings_for


def test_the_redactor_knows_the_settings_secrets_and_the_audit_sink_opens_with_it(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    redactor = redactor_for(settings)
    key = settings.audit_key.get_secret_value() if settings.audit_key else ""
    assert redactor.text(f"key {key}") == "key [redacted]"
    audit = open_audit(settings, redactor)
    try:
        assert audit.healthy and audit.path == settings.audit_path
    finally:
        audit.aclose_sync()
