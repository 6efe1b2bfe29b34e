"""The CLI and the ComfyUI sampler node are two callers of one job lifecycle: the same job, the same files.

One job (same image, settings and tiny weights) is paused at the same step by each front end, then
continued to its end by each; every resume file they write is compared member by member.
"""

from pathlib import Path

import pytest
import torch
from PIL import Image

from nodes_helpers import *  # noqa: F401,F403  (fixtures: pack, comfy_models, host, loaded, picture, image)
from nodes_helpers import JOB, PROMPT_ID, run_sampler

PAUSE_AT = (1, 1)  # section 1, before its step 1: 4 of the job's 6 steps done


def cli(argv, capsys) -> str:
    from goan_pack.goan_core.cli import main

    assert main(argv) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def cli_job(picture_file: Path, tiny_models_root: Path, out: Path, resume_dir: Path) -> list[str]:
    from goan_pack.goan_core.models import TINY_TRANSFORMER_FILE

    return ["generate", "--image", str(picture_file), "--prompt", JOB["prompt"], "--seed", str(JOB["seed"]),
            "--seconds", str(JOB["seconds"]), "--steps", str(JOB["steps"]), "--lws", str(JOB["lws"]),
            "--mode", JOB["mode"], "--resolution", str(JOB["resolution"]), "--sampler", JOB["sampler"],
            "--cfg", str(JOB["cfg"]), "--gs", str(JOB["gs"]), "--rs", str(JOB["rs"]),
            "--tiny", "--transformer", str(tiny_models_root / TINY_TRANSFORMER_FILE), "--device", "cpu",
            "--dtype", "float32", "--out", str(out), "--resume-dir", str(resume_dir),
            "--autosave-every", str(JOB["autosave_every"]), "--keep-last", str(JOB["keep_last"])]


def assert_same_job_files(cli_file: Path, node_file: Path) -> None:
    """Everything but the job id and the time of writing is the same in both files."""
    from goan_pack.goan_core.resumefile import read_resume_file

    a, b = read_resume_file(cli_file), read_resume_file(node_file)
    ignored = {"job_id", "created_at", "sha256"}
    assert {k: v for k, v in a.job_info.items() if k not in ignored} == \
           {k: v for k, v in b.job_info.items() if k not in ignored}
    assert set(a.job_info["sha256"]) == set(b.job_info["sha256"])  # the same members
    assert a.job_info["sha256"]["state.safetensors"] == b.job_info["sha256"]["state.safetensors"]
    assert a.job_info["sha256"]["source_image.png"] == b.job_info["sha256"]["source_image.png"]
    assert a.state.params == b.state.params and a.state.plan == b.state.plan
    for name in ("history_latents", "start_latent", "generator_state"):
        assert torch.equal(getattr(a.state, name), getattr(b.state, name)), name
    for name, tensor in a.state.conditioning.tensors().items():
        assert torch.equal(getattr(b.state.conditioning, name), tensor), name


def newest(folder: Path, kind: str) -> Path:
    from goan_pack.goan_core.resumefile import read_resume_file, retained_files

    return next(p for p in reversed(retained_files(folder)) if read_resume_file(p).job_info["kind"] == kind)


def test_cli_and_node_write_the_same_files(host, loaded, picture, image, tiny_models_root, monkeypatch, tmp_path,
                                           capsys):
    from goan_pack.goan_core.jobs import render_frames
    from goan_pack.goan_core.models import TINY_TRANSFORMER_FILE, VAE
    from goan_pack.goan_core.resumefile import read_resume_file
    from goan_pack.nodes.jobs import REGISTRY

    monkeypatch.setenv("GOAN_TINY_DIR", str(tiny_models_root))
    picture_file = tmp_path / "in.png"
    Image.fromarray(picture).save(picture_file)
    resume_dir = tmp_path / "cli"
    resume_dir.mkdir()

    # pause both at the same step
    stdout = cli(cli_job(picture_file, tiny_models_root, tmp_path / "out.mp4", resume_dir)
                 + ["--pause-at", "%d:%d" % PAUSE_AT], capsys)
    cli_paused = Path(stdout.split("resume file: ")[1].split()[0])
    steps_before_pause = PAUSE_AT[0] * JOB["steps"] + PAUSE_AT[1]

    def pause_there(bar):
        if bar.current == steps_before_pause and bar.total == 2 * JOB["steps"]:
            REGISTRY.request_pause(PROMPT_ID)

    host.on_progress = pause_there
    node_paused, _, _ = run_sampler(loaded, image, extra_pnginfo=None)
    host.on_progress = None
    assert node_paused.status == "paused"
    assert_same_job_files(cli_paused, node_paused.path)
    cli_job_id = read_resume_file(cli_paused).state.job_id
    node_folder = node_paused.path.parent
    cli_folder = resume_dir / "goan_resume" / cli_job_id
    assert_same_job_files(newest(cli_folder, "autosave"), newest(node_folder, "autosave"))

    # continue both to the end: the CLI from its file, the node from its paused state
    cli(["resume", str(cli_paused), "--tiny", "--transformer", str(tiny_models_root / TINY_TRANSFORMER_FILE),
         "--device", "cpu", "--dtype", "float32", "--out", str(tmp_path / "resumed.mp4"),
         "--resume-dir", str(resume_dir)], capsys)
    node_done, node_images, _ = run_sampler(loaded, None, resume_state=node_paused, seconds=0.0, extra_pnginfo=None)
    assert node_done.status == "finished"
    cli_done = newest(cli_folder, "finished")
    assert_same_job_files(cli_done, node_done.path)
    assert_same_job_files(newest(cli_folder, "autosave"), newest(node_folder, "autosave"))

    _, vae, _, _ = loaded
    cli_frames = render_frames(read_resume_file(cli_done).state, VAE(vae.model, vae.device, vae.dtype))
    assert torch.equal((node_images * 255.0).round().to(torch.uint8), cli_frames)


def test_a_refused_extension_comes_before_any_encoder(loaded):
    """continue_job extends first: growing a backward job fails at once, even when no encoder is there."""
    from goan_pack.goan_core.errors import InputError
    from goan_pack.goan_core.jobs import Encoders, continue_job, create_job
    from goan_pack.goan_core.media import demo_image
    from goan_pack.goan_core.params import JobParams
    from goan_pack.nodes.sampler import node_encoders

    transformer, vae, text, image_encoder = loaded
    job = create_job(JobParams(prompt="p", seconds=0.6, lws=2, steps=2, resolution=64), demo_image(),
                     node_encoders(text_encoders=text, image_encoder=image_encoder, goan_vae=vae),
                     identity=transformer.identity())
    job.state.conditioning = None  # as read from a file saved without embeddings
    with pytest.raises(InputError, match="from its end towards the input image"):
        continue_job(job.state, job.source_image, Encoders(), identity=transformer.identity(), additional_seconds=1.0)
