"""Builds the governance pieces the lifespan owns: the redactor and the audit sink (limits: server/sharing.py)."""

from __future__ import annotations

from functools import partial

from server.audit import AuditLog, AuditOptions
from server.audit_key import load_or_create_key
from server.config import Settings
from server.manifests import AuditConfig
from server.redact import Redactor


def redactor_for(settings: Settings) -> Redactor:
    known = [s.get_secret_value() for s in settings.secrets.values()]
    for secret in (settings.auth_token, settings.audit_key):
        if secret is not None:
            known.append(secret.get_secret_value())
    return Redactor(known)


def open_audit(settings: Settings, redactor: Redactor) -> AuditLog:
    """The audit sink; a sink that cannot open (no disk space, an unusable key) refuses calls, naming why.

    The key is loaded by the sink with the trail's lock held, so concurrent first starts agree on one key,
    and again whenever the sink retries (a restored key file serves without a restart).
    """
    cfg = settings.manifests.performance.audit
    key_hex = settings.audit_key.get_secret_value() if settings.audit_key else None
    key = partial(load_or_create_key, key_hex, settings.audit_key_path, settings.audit_path)
    return AuditLog(settings.audit_path, key, audit_options(cfg, redactor))


def audit_options(cfg: AuditConfig, redactor: Redactor) -> AuditOptions:
    """The sink's options from the manifest's audit settings, redacting with the gateway's redactor."""
    return AuditOptions(
        fsync=cfg.fsync,
        group_commit_ms=cfg.group_commit_ms,
        max_file_bytes=cfg.max_file_bytes,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_interval_s=cfg.checkpoint_interval_s,
        redact=redactor.value,
        needs_redaction=redactor.needs,
    )
