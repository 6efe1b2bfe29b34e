"""Attention kernels (models/attention.py): the chooser on made-up machines, the refusals, and runs on the CPU
that show the choice goes through diffusers' dispatcher for one run and leaves nothing behind."""

import logging

import pytest
import torch
from diffusers import attention_backend
from diffusers.models.attention_dispatch import _AttentionBackendRegistry

from goan_core.errors import InputError, ResumeFileError
from goan_core.jobs import Job, RunSettings, run_attention, run_job, sample_job
from goan_core.models import (ATTENTION_CHOICES, SDPA, AttentionChoice, AttentionTarget, Transformer, attention_for,
                              choose_attention, usable_backends)
from goan_core.models.attention import KERNELS, dispatched_processors
from goan_core.resumefile import read_resume_file, write_resume_file
from goan_core.sampling import Engine

from test_resume_runs import CPU, F32, FINISHED, new_state, saver
from test_teacache import _rewrite

BF16, FP16 = torch.bfloat16, torch.float16
ALL = ("_flash_3", "flash", "sage", "xformers")


def gpu(major, minor, dtype=BF16):
    return AttentionTarget("cuda", (major, minor), dtype)


def active_backend() -> str:
    return _AttentionBackendRegistry.get_active_backend()[0].value


# -- the pure chooser --------------------------------------------------------------------------------


@pytest.mark.parametrize("usable, target, word, backend", [
    (ALL, AttentionTarget("cpu", None, F32), "sdpa", "native"),  # nothing but SDPA off CUDA, whatever is installed
    (ALL, AttentionTarget("mps", None, FP16), "sdpa", "native"),
    (ALL, gpu(9, 0), "flash", "_flash_3"),  # Hopper: flash-attn 3 first
    (("flash", "sage", "xformers"), gpu(9, 0), "flash", "flash"),
    (ALL, gpu(8, 9), "flash", "flash"),  # Ada: flash-attn 3 does not apply
    (("sage", "xformers"), gpu(8, 6), "sage", "sage"),
    (("xformers",), gpu(8, 0), "xformers", "xformers"),
    ((), gpu(9, 0), "sdpa", "native"),  # nothing installed
    (ALL, gpu(7, 5, FP16), "xformers", "xformers"),  # Turing: neither flash-attn nor sageattention
    (("_flash_3", "flash", "sage"), gpu(8, 6, F32), "sdpa", "native"),  # fp32 compute: half-only kernels do not apply
    (ALL, gpu(8, 6, F32), "xformers", "xformers"),
])
def test_auto_takes_the_first_usable_kernel_that_suits_the_device(usable, target, word, backend):
    choice = choose_attention("auto", usable, target)
    assert (choice.word, choice.backend) == (word, backend)
    assert choice.reason.startswith("auto")


def test_auto_says_why_it_fell_back_to_sdpa():
    choice = choose_attention("auto", ("sage",), gpu(7, 5, FP16))
    assert choice == AttentionChoice("sdpa", "native", choice.reason)
    assert "flash-attn needs compute capability 8.0 or newer, this GPU has 7.5" in choice.reason
    assert "sageattention needs compute capability 8.0" in choice.reason
    assert "xformers is not installed" in choice.reason
    assert "flash-attn 3 needs compute capability 9.0 (Hopper)" in choice.reason


@pytest.mark.parametrize("word", ["sdpa", "SDPA", " sdpa "])
def test_sdpa_works_everywhere(word):
    for target in (AttentionTarget("cpu", None, F32), gpu(6, 1, FP16), gpu(9, 0)):
        assert choose_attention(word, (), target) == SDPA


@pytest.mark.parametrize("word, usable, target, backend", [
    ("flash", ("flash",), gpu(8, 0), "flash"),
    ("flash", ("_flash_3", "flash"), gpu(9, 0), "_flash_3"),
    ("flash", ("flash",), gpu(9, 0), "flash"),
    ("sage", ("sage",), gpu(8, 9, FP16), "sage"),
    ("xformers", ("xformers",), gpu(7, 0, F32), "xformers"),
])
def test_an_explicit_kernel_that_can_run_is_taken(word, usable, target, backend):
    choice = choose_attention(word, usable, target)
    assert (choice.word, choice.backend, choice.reason) == (word, backend, "")


@pytest.mark.parametrize("word, target, package", [
    ("flash", gpu(8, 6), "pip install flash-attn"),
    ("flash", gpu(9, 0), "pip install flash-attn"),
    ("sage", gpu(8, 9), "github.com/thu-ml/SageAttention"),
    ("xformers", gpu(8, 6), "pip install xformers"),
])
def test_an_explicit_kernel_that_is_not_installed_names_what_to_install(word, target, package):
    with pytest.raises(InputError, match="is not installed") as error:
        choose_attention(word, (), target)
    assert package in str(error.value) and "auto or sdpa" in str(error.value)


@pytest.mark.parametrize("word, target, problem", [
    ("flash", AttentionTarget("cpu", None, F32), "flash-attn runs on NVIDIA GPUs only, not on cpu"),
    ("sage", gpu(7, 5, FP16), "sageattention needs compute capability 8.0 or newer, this GPU has 7.5"),
    ("flash", gpu(8, 6, F32), "flash-attn computes in float16 or bfloat16 only, the transformer computes in float32"),
    ("xformers", AttentionTarget("mps", None, FP16), "xformers runs on NVIDIA GPUs only, not on mps"),
])
def test_an_explicit_kernel_the_device_cannot_run_says_why(word, target, problem):
    with pytest.raises(InputError, match="cannot run here") as error:
        choose_attention(word, ALL, target)
    assert problem in str(error.value)


def test_unknown_words_are_refused():
    with pytest.raises(InputError, match="unknown attention 'flash2': use one of auto, sdpa, flash, sage, xformers"):
        choose_attention("flash2", ALL, gpu(9, 0))


def test_the_cli_spells_the_same_choices():
    from goan_core.cli.parser import ATTENTION_CHOICES as CLI_CHOICES

    assert CLI_CHOICES == ATTENTION_CHOICES
    assert {k.word for k in KERNELS} | {"auto", "sdpa"} == set(ATTENTION_CHOICES)


# -- this machine --------------------------------------------------------------------------------------


def test_probing_what_diffusers_can_use_changes_nothing():
    before = active_backend()
    usable = usable_backends()
    assert usable <= {k.backend for k in KERNELS} and active_backend() == before


def test_on_this_cpu_auto_is_sdpa_and_the_others_are_refused(tiny_models, tmp_path):
    assert attention_for("auto", CPU, F32).backend == "native"
    transformer = Transformer(tiny_models.transformer, CPU, F32)
    for word in ("flash", "sage", "xformers"):
        with pytest.raises(InputError, match=f"attention '{word}' cannot run here: .* runs on NVIDIA GPUs only"):
            run_attention(transformer, RunSettings(tmp_path, attention=word))


def test_every_block_of_the_framepack_transformer_goes_through_the_dispatcher(tiny_models):
    """The double- and single-stream blocks' processors dispatch; the token refiner's (plain SDPA) does not."""
    model = tiny_models.transformer
    blocks = list(model.transformer_blocks) + list(model.single_transformer_blocks)
    dispatched = dispatched_processors(model)
    assert len(dispatched) == len(blocks) and all(b.attn.processor in dispatched for b in blocks)
    assert all(p._attention_backend is None for p in dispatched)


# -- runs -------------------------------------------------------------------------------------------------


def _run(models, tmp_path, attention, seen=None, **overrides):
    """A whole tiny job through sample_job with `attention`; `seen` collects the active backend per block call."""
    state, source = new_state(models, "backward", **overrides)
    handle = None
    if seen is not None:
        block = models.transformer.transformer_blocks[0]
        handle = block.register_forward_pre_hook(lambda module, args: seen.append(active_backend()))
    try:
        result = sample_job(Engine(models.transformer, CPU, F32), state, saver(tmp_path, state, source),
                            attention=attention)
    finally:
        if handle is not None:
            handle.remove()
    assert result.status == FINISHED
    return result.state


def test_auto_and_sdpa_give_identical_latents_on_the_cpu(tiny_models, tmp_path):
    auto = _run(tiny_models, tmp_path / "auto", attention_for("auto", CPU, F32))
    sdpa = _run(tiny_models, tmp_path / "sdpa", SDPA)
    plain, _ = new_state(tiny_models, "backward")
    Engine(tiny_models.transformer, CPU, F32).run(plain)  # no dispatcher context at all
    assert torch.equal(auto.history_latents, sdpa.history_latents)
    assert torch.equal(auto.history_latents, plain.history_latents)


def test_each_run_applies_its_own_kernel_and_restores_the_previous_one(tiny_models, tmp_path):
    """Two jobs on one model: the kernel of the first (PyTorch's math kernel, which also runs on the CPU)
    does not leak into the second, and whatever was active before comes back after each."""
    math = AttentionChoice("math", "_native_math")
    with attention_backend("_native_efficient"):  # someone else's choice, active around goan's runs
        first, second = [], []
        _run(tiny_models, tmp_path / "a", math, first)
        assert active_backend() == "_native_efficient"
        after = _run(tiny_models, tmp_path / "b", SDPA, second)
        assert active_backend() == "_native_efficient"
    assert set(first) == {"_native_math"} and set(second) == {"native"} and len(first) == len(second) > 0
    reference = _run(tiny_models, tmp_path / "c", SDPA)
    assert torch.equal(after.history_latents, reference.history_latents)
    assert all(p._attention_backend is None for p in dispatched_processors(tiny_models.transformer))


def test_a_model_with_its_own_backend_is_refused_not_silently_ignored(tiny_models, tmp_path):
    model = tiny_models.transformer
    with attention_backend("native"):  # set_attention_backend also changes the active backend: put it back
        model.set_attention_backend("_native_math")
        try:
            fixed = r"fixed attention backend \(.*_native_math\).*reset_attention_backend"
            with pytest.raises(InputError, match=fixed):
                _run(tiny_models, tmp_path, SDPA)
        finally:
            model.reset_attention_backend()


def test_auto_logs_its_reason_once_per_run_and_sdpa_logs_nothing(tiny_models, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="goan"):
        _run(tiny_models, tmp_path / "auto", attention_for("auto", CPU, F32))
        lines = [r.getMessage() for r in caplog.records if "attention" in r.getMessage()]
        assert lines == ["goan: attention sdpa (auto: SDPA, the one kernel for cpu)"]
        caplog.clear()
        _run(tiny_models, tmp_path / "sdpa", SDPA)
        assert not [r for r in caplog.records if "attention" in r.getMessage()]


# -- what the resume file notes ---------------------------------------------------------------------------


def test_run_job_notes_the_kernel_in_job_info_and_a_resume_may_use_another(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "backward")
    transformer = Transformer(tiny_models.transformer, CPU, F32)
    result = run_job(Job(state, source), transformer, RunSettings(tmp_path, pause_at=(1, 2), attention="sdpa"))
    loaded = read_resume_file(result.resume_file)
    assert loaded.job_info["run"] == {"attention": "sdpa", "attention_backend": "native", "compile": False}
    assert "attention" not in loaded.state.model_identity  # not part of the model: no mismatch warning
    finished = run_job(Job(loaded.state, loaded.source_image), transformer, RunSettings(tmp_path, attention="auto"))
    reference, _ = new_state(tiny_models, "backward")
    Engine(tiny_models.transformer, CPU, F32).run(reference)
    assert torch.equal(finished.state.history_latents, reference.history_latents)


def test_a_bad_run_field_is_refused_when_reading(tiny_models, tmp_path):
    state, source = new_state(tiny_models, "backward")
    path = write_resume_file(state, tmp_path / "x.goan_resume", source_image=source, run=SDPA.record())
    assert read_resume_file(path).job_info["run"] == {"attention": "sdpa", "attention_backend": "native"}
    bad = _rewrite(path, job_info=lambda info: info["run"].__setitem__("compile", "yes"))
    with pytest.raises(ResumeFileError, match="job_info.json: run must map"):
        read_resume_file(bad)


@pytest.mark.parametrize("run", [{"attention": "a b"}, {"compile": 1}, {"attention": 3}, {"speed": "x"}, ["sdpa"]])
def test_a_bad_run_field_is_refused_when_writing(tiny_models, tmp_path, run):
    state, source = new_state(tiny_models, "backward")
    with pytest.raises(ResumeFileError, match="not saved: run must map"):
        write_resume_file(state, tmp_path / "x.goan_resume", source_image=source, run=run)
