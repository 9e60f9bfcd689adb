from __future__ import annotations

from server import errors


def test_every_gateway_error_has_a_stable_bounded_code_and_shows_only_its_message() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.GatewayError)]
    codes = {c.code for c in classes}
    assert len(classes) >= 9 and all(code.replace("_", "").isalpha() and len(code) < 32 for code in codes)
    assert str(errors.NoRouteError("no adapter serves it")) == "no adapter serves it"
    assert errors.PolicyDeniedError("denied", "rule:x").rule == "rule:x"
    assert errors.RateLimitedError("slow down").retryable and not errors.NoRouteError("x").retryable
