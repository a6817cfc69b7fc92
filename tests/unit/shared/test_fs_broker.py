"""The embedded broker's exchange tables are never seen half-made, however many processes bind at once."""
import json
import time
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


def _options(folder) -> dict:
    return {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(folder / "control")}


def test_a_message_is_invisible_to_consumers_until_it_is_written_whole(tmp_path, monkeypatch):
    """kombu opens a message's file before it writes it, and a consumer moves any file of its queue away unlocked:
    a consumer reading between the two took an empty file and the message was lost. A consumer polling while the
    message is being written must find nothing, and afterwards the whole message."""
    from queue import Empty

    fs_broker.install()
    seen_mid_write = []
    real_dumps = fs_broker.dumps

    with Connection("filesystem://", transport_options=_options(tmp_path)) as producer, \
            Connection("filesystem://", transport_options=_options(tmp_path)) as consumer:
        reader = consumer.channel()

        def dumps_while_a_consumer_polls(payload):
            try:
                seen_mid_write.append(reader._get("jobs"))
            except Empty:
                seen_mid_write.append("nothing")
            return real_dumps(payload)

        monkeypatch.setattr(fs_broker, "dumps", dumps_while_a_consumer_polls)
        producer.channel()._put("jobs", {"body": "import job 7"})
        assert seen_mid_write == ["nothing"]
        assert reader._get("jobs") == {"body": "import job 7"}
        assert not [p.name for p in tmp_path.iterdir() if p.is_file()]  # no temporary file left behind


def _send(folder, count: int) -> None:
    fs_broker.install()
    with Connection("filesystem://", transport_options=_options(folder)) as conn:
        queue = conn.SimpleQueue("busy")
        for i in range(count):
            queue.put({"i": i, "pad": "x" * 20_000})
        queue.close()


def test_a_busy_consumer_in_another_process_gets_every_message_once(tmp_path):
    """Two processes at full speed, one sending 2,000 messages of 20 kB while the other takes them: kombu's own
    transport loses some of them."""
    import multiprocessing

    fs_broker.install()
    (tmp_path / "control").mkdir()
    count, got, errors = 2000, [], []
    sender = multiprocessing.get_context("spawn").Process(target=_send, args=(tmp_path, count))
    sender.start()
    with Connection("filesystem://", transport_options=_options(tmp_path)) as conn:
        queue = conn.SimpleQueue("busy")
        deadline = time.monotonic() + 120
        while len(got) < count and time.monotonic() < deadline:
            try:
                message = queue.get(timeout=0.01)
            except queue.Empty:
                if not sender.is_alive() and not list(tmp_path.glob("*.msg")):
                    break
                continue
            except Exception as exc:  # a message read half-written
                errors.append(repr(exc))
                continue
            got.append(message.payload["i"])
            message.ack()
    sender.join(30)
    assert errors == [] and sorted(got) == list(range(count))
