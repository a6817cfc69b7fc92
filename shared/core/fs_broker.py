"""The embedded default's broker: kombu's filesystem transport, with each exchange table created whole.

kombu creates an exchange table (`<control_folder>/<exchange>.exchange`) by opening it for writing and only then
locking and filling it, so a second process binding a queue at that moment (a worker and the maintenance worker
starting together, each declaring its queues and Celery's event exchanges) can open the empty file and die with a
JSONDecodeError. Here a missing table is first written to a temporary file and linked into place (link fails if the
table appeared meanwhile), so no process ever sees a table that is not valid JSON; kombu's own locked
read-modify-write then adds the binding as before.

`install()` makes `filesystem://` mean this transport in the calling process (shared/core/celery_app.configure).
"""
from __future__ import annotations

import os
import tempfile

from kombu import transport as kombu_transports
from kombu.transport import filesystem

ALIAS = "filesystem"


class Channel(filesystem.Channel):
    def _queue_bind(self, exchange, routing_key, pattern, queue):
        table = self._exchange_file(exchange)
        if not table.exists():
            self.control_folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.control_folder, prefix=".new-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w") as f:
                    f.write("[]")
                try:
                    os.link(tmp, table)
                except FileExistsError:
                    pass  # another process created it first: it is whole too
            finally:
                os.unlink(tmp)
        return super()._queue_bind(exchange, routing_key, pattern, queue)


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    kombu_transports.TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
    kombu_transports._transport_cache.pop(ALIAS, None)  # a connection made before install resolved the plain one
