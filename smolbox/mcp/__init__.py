"""``smolbox mcp``: a Model Context Protocol server (official ``mcp`` package) for agents.

``tools.build_server`` makes the server over any SDK backend; ``smolbox mcp`` runs it
on stdio, ``smolbox serve`` mounts it (streamable HTTP) at ``/mcp``.
"""
