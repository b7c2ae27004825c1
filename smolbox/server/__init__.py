"""The REST server (``smolbox serve``): FastAPI over the embedded engine."""

from smolbox.server.app import API_PREFIX, create_app
from smolbox.server.runner import ServerThread
from smolbox.server.settings import ServerSettings, load_or_create_token, token_path

__all__ = ["API_PREFIX", "ServerSettings", "ServerThread", "create_app", "load_or_create_token",
           "token_path"]
