"""The floor: a bare MCPServer with one no-op tool, nothing else.

As a process: ``python -m benchmarks.bare [--transport stdio|streamable-http] [--port N]``.
Streamable HTTP uses JSON responses, as the gateway does by default.
"""

from __future__ import annotations

import argparse

from mcp.server.mcpserver import MCPServer


def bare_server() -> MCPServer:
    server = MCPServer("bare")

    @server.tool()
    async def noop(input: str = "") -> str:
        """Does nothing."""
        return "ok"

    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="A bare MCPServer with one no-op tool.")
    parser.add_argument("--transport", choices=["stdio", "streamable-http"], default="stdio")
    parser.add_argument("--port", type=int, default=8766)
    args = parser.parse_args(argv)
    server = bare_server()
    if args.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    app = server.streamable_http_app(json_response=True, host="127.0.0.1")
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
