"""TeaCache (FramePack's algorithm): exact across pause and resume, off at threshold 0, skips counted."""

import json
import zipfile

import pytest
import torch

from goan_core.errors import ResumeFileError
from goan_core.jobs import sample_job
from goan_core.resumefile import read_resume_file
from goan_core.sampling import Engine

from test_resume_runs import CPU, F32, FINISHED, PAUSED, new_state, saver

STEPS = 6
GRID = [(0, 1), (0, 2), (0, 4), (0, 5), (1, 0), (1, 3), (2, 1), (2, 5)]
CFG = dict(cfg=2.5, negative_prompt="blurry")


def run(models, mode, **overrides):
    state, _ = new_state(models, mode, steps=STEPS, **overrides)
    engine = Engine(models.transformer, CPU, F32)
    engine.run(state)
    return state, engine


@pytest.fixture(scope="module")
def references(tiny_models):
    return {(mode, cfg): run(tiny_models, mode, **(CFG if cfg else {}))[0]
            for mode in ("backward", "f1") for cfg in (False, True)}


def pause_then_resume(models, tmp_path, mode, points, **overrides):
    state, source = new_state(models, mode, steps=STEPS, **overrides)
    for point in points:
        result = sample_job(Engine(models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                            pause_at=point, save_finished=False)
        assert result.status == PAUSED and (state.section, state.step_in_section) == point
        loaded = read_resume_file(result.resume_file)
        assert (loaded.state.teacache is None) == (point[1] == 0)
        state, source = loaded.state, loaded.source_image
    result = sample_job(Engine(models.transformer, CPU, F32), state, saver(tmp_path, state, source))
    assert result.status == FINISHED
    return result.state


@pytest.mark.parametrize("mode", ["backward", "f1"])
@pytest.mark.parametrize("point, cfg", [(p, False) for p in GRID] + [(p, True) for p in GRID[1::2]])
def test_pause_with_teacache_resumes_bit_identical(tiny_models, references, tmp_path, mode, point, cfg):
    final = pause_then_resume(tiny_models, tmp_path, mode, [point], **(CFG if cfg else {}))
    reference = references[(mode, cfg)]
    assert torch.equal(final.history_latents, reference.history_latents)
    assert final.skipped_calls == reference.skipped_calls > 0


@pytest.mark.parametrize("mode", ["backward", "f1"])
def test_chain_of_pauses_with_teacache(tiny_models, references, tmp_path, mode):
    final = pause_then_resume(tiny_models, tmp_path, mode, [(0, 2), (0, 3), (1, 1), (2, 4)])
    assert torch.equal(final.history_latents, references[(mode, False)].history_latents)


@pytest.mark.parametrize("mode", ["backward", "f1"])
def test_threshold_zero_computes_every_step_like_teacache_off(tiny_models, mode):
    cached, cached_engine = run(tiny_models, mode, teacache=True, teacache_threshold=0.0)
    plain, plain_engine = run(tiny_models, mode, teacache=False)
    assert cached_engine.skipped_calls == 0 and cached.skipped_calls == 0
    assert torch.equal(cached.history_latents, plain.history_latents)


def test_default_threshold_skips_some_calls_and_counts_them(tiny_models):
    events = []
    state, _ = new_state(tiny_models, "backward", steps=25)
    engine = Engine(tiny_models.transformer, CPU, F32)
    engine.run(state, callback=events.append)
    sections = state.plan.total_sections
    assert engine.model_calls == 25 * sections
    # the first and last step of each section always compute
    assert 0 < engine.skipped_calls <= 23 * sections
    assert events[-1].skipped == state.skipped_calls == engine.skipped_calls
    assert [e.skipped for e in events] == sorted(e.skipped for e in events)


def test_real_cfg_keeps_one_cache_per_pass(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "backward", steps=STEPS, **CFG)
    result = sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                        pause_at=(0, 3), save_finished=False)
    info = read_resume_file(result.resume_file).job_info["teacache"]
    assert sorted(info) == ["negative", "positive"] and all(v["count"] == 3 for v in info.values())


def _rewrite(path, job_info=None, params=None):
    """Copy of the file with job_info or params changed (checksums of params updated)."""
    import hashlib
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    info = json.loads(members["job_info.json"])
    if params is not None:
        members["params.json"] = json.dumps(params(json.loads(members["params.json"]))).encode()
        info["sha256"]["params.json"] = hashlib.sha256(members["params.json"]).hexdigest()
    if job_info is not None:
        job_info(info)
    members["job_info.json"] = json.dumps(info).encode()
    out = path.with_name("changed.goan_resume")
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out


def _paused(tiny_models, tmp_path, point=(0, 3), **overrides):
    state, source = new_state(tiny_models, "backward", steps=STEPS, **overrides)
    return sample_job(Engine(tiny_models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                      pause_at=point, save_finished=False).resume_file


def _set(key, value):
    def change(info):
        info["teacache"]["positive"][key] = value
    return change


@pytest.mark.parametrize("change, message", [
    (_set("count", 2), "count must equal"),
    (_set("accumulated", "0.01"), "accumulated"),
    (_set("accumulated", 0.5), "accumulated"),
    (_set("accumulated", -0.01), "accumulated"),
    (lambda info: info.pop("teacache"), "no TeaCache counters"),
    (lambda info: info["teacache"].update(negative=info["teacache"]["positive"]), "exactly the passes"),
    (lambda info: info.update(skipped_calls=-1), "skipped_calls"),
])
def test_reader_refuses_inconsistent_teacache_fields(tiny_models, tmp_path, change, message):
    path = _rewrite(_paused(tiny_models, tmp_path), job_info=change)
    with pytest.raises(ResumeFileError, match=message):
        read_resume_file(path)


def test_teacache_off_in_params_with_counters_is_refused(tiny_models, tmp_path):
    path = _rewrite(_paused(tiny_models, tmp_path), params=lambda p: {**p, "teacache": False})
    with pytest.raises(ResumeFileError, match="TeaCache is off"):
        read_resume_file(path)


def test_files_without_teacache_settings_continue_without_it(tiny_models, tmp_path):
    """A v1 file from before TeaCache (no teacache in params.json) reads, and continues with TeaCache off."""
    path = _paused(tiny_models, tmp_path, point=(1, 2), teacache=False)

    def strip(p):
        p = dict(p)
        p.pop("teacache"), p.pop("teacache_threshold")
        return p

    loaded = read_resume_file(_rewrite(path, params=strip))
    assert loaded.state.params.teacache is False and loaded.state.teacache is None
    Engine(tiny_models.transformer, CPU, F32).run(loaded.state)
    assert torch.equal(loaded.state.history_latents, run(tiny_models, "backward", teacache=False)[0].history_latents)
