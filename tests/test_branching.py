"""Timed prompts and branching a paused job, on real tiny jobs through real resume files."""

import numpy as np
import pytest
import torch

from goan_core.errors import InputError
from goan_core.jobs import Encoders, JobSaver, branch_changes, continue_job, sample_job
from goan_core.models import Transformer
from goan_core.params import MAX_PROMPT_CHARS, JobParams
from goan_core.resumefile import RetentionFolder, check_prompts, read_resume_file
from goan_core.sampling import (Engine, SectionPlan, parse_timed_prompt, section_prompt, section_seconds,
                                splice_prompt)
from goan_core.vocabulary import Status

from job_helpers import CPU, F32, branch, new_job_state

A, B = "waves roll onto a beach", "a storm rises over the sea"


def image():
    y, x = np.mgrid[0:64, 0:64]
    return np.stack([x * 4, y * 4, (x ^ y) * 4], axis=-1).astype(np.uint8)


def params(mode, **overrides):
    settings = dict(prompt=A, seconds=1.2, lws=3, steps=4, mode=mode, resolution=64, seed=11)
    settings.update(overrides)
    return JobParams(**settings)


def run(models, state, tmp_path, pause_at=None):
    folder = RetentionFolder(tmp_path, state.job_id, 3)
    return sample_job(Engine(models.transformer, CPU, F32), state, JobSaver(folder, image()),
                      pause_at=pause_at, save_finished=pause_at is None)


def paused_file(models, tmp_path, mode, point, **overrides):
    state, _ = new_job_state(models, params(mode, **overrides), image(), job_id="parent")
    result = run(models, state, tmp_path, pause_at=point)
    assert result.status is Status.PAUSED
    return result.resume_file


def finished(models, state, tmp_path):
    result = run(models, state, tmp_path)
    assert result.status is Status.FINISHED
    return result.state


# -- timed prompts ------------------------------------------------------------------------------

def test_timed_prompt_syntax():
    assert parse_timed_prompt("a cat sits") == [(0.0, "a cat sits")]
    assert parse_timed_prompt("  a cat ") == [(0.0, "  a cat ")]  # a plain prompt is used as written
    assert parse_timed_prompt("[0s] a cat sits [2.5s] the cat jumps") == [(0.0, "a cat sits"), (2.5, "the cat jumps")]
    assert parse_timed_prompt("a cat sits [ 1 s ] jumps") == [(0.0, "a cat sits"), (1.0, "jumps")]
    with pytest.raises(InputError, match="nothing covers 0s to 1s"):
        parse_timed_prompt("[1s] a cat")
    with pytest.raises(InputError, match="timestamps must increase"):
        parse_timed_prompt("[0s] a [2s] b [2s] c")


@pytest.mark.parametrize("mode, expected", [("f1", [0, 0, 1, 1, 2]), ("backward", [2, 1, 1, 0, 0])])
def test_sections_map_to_the_prompt_of_their_time(mode, expected):
    # 5 sections of 0.4 s (lws 3): in f1 section k starts at 0.4 k s, in backward (generated from the
    # end) section k of generation starts at 0.4 (4 - k) s
    plan = SectionPlan(mode, 3, 5, 64, 64)
    assert [round(section_seconds(plan, k), 6) for k in range(5)] == (
        [0.0, 0.4, 0.8, 1.2, 1.6] if mode == "f1" else [1.6, 1.2, 0.8, 0.4, 0.0])
    prompt = "[0s] a [0.8s] b [1.6s] c"
    assert [section_prompt(prompt, plan, k) for k in range(5)] == expected


@pytest.mark.parametrize("mode", ["f1", "backward"])
def test_timed_prompts_switch_at_the_right_sections(tiny_models, mode):
    """`[0s] A [0.4s] B` over 3 sections of 0.4 s: f1 uses A for section 0 only, backward (which makes
    video sections 2, 1, 0 in that order) uses B for its first two. So the timed job equals the plain
    job of the first prompt it uses for exactly as long as that prompt lasts."""
    timed, _ = new_job_state(tiny_models, params(mode, prompt=f"[0s] {A} [0.4s] {B}"), image())
    first = A if mode == "f1" else B
    plain, _ = new_job_state(tiny_models, params(mode, prompt=first), image())
    assert len(timed.conditioning.extra_prompts) == 1
    same_for = 1 if mode == "f1" else 2
    engine = Engine(tiny_models.transformer, CPU, F32)
    for section in range(3):
        while timed.section == section:
            engine.step(timed)
            engine.step(plain)
        assert torch.equal(timed.history_latents, plain.history_latents) == (section < same_for), section


def test_timed_prompt_embeddings_round_trip_through_the_file(tiny_models, tmp_path):
    path = paused_file(tiny_models, tmp_path, "f1", (1, 2), prompt=f"[0s] {A} [0.4s] {B}")
    saved = read_resume_file(path).state.conditioning
    state, _ = new_job_state(tiny_models, params("f1", prompt=f"[0s] {A} [0.4s] {B}"), image())
    for (got, want) in zip(saved.prompts(), state.conditioning.prompts()):
        assert all(torch.equal(g, w) for g, w in zip(got, want))
    assert len(saved.prompts()) == 2


# -- branching -----------------------------------------------------------------------------------

@pytest.mark.parametrize("point", [(1, 0), (1, 2)])
def test_a_branch_without_change_is_plain_resume(tiny_models, tmp_path, point):
    path = paused_file(tiny_models, tmp_path, "backward", point)
    data = read_resume_file(path)
    same = branch(tiny_models, path, prompt=A, seed=11, steps=4, cfg=1.0, mode="backward", lws=3, resolution=64,
                  seconds=1.2)
    assert same.job_id == "parent" and same.lineage is None
    plain = finished(tiny_models, data.state, tmp_path / "plain")
    resumed = finished(tiny_models, same, tmp_path / "same")
    assert torch.equal(resumed.history_latents, plain.history_latents)


@pytest.mark.parametrize("mode, spliced", [("f1", f"[0s] {A} [0.4s] {B}"), ("backward", f"[0s] {B} [0.8s] {A}")])
def test_a_new_prompt_at_a_section_boundary_equals_a_fresh_timed_job(tiny_models, tmp_path, mode, spliced):
    """Branching at section 1 with prompt B equals a fresh job whose timed prompt switches to B where
    section 1 begins (f1: at 0.4 s; backward: B for the video's first 0.8 s, the sections still to come)."""
    path = paused_file(tiny_models, tmp_path, mode, (1, 0))
    branched = branch(tiny_models, path, prompt=B)
    assert branched.params.prompt == spliced
    assert branched.job_id != "parent"
    assert branched.lineage == {"parent": "parent", "root": "parent", "section": 1, "step": 0,
                                "changes": {"prompt": [A, spliced]}}
    fresh, _ = new_job_state(tiny_models, params(mode, prompt=spliced), image())
    fresh = finished(tiny_models, fresh, tmp_path / "fresh")
    done = finished(tiny_models, branched, tmp_path / "branch")
    assert torch.equal(done.history_latents, fresh.history_latents)
    # the branch's own files carry its lineage and its prompts' embeddings; a plain resume of them is exact
    mid = branch(tiny_models, path, prompt=B)
    result = run(tiny_models, mid, tmp_path / "again", pause_at=(2, 1))
    reread = read_resume_file(result.resume_file)
    assert reread.job_info["lineage"] == mid.lineage and reread.state.lineage == mid.lineage
    assert torch.equal(finished(tiny_models, reread.state, tmp_path / "again2").history_latents, fresh.history_latents)
    # branching the branch with the prompt it already uses changes nothing
    assert branch(tiny_models, result.resume_file, prompt=B).lineage == mid.lineage


def test_a_new_seed_reseeds_the_generator_at_the_branch_point(tiny_models, tmp_path):
    path = paused_file(tiny_models, tmp_path, "f1", (1, 0))
    branched = branch(tiny_models, path, seed=5)
    assert torch.equal(branched.generator_state, torch.Generator("cpu").manual_seed(5).get_state())
    assert branched.lineage["changes"] == {"seed": [11, 5]}
    plain = finished(tiny_models, read_resume_file(path).state, tmp_path / "plain")
    done = finished(tiny_models, branched, tmp_path / "branch")
    generated = slice(-3, None)  # section 0 (before the branch) is shared, sections 1 and 2 differ
    assert torch.equal(done.history_latents[:, :, :-6], plain.history_latents[:, :, :-6])
    assert not torch.equal(done.history_latents[:, :, generated], plain.history_latents[:, :, generated])


def test_steps_change_at_a_boundary_and_is_refused_mid_section(tiny_models, tmp_path):
    boundary = branch(tiny_models, paused_file(tiny_models, tmp_path, "f1", (1, 0)), steps=2, cfg=1.5, gs=8.0)
    assert boundary.lineage["changes"] == {"steps": [4, 2], "cfg": [1.0, 1.5], "gs": [10.0, 8.0]}
    assert boundary.conditioning.negative_prompt_embeds is not None  # real CFG now needs the negative prompt
    result = run(tiny_models, boundary, tmp_path / "b", pause_at=(2, 1))
    assert read_resume_file(result.resume_file).state.params.steps == 2
    mid = paused_file(tiny_models, tmp_path / "mid", "f1", (1, 2))
    with pytest.raises(InputError, match="cannot change steps in the middle of section 2 .*section boundary"):
        branch(tiny_models, mid, steps=6)
    changed = branch(tiny_models, mid, gs=6.0)  # guidance may change mid-section: the rest of it uses it
    assert changed.teacache is None and changed.lineage["step"] == 2
    assert finished(tiny_models, changed, tmp_path / "mid2").done


@pytest.mark.parametrize("setting, value, why", [
    ("mode", "f1", "section order"), ("lws", 4, "latent window"), ("resolution", 128, "frame size"),
    ("seconds", 2.0, "sections are fixed")])
def test_changing_the_shape_of_the_job_is_refused_with_the_reason(tiny_models, tmp_path, setting, value, why):
    path = paused_file(tiny_models, tmp_path, "backward", (1, 0))
    with pytest.raises(InputError, match=f"cannot change {setting} .*{why}"):
        branch(tiny_models, path, **{setting: value})


def test_splicing_keeps_what_is_done_and_merges_equal_neighbours():
    plan = SectionPlan("f1", 3, 5, 64, 64)
    assert splice_prompt("[0s] a [1s] b", "c", plan, 2) == "[0s] a [0.8s] c"
    assert splice_prompt("[0s] a [0.4s] b", "b", plan, 3) == "[0s] a [0.4s] b"
    assert splice_prompt("a", "[0s] x [1.2s] y", plan, 1) == "[0s] a [0.4s] x [1.2s] y"
    assert splice_prompt("a", "b", plan, 0) == "b"
    back = SectionPlan("backward", 3, 5, 64, 64)
    assert splice_prompt("[0s] a [1s] b", "c", back, 2) == "[0s] c [1.2s] b"
    assert splice_prompt("a", "b", back, 0) == "b"


# -- a branch's settings are checked before any model work, as a new job's are ----------------------

@pytest.fixture(scope="module")
def paused_backward(tiny_models, tmp_path_factory):
    """A backward job of 3 sections paused at the start of its second section."""
    return paused_file(tiny_models, tmp_path_factory.mktemp("paused"), "backward", (1, 0))


def new_job_message(**setting):
    """The message a new job with `setting` gets (its settings, then its prompts: what create_job checks)."""
    with pytest.raises(InputError) as refused:
        check_prompts(params("backward", **setting))
    return str(refused.value)


@pytest.mark.parametrize("setting, value, phrase", [
    ("seed", -1, "seed must be between 0 and"),
    ("steps", 0, "steps must be between 1 and 200"),
    ("steps", 500, "steps must be between 1 and 200"),
    ("cfg", 0.5, "cfg must be between 1.0 and 32.0"),
    ("cfg", float("nan"), "cfg must be a finite number"),
    ("gs", 40.0, "gs must be between 0.0 and 32.0"),
    ("rs", 2.0, "rs must be between 0.0 and 1.0"),
    ("teacache_threshold", 11.0, "teacache_threshold must be between 0.0 and 10.0"),
    ("teacache", "yes", "teacache must be true or false"),
    ("sampler", "dpm", "unknown sampler 'dpm'"),
    ("end_strength", 1.5, "end_strength must be between 0.0 and 1.0"),
    ("end_embeds", -0.1, "end_embeds must be between 0.0 and 1.0"),
    ("prompt", "[1s] a late start", "timed prompt: nothing covers 0s to 1s"),
    ("prompt", "[0s] a [2s] b [1s] c", "timed prompt: timestamps must increase"),
    ("prompt", "x" * (MAX_PROMPT_CHARS + 1), f"the prompt is {MAX_PROMPT_CHARS + 1:,} characters long, more than "
                                             f"the {MAX_PROMPT_CHARS:,} a job may have"),
    ("negative_prompt", "y" * (MAX_PROMPT_CHARS + 1), f"the negative prompt is {MAX_PROMPT_CHARS + 1:,} characters"),
])
def test_a_bad_branched_setting_is_refused_up_front_with_a_new_jobs_message(tiny_models, paused_backward, setting,
                                                                           value, phrase):
    """Every setting a branch may change is checked when the branch is planned (`branch_changes`, which the
    CLI and the sampler node call before loading or asking for any encoder), with the message a new job
    with that value gets; continuing with no encoders at all fails the same way, so nothing was encoded."""
    expected = new_job_message(**{setting: value})
    assert phrase in expected and ("shorten it" in expected or "characters" not in phrase)
    state = read_resume_file(paused_backward).state
    with pytest.raises(InputError) as planned:
        branch_changes(state, {setting: value})
    assert str(planned.value) == expected
    with pytest.raises(InputError) as continued:
        continue_job(state, read_resume_file(paused_backward).source_image, Encoders(),
                     identity=Transformer(tiny_models.transformer, CPU, F32).identity(), changes={setting: value})
    assert str(continued.value) == expected


def test_a_branch_whose_spliced_prompt_would_be_too_long_is_refused_up_front(paused_backward):
    """A new prompt within the limit can still make a too long job prompt once the sections done keep the old
    one (`splice_prompt`); and a job read from an older file whose prompt is already over the limit cannot
    record it in a branch's lineage. Both are said when the branch is planned, with the limit and the fix."""
    state = read_resume_file(paused_backward).state
    half = MAX_PROMPT_CHARS // 2 + 10
    state.params.prompt = "o" * half  # as the file's prompt (only the text matters to planning)
    spliced = splice_prompt(state.params.prompt, "n" * half, state.plan, 1)  # [0s] n... [0.8s] o...
    with pytest.raises(InputError, match=f"branched job's prompt .* would be {len(spliced):,} characters long, more "
                                         f"than the {MAX_PROMPT_CHARS:,} a job may have: shorten the new prompt"):
        branch_changes(state, {"prompt": "n" * half})
    state.params.prompt = "o" * (MAX_PROMPT_CHARS + 1)
    with pytest.raises(InputError, match="this job's prompt is .* branch it with its prompt kept, or start a new job"):
        branch_changes(state, {"prompt": B})
    assert branch_changes(state, {"seed": 3}) == {"seed": [11, 3]}  # the lineage records no prompt then


def test_the_cli_refuses_a_bad_branch_before_loading_any_model(paused_backward, tmp_path, capsys):
    from goan_core.cli import main

    missing = tmp_path / "no_models_here"
    for option, phrase in ((["--steps", "0"], "steps must be between 1 and 200"),
                           (["--prompt", "[0s] a [2s] b [1s] c"], "timestamps must increase"),
                           (["--prompt", "p" * (MAX_PROMPT_CHARS + 1)], "a job may have"),
                           (["--end-strength", "0.5"], "has no end image")):
        code = main(["resume", str(paused_backward), "--models", str(missing), "--out", str(tmp_path / "o.mp4"),
                     *option])
        err = capsys.readouterr().err
        assert code == 2 and phrase in err and len(err.strip().splitlines()) == 1, (option, err)
        assert str(missing) not in err  # refused before the models were looked at
