"""The embedded broker's exchange tables are never seen half-made, however many processes bind at once."""
import json
import uuid

from kombu import Connection, Exchange, Queue

from shared.core import fs_broker


def test_a_new_exchange_table_is_written_whole_before_anyone_can_read_it(tmp_path):
    # kombu keeps declared bindings in one BrokerState per process: names no earlier test in this process bound
    name = f"score-{uuid.uuid4().hex[:8]}"
    fs_broker.install()
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path),
               "control_folder": str(tmp_path / "control")}
    with Connection("filesystem://", transport_options=options) as conn:
        assert isinstance(conn.transport, fs_broker.Transport)
        Queue(name, Exchange(name, type="direct"), routing_key=name, channel=conn.channel()).declare()
    assert json.loads((tmp_path / "control" / f"{name}.exchange").read_text()) == [[name, "", name]]
    assert not list((tmp_path / "control").glob(".new-*"))


def test_kombu_never_creates_a_table_itself_so_no_one_reads_it_empty(tmp_path, monkeypatch):
    """kombu's own bind creates a missing table by opening it for writing before it locks and fills it: the window
    in which another process reads an empty file. Its bind must always find the table there already, whole."""
    from kombu.transport import filesystem

    seen = []
    original = filesystem.Channel._queue_bind

    def spy(channel, exchange, *args):
        table = channel._exchange_file(exchange)
        seen.append(json.loads(table.read_text()) if table.exists() else "missing")
        return original(channel, exchange, *args)

    monkeypatch.setattr(filesystem.Channel, "_queue_bind", spy)
    fs_broker.install()
    options = {"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path),
               "control_folder": str(tmp_path / "control")}
    with Connection("filesystem://", transport_options=options) as conn:
        channel = conn.channel()
        for exchange, queue in (("score", "score"), ("celeryev", "events-1"), ("score", "score-2")):
            channel._queue_bind(exchange, exchange, None, queue)  # what a queue's declaration calls
    assert seen == [[], [], [["score", "", "score"]]]
    assert json.loads((tmp_path / "control" / "score.exchange").read_text()) == [["score", "", "score-2"],
                                                                                 ["score", "", "score"]]
