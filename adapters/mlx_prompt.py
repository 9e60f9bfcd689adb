"""Chat prompts whose message content is always text, never control tokens.

Rendering a chat template and tokenizing the result reads `<|im_start|>system` inside a user's message as
the real control token, so untrusted text could open a forged system turn. Instead the template is rendered
with a random placeholder per message; the template's own text around them is tokenized with its special
tokens, and each message's content is tokenized with special-token matching switched off, so
`<|im_end|>` in content becomes the ordinary tokens of its characters.

Runs on the MLX owner thread; needs a fast (tokenizer.json) tokenizer, which every mlx-lm model has.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from typing import Any

from jinja2 import TemplateError
from tokenizers import Tokenizer

from adapters.errors import InvalidRequestError, ModelLoadError, safe_detail


class PromptEncoder:
    """Token ids for a conversation: the template's tokens as control tokens, the content as text."""

    def __init__(self, hf_tokenizer: Any) -> None:
        backend = getattr(hf_tokenizer, "backend_tokenizer", None)
        if not isinstance(backend, Tokenizer):
            raise ModelLoadError("chat models need a fast tokenizer (tokenizer.json) to keep content apart")
        self._hf = hf_tokenizer
        self._template = backend
        # A private copy with special-token matching off; the shared tokenizer is left as it is.
        self._text = Tokenizer.from_str(backend.to_str())
        self._text.encode_special_tokens = True
        self.special_ids = frozenset(int(i) for i, token in backend.get_added_tokens_decoder().items() if token.special)

    def encode_text(self, text: str) -> list[int]:
        """Plain text as tokens, special-token strings included as text."""
        return list(self._text.encode(text, add_special_tokens=False).ids)

    def encode(self, messages: Sequence[dict[str, str]]) -> list[int]:
        nonce = secrets.token_hex(8)
        marks = [f"\ue000{nonce}:{i}\ue001" for i in range(len(messages))]
        rendered = self._render([{**m, "content": mark} for m, mark in zip(messages, marks, strict=True)])
        pieces = re.split(f"\ue000{nonce}:(\\d+)\ue001", rendered)
        # re.split with one group alternates template text and the captured message index.
        indices = [int(i) for i in pieces[1::2]]
        if indices != list(range(len(messages))):
            raise InvalidRequestError(
                "this model's chat template rewrites message content, so content cannot be kept apart "
                "from control tokens; the request was not run"
            )
        ids: list[int] = []
        for n, piece in enumerate(pieces):
            if n % 2 == 0:
                ids += self._template.encode(piece, add_special_tokens=False).ids if piece else []
            else:
                text = messages[int(piece)]["content"]
                ids += self._text.encode(text, add_special_tokens=False).ids if text else []
        return ids

    def _render(self, messages: list[dict[str, str]]) -> str:
        try:
            rendered = self._hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except (TemplateError, ValueError, KeyError, TypeError) as exc:
            raise InvalidRequestError(
                f"messages do not fit the model's chat template: {safe_detail(str(exc))}"
            ) from exc
        if not isinstance(rendered, str):
            raise InvalidRequestError("the model's chat template did not render to text")
        return rendered
