"""Where the client finds its server and token: the command line, then IMGQ_SERVER / IMGQ_TOKEN, then the file
`imgq login` writes ($XDG_CONFIG_HOME/imgq/config.toml, by default ~/.config/imgq/config.toml, readable by its
owner only). The first that says something wins, for each of the two separately."""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from shared.client.errors import NotConfigured


@dataclass(frozen=True)
class Target:
    server: str
    token: str | None


def config_path(environ: dict | None = None) -> Path:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "imgq" / "config.toml"


def read_config(path: Path) -> dict:
    """The file's [server] settings, or {} when there is no file."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f).get("server", {})
    except FileNotFoundError:
        return {}


def write_config(path: Path, server: str, token: str | None) -> None:
    """Write the file (mode 0600: it holds a secret). TOML basic strings are JSON strings."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["[server]", f"url = {json.dumps(server)}"]
    if token:
        lines.append(f"token = {json.dumps(token)}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


def resolve(server: str | None = None, token: str | None = None, environ: dict | None = None) -> Target:
    """The server and token to use: arguments, then the environment, then the config file."""
    environ = os.environ if environ is None else environ
    stored = read_config(config_path(environ))
    server = server or environ.get("IMGQ_SERVER") or stored.get("url")
    token = token or environ.get("IMGQ_TOKEN") or stored.get("token")
    if not server:
        raise NotConfigured("no server: pass --server URL, set IMGQ_SERVER, or run `imgq login --server URL`")
    return Target(server=server.rstrip("/"), token=token)
