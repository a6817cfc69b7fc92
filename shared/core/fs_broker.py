"""The embedded default's broker: kombu's filesystem transport, with each exchange table and each message file
created whole.

kombu creates an exchange table (`<control_folder>/<exchange>.exchange`) by opening it for writing and only then
locking and filling it, so a second process binding a queue at that moment (a worker and the maintenance worker
starting together, each declaring its queues and Celery's event exchanges) can open the empty file and die with a
JSONDecodeError. Here a missing table is first written to a temporary file and linked into place (link fails if the
table appeared meanwhile), so no process ever sees a table that is not valid JSON; kombu's own locked
read-modify-write then adds the binding as before.

kombu writes a message the same way: it opens `<time>_<uuid>.<queue>.msg` for writing and only then locks and fills
it, while a consumer moves any file of its queue away without taking the lock. A consumer that lists the folder in
between takes an empty or half-written file, fails to parse it and the message is gone: two busy processes lose some
of 2,000 (tests/unit/shared/test_fs_broker.py), and an import job whose message was lost waited for the sweeper's
`requeue_after`, an hour. Here a message is written under a name no consumer matches and renamed into place, so a
consumer only ever sees a whole message.

`install()` makes `filesystem://` mean this transport in the calling process (shared/core/celery_app.configure).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from time import monotonic

from kombu import transport as kombu_transports
from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

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

    def _put(self, queue, payload, **kwargs):
        final = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"  # kombu's own name: sorted by time
        fd, tmp = tempfile.mkstemp(dir=self.data_folder_out, prefix=".new-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.rename(tmp, os.path.join(self.data_folder_out, final))
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel


def install() -> None:
    kombu_transports.TRANSPORT_ALIASES[ALIAS] = f"{__name__}:Transport"
    kombu_transports._transport_cache.pop(ALIAS, None)  # a connection made before install resolved the plain one
