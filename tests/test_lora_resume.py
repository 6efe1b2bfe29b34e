"""LoRAs and exact resume: the resume file records each LoRA (name, sha256, strength); resuming with the same
LoRAs is `torch.equal` to the uninterrupted run, without them it is refused naming the missing file unless the
difference is accepted. Through the lifecycle, the command line and the ComfyUI nodes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from goan_core.errors import InputError
from goan_core.jobs import RunSettings, continue_job, create_job, goan_encoders, run_job
from goan_core.models import Transformer, read_lora
from goan_core.resumefile import inspect_resume_file, read_resume_file
from goan_core.vocabulary import Status

import lora_files as lf
from job_helpers import render
from nodes_helpers import *  # noqa: F401,F403  (fixtures)
from nodes_helpers import run_sampler
import test_cli
from test_cli import cli_env, run_main  # noqa: F401  (fixture)
from nodes_helpers import pause_when
from test_offload import image as job_image
from test_offload import params

CPU, F32 = torch.device("cpu"), torch.float32
PAUSE = (1, 1)  # mid-section


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory):
    """Two LoRAs for the tiny transformer: musubi-tuner (HunyuanVideo names) and diffusers/PEFT."""
    folder = tmp_path_factory.mktemp("job_loras")
    model = tiny_models.transformer
    return (read_lora(lf.write_lora(model, folder / "style.safetensors"), model, F32),
            read_lora(lf.write_lora(model, folder / "motion.safetensors", "diffusers_peft", seed=1), model, F32))


def handle(models, *pairs) -> Transformer:
    transformer = Transformer(models.transformer, CPU, F32)
    for lora, strength in pairs:
        transformer = transformer.with_lora(lora, strength)
    return transformer


def new_job(models, transformer, mode="backward"):
    encoders = goan_encoders(models, CPU, F32)
    return create_job(params(mode, seconds=0.8), job_image(), encoders, identity=transformer.identity(),
                      loras=transformer.lora_uses(), job_id="lora-job")


def uninterrupted(models, transformer, tmp_path, mode="backward"):
    result = run_job(new_job(models, transformer, mode), transformer, RunSettings(tmp_path / "whole"))
    assert result.status == Status.FINISHED
    return result.state


def paused_file(models, transformer, tmp_path, mode="backward") -> Path:
    result = run_job(new_job(models, transformer, mode), transformer, RunSettings(tmp_path / "paused", pause_at=PAUSE))
    assert result.status == Status.PAUSED
    return result.resume_file


def resume(models, path, transformer, tmp_path, **options):
    data = read_resume_file(path)
    job, warnings = continue_job(data.state, data.source_image, goan_encoders(models, CPU, F32),
                                 identity=transformer.identity(), loras=transformer.lora_uses(), **options)
    result = run_job(job, transformer, RunSettings(tmp_path / "resumed"))
    return result, warnings


@pytest.fixture(scope="module")
def with_loras(tiny_models, loras, tmp_path_factory):
    """(transformer with both LoRAs, uninterrupted final state, file paused mid-section)."""
    tmp = tmp_path_factory.mktemp("lora_job")
    transformer = handle(tiny_models, (loras[0], 0.7), (loras[1], -0.4))
    return transformer, uninterrupted(tiny_models, transformer, tmp), paused_file(tiny_models, transformer, tmp)


def test_the_file_records_each_lora(with_loras, loras):
    transformer, _, path = with_loras
    recorded = inspect_resume_file(path)["job_info"]["loras"]
    expected = sorted([{"name": "style.safetensors", "sha256": loras[0].sha256, "strength": 0.7},
                       {"name": "motion.safetensors", "sha256": loras[1].sha256, "strength": -0.4}],
                      key=lambda e: (e["sha256"], e["strength"]))
    assert recorded == expected
    assert read_resume_file(path).state.loras == transformer.lora_uses()


def test_resume_with_the_same_loras_is_exact_in_any_chain_order(tiny_models, loras, with_loras, tmp_path):
    _, whole, path = with_loras
    other_order = handle(tiny_models, (loras[1], -0.4), (loras[0], 0.7))
    result, warnings = resume(tiny_models, path, other_order, tmp_path)
    assert result.status == Status.FINISHED and warnings == []
    assert torch.equal(result.state.history_latents, whole.history_latents)
    assert torch.equal(render(tiny_models, result.state), render(tiny_models, whole))


@pytest.mark.parametrize("loaded, phrases", [
    ((), ["'style.safetensors'", "'motion.safetensors'", "which is not loaded now", "--accept-lora-difference"]),
    (((0, 0.7),), ["'motion.safetensors'", "not loaded now"]),
    (((0, 0.7), (1, 0.5)), ["'motion.safetensors'", "strength -0.4), loaded now at strength 0.5"]),
])
def test_resume_with_other_loras_is_refused_naming_the_file(tiny_models, loras, with_loras, tmp_path, loaded,
                                                            phrases):
    transformer = handle(tiny_models, *[(loras[i], s) for i, s in loaded])
    with pytest.raises(InputError) as caught:
        resume(tiny_models, with_loras[2], transformer, tmp_path)
    assert all(phrase in str(caught.value) for phrase in phrases), str(caught.value)


def test_a_lora_added_on_resume_is_refused_too(tiny_models, loras, tmp_path):
    path = paused_file(tiny_models, handle(tiny_models), tmp_path)
    assert read_resume_file(path).state.loras == () and "loras" not in inspect_resume_file(path)["job_info"]
    with pytest.raises(InputError, match="'style.safetensors'.*loaded now but the job was made without it"):
        resume(tiny_models, path, handle(tiny_models, (loras[0], 1.0)), tmp_path)
    result, warnings = resume(tiny_models, path, handle(tiny_models, (loras[0], 0.0)), tmp_path)  # 0 = none
    assert result.status == Status.FINISHED and warnings == []


def test_an_accepted_difference_warns_and_records_what_ran(tiny_models, with_loras, tmp_path):
    result, warnings = resume(tiny_models, with_loras[2], handle(tiny_models), tmp_path, accept_lora_difference=True)
    assert result.status == Status.FINISHED and result.state.loras == ()
    assert any("other LoRAs" in w and "style.safetensors" in w for w in warnings)
    assert "loras" not in inspect_resume_file(result.resume_file)["job_info"]
    assert not torch.equal(result.state.history_latents, with_loras[1].history_latents)


# -- the command line ------------------------------------------------------------------------------------------


def test_cli_lora_generate_pause_resume(cli_env, tiny_models, tmp_path, capsys):
    lora = lf.write_lora(tiny_models.transformer, tmp_path / "cli style.safetensors", "musubi_framepack")

    def fast(picture, out, *extra):  # libx264's default encode is not repeatable on tiny frames
        return test_cli.fast(picture, out, "--deterministic-video", *extra)

    whole = tmp_path / "whole.mp4"
    code, stdout, _ = run_main(fast(cli_env, whole, "--autosave-every", "0", "--lora", f"{lora}:0.8"), capsys)
    assert code == 0 and "LoRA cli style.safetensors (musubi-tuner/kohya (lora_unet_), diffusers module names" in stdout
    out = tmp_path / "resumed.mp4"
    code, stdout, _ = run_main(fast(cli_env, out, "--pause-at", "1:2", "--resume-dir", str(tmp_path / "r"),
                                    "--lora", f"{lora}:0.8"), capsys)
    assert code == 0 and "--lora cli style.safetensors:0.8" in stdout
    resume_file = stdout.split("resume file: ")[1].split()[0]
    code, _, err = run_main(["resume", resume_file, "--tiny", "--out", str(out)], capsys)
    assert code == 2 and "'cli style.safetensors'" in err and "not loaded now" in err
    code, _, _ = run_main(["resume", resume_file, "--tiny", "--out", str(out), "--lora", f"{lora}:0.8",
                           "--deterministic-video"], capsys)
    assert code == 0 and out.read_bytes() == whole.read_bytes()
    code, _, err = run_main(["resume", resume_file, "--tiny", "--out", str(out), "--accept-lora-difference"], capsys)
    assert code == 0 and "other LoRAs" in err


def test_cli_lora_argument_forms(tmp_path):
    from goan_core.cli.parser import build_parser

    def parsed(*loras):
        argv = ["generate", "--image", "x.png", "--prompt", "p", "--tiny", "--out", "o.mp4"]
        for lora in loras:
            argv += ["--lora", lora]
        return build_parser().parse_args(argv).lora

    assert parsed() == []
    assert parsed("a.safetensors", "b.safetensors:0.5", "C:/x/c.safetensors:-1") == [
        (Path("a.safetensors"), 1.0), (Path("b.safetensors"), 0.5), (Path("C:/x/c.safetensors"), -1.0)]
    assert parsed("C:/x/d.safetensors") == [(Path("C:/x/d.safetensors"), 1.0)]


# -- the ComfyUI nodes -----------------------------------------------------------------------------------------


def test_lora_node_chains_without_changing_the_cached_transformer(host, loaded, tiny_models):
    from goan_pack.goan_core.errors import ModelFolderError
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as N

    folder = host.models_dir / "loras"
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    lf.write_lora(tiny_models.transformer, folder / "sub" / "node.safetensors", "comfy_original")
    lf.write_lora(tiny_models.transformer, folder / "second.safetensors", "musubi_split", seed=2)
    node = N["GoanLora"]()
    assert {"sub/node.safetensors", "second.safetensors"} <= set(node.INPUT_TYPES()["required"]["lora_name"][0])
    base = loaded[0]
    (one,) = node.execute(base, "sub/node.safetensors", 0.6)
    (two,) = node.execute(one, "second.safetensors", -1.0)
    assert base.loras == () and len(one.loras) == 1 and len(two.loras) == 2
    assert one.model is base.model is two.model
    assert sorted((u.name, u.strength) for u in two.lora_uses()) == [("node.safetensors", 0.6),
                                                                    ("second.safetensors", -1.0)]
    for bad in ("../escape.safetensors", "absent.safetensors"):
        with pytest.raises(ModelFolderError, match="no such LoRA file"):
            node.execute(base, bad, 1.0)
    shutil.rmtree(folder)


def test_sampler_records_loras_and_refuses_a_resume_without_them(host, loaded, image, tiny_models):
    from goan_pack.goan_core.errors import InputError as PackInputError
    from goan_pack.nodes import NODE_CLASS_MAPPINGS as N

    folder = host.models_dir / "loras"
    folder.mkdir(exist_ok=True)
    lf.write_lora(tiny_models.transformer, folder / "node style.safetensors")
    (with_lora,) = N["GoanLora"]().execute(loaded[0], "node style.safetensors", 0.9)
    lora_loaded = (with_lora, *loaded[1:])
    reference, _, _ = run_sampler(lora_loaded, image, autosave_every=0)
    pause_when(host, 4)  # mid-section
    paused, _, _ = run_sampler(lora_loaded, image, autosave_every=0)
    host.on_progress = None
    assert paused.status == "paused"
    assert [e["name"] for e in recorded_loras(paused.path)] == ["node style.safetensors"]
    with pytest.raises(PackInputError, match="'node style.safetensors'.*not loaded now.*accept_lora_difference"):
        run_sampler(loaded, None, resume_state=paused, seconds=0.0)
    resumed, _, _ = run_sampler(lora_loaded, None, resume_state=paused, seconds=0.0)
    assert torch.equal(resumed.state.history_latents, reference.state.history_latents)
    accepted, _, _ = run_sampler(loaded, None, resume_state=paused, seconds=0.0, accept_lora_difference=True)
    assert accepted.status == "finished" and accepted.state.loras == ()
    assert not torch.equal(accepted.state.history_latents, reference.state.history_latents)
    shutil.rmtree(folder)


def recorded_loras(path):
    from goan_pack.goan_core.resumefile import inspect_resume_file as inspect

    return inspect(path)["job_info"]["loras"]
