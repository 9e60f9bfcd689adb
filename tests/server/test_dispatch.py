"""The dispatch table checks every answer against what was asked before a caller sees it."""

from __future__ import annotations

import pytest

from adapters.errors import UpstreamProtocolError
from adapters.types import EmbedRequest, EmbedResult, RerankResult, RerankScore, Usage
from server.dispatch import DISPATCH, check_scores, check_vectors
from tests.support.fakes import FakeAdapter

pytestmark = pytest.mark.anyio


def test_every_capability_has_a_dispatch_entry() -> None:
    assert set(DISPATCH) == {"chat", "embed", "rerank"}


def test_a_wrong_vector_count_is_a_retryable_upstream_fault() -> None:
    with pytest.raises(UpstreamProtocolError, match="returned 1 vectors for 2 texts") as info:
        check_vectors(EmbedResult("m", [[1.0]], Usage()), 2)
    assert info.value.retryable


def test_scores_for_documents_never_sent_or_sent_twice_are_rejected() -> None:
    ok = RerankResult("m", (RerankScore(1, 0.5), RerankScore(0, 0.1)), "upstream", Usage())
    assert check_scores(ok, 2) is ok
    for scores in [(RerankScore(2, 0.5),), (RerankScore(0, 0.5), RerankScore(0, 0.4)), (RerankScore(-1, 0.1),)]:
        with pytest.raises(UpstreamProtocolError):
            check_scores(RerankResult("m", scores, "upstream", Usage()), 2)


class Short(FakeAdapter):
    async def embed(self, req: EmbedRequest) -> EmbedResult:
        result = await super().embed(req)
        return EmbedResult(req.model, result.vectors[:-1], result.usage)


async def test_dispatching_an_embed_checks_the_adapters_answer() -> None:
    with pytest.raises(UpstreamProtocolError):
        await DISPATCH["embed"](Short("a"), EmbedRequest("m", ("x", "y")))
    result = await DISPATCH["embed"](FakeAdapter("a"), EmbedRequest("m", ("x", "y")))
    assert len(result.vectors) == 2
