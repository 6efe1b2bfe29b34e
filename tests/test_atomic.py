"""Crash-safe writes: disk full, no permission, SIGKILL mid-save, and rolling retention."""

from __future__ import annotations

import errno
import multiprocessing
import os
import random
import signal
import time
from collections import namedtuple

import pytest

from goan_core.resumefile import atomic
from goan_core.resumefile import RetentionFolder, newest_complete
from goan_core.resumefile.atomic import atomic_write_bytes, atomic_writer, check_free_space, is_partial
from goan_core.errors import DiskSpaceError, InputError, ResumeFileError
from goan_core.resumefile import read_resume_file, write_resume_file

from hostile_corpus import make_state, source_image

Usage = namedtuple("Usage", "total used free")


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_atomic_write_bytes(tmp_path):
    target = tmp_path / "a.bin"
    atomic_write_bytes(target, b"first")
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert listing(tmp_path) == ["a.bin"]


def test_nothing_is_visible_under_the_name_until_done(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with atomic_writer(target) as fh:
        fh.write(b"new data")
        names = listing(tmp_path)
        assert target.read_bytes() == b"old"
    assert len(names) == 2 and any(name.startswith(".a.bin.") and is_partial(name) for name in names)
    assert target.read_bytes() == b"new data" and listing(tmp_path) == ["a.bin"]


def test_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    assert len(synced) == (1 if os.name == "nt" else 2)


def test_an_error_in_the_body_removes_the_temp_file(tmp_path):
    target = tmp_path / "a.bin"
    target.write_bytes(b"old")
    with pytest.raises(ZeroDivisionError):
        with atomic_writer(target) as fh:
            fh.write(b"half")
            1 / 0
    assert target.read_bytes() == b"old" and listing(tmp_path) == ["a.bin"]


def _fail_writes_after(monkeypatch, allowed_bytes, error=errno.ENOSPC):
    """os.write that succeeds for the first `allowed_bytes`, then fails like a full disk."""
    real_write = os.write
    budget = {"left": allowed_bytes}

    def write(fd, data):
        if budget["left"] <= 0:
            raise OSError(error, os.strerror(error))
        written = real_write(fd, bytes(data)[:budget["left"]])
        budget["left"] -= written
        return written

    monkeypatch.setattr(os, "write", write)


@pytest.mark.parametrize("allowed", [0, 1000, 60_000])
def test_disk_full_during_the_write(allowed, tmp_path, monkeypatch):
    target = tmp_path / "job.goan_resume"
    write_resume_file(make_state(section=1), target, source_image=source_image())
    earlier = target.read_bytes()
    _fail_writes_after(monkeypatch, allowed)
    with pytest.raises(DiskSpaceError) as caught:
        write_resume_file(make_state(section=2), target, source_image=source_image())
    assert "disk became full" in str(caught.value) and caught.value.path == str(target)
    assert "earlier files are untouched" in str(caught.value)
    assert target.read_bytes() == earlier and listing(tmp_path) == ["job.goan_resume"]
    monkeypatch.undo()
    assert read_resume_file(target).state.section == 1


def test_no_permission_during_the_write(tmp_path, monkeypatch):
    _fail_writes_after(monkeypatch, 100, errno.EACCES)
    with pytest.raises(ResumeFileError, match="no permission to write") as caught:
        atomic_write_bytes(tmp_path / "a.bin", b"x" * 1000)
    assert type(caught.value) is ResumeFileError
    assert listing(tmp_path) == []


def test_no_permission_to_create(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(ResumeFileError, match="no permission to write"):
        atomic_write_bytes(tmp_path / "a.bin", b"x")


def test_free_space_is_checked_before_anything_is_touched(tmp_path, monkeypatch):
    target = tmp_path / "job.goan_resume"
    write_resume_file(make_state(section=1), target, source_image=source_image())
    earlier = target.read_bytes()
    monkeypatch.setattr(atomic.shutil, "disk_usage", lambda folder: Usage(10**9, 10**9 - 5000, 5000))
    monkeypatch.setattr(os, "open", lambda *a, **k: pytest.fail("nothing may be opened for writing"))
    with pytest.raises(DiskSpaceError) as caught:
        write_resume_file(make_state(section=2), target, source_image=source_image())
    message = str(caught.value)
    assert "not enough free disk space" in message and "4.9 KB free" in message and "nothing was written" in message
    monkeypatch.undo()
    assert target.read_bytes() == earlier and listing(tmp_path) == ["job.goan_resume"]


def test_check_free_space_messages(tmp_path):
    with pytest.raises(DiskSpaceError, match=r"it needs 1024\.0 GB .* has only .* free"):
        check_free_space(tmp_path, 1024**4, tmp_path / "x.goan_resume")
    check_free_space(tmp_path, 1, tmp_path / "x.goan_resume")
    with pytest.raises(ResumeFileError, match="does not exist"):
        check_free_space(tmp_path / "missing", 1, tmp_path / "missing" / "x.goan_resume")


# -- rolling retention ------------------------------------------------------------------------------

def test_retention_keeps_the_newest(tmp_path):
    state = make_state(section=0)
    folder = RetentionFolder(tmp_path, state.job_id, keep_last=3)
    assert folder.folder == tmp_path / "goan_resume" / "job-1"
    saved = []
    for section in range(3):
        for step in (0, 2):
            s = make_state(section=section, step=step, outputs=min(step, 1))
            saved.append(folder.save(s, source_image=source_image()))
    assert folder.files() == saved[-3:]
    assert [p.name for p in saved[:2]] == ["job-1_000001_s0000_t000.goan_resume", "job-1_000002_s0000_t002.goan_resume"]
    assert folder.newest_complete() == saved[-1] == newest_complete(folder.folder)
    again = RetentionFolder(tmp_path, state.job_id, keep_last=3)  # e.g. after a restart
    assert again.save(state, source_image=source_image()).name.startswith("job-1_000007_")


def test_hidden_autosaves_share_the_folder_and_its_count(tmp_path):
    """Inside ComfyUI autosaves are hidden files: its asset scan (current ComfyUI: after every prompt)
    skips names starting with "."; pause and other files stay visible; keep_last counts them all."""
    from goan_core.resumefile import read_resume_file, retained_files

    folder = RetentionFolder(tmp_path, "job-1", keep_last=3, hide_autosaves=True)
    kinds = ["autosave", "autosave", "pause", "autosave", "failsafe"]
    saved = [folder.save(make_state(section=n % 3), source_image=source_image(), kind=kind) for n, kind in enumerate(kinds)]
    assert [p.name.startswith(".") for p in saved] == [k == "autosave" for k in kinds]
    assert saved[0].name == ".job-1_000001_s0000_t000.goan_resume"
    assert folder.files() == retained_files(folder.folder) == saved[-3:]  # the newest three, hidden or not
    assert listing(folder.folder) == sorted(p.name for p in saved[-3:])  # no temp file left either
    assert folder.newest_complete() == saved[-1]
    assert read_resume_file(saved[3]).job_info["kind"] == "autosave"
    stale = folder.folder / "..job-1_000009_s0009_t000.goan_resume.0badf00d.partial"  # a hidden file's temp file
    stale.write_bytes(b"half a file")
    assert folder.save(make_state(section=2), source_image=source_image()).name.startswith(".job-1_000006_")
    assert not stale.exists()
    plain = RetentionFolder(tmp_path, "job-2")  # the CLI's: every file visible
    assert not plain.save(make_state(job_id="job-2"), source_image=source_image()).name.startswith(".")


def test_newest_complete_skips_broken_and_partial_files(tmp_path):
    folder = RetentionFolder(tmp_path, "job-1", keep_last=5)
    good = folder.save(make_state(section=1), source_image=source_image())
    broken = folder.save(make_state(section=2), source_image=source_image())
    broken.write_bytes(broken.read_bytes()[:500])
    (folder.folder / ".job-1_000009_s0003_t000.goan_resume.abcd1234.partial").write_bytes(b"PK\x03\x04")
    (folder.folder / "job-1_notes.txt").write_text("not a resume file")
    assert folder.newest_complete() == good
    assert newest_complete(tmp_path / "nowhere") is None


def test_a_failed_save_keeps_older_files(tmp_path, monkeypatch):
    folder = RetentionFolder(tmp_path, "job-1", keep_last=2)
    for section in range(2):
        folder.save(make_state(section=section), source_image=source_image())
    before = {p.name: p.read_bytes() for p in folder.files()}
    _fail_writes_after(monkeypatch, 5000)
    with pytest.raises(DiskSpaceError):
        folder.save(make_state(section=2), source_image=source_image())
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in folder.files()} == before
    assert listing(folder.folder) == sorted(before)


def test_stale_partials_are_cleared_on_the_next_save(tmp_path):
    folder = RetentionFolder(tmp_path, "job-1")
    folder.folder.mkdir(parents=True)
    stale = folder.folder / ".job-1_000001_s0000_t000.goan_resume.0badf00d.partial"
    stale.write_bytes(b"half a file")
    folder.save(make_state(), source_image=source_image())
    assert not stale.exists()


def test_stale_partials_of_other_jobs_are_swept_but_not_live_or_foreign_files(tmp_path):
    """A job killed during its first save, and never resumed, used to leave its temp file forever."""
    from goan_core.resumefile.retention import STALE_PARTIAL_SECONDS

    root = tmp_path / "goan_resume"
    old = time.time() - STALE_PARTIAL_SECONDS - 60

    def leftover(job, name, age=old):
        folder = root / job
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"half a file")
        os.utime(folder / name, (age, age))
        return folder / name

    stale = leftover("job-killed", ".job-killed_000001_s0000_t000.goan_resume.0badf00d.partial")
    stale_later = leftover("job-killed", ".job-killed_000002_s0001_t002.goan_resume.12345678.partial")
    live = leftover("job-live", ".job-live_000001_s0000_t000.goan_resume.cafef00d.partial", age=time.time())
    kept = [leftover("job-x", ".other-job_000001_s0000_t000.goan_resume.0badf00d.partial"),  # not this folder's job
            leftover("job-x", ".video.mp4.0badf00d.partial"),  # not a resume file's temp file
            leftover("job-x", "notes.partial"),
            leftover("job-x", "job-x_000001_s0000_t000.goan_resume")]  # a complete file
    outside = tmp_path / "elsewhere.partial"
    outside.write_bytes(b"x")
    os.utime(outside, (old, old))
    (root / "job-link").mkdir()
    (root / "job-link" / ".job-link_000001_s0000_t000.goan_resume.0badf00d.partial").symlink_to(outside)

    folder = RetentionFolder(tmp_path, "job-new")  # no save needed: creating one sweeps
    assert not stale.exists() and not stale_later.exists()
    assert live.exists() and all(path.exists() for path in kept) and outside.exists()
    assert folder.cleanup_warnings == []
    RetentionFolder(tmp_path / "nothing-here", "job-new")  # no goan_resume folder yet: nothing to do


@pytest.mark.parametrize("job_id, keep_last, phrase", [
    ("../evil", 3, "cannot name a folder"), (".hidden", 3, "cannot name a folder"), ("a/b", 3, "cannot name a folder"),
    ("job", 0, "keep_last"), ("job", True, "keep_last"),
])
def test_retention_refuses_bad_arguments(job_id, keep_last, phrase, tmp_path):
    with pytest.raises(InputError, match=phrase):
        RetentionFolder(tmp_path, job_id, keep_last)


def test_retention_refuses_another_jobs_state(tmp_path):
    with pytest.raises(InputError, match="cannot be saved in the folder of job"):
        RetentionFolder(tmp_path, "job-2").save(make_state(), source_image=source_image())


# -- SIGKILL at random moments ------------------------------------------------------------------------

def _save_until_killed(output_dir, states, image, saved):
    folder = RetentionFolder(output_dir, states[0].job_id, keep_last=3)
    for count in range(10**9):
        folder.save(states[count % len(states)], source_image=image)
        saved.value += 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs the fork start method")
def test_sigkill_mid_save_never_breaks_the_newest_file(tmp_path):
    """A child saves in a loop and is SIGKILLed at a random moment, over and over: after every kill
    every complete-named file validates, the newest one loads, and no partial file is ever returned."""
    context = multiprocessing.get_context("fork")
    states = [make_state(section=1), make_state(section=1, step=2, outputs=1), make_state(section=2)]
    image = source_image()
    folder = RetentionFolder(tmp_path, "job-1", keep_last=3)
    folder.save(states[0], source_image=image)
    rng = random.Random(4321)
    started = time.monotonic()
    killed_mid_write = 0
    for _ in range(60):
        saved = context.Value("i", 0)
        child = context.Process(target=_save_until_killed, args=(tmp_path, states, image, saved))
        child.start()
        deadline = time.monotonic() + 10
        while saved.value < 1 and time.monotonic() < deadline:  # one complete save first, however busy the
            time.sleep(0.001)  # machine, so the sequence advances; then a kill at a random moment of the next
        time.sleep(rng.uniform(0.002, 0.04))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL
        killed_mid_write += any(is_partial(name) for name in listing(folder.folder))
        newest = folder.newest_complete()
        assert newest is not None and not is_partial(newest) and newest == folder.files()[-1]
        read_resume_file(newest)
        for path in folder.files():
            read_resume_file(path)  # writes are atomic: a complete name always holds a complete file
    last_sequence = int(folder.files()[-1].name.split("_")[1])
    assert last_sequence > 10, "the children should have completed saves between kills"
    assert killed_mid_write >= 3, "some kills should have landed in the middle of a write"
    # kills between "durable" and "pruned" may leave extra files; the next clean save prunes them
    folder.save(states[0], source_image=image)
    assert len(folder.files()) == 3
    assert time.monotonic() - started < 120
