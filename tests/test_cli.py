"""The command line: every bad input is one line and exit code 2; real tiny runs write real files."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goan_core.cli import main
from goan_core.media import count_frames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def cli_env(tiny_models_root, monkeypatch, tmp_path):
    """`--tiny` reads the session's tiny set; an input picture in tmp_path."""
    monkeypatch.setenv("GOAN_TINY_DIR", str(tiny_models_root))
    picture = tmp_path / "in.png"
    y, x = np.mgrid[0:70, 0:90]
    Image.fromarray(np.stack([x * 2, y * 3, x + y], -1).astype(np.uint8)).save(picture)
    return picture


def fast(picture, out, *extra):
    return ["generate", "--image", str(picture), "--prompt", "a boat on a lake", "--seconds", "0.8",
            "--lws", "3", "--steps", "3", "--resolution", "64", "--tiny", "--out", str(out), *extra]


def run_main(argv, capsys):
    """Exit code, stdout and stderr of the CLI (argparse's own exits included)."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("mode,frames", [("backward", 25), ("f1", 25)])
def test_generate_writes_an_mp4_with_the_right_frame_count(cli_env, tmp_path, capsys, mode, frames):
    out = tmp_path / f"{mode}.mp4"
    code, stdout, _ = run_main(fast(cli_env, out, "--mode", mode), capsys)
    assert code == 0 and f"wrote {out}" in stdout
    assert count_frames(out) == frames


def test_pause_at_then_resume_gives_the_same_video(cli_env, tmp_path, capsys):
    import av

    whole = tmp_path / "whole.mp4"
    # libx264's threads make decoded frames differ between runs; the deterministic encode does not
    assert run_main(fast(cli_env, whole, "--autosave-every", "0", "--deterministic-video"), capsys)[0] == 0
    paused_out = tmp_path / "resumed.mp4"
    code, stdout, _ = run_main(fast(cli_env, paused_out, "--pause-at", "1:2", "--resume-dir", str(tmp_path / "r")),
                               capsys)
    assert code == 0 and not paused_out.exists()
    resume_file = Path(stdout.split("resume file: ")[1].split()[0])
    assert resume_file.is_file() and resume_file.suffix == ".goan_resume"

    code, stdout, _ = run_main(["inspect", str(resume_file)], capsys)
    assert code == 0 and '"next_section": 1' in stdout and '"step_in_section": 2' in stdout

    code, stdout, _ = run_main(["resume", str(resume_file), "--tiny", "--out", str(paused_out), "--deterministic-video"],
                               capsys)
    assert code == 0 and "resuming job" in stdout

    def frames(path):
        with av.open(str(path)) as container:
            return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]

    a, b = frames(whole), frames(paused_out)
    assert len(a) == len(b) == 25 and all(np.array_equal(x, y) for x, y in zip(a, b))


def test_resume_backward_with_additional_seconds_is_explained(cli_env, tmp_path, capsys):
    code, stdout, _ = run_main(fast(cli_env, tmp_path / "x.mp4", "--pause-at", "0:1", "--resume-dir", str(tmp_path)),
                               capsys)
    resume_file = stdout.split("resume file: ")[1].split()[0]
    code, _, err = run_main(["resume", resume_file, "--tiny", "--out", str(tmp_path / "y.mp4"),
                             "--additional-seconds", "2"], capsys)
    assert code == 2 and "fixed when they start" in err


def test_resume_with_a_new_prompt_branches_and_inspect_shows_the_lineage(cli_env, tmp_path, capsys):
    import json

    code, stdout, _ = run_main(fast(cli_env, tmp_path / "x.mp4", "--pause-at", "1:0", "--resume-dir", str(tmp_path)),
                               capsys)
    resume_file = stdout.split("resume file: ")[1].split()[0]
    code, _, err = run_main(["resume", resume_file, "--tiny", "--out", str(tmp_path / "y.mp4"), "--lws", "4"], capsys)
    assert code == 2 and "cannot change lws" in err and len(err.strip().splitlines()) == 1
    code, stdout, _ = run_main(["resume", resume_file, "--tiny", "--out", str(tmp_path / "y.mp4"), "--prompt",
                                "a boat sinks", "--seed", "7", "--pause-at", "1:1", "--resume-dir", str(tmp_path)],
                               capsys)
    assert code == 0 and "branched job" in stdout and "seed 31337 -> 7" in stdout
    branched = stdout.split("resume file: ")[1].split()[0]
    code, stdout, _ = run_main(["inspect", branched], capsys)
    lineage = json.loads(stdout)["job_info"]["lineage"]
    assert lineage["section"] == 1 and lineage["step"] == 0 and lineage["changes"]["seed"] == [31337, 7]
    assert lineage["changes"]["prompt"] == ["a boat on a lake", "[0s] a boat sinks [0.4s] a boat on a lake"]


def test_generate_with_an_end_image_stores_it(cli_env, tmp_path, capsys):
    import json

    code, stdout, _ = run_main(fast(cli_env, tmp_path / "x.mp4", "--end-image", str(cli_env), "--end-embeds", "0.5",
                                    "--pause-at", "1:0", "--resume-dir", str(tmp_path)), capsys)
    resume_file = stdout.split("resume file: ")[1].split()[0]
    code, stdout, _ = run_main(["inspect", resume_file], capsys)
    info = json.loads(stdout)
    assert "end_image.png" in info["members"] and info["params"]["end_embeds"] == 0.5


@pytest.mark.parametrize("change,message", [
    (("--image", "MISSING"), "MISSING"),
    (("--seconds", "0"), "greater than 0"),
    (("--seconds", "-3"), "greater than 0"),
    (("--mode", "sideways"), "invalid choice"),
    (("--resolution", "650"), "multiple of 16"),
    (("--steps", "0"), "steps must be between"),
    (("--cfg", "nan"), "finite"),
    (("--prompt", "[1s] a boat"), "timed prompt: nothing covers 0s to 1s"),
    (("--negative-prompt", "n" * 65537), "the negative prompt is 65,537 characters long, more than the 65,536"),
    (("--pause-at", "x"), "SECTION:STEP"),
    (("--crf", "99"), "crf"),
    (("--keep-last", "0"), "keep-last"),
    (("--attention", "flash2"), "invalid choice"),
    (("--attention", "flash"), "attention 'flash' cannot run here: flash-attn runs on NVIDIA GPUs only, not on cpu"),
])
def test_bad_inputs_end_with_one_clear_line_and_exit_2(cli_env, tmp_path, capsys, change, message):
    argv = fast(cli_env, tmp_path / "o.mp4")
    flag, value = change
    if flag in argv:
        argv[argv.index(flag) + 1] = value if value != "MISSING" else str(tmp_path / "missing.png")
    else:
        argv += [flag, value]
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert message.replace("MISSING", "missing.png") in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_not_an_image_and_wrong_models_folder(cli_env, tmp_path, capsys):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    argv = fast(cli_env, tmp_path / "o.mp4")
    argv[argv.index("--image") + 1] = str(text)
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "notes.png" in err

    empty = tmp_path / "models"
    empty.mkdir()
    argv = fast(cli_env, tmp_path / "o.mp4")
    argv[argv.index("--tiny")] = "--models"
    argv.insert(argv.index("--models") + 1, str(empty))
    code, _, err = run_main(argv, capsys)
    assert code == 2 and str(empty) in err and "transformer" in err and "Traceback" not in err


def test_inspect_rejects_a_broken_file(tmp_path, capsys):
    broken = tmp_path / "broken.goan_resume"
    broken.write_bytes(b"PK\x03\x04 this is not really a zip")
    code, _, err = run_main(["inspect", str(broken)], capsys)
    assert code == 2 and "broken.goan_resume" in err and len(err.strip().splitlines()) == 1


def test_make_tiny_and_the_real_entry_point(tmp_path):
    done = subprocess.run([sys.executable, "-m", "goan_core", "make-tiny", str(tmp_path / "tiny")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "tiny" / "transformer").is_dir() and (tmp_path / "tiny" / "FramePackI2V_tiny.safetensors").is_file()
    bad = subprocess.run([sys.executable, "-m", "goan_core", "generate", "--image", "x.png", "--prompt", "p",
                          "--tiny", "--out", str(tmp_path / "o.mp4"), "--seconds", "-1"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_ctrl_c_pauses_and_saves(tiny_models_root, tmp_path):
    """A real SIGINT during generation: the job pauses after the current step and writes its file."""
    import os
    import signal
    import time

    picture = tmp_path / "in.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(picture)
    env = dict(os.environ, GOAN_TINY_DIR=str(tiny_models_root), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "goan_core", "generate", "--image", str(picture), "--prompt", "rain",
         "--seconds", "1.2", "--lws", "3", "--steps", "150", "--resolution", "64", "--tiny",
         "--autosave-every", "0", "--out", str(tmp_path / "o.mp4")],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen, deadline = b"", time.monotonic() + 240
    while b"section 1/3" not in seen and time.monotonic() < deadline and process.poll() is None:
        seen += os.read(process.stderr.fileno(), 4096)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=240)
    assert process.returncode == 0, stderr.decode()[-2000:]
    assert b"pausing after this step" in seen + stderr
    resume_file = Path(stdout.decode().split("resume file: ")[1].split()[0])
    assert resume_file.is_file() and not (tmp_path / "o.mp4").exists()


def test_a_run_that_goes_nan_fails_clearly_and_says_where_the_last_good_file_is(cli_env, tmp_path, capsys,
                                                                                monkeypatch):
    """It used to finish with exit 0 and a black video; now: exit 2, one error, the fail-safe file's path."""
    from dataclasses import replace

    from goan_core.sampling import engine

    real_step, calls = engine.sampler_step, []

    def nan_from_step_5(*args):
        sampler = real_step(*args)
        calls.append(1)
        return replace(sampler, x=sampler.x * float("nan")) if len(calls) >= 5 else sampler

    monkeypatch.setattr(engine, "sampler_step", nan_from_step_5)
    out = tmp_path / "video.mp4"
    code, _, stderr = run_main(fast(cli_env, out, "--autosave-every", "0"), capsys)
    assert code == 2 and not out.exists()
    assert "goan: error:" in stderr and "NaN or Inf" in stderr and "progress saved to" in stderr
    saved = stderr.split("progress saved to ")[1].split(";")[0]
    assert Path(saved).is_file()


@pytest.fixture(scope="module")
def usual_files(tmp_path_factory):
    from goan_core.models.tiny_files import write_usual_files

    return write_usual_files(tmp_path_factory.mktemp("comfyui_models"))


def file_args(usual, tokenizers):
    return ["--transformer", str(usual["transformer"]), "--vae", str(usual["vae"]),
            "--text-encoder", str(usual["text_encoder"]), "--text-encoder-2", str(usual["text_encoder_2"]),
            "--image-encoder", str(usual["image_encoder"]),
            "--tokenizer", str(tokenizers / "tokenizer"), "--tokenizer-2", str(tokenizers / "tokenizer_2")]


def test_generate_and_resume_from_the_usual_files_alone(cli_env, usual_files, tiny_models_root, tmp_path, capsys):
    """No models folder: the four usual files (plus the fp8 transformer file) and the two tokenizer folders."""
    argv = fast(cli_env, tmp_path / "files.mp4", "--pause-at", "1:1", "--resume-dir", str(tmp_path / "r"))
    argv.remove("--tiny")
    code, stdout, err = run_main(argv + file_args(usual_files, tiny_models_root), capsys)
    assert code == 0, err
    resume_file = stdout.split("resume file: ")[1].split()[0]
    code, stdout, err = run_main(["resume", resume_file, "--out", str(tmp_path / "files.mp4"),
                                  "--transformer", str(usual_files["transformer"]), "--vae", str(usual_files["vae"])],
                                 capsys)  # the file carries the embeddings: no text or image encoder
    assert code == 0, err
    assert count_frames(tmp_path / "files.mp4") == 25


def test_without_models_every_missing_piece_is_named_with_its_option(cli_env, tmp_path, capsys):
    argv = fast(cli_env, tmp_path / "o.mp4")
    argv.remove("--tiny")
    code, _, err = run_main(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    for option in ("--transformer FILE", "--vae FILE", "--text-encoder FILE", "--text-encoder-2 FILE",
                   "--tokenizer DIR", "--tokenizer-2 DIR", "--image-encoder FILE"):
        assert option in err


def test_the_cli_finds_comfyuis_tokenizers_when_installed_as_a_custom_node(tmp_path):
    from goan_core.cli.commands import comfyui_tokenizers

    comfy = tmp_path / "ComfyUI"
    pack = comfy / "custom_nodes" / "goan"
    pack.mkdir(parents=True)
    assert comfyui_tokenizers(pack) == {}
    for parts in (("comfy", "text_encoders", "llama_tokenizer"), ("comfy", "sd1_tokenizer")):
        comfy.joinpath(*parts).mkdir(parents=True)
    assert comfyui_tokenizers(pack) == {"tokenizer": comfy / "comfy" / "text_encoders" / "llama_tokenizer",
                                        "tokenizer_2": comfy / "comfy" / "sd1_tokenizer"}
    assert comfyui_tokenizers(tmp_path / "elsewhere" / "goan") == {}
