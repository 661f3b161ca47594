"""`ps` has two paths: the light one (`Kernel.ps_rows`, rows of the printed columns, used for the
plain and table listings) and the snapshot one (`Kernel.ps`, full `ProcessInfo`s, used by `-l`,
`--json` and `ps PID`). Both must print the same listing, for live processes, finished ones, ones
released from memory and ones of an earlier session."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from conftest import Session, wait_phase

from commands import views
from llmunix.models import ProcessInfo, format_duration, format_memory


def reference_plain(infos: Sequence[ProcessInfo]) -> str:
    """The plain listing as the original renderer made it, field by field from snapshots."""
    rows = [views.PS_COLUMNS]
    for i in infos:
        p = i.progress
        progress = (f"{p.percentage:.0f}%" if p.percentage is not None
                    else f"step {p.current_step}" if p.current_step else "-")
        rows.append((i.process_id, views.plain_word(i.name), i.display_state, i.priority.label,
                     format_duration(i.runtime), format_memory(i.resources.memory_mb),
                     views.fmt_cpu(i.resources.cpu_percent), progress))
    widths = [max(map(len, column)) for column in zip(*rows, strict=True)]
    line = "  ".join(f"{{:<{w}}}" for w in widths[:-1]) + "  {}"
    return "\n".join(line.format(*r) for r in rows)


def stepper(ctx, steps: int = 3, total: int = 0) -> int:
    for n in range(1, steps + 1):
        ctx.progress(n, total or None, f"step {n}")
    return steps


@pytest.fixture
def mixed(tmp_path, make_kernel, make_gate, wait_until):
    """A kernel on a home with processes of an earlier session (finished, failed, interrupted),
    some released from memory, and live ones in several states (paused, pending, waiting)."""
    home = tmp_path / "home"
    k = make_kernel(home=home)
    k.wait([k.spawn("echo", text="old"), k.spawn("fail", message="old boom"), k.spawn(stepper, steps=2)])
    interrupted = k.spawn("sleep", seconds=30)
    wait_phase(k, interrupted, "running")
    k.shutdown()  # ends it Interrupted

    k = make_kernel(home=home, max_running=1, retention_count=2)
    done = [k.spawn("echo", text=str(n), name=f"echo number {n}") for n in range(4)]
    done.append(k.spawn(stepper, steps=4, total=4, priority="high"))
    done.append(k.spawn(stepper, steps=2, priority="low"))
    k.wait(done)
    k.flush()
    wait_until(lambda: not all(k.exists(p) and p in k.table.procs for p in done), message="some released")
    gate = make_gate()
    paused = k.spawn(gate.tool, name="a gate")
    assert gate.started.wait(10)
    k.pause(paused)
    running_gate = make_gate()  # holds the only slot
    k.spawn(running_gate.tool, priority="critical")
    assert running_gate.started.wait(10)
    pending = k.spawn("echo", text="queued", priority="idle")
    waiting = k.spawn("echo", text="after", after=[pending])
    yield k, {"pending": pending, "waiting": waiting}
    gate.open()
    running_gate.open()


def same(light, snapshots) -> None:
    """`light()` and `snapshots()` agree. The running gate's RUNTIME may tick to the next second
    between the two calls: then they are taken again."""
    for _ in range(3):
        a, b = light(), snapshots()
        if a == b:
            return
    assert a == b


def test_light_and_snapshot_listings_are_identical(mixed, capsys):
    k, _pids = mixed
    for all_ in (False, True):
        same(lambda a=all_: views.ps_plain(k.ps_rows(all=a)), lambda a=all_: reference_plain(k.ps(all=a)))
        same(lambda a=all_: views.ps_plain(k.ps_rows(all=a)), lambda a=all_: views.ps_plain(k.ps(all=a)))
        same(lambda a=all_: k.ps_rows(all=a), lambda a=all_: [i.ps_row() for i in k.ps(all=a)])
    states = {i.display_state for i in k.ps(all=True)}
    assert {"Completed", "Failed", "Interrupted", "Paused", "Pending", "Running"} <= states
    assert any(i.phase == "waiting" for i in k.ps())
    for state in ("completed", "failed", "interrupted", "paused", "pending", "done", "waiting", "running", "x"):
        for all_ in (False, True):
            same(lambda a=all_, s=state: views.ps_plain(k.ps_rows(all=a, state=s)),
                 lambda a=all_, s=state: reference_plain(k.ps(all=a, state=s)))

    sh = Session(k, capsys)
    same(lambda: sh.ok("ps -a").rstrip("\n"), lambda: reference_plain(k.ps(all=True)))
    same(lambda: sh.ok("ps").rstrip("\n"), lambda: reference_plain(k.ps()))
    assert sh.ok("ps --state failed").rstrip("\n") == reference_plain(k.ps(all=True, state="failed"))
    assert sh.ok("ps 1 2").rstrip("\n") == reference_plain([k.info(1), k.info(2)])


def test_pids_of_four_digits_and_more_keep_the_columns_aligned():
    from llmunix.models import Phase, PsRow

    rows = [PsRow(pid, "echo", "Completed", "normal", 0, None, None, None, 0, "Completed", Phase.DONE)
            for pid in (7, 99, 100, 999, 1000, 12345)]
    lines = views.ps_plain(rows).splitlines()
    assert [line.split()[0] for line in lines] == ["PID", "007", "099", "100", "999", "1000", "12345"]
    assert len({line.index("echo") if "echo" in line else line.index("TOOL") for line in lines}) == 1
    assert views.ps_plain([]) == reference_plain([])


def test_a_fast_built_snapshot_equals_one_built_by_its_init(make_kernel):
    import dataclasses

    from llmunix.models import fast_constructor

    k = make_kernel(max_running=1)
    pid = k.spawn(stepper, steps=2, total=2, name="two steps", priority="high", needs={"gpu": 0})
    [info] = k.wait([pid])
    values = {f.name: getattr(info, f.name) for f in dataclasses.fields(ProcessInfo)}
    assert ProcessInfo(**values) == info and repr(ProcessInfo(**values)) == repr(info)
    assert (info.name, info.tool_name, info.priority.label, info.effective_priority.label) == (
        "two steps", "stepper", "high", "high")
    assert (info.progress.current_step, info.progress.total_steps, info.progress.percentage) == (2, 2, 100.0)
    assert info.subprocess_pid is None and info.predicted_needs == () and info.worker is None
    assert info.attempts is None and info.context.input_parameters == {"steps": 2, "total": 2}
    make = fast_constructor(ProcessInfo)
    assert make(*values.values()) == info
    with pytest.raises(TypeError):  # every field, no fewer
        make(*list(values.values())[:-1])
    with pytest.raises(TypeError):  # and no more
        make(*values.values(), None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        make(*values.values()).pid = 3  # type: ignore[misc]
