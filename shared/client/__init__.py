"""imgq's HTTP client: `Client(server, token)` for notebooks and scripts, and the remote `imgq` commands built on
it. It imports nothing that needs a database, a broker or TensorFlow."""
from shared.client.api import Client
from shared.client.errors import ApiError, AuthError, ClientError, ServerError, Unreachable

__all__ = ["ApiError", "AuthError", "Client", "ClientError", "ServerError", "Unreachable"]
