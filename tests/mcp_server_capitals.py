"""A small stdio MCP server for the client tests (tests/test_clients_mcp.py): one tool,
``capital_of``. Each call is appended as a JSON line to the file named by ``MCP_CALLS_LOG``, so
a test can see that the tool really ran, in this process, with the arguments it got.

Run as ``python tests/mcp_server_capitals.py`` (an MCP client starts it and speaks over stdio).
"""

from __future__ import annotations

import json
import os

from mcp.server.mcpserver import MCPServer

CAPITALS = {"France": "Paris", "Italy": "Rome", "Japan": "Tokyo"}

server = MCPServer("capitals")


@server.tool()
def capital_of(country: str) -> str:
    """The capital city of a country."""
    log = os.environ.get("MCP_CALLS_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"tool": "capital_of", "arguments": {"country": country}}) + "\n")
    return CAPITALS.get(country, "unknown")


if __name__ == "__main__":
    server.run("stdio")
