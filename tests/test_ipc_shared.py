"""Shared memory: the versioned blackboard with compare-and-set, and memory-mapped buffers shared
with other processes and subprocesses, freed when their last user ends."""

from __future__ import annotations

import os
import sys
import threading

import pytest
from conftest import _wait_until

from llmunix import LlmunixError, ProcessContext


def test_versions_grow_and_cas_refuses_a_stale_write(make_kernel):
    k = make_kernel()

    def board(ctx: ProcessContext) -> list:
        s = ctx.shared
        out = [s.item("plan")]  # missing: (None, 0)
        out.append(s.cas("plan", 0, {"step": 1}))  # create-if-absent
        out.append(s.cas("plan", 0, {"step": 99}))  # someone created it first: refused
        out.append(s.set("plan", {"step": 2}))
        out.append(s.cas("plan", 1, {"step": 3}))  # stale version
        out.append(s.item("plan"))
        value = s.get("plan")
        value["step"] = "mutated locally"
        out.append(s.get("plan"))  # a copy came out: the board did not change
        out.append(s.keys())
        out.append(s.delete("plan"))
        out.append("plan" in s)
        return out

    out = k.wait([k.spawn(board)], timeout=10)[0].output
    assert out == [(None, 0), 1, None, 2, None, ({"step": 2}, 2), {"step": 2}, ["plan"], True, False]


def test_update_retries_cas_so_concurrent_increments_are_not_lost(make_kernel):
    k = make_kernel(max_running=8)

    def bump(ctx: ProcessContext) -> None:
        for _ in range(20):
            ctx.shared.update("hits", lambda n: n + 1, default=0)

    pids = [k.spawn(bump) for _ in range(5)]
    assert all(i.finished_ok for i in k.wait(pids, timeout=20))
    [entry] = k.shared("hits")
    assert entry.value == 100 and entry.version == 100 and entry.writer in pids


def test_a_process_waits_for_a_newer_version_of_a_key(make_kernel):
    k = make_kernel(max_running=4)
    watcher = k.spawn(lambda ctx: ctx.shared.wait("status", newer_than=0, timeout=10))
    _wait_until(lambda: "waiting for shared key 'status'" in k.info(watcher).detail)
    assert k.set_shared("status", "ready") == 1
    assert k.wait([watcher], timeout=10)[0].output == ("ready", 1)
    assert k.wait([k.spawn(lambda ctx: ctx.shared.wait("status", newer_than=1, timeout=0.05))])[0].output is None


def test_the_kernel_api_lists_and_filters_keys_and_rejects_unknown_ones(make_kernel):
    k = make_kernel()
    k.set_shared("result/1", 10)
    k.set_shared("result/2", 20)
    k.set_shared("other", True)
    assert [e.key for e in k.shared()] == ["other", "result/1", "result/2"]
    assert [e.value for e in k.shared("result/*")] == [10, 20]
    assert k.set_shared("other", False, expected_version=5) is None
    with pytest.raises(LlmunixError, match="no shared key 'nope'; `shared` lists them"):
        k.shared("nope")
    with pytest.raises(LlmunixError, match="JSON-serialisable"):
        k.set_shared("x", object())


def test_a_buffer_is_shared_between_processes_and_a_subprocess(make_kernel):
    k = make_kernel(max_running=4)
    path = {}
    written = threading.Event()
    read_done = threading.Event()

    def writer(ctx: ProcessContext) -> None:
        buf = ctx.buffer("frames", 4096)
        path["p"] = buf.path
        buf.write(b"hello from a process")
        # A subprocess (any language) maps the same file by its path.
        code = ("import mmap,sys; f=open(sys.argv[1],'r+b'); m=mmap.mmap(f.fileno(),0); "
                "m[100:118]=b'hello from a child'; m.flush()")
        child = ctx.popen([sys.executable, "-c", code, buf.path])
        assert child.wait(10) == 0
        written.set()
        read_done.wait(10)

    def reader(ctx: ProcessContext) -> list:
        written.wait(10)
        buf = ctx.buffer("frames")
        out = [buf.read(20), bytes(buf[100:118]), len(buf)]
        read_done.set()
        return out

    w, r = k.spawn(writer), k.spawn(reader)
    infos = k.wait([w, r], timeout=20)
    assert infos[1].output == [b"hello from a process", b"hello from a child", 4096]
    assert k.buffers() == [] and not os.path.exists(path["p"])  # the last user ended: freed


def test_a_buffer_lives_while_any_user_does(make_kernel):
    k = make_kernel(max_running=4)
    freed = []
    k.subscribe("ipc.buffer", lambda e: e.data["op"] == "freed" and freed.append(e))
    created, opened, hold = threading.Event(), threading.Event(), threading.Event()

    def first(ctx: ProcessContext) -> None:
        ctx.buffer("b", 16).write(b"x")
        created.set()
        opened.wait(10)

    def second(ctx: ProcessContext) -> None:
        created.wait(10)
        ctx.buffer("b", 8)  # no bigger than it is: fine
        opened.set()
        hold.wait(10)

    one, two = k.spawn(first), k.spawn(second)
    k.wait([one], timeout=10)
    [info] = _wait_until(lambda: [b for b in k.buffers() if b.users == (two,)] or None)
    assert info.size == 16 and os.path.exists(info.path)
    hold.set()
    k.wait(timeout=10)
    assert k.buffers() == [] and not os.path.exists(info.path)
    assert k.bus.flush(10) and freed[0].data["last_user"] == "002"


def test_bad_buffer_requests_fail_clearly(make_kernel):
    k = make_kernel()

    def bad(ctx: ProcessContext) -> list:
        errors = []
        for call in (lambda: ctx.buffer("none"), lambda: ctx.buffer("../etc", 10), lambda: ctx.buffer("z", 0)):
            try:
                call()
            except LlmunixError as exc:
                errors.append(str(exc))
        ctx.buffer("small", 10)
        try:
            ctx.buffer("small", 100)
        except LlmunixError as exc:
            errors.append(str(exc))
        return errors

    assert k.wait([k.spawn(bad)], timeout=10)[0].output == [
        "no buffer 'none' yet; give a size to create it",
        "bad buffer name '../etc'; use letters, digits and _ . : - (up to 128)",
        "buffer 'z': the size must be a whole number of bytes, at least 1",
        "buffer 'small' exists with 10 bytes, fewer than 100",
    ]
