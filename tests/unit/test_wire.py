"""The local API's wire format: plain JSON replies, binary replies (a JSON line + N raw bytes), and
replies cut short. End to end through a real Unix socket: LocalAPI serving, AgentClient calling."""

import io
import socket
import threading

import pytest

from workbench.agent.api import LocalAPI
from workbench.client.transport import AgentClient
from workbench.errors import NotFoundError, WorkbenchError
from workbench.wire import BinaryReply, WireError, read_reply, write_reply

# newlines and a would-be JSON line inside the payload: only the byte count may frame it
PAYLOAD = b"\x00\xff\n{\"ok\": false}\n" * 1000


def framed(reply):
    out = io.BytesIO()
    write_reply(out, reply)
    return out.getvalue()


def test_plain_replies_are_one_json_line_as_before():
    data = framed({"ok": True, "result": {"pong": True}})
    assert data == b'{"ok": true, "result": {"pong": true}}\n'
    assert read_reply(io.BytesIO(data), what="agent.ping") == ({"ok": True, "result": {"pong": True}}, None)


def test_a_binary_reply_is_a_header_line_with_the_byte_count_then_the_bytes():
    data = framed({"ok": True, "result": BinaryReply({"seq": 7}, PAYLOAD)})
    header, _, rest = data.partition(b"\n")
    assert header == b'{"ok": true, "result": {"seq": 7}, "binary": %d}' % len(PAYLOAD)
    assert rest == PAYLOAD
    stream = io.BytesIO(data + b"next")
    assert read_reply(stream, what="flows.query") == ({"ok": True, "result": {"seq": 7}}, PAYLOAD)
    assert stream.read() == b"next", "the reader takes exactly the announced bytes"


def test_an_empty_payload_is_still_a_binary_reply():
    assert read_reply(io.BytesIO(framed({"ok": True, "result": BinaryReply({}, b"")})), what="x") == \
        ({"ok": True, "result": {}}, b"")


@pytest.mark.parametrize("cut", [0, 1, len(PAYLOAD) - 1])
def test_a_truncated_payload_is_a_clear_one_line_error(cut):
    data = framed({"ok": True, "result": BinaryReply({"seq": 1}, PAYLOAD)})
    header_length = data.index(b"\n") + 1
    with pytest.raises(WireError) as err:
        read_reply(io.BytesIO(data[:header_length + cut]), what="flows.query of lab demo")
    assert str(err.value) == (f"flows.query of lab demo: the connection closed after {cut} of {len(PAYLOAD)} "
                              "bytes of binary reply")


def test_a_cut_header_or_a_bad_byte_count_is_a_clear_error():
    with pytest.raises(WireError, match=r"^x: the connection closed before the reply$"):
        read_reply(io.BytesIO(b""), what="x")
    with pytest.raises(WireError, match=r"closed before the reply \(9 bytes of its first line\)"):
        read_reply(io.BytesIO(b'{"ok": tr'), what="x")
    with pytest.raises(WireError, match="announces -3 binary bytes"):
        read_reply(io.BytesIO(b'{"ok": true, "binary": -3}\n'), what="x")
    with pytest.raises(WireError, match="not JSON"):
        read_reply(io.BytesIO(b"garbage\n"), what="x")


@pytest.fixture
def served(tmp_path):
    """A LocalAPI on a real Unix socket, and a client of it."""
    api = LocalAPI()
    api.register("blob.get", lambda size: BinaryReply({"size": size}, bytes(range(256)) * (size // 256)))
    api.register("agent.ping", lambda: {"pong": True})
    path = tmp_path / "agent.sock"
    thread = threading.Thread(target=api.serve, args=(path,), daemon=True)
    thread.start()
    client = AgentClient("unit", timeout=10, socket_path=path)
    for _ in range(100):
        if client.alive():
            break
        threading.Event().wait(0.02)
    yield client
    api.shutdown()
    thread.join(timeout=5)


def test_binary_and_plain_methods_over_the_socket(served):
    meta, payload = served.call_binary("blob.get", size=4 << 20)   # larger than any socket buffer
    assert meta == {"size": 4 << 20} and payload == bytes(range(256)) * (4 << 12)
    assert served.call("agent.ping") == {"pong": True}
    with pytest.raises(WorkbenchError, match="blob.get of lab unit answers with binary data"):
        served.call("blob.get", size=256)
    with pytest.raises(WorkbenchError, match="agent.ping of lab unit answered without binary data"):
        served.call_binary("agent.ping")
    with pytest.raises(NotFoundError, match="no method 'nope'"):
        served.call_binary("nope")


def test_a_server_that_hangs_up_mid_payload_gives_a_one_line_error(tmp_path):
    path = tmp_path / "cut.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def answer_half():
        conn, _ = listener.accept()
        with conn:
            conn.makefile("rb").readline()
            conn.sendall(b'{"ok": true, "result": {"seq": 3}, "binary": 1000}\n' + b"x" * 400)

    thread = threading.Thread(target=answer_half, daemon=True)
    thread.start()
    try:
        with pytest.raises(WireError) as err:
            AgentClient("unit", timeout=10, socket_path=path).call_binary("flows.query")
    finally:
        thread.join(timeout=5)
        listener.close()
    assert str(err.value) == "flows.query of lab unit: the connection closed after 400 of 1000 bytes of binary reply"
    assert "\n" not in str(err.value)
