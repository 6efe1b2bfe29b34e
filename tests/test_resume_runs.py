"""Pause, resume, autosave and fail-safe saves on real tiny jobs, through real resume files."""

import errno
import threading

import numpy as np
import pytest
import torch

from goan_core.errors import InputError
from goan_core.jobs import AutosavePolicy, JobControl, JobSaver, build_conditioning, extend_job, goan_encoders
from goan_core.jobs import sample_job
from goan_core.params import JobParams
from goan_core.resumefile import RetentionFolder, read_resume_file
from goan_core.sampling import Engine
from goan_core.vocabulary import Status

from job_helpers import new_job_state, render

FINISHED, PAUSED, STOPPED = Status.FINISHED, Status.PAUSED, Status.STOPPED

CPU, F32 = torch.device("cpu"), torch.float32
STEPS = 4


def image():
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x ^ y) * 4], axis=-1).astype(np.uint8)


def params(mode, **overrides):
    settings = dict(prompt="waves roll onto a beach", seconds=1.2, lws=3, steps=STEPS, mode=mode,
                    resolution=64, seed=11)
    settings.update(overrides)
    return JobParams(**settings)


def new_state(models, mode, job_id="job", **overrides):
    state, source = new_job_state(models, params(mode, **overrides), image(), job_id=job_id)
    return state, source


def saver(tmp_path, state, source, keep_last=3):
    return JobSaver(RetentionFolder(tmp_path, state.job_id, keep_last), source)


@pytest.fixture(scope="module")
def references(tiny_models):
    """Uninterrupted final states per mode (and the frames of one), computed once."""
    finished = {}
    for mode in ("backward", "f1"):
        state, _ = new_state(tiny_models, mode)
        Engine(tiny_models.transformer, CPU, F32).run(state)
        finished[mode] = state
    return finished


def pause_then_resume(models, tmp_path, mode, points):
    """Run to each pause point in turn, each time through a file read back from disk; then finish."""
    state, source = new_state(models, mode)
    files = []
    for point in points:
        result = sample_job(Engine(models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                         pause_at=point, save_finished=False)
        assert result.status == PAUSED and (state.section, state.step_in_section) == point
        files.append(result.resume_file)
        loaded = read_resume_file(result.resume_file)
        assert loaded.exact and loaded.job_info["next_section"] == point[0]
        assert loaded.job_info["step_in_section"] == point[1]
        state, source = loaded.state, loaded.source_image
    result = sample_job(Engine(models.transformer, CPU, F32), state, saver(tmp_path, state, source))
    assert result.status == FINISHED
    return result.state, files


GRID = [(0, 0), (0, 1), (0, 3), (1, 0), (1, 2), (2, 0), (2, 1), (2, 3)]


@pytest.mark.parametrize("mode", ["backward", "f1"])
@pytest.mark.parametrize("point", GRID)
def test_resume_from_any_point_is_bit_identical(tiny_models, references, tmp_path, mode, point):
    resumed, _ = pause_then_resume(tiny_models, tmp_path, mode, [point])
    assert torch.equal(resumed.history_latents, references[mode].history_latents)


@pytest.mark.parametrize("mode", ["backward", "f1"])
def test_chains_of_pauses_and_frames_are_identical(tiny_models, references, tmp_path, mode):
    resumed, files = pause_then_resume(tiny_models, tmp_path, mode, [(0, 2), (1, 0), (1, 3), (2, 1)])
    assert len(files) == 4
    assert torch.equal(resumed.history_latents, references[mode].history_latents)
    frames = render(tiny_models, resumed)
    expected = render(tiny_models, references[mode])
    assert torch.equal(frames, expected)


def test_resume_without_embeddings_reencodes_to_the_same_result(tiny_models, references, tmp_path):
    state, source = new_state(tiny_models, "backward")
    job_saver = JobSaver(RetentionFolder(tmp_path, state.job_id), source, include_embeddings=False)
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, job_saver, pause_at=(1, 1))
    loaded = read_resume_file(result.resume_file)
    assert loaded.state.conditioning is None
    loaded.state.conditioning, _ = build_conditioning(loaded.state.params, loaded.source_image,
                                                    goan_encoders(tiny_models, CPU, F32))
    Engine(tiny_models.transformer, CPU, F32).run(loaded.state)
    assert torch.equal(loaded.state.history_latents, references["backward"].history_latents)


def test_pause_from_another_thread_stops_within_one_step(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "f1")
    control = JobControl()
    seen = []

    def on_step(event):
        seen.append(event.steps_done)
        if event.steps_done == 5:
            requester = threading.Thread(target=control.request_pause)
            requester.start()
            requester.join()  # the request lands from another thread while the step is finishing

    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                     control=control, callback=on_step)
    assert result.status == PAUSED and seen[-1] == 5 and state.steps_done == 5
    assert read_resume_file(result.resume_file).state.steps_done == 5
    assert control.request_pause() is False  # idempotent


def test_stop_writes_a_file_then_ends(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "backward")
    control = JobControl()
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                     control=control, callback=lambda e: e.steps_done == 2 and control.request_stop())
    assert result.status == STOPPED and state.steps_done == 2
    assert read_resume_file(result.resume_file).job_info["kind"] == "stop"


def test_autosave_cadence_and_retention(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "f1", seconds=2.4)  # 6 sections
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source, keep_last=2),
                     autosave=AutosavePolicy(every_sections=2), save_finished=False)
    assert result.status == FINISHED and not result.autosave_errors
    # after sections 2 and 4 (not after the last: the job is done then)
    assert [read_resume_file(p).job_info["next_section"] for p in result.autosaves] == [2, 4]
    kept = RetentionFolder(tmp_path, state.job_id, 2).files()
    assert kept == result.autosaves[-2:]


def test_autosave_by_minutes(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "backward")
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source, keep_last=50),
                     autosave=AutosavePolicy(every_sections=0, every_minutes=1e-9), save_finished=False)
    assert len(result.autosaves) >= 2  # at most one write per step: newer snapshots replace waiting ones


def test_autosave_off(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "backward")
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                     autosave=AutosavePolicy(0, 0), save_finished=False)
    assert result.autosaves == [] and not (tmp_path / "goan_resume" / "job").exists()


def test_failing_autosave_warns_and_generation_goes_on(tiny_models, references, tmp_path, monkeypatch):
    from goan_core.resumefile import retention

    state, source = new_state(tiny_models, "backward")
    real_write = retention.write_resume_file
    calls = []

    def disk_full(snapshot, path, **kwargs):
        calls.append(kwargs["kind"])
        if kwargs["kind"] == "autosave":
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(snapshot, path, **kwargs)

    monkeypatch.setattr(retention, "write_resume_file", disk_full)
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                     autosave=AutosavePolicy(every_sections=1))
    assert result.status == FINISHED and len(result.autosave_errors) == 2
    assert "No space left" in result.autosave_errors[0]
    assert torch.equal(state.history_latents, references["backward"].history_latents)
    assert calls[-1] == "finished"


@pytest.mark.parametrize("error", [RuntimeError("a bug"), torch.cuda.OutOfMemoryError("CUDA out of memory"),
                                   KeyboardInterrupt()])
def test_failsafe_save_then_the_error_propagates(tiny_models, references, tmp_path, error):
    state, source = new_state(tiny_models, "f1")
    engine = Engine(tiny_models.transformer, CPU, F32)
    real_step = engine.step

    def failing_step(job):
        if job.steps_done == 6:
            raise error
        return real_step(job)

    engine.step = failing_step
    with pytest.raises(type(error)) as raised:
        sample_job(engine, state, saver(tmp_path, state, source))
    note = "\n".join(getattr(raised.value, "__notes__", []))
    files = RetentionFolder(tmp_path, "job").files()
    assert len(files) == 1 and str(files[0]) in note
    loaded = read_resume_file(files[0])
    assert loaded.job_info["kind"] == "failsafe" and loaded.state.steps_done == 6
    Engine(tiny_models.transformer, CPU, F32).run(loaded.state)
    assert torch.equal(loaded.state.history_latents, references["f1"].history_latents)


def test_f1_extension_of_a_finished_job(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "f1")
    finished = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source))
    loaded = read_resume_file(finished.resume_file)
    extend_job(loaded.state, 0.8)  # 2 more sections of 3 latent frames
    assert loaded.state.plan.total_sections == 5 and not loaded.state.done
    sample_job(Engine(tiny_models.transformer, CPU, F32), loaded.state, saver(tmp_path, loaded.state, source))
    assert loaded.state.plan.total_latent_frames == 16
    frames = render(tiny_models, loaded.state)
    assert frames.shape[0] == loaded.state.plan.total_pixel_frames == 61
    # the first sections are untouched by the extension
    assert torch.equal(loaded.state.history_latents[:, :, :state.history_latents.shape[2]], state.history_latents)


def test_backward_extension_is_explained(tiny_models):
    state, _ = new_state(tiny_models, "backward")
    with pytest.raises(InputError, match="from its end towards the input image"):
        extend_job(state, 2.0)


class Python310Error(RuntimeError):
    """An exception as Python 3.10 makes them: no `add_note` (ComfyUI's Cancel, an OOM, ...)."""

    def __getattribute__(self, name):
        if name == "add_note":
            raise AttributeError(f"{type(self).__name__!r} object has no attribute 'add_note'")
        return super().__getattribute__(name)


def test_failsafe_on_python_3_10_keeps_the_error_and_its_note(tiny_models, tmp_path, caplog):
    """On 3.10 `error.add_note` turned every interruption into AttributeError (Cancel became a failure)."""
    state, source = new_state(tiny_models, "f1")
    engine = Engine(tiny_models.transformer, CPU, F32)
    real_step = engine.step

    def cancelled(job):
        if job.steps_done == 3:
            raise Python310Error("Processing interrupted")
        return real_step(job)

    engine.step = cancelled
    with caplog.at_level("WARNING", logger="goan"), pytest.raises(Python310Error) as raised:
        sample_job(engine, state, saver(tmp_path, state, source))
    (path,) = RetentionFolder(tmp_path, "job").files()
    assert any(str(path) in note for note in raised.value.__notes__)
    assert f"progress saved to {path}" in caplog.text


def _nan_from_model_call(monkeypatch, transformer, call):
    """From model call number `call` (1-based) on, the transformer's prediction is NaN."""
    real_forward = transformer.forward
    calls = []

    def forward(*args, **kwargs):
        out = real_forward(*args, **kwargs)
        calls.append(1)
        if len(calls) >= call:
            return (torch.full_like(out[0], float("nan")),) + tuple(out[1:])
        return out

    monkeypatch.setattr(transformer, "forward", forward)


@pytest.mark.parametrize("bad_step", [3, STEPS * 2])  # inside a section; the step that closes one
def test_a_run_whose_state_goes_nan_stops_and_keeps_the_last_good_file(tiny_models, references, tmp_path,
                                                                    monkeypatch, bad_step):
    from goan_core.errors import NonFiniteError

    state, source = new_state(tiny_models, "f1")
    _nan_from_model_call(monkeypatch, tiny_models.transformer, bad_step)  # cfg 1: one model call per step
    with pytest.raises(NonFiniteError, match="NaN or Inf") as raised:
        sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                   autosave=AutosavePolicy(every_sections=1))
    monkeypatch.undo()
    assert state.steps_done == bad_step - 1 and torch.isfinite(state.history_latents).all()
    files = RetentionFolder(tmp_path, "job").files()
    assert files and str(files[-1]) in "\n".join(raised.value.__notes__)
    loaded = read_resume_file(files[-1])  # the last good state, not a finished one
    assert loaded.job_info["kind"] == "failsafe" and loaded.state.steps_done == bad_step - 1
    Engine(tiny_models.transformer, CPU, F32).run(loaded.state)
    assert torch.equal(loaded.state.history_latents, references["f1"].history_latents)


@pytest.mark.parametrize("request_name, status, kind", [("request_pause", PAUSED, "pause"),
                                                        ("request_stop", STOPPED, "stop")])
def test_a_request_during_the_last_step_is_honoured(tiny_models, references, tmp_path, monkeypatch,
                                                     request_name, status, kind):
    """The pause button answered "pausing" while the last step ran; the job then finished anyway."""
    state, source = new_state(tiny_models, "backward")
    control = JobControl()
    real_forward = tiny_models.transformer.forward

    def forward(*args, **kwargs):
        if state.steps_done == state.total_steps - 1:  # the last step is running
            getattr(control, request_name)()
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(tiny_models.transformer, "forward", forward)
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                        control=control)
    assert result.status == status and state.done
    loaded = read_resume_file(result.resume_file)
    assert loaded.job_info["kind"] == kind and loaded.state.done
    assert torch.equal(loaded.state.history_latents, references["backward"].history_latents)
