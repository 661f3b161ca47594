"""Mailboxes: order, typing and validation, topics, recv as a control point, and the persistent
queue (at-least-once across a restart, acknowledgement, encryption at rest)."""

from __future__ import annotations

import stat
import threading

import pydantic
import pytest
from conftest import _wait_until, wait_phase

from llmunix import Kernel, LlmunixError, NoSuchProcess, ProcessContext
from llmunix.ipc import register_message_type
from llmunix.tools.registry import ToolRegistry, make_tool


class Order(pydantic.BaseModel):
    item: str
    qty: int = pydantic.Field(gt=0)


def collector(n: int, **recv_kw):
    """A tool that receives n messages and returns (sender, type, body) of each."""

    def collect(ctx: ProcessContext) -> list:
        out = []
        for _ in range(n):
            msg = ctx.recv(timeout=10, **recv_kw)
            assert msg is not None
            body = msg.body.model_dump() if isinstance(msg.body, pydantic.BaseModel) else msg.body
            out.append([msg.sender, msg.type, body])
        return out

    return collect


def test_messages_arrive_in_the_order_sent_between_processes(make_kernel):
    k = make_kernel(max_running=4)
    consumer = k.spawn(collector(50))

    def produce(ctx: ProcessContext) -> None:
        for i in range(50):
            ctx.send(consumer, {"n": i})

    producer = k.spawn(produce)
    infos = k.wait([producer, consumer], timeout=10)
    assert all(i.finished_ok for i in infos), infos
    assert [body["n"] for _s, _t, body in infos[1].output] == list(range(50))
    assert {s for s, _t, _b in infos[1].output} == {producer}
    assert {t for _s, t, _b in infos[1].output} == {"json"}


def test_a_pydantic_model_arrives_as_a_fresh_validated_instance(make_kernel):
    k = make_kernel()
    seen = {}

    def receive(ctx: ProcessContext) -> str:
        msg = ctx.recv(timeout=10, type=Order)
        seen["body"] = msg.body
        return msg.type

    pid = k.spawn(receive)
    sent = Order(item="apples", qty=3)
    k.send(pid, sent)
    assert k.wait([pid], timeout=10)[0].output == "Order"
    assert isinstance(seen["body"], Order) and seen["body"] == sent and seen["body"] is not sent


def test_recv_by_type_skips_other_messages_and_leaves_them_in_order(make_kernel):
    k = make_kernel()
    gate = threading.Event()

    def picky(ctx: ProcessContext) -> list:
        while not gate.is_set():
            ctx.sleep(0.01)
        first = ctx.recv(timeout=5, type=Order)
        rest = [ctx.recv(timeout=5).body for _ in range(2)]
        return [first.body.item, *rest]

    pid = k.spawn(picky)
    k.send(pid, "one")
    k.send(pid, Order(item="pears", qty=1))
    k.send(pid, "two")
    assert [m.type for m in k.mailbox(pid)] == ["text", "Order", "text"]
    gate.set()
    assert k.wait([pid], timeout=10)[0].output == ["pears", "one", "two"]


def test_a_body_that_does_not_fit_its_registered_type_is_refused_at_send(make_kernel):
    k = make_kernel()
    gate = threading.Event()
    pid = k.spawn(lambda ctx: gate.wait(10))
    with pytest.raises(LlmunixError, match=r"not a valid 'Order': qty: Input should be greater than 0"):
        k.send(pid, {"item": "x", "qty": 0}, type=Order)
    register_message_type("test-count", int)
    with pytest.raises(LlmunixError, match="not a valid 'test-count'"):
        k.send(pid, "many", type="test-count")
    with pytest.raises(LlmunixError, match="unknown message type 'nope'"):
        k.send(pid, 1, type="nope")
    with pytest.raises(LlmunixError, match="JSON-serialisable"):
        k.send(pid, object())
    assert k.mailbox(pid) == []
    gate.set()


def test_a_message_that_no_longer_validates_on_delivery_is_rejected_and_skipped(make_kernel):
    k = make_kernel()
    rejected = []
    k.subscribe("ipc.rejected", rejected.append)
    gate = threading.Event()

    def receive(ctx: ProcessContext) -> object:
        gate.wait(10)
        return ctx.recv(timeout=5).body

    register_message_type("test-version", int)
    pid = k.spawn(receive)
    k.send(pid, 7, type="test-version")
    k.send(pid, "next")
    register_message_type("test-version", str)  # the schema changed while the message waited
    gate.set()
    assert k.wait([pid], timeout=10)[0].output == "next"
    assert k.bus.flush(10)
    assert [e.data["message_type"] for e in rejected] == ["test-version"]


def test_recv_times_out_with_none_and_is_a_control_point_for_kill(make_kernel):
    k = make_kernel()

    def wait_once(ctx: ProcessContext) -> object:
        return ctx.recv(timeout=0.05)

    assert k.wait([k.spawn(wait_once)], timeout=10)[0].output is None

    blocked = k.spawn(lambda ctx: ctx.recv())
    wait_for_detail(k, blocked, "waiting for a message")
    k.kill(blocked)
    assert k.wait([blocked], timeout=5)[0].state == "Cancelled"


def test_a_paused_receiver_takes_its_message_only_after_resume(make_kernel, wait_until):
    k = make_kernel()
    pid = k.spawn(lambda ctx: ctx.recv(timeout=10).body)
    wait_for_detail(k, pid, "waiting for a message")
    k.pause(pid)
    wait_phase(k, pid, "paused")
    k.send(pid, "hello")
    assert not k.wait([pid], timeout=0.2)[0].is_done
    k.resume(pid)
    assert k.wait([pid], timeout=10)[0].output == "hello"


def test_broadcast_reaches_every_listener_but_the_sender(make_kernel):
    k = make_kernel(max_running=4)
    ready = threading.Barrier(3)

    def listener(ctx: ProcessContext) -> object:
        ctx.subscribe_topic("news.*")
        ready.wait(10)
        msg = ctx.recv(timeout=10)
        return [msg.topic, msg.body]

    a, b = k.spawn(listener), k.spawn(listener)
    k.spawn(lambda ctx: ctx.recv(timeout=0.5))  # not listening: gets nothing

    def announce(ctx: ProcessContext) -> list:
        ctx.subscribe_topic("news.*")
        ready.wait(10)
        return ctx.broadcast("news.weather", "sunny")

    sender = k.spawn(announce)
    infos = k.wait([a, b, sender], timeout=10)
    assert infos[2].output == [a, b]
    assert infos[0].output == infos[1].output == ["news.weather", "sunny"]
    assert k.broadcast("news.sport", "nobody listens now") == []


def test_sending_to_a_finished_or_unknown_process_fails_in_one_line(make_kernel):
    k = make_kernel()
    done = k.spawn("echo", text="x")
    k.wait([done])
    with pytest.raises(LlmunixError, match=r"process 001 has finished \(Completed\); nothing would read"):
        k.send(done, "late")
    with pytest.raises(NoSuchProcess, match="no process 042"):
        k.send(42, "hi")
    with pytest.raises(LlmunixError, match="persistent messages need a home"):
        k.send(done, "x", persistent=True)


def test_in_memory_messages_of_a_process_that_ends_are_dropped_and_counted(make_kernel):
    k = make_kernel()
    dropped = []
    k.subscribe("ipc.dropped", dropped.append)
    gate = threading.Event()
    pid = k.spawn(lambda ctx: gate.wait(10))
    k.send(pid, "never read")
    gate.set()
    k.wait([pid], timeout=10)
    assert k.mailbox(pid) == []
    assert k.bus.flush(10)
    assert dropped[0].data["count"] == 1 and dropped[0].data["reason"] == "recipient completed"


# ---------------------------------------------------------------------------- persistent queues


def _inbox_registry() -> ToolRegistry:
    """`inbox`: receive one message; acknowledge it only on a redelivery, else hang until stopped
    (so the first delivery is never acknowledged: a crash between recv and ack)."""

    def inbox(ctx: ProcessContext) -> list:
        msg = ctx.recv(timeout=20)
        if not msg.redelivered:
            while True:
                ctx.sleep(0.01)
        msg.ack()
        return [msg.body, msg.deliveries, msg.persistent]

    reg = ToolRegistry()
    reg.register(make_tool(inbox, name="inbox", idempotent=True))
    return reg


def test_a_persistent_message_survives_a_restart_is_redelivered_and_gone_after_ack(tmp_path):
    reg = _inbox_registry()
    k1 = Kernel(tmp_path, monitor=False, kill_grace=0.3, registry=reg)
    try:
        pid = k1.spawn("inbox")
        k1.send(pid, {"job": 7}, persistent=True)
        _wait_until(lambda: [(m.state, m.deliveries) for m in k1.mailbox(pid)] == [("unacked", 1)],
                    message="the message delivered and not acknowledged")
    finally:
        k1.shutdown()  # the receiver is interrupted
    k2 = Kernel(tmp_path, monitor=False, kill_grace=0.3, registry=reg)
    try:
        assert [(m.state, m.body, m.deliveries) for m in k2.mailbox(pid)] == [("pending", {"job": 7}, 1)]
        [info] = k2.recover([pid])
        assert k2.wait([pid], timeout=10)[0].output == [{"job": 7}, 2, True]
        assert k2.mailbox(pid) == []
    finally:
        k2.shutdown()
    k3 = Kernel(tmp_path, monitor=False, registry=reg)
    try:
        assert k3.mailbox(pid) == [] and _message_rows(tmp_path) == 0
    finally:
        k3.shutdown()


def test_a_persistent_message_waits_for_an_interrupted_process(tmp_path):
    reg = _inbox_registry()
    k1 = Kernel(tmp_path, monitor=False, kill_grace=0.3, registry=reg)
    pid = k1.spawn(lambda ctx: ctx.sleep(30))
    k1.shutdown()
    k2 = Kernel(tmp_path, monitor=False, registry=reg)
    try:
        with pytest.raises(LlmunixError, match="interrupted; only a persistent message"):
            k2.send(pid, "x")
        info = k2.send(pid, "for later", persistent=True)
        assert info.state == "pending" and k2.mailbox(pid)[0].body == "for later"
    finally:
        k2.shutdown()


def test_sensitive_messages_are_encrypted_at_rest_with_a_private_key(tmp_path):
    plaintext = "hunter2-correct-horse-battery-staple"
    k = Kernel(tmp_path, monitor=False, kill_grace=0.3)
    try:
        gate = threading.Event()
        pid = k.spawn(lambda ctx: gate.wait(10))
        k.send(pid, {"password": plaintext}, persistent=True, sensitive=True)
        k.send(pid, "visible-marker-text", persistent=True)
        [secret, plain] = k.mailbox(pid)
        assert secret.sensitive and secret.body is None and secret.to_dict()["body"] == "<sensitive>"
        assert plain.body == "visible-marker-text"
        k.flush()
        raw = b"".join(p.read_bytes() for p in tmp_path.glob("llmunix.db*"))
        assert b"visible-marker-text" in raw  # the check can see plaintext where there is some
        assert plaintext.encode() not in raw
        key = tmp_path / "ipc.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        gate.set()
    finally:
        k.shutdown()


def test_a_sensitive_persistent_message_is_readable_after_a_restart(tmp_path):
    reg = ToolRegistry()

    def take(ctx: ProcessContext) -> object:
        ctx.shared.wait("go", timeout=30)  # not before the restart
        msg = ctx.recv(timeout=10)
        msg.ack()
        return msg.body

    reg.register(make_tool(take, name="take", idempotent=True))
    k1 = Kernel(tmp_path, monitor=False, kill_grace=0.3, registry=reg)
    pid = k1.spawn("take")
    k1.send(pid, {"token": "s3cr3t"}, persistent=True, sensitive=True)
    k1.shutdown()
    k2 = Kernel(tmp_path, monitor=False, registry=reg)
    try:
        k2.set_shared("go", True)
        k2.recover([pid])
        assert k2.wait([pid], timeout=10)[0].output == {"token": "s3cr3t"}
    finally:
        k2.shutdown()


# ---------------------------------------------------------------------------- helpers


def wait_for_detail(k: Kernel, pid: int, text: str) -> None:
    _wait_until(lambda: text in k.info(pid).detail, message=f"process {pid} detail {text!r}")


def _message_rows(home) -> int:
    import sqlite3

    conn = sqlite3.connect(home / "llmunix.db")
    try:
        return conn.execute("SELECT count(*) FROM messages").fetchone()[0]
    finally:
        conn.close()


def test_a_receiver_waits_off_slot_so_its_producer_runs_on_the_one_slot(make_kernel):
    k = make_kernel(max_running=1)
    consumer = k.spawn(collector(5))
    producer = k.spawn(lambda ctx: [ctx.send(consumer, i) for i in range(5)])
    infos = k.wait([consumer, producer], timeout=10)
    assert [body for _s, _t, body in infos[0].output] == [0, 1, 2, 3, 4]
