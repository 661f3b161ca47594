"""The home is private: made 0700 whatever the umask, its files 0600; a home, tools directory,
tools module or config file that someone else can change is refused, and no code is imported
from it (the issue: under umask 000 `nobody` wrote <home>/tools/evil.py and the next
`llmunix -c ps` ran it as the owner)."""

from __future__ import annotations

import logging
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LLMUNIX

from llmunix.home import UnsafePath, make_private_dir, prepare_home, unsafe_reason
from llmunix.observe.logging import setup_logging

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to make files another user owns")


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory every user can reach (pytest's own is 0700, which would keep them out anyway)."""
    base = Path(tempfile.mkdtemp(prefix="llmunix-privacy-"))
    os.chmod(base, 0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def llmunix(*args: str, cwd: Path, umask: int | None = None, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LLMUNIX, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          preexec_fn=(lambda: os.umask(umask)) if umask is not None else None,
                          env={**os.environ, **(env or {})})


def evil_tool(directory: Path, marker: Path) -> Path:
    """A tool file that leaves `marker` behind if it is ever imported."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "evil.py"
    path.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    return path


def test_a_home_made_under_umask_000_is_private_with_every_file_in_it(tmp_path):
    home = tmp_path / "made" / "by" / "llmunix"
    probe = f"run shell \"cmd=stat -c '%a %n' {home}/llmunix.db-wal {home}/llmunix.db-shm\""
    r = llmunix("--home", str(home), "-c", "run sleep seconds=1", "-c", "send 1 hi --persistent --sensitive",
                "-c", probe, "-c", "wait 2", "-c", "log 2", "-c", "workflow run fan-out --input seconds=0.1 --wait",
                "-c", "wait", cwd=tmp_path, umask=0)
    assert r.returncode == 0, r.stderr
    assert [line.split()[0] for line in r.stdout.splitlines() if "llmunix.db-" in line] == ["600", "600"]
    for d in (tmp_path / "made", tmp_path / "made" / "by", home, home / "runs", *(home / "runs").iterdir()):
        assert mode(d) == 0o700, d
    files = {p.name: mode(p) for p in home.iterdir() if p.is_file()}
    assert {"llmunix.db", "llmunix.log", "lock", "pids", "history", "ipc.key"} <= set(files), files
    assert set(files.values()) == {0o600}, files


@as_root
def test_another_user_cannot_plant_a_tool_in_a_home_made_under_umask_000(reachable):
    base = reachable  # only the home's own mode keeps others out
    home = base / "home"
    assert llmunix("--home", str(home), "-c", "ps", cwd=base, umask=0).returncode == 0
    plant = subprocess.run(["python3", "-c", f"import os; os.makedirs({str(home / 'tools')!r}, exist_ok=True); "
                            f"open({str(home / 'tools' / 'evil.py')!r}, 'w').write('x')"],
                           preexec_fn=lambda: os.setuid(NOBODY), capture_output=True, text=True)
    assert plant.returncode != 0 and "Permission denied" in plant.stderr
    assert not (home / "tools").exists()


def test_an_existing_home_others_can_write_is_refused_before_anything_is_loaded(tmp_path):
    home, marker = tmp_path / "home", tmp_path / "ran"
    home.mkdir()
    evil_tool(home / "tools", marker)
    os.chmod(home, 0o777)
    r = llmunix("--home", str(home), "-c", "ps", cwd=tmp_path)
    assert r.returncode == 2 and not marker.exists()
    assert r.stderr == (f"llmunix: refusing to use {home} as the llmunix home: others can write it (mode 0777), so "
                        f"they could have planted code or data in it; check it, then: chmod go-w {home}\n")
    os.chmod(home, 0o720)
    assert "mode 0720" in llmunix("--home", str(home), "-c", "ps", cwd=tmp_path).stderr


def test_an_older_home_others_could_read_is_made_private(tmp_path):
    home = tmp_path / "home"
    assert llmunix("--home", str(home), "-c", "run echo text=x", "-c", "wait", cwd=tmp_path).returncode == 0
    os.chmod(home, 0o755)
    for p in home.iterdir():
        if p.is_file():
            os.chmod(p, 0o644)
    (home / "runs" / "007").mkdir(parents=True)
    os.chmod(home / "runs", 0o755)
    assert llmunix("--home", str(home), "-c", "ps", cwd=tmp_path).returncode == 0
    assert mode(home) == 0o700 and mode(home / "runs") == 0o700 and mode(home / "runs" / "007") == 0o700
    assert {p.name: mode(p) for p in home.iterdir() if p.is_file()} == {p.name: 0o600 for p in home.iterdir()
                                                                       if p.is_file()}


@pytest.mark.parametrize("where", ["cwd", "home"])
def test_a_tools_directory_others_can_change_is_refused_and_never_imported(tmp_path, where):
    home, marker = tmp_path / "home", tmp_path / "ran"
    prepare_home(home)
    tools = (tmp_path if where == "cwd" else home) / "tools"
    evil = evil_tool(tools, marker)
    (tools / "fine.md").write_text("---\nname: fine\ntype: tool\ndescription: a prompt\n---\nSay hi.\n")
    os.chmod(tools, 0o777)
    r = llmunix("--home", str(home), "-c", "ps", "-c", "tools fine", cwd=tmp_path)
    assert not marker.exists()
    assert r.stderr.splitlines()[0] == (
        f"llmunix: could not load tools from {tools}: refused: {tools} can be changed by its group and everyone "
        f"(mode 0777), so another user could make llmunix run their code as you; check it, then: chmod go-w {tools}")
    assert "unknown tool 'fine'" in r.stderr  # its markdown tools are not loaded either
    os.chmod(tools, 0o755)
    os.chmod(evil, 0o664)  # one file in it is enough
    r = llmunix("--home", str(home), "-c", "ps", cwd=tmp_path)
    assert f"refused: {evil} can be changed by its group (mode 0664)" in r.stderr and not marker.exists()
    os.chmod(evil, 0o644)
    llmunix("--home", str(home), "-c", "ps", cwd=tmp_path)
    assert marker.exists()  # a safe directory loads as before


@as_root
def test_a_tool_file_another_user_owns_is_refused(tmp_path):
    marker = tmp_path / "ran"
    evil = evil_tool(tmp_path / "tools", marker)
    os.chown(evil, NOBODY, NOBODY)
    r = llmunix("--home", str(tmp_path / "home"), "-c", "ps", cwd=tmp_path)
    assert f"refused: {evil} belongs to uid {NOBODY}, not to you" in r.stderr and not marker.exists()


def test_a_config_file_others_can_change_is_refused(tmp_path):
    home = tmp_path / "home"
    prepare_home(home)
    config = home / "config.toml"
    config.write_text("allow_shell_tools = true\n")
    os.chmod(config, 0o666)
    r = llmunix("--home", str(home), "-c", "ps", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith(f"llmunix: refusing to read the configuration: {config} can be "
                                                     "changed by its group and everyone (mode 0666)")
    other = tmp_path / "other.toml"
    other.write_text("max_running = 2\n")
    os.chmod(other, 0o620)
    r = llmunix("--home", str(home), "--config", str(other), "-c", "ps", cwd=tmp_path)
    assert r.returncode == 2 and f"chmod go-w {other}" in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_tools_module_in_a_directory_others_can_change_is_refused(tmp_path):
    mods, marker = tmp_path / "mods", tmp_path / "ran"
    mods.mkdir()
    (mods / "mytools_unsafe.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    os.chmod(mods, 0o777)
    r = llmunix("--home", str(tmp_path / "home"), "--tools", "mytools_unsafe", "-c", "ps", cwd=tmp_path,
                env={"PYTHONPATH": str(mods)})
    assert f"could not load tools from module mytools_unsafe: refused: {mods} can be changed" in r.stderr
    assert not marker.exists()
    os.chmod(mods, 0o1777)  # sticky, like /tmp: nobody else can replace the file, which is safe
    r = llmunix("--home", str(tmp_path / "home"), "--tools", "mytools_unsafe", "-c", "ps", cwd=tmp_path,
                env={"PYTHONPATH": str(mods)})
    assert "refused" not in r.stderr and marker.exists()


# ---------------------------------------------------------------------------------- units


def test_make_private_dir_makes_every_missing_parent_0700_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        make_private_dir(tmp_path / "a" / "b" / "c")
    finally:
        os.umask(old)
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o700] * 3


def test_unsafe_reason_names_the_owner_or_the_mode(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    os.chmod(f, 0o644)
    assert unsafe_reason(f) is None and unsafe_reason(tmp_path / "missing") is None
    os.chmod(f, 0o602)
    assert "can be changed by everyone (mode 0602)" in unsafe_reason(f)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    assert unsafe_reason(sticky) is not None and unsafe_reason(sticky, sticky_ok=True) is None
    with pytest.raises(UnsafePath, match="is not a directory"):
        prepare_home(f)


def test_the_log_and_its_rotations_are_created_0600_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        handler = setup_logging(tmp_path, max_bytes=300, backups=2)
        assert handler is not None
        log = logging.getLogger("llmunix.test")
        for i in range(20):
            log.info("line %d %s", i, "x" * 50)
    finally:
        os.umask(old)
        logging.getLogger("llmunix").removeHandler(handler)
        handler.close()
    logs = sorted(tmp_path.glob("llmunix.log*"))
    assert len(logs) == 3 and {mode(p) for p in logs} == {0o600}
