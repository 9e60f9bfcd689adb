"""brAInwav Model Gateway: an MCP server routing chat, embed and rerank to local-first adapters."""

__version__ = "0.1.0"
