"""LoRAs (models/lora*.py): every accepted format loads onto the right layers, the same delta in each format
gives the same output, strength 0 is no LoRA, fp8 storage and block swapping give the same bits, nothing stays
on the shared model, and files goan cannot read are refused with a message naming the file and what was found."""

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from goan_core.errors import InputError, ModelFolderError
from goan_core.jobs import Job, RunSettings, run_job
from goan_core.models import (CountingAccelerator, Transformer, load_transformer_file, loras_applied, plan_swap,
                              read_lora, section_tokens, write_transformer_file)
from goan_core.models.lora_names import ModuleIndex, parse_key
from goan_core.sampling import Engine
from goan_core.vocabulary import Status

import lora_files as lf
from job_helpers import new_job_state
from test_models import transformer_inputs
from test_offload import PRESERVE, deep, free_for, image, params, weights  # noqa: F401  (fixture)

CPU, F32, BF16, FP8 = torch.device("cpu"), torch.float32, torch.bfloat16, torch.float8_e4m3fn


def forward(model, dtype=F32):
    with torch.no_grad():
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in transformer_inputs().items()}
        return model(**inputs, return_dict=False)[0]


def forward_with(model, loras, dtype=F32):
    with loras_applied(model, loras):
        return forward(model, dtype)


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models.transformer


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="module")
def reference(model, lora_dir):
    """The musubi-tuner HunyuanVideo file and the output it gives at strength 0.7."""
    lora = read_lora(lf.write_lora(model, lora_dir / "reference.safetensors"), model, F32)
    return lora, forward_with(model, [(lora, 0.7)])


# -- formats and mapping ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", sorted(lf.FORMATS))
def test_each_format_maps_onto_the_same_layers_and_gives_the_same_output(model, lora_dir, reference, fmt):
    path = lf.write_lora(model, lora_dir / f"{fmt}.safetensors", fmt)
    lora = read_lora(path, model, F32)
    deltas = lf.make_deltas(model)
    assert set(lora.terms) == set(lf.expand(model, deltas))  # every layer the table names, no other
    assert all(len(terms) == 1 and terms[0].scale == lf.ALPHA / lf.RANK for terms in lora.terms.values())
    original = fmt in ("musubi_original", "musubi_split", "comfy_original")
    assert lora.format.endswith("HunyuanVideo module names" if original else "diffusers module names")
    assert lora.name == path.name and len(lora.sha256) == 64
    assert torch.equal(forward_with(model, [(lora, 0.7)]), reference[1])


def test_the_delta_lands_where_merging_it_into_the_weights_would(model, reference):
    """The mapping is right, not just consistent: the LoRA'd output equals the model with W + s*up@down merged."""
    expected = forward(lf.merged(model, lf.make_deltas(model), 0.7))
    assert torch.allclose(reference[1], expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(reference[1], forward(model), atol=1e-3)  # and it changes the output


def test_the_test_table_agrees_with_diffusers_converter(model):
    """tests/lora_files.py's original -> diffusers table against diffusers' own HunyuanVideo LoRA conversion.

    Its single-block split assumes the real width 3072, and for the refiner's qkv and the final layer's
    modulation it splits or swaps the `down` (lora_A) as if it were a weight (which changes the product), so
    those three are checked by the merge test only."""
    from diffusers.loaders.lora_conversion_utils import _convert_hunyuan_video_lora_to_diffusers

    deltas = {k: v for k, v in lf.make_deltas(model).items()
              if not k.startswith((lf.SINGLE_PREFIX, "txt_in.")) and k not in lf.SWAPPED}
    original = {}
    for name, (down, up) in deltas.items():
        original[f"diffusion_model.{name}.lora_A.weight"], original[f"diffusion_model.{name}.lora_B.weight"] = down, up
    converted = _convert_hunyuan_video_lora_to_diffusers(original)
    ours = {}
    for layer, (down, up) in lf.expand(model, deltas).items():
        ours[f"transformer.{layer}.lora_A.weight"], ours[f"transformer.{layer}.lora_B.weight"] = down, up
    assert sorted(converted) == sorted(ours)
    assert all(torch.equal(converted[k], ours[k]) for k in ours)


def test_alpha_absent_means_scale_one(model, lora_dir):
    path = lf.musubi_original(lf.make_deltas(model), lora_dir / "no_alpha.safetensors", alpha=None)
    lora = read_lora(path, model, F32)
    assert {t.scale for terms in lora.terms.values() for t in terms} == {1.0}
    zero = lf.musubi_original(lf.make_deltas(model), lora_dir / "alpha0.safetensors", alpha=0.0)  # musubi: 0 = rank
    assert {t.scale for terms in read_lora(zero, model, F32).terms.values() for t in terms} == {1.0}


@pytest.mark.parametrize("metadata, expected", [
    ({"transformer.lora_alpha": 8, "transformer.alpha_pattern": {"proj_out": 2}}, {"proj_out": 0.5, "other": 2.0}),
    ({"lora_alpha": 8, "use_rslora": True}, {"proj_out": 4.0, "other": 4.0}),  # alpha / sqrt(rank)
])
def test_diffusers_adapter_metadata_sets_the_scale(model, tmp_path, metadata, expected):
    path = lf.diffusers_peft(model, lf.make_deltas(model), tmp_path / "meta.safetensors", alpha=None)
    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": json.dumps(metadata)})
    scales = {name: terms[0].scale for name, terms in read_lora(path, model, F32).terms.items()}
    matched = {name: scales.pop(name) for name in list(scales) if name.split(".")[-1] == "proj_out"}  # as PEFT
    assert len(matched) == 2 and set(matched.values()) == {expected["proj_out"]}
    assert set(scales.values()) == {expected["other"]}
    save_file(tensors, str(path), metadata={"lora_adapter_metadata": '{"lora_alpha": "eight"}'})
    with pytest.raises(ModelFolderError, match="not numbers"):
        read_lora(path, model, F32)


def test_flat_names_resolve_both_ways(model):
    index = ModuleIndex(model)
    for key, dotted in (("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight", "double_blocks.0.img_attn_qkv"),
                        ("lora_unet_transformer_blocks_0_ff_net_0_proj.lora_up.weight", "transformer_blocks.0.ff.net.0.proj"),
                        ("lora_unet_single_blocks_0_modulation_linear.alpha", "single_blocks.0.modulation.linear")):
        assert index.dotted(parse_key(key)) == dotted and index.source(dotted) is not None


# -- applying: strength, chaining, the shared model ----------------------------------------------------------


def test_strength_zero_is_exactly_no_lora(model, reference):
    assert torch.equal(forward_with(model, [(reference[0], 0.0)]), forward(model))


def test_loras_chain_and_their_order_does_not_matter(model, lora_dir, reference):
    other = read_lora(lf.write_lora(model, lora_dir / "other.safetensors", "diffusers_peft", seed=1), model, F32)
    one_way = forward_with(model, [(reference[0], 0.7), (other, -0.5)])
    assert torch.equal(one_way, forward_with(model, [(other, -0.5), (reference[0], 0.7)]))
    assert not torch.allclose(one_way, reference[1], atol=1e-3)
    both = lf.merged(lf.merged(model, lf.make_deltas(model), 0.7), lf.make_deltas(model, seed=1), -0.5)
    assert torch.allclose(one_way, forward(both), atol=1e-5, rtol=1e-4)


def test_nothing_stays_on_the_shared_model(model, reference):
    before = weights(model)
    plain = forward(model)
    base = Transformer(model, CPU, F32)
    with_lora = base.with_lora(reference[0], 0.7)
    assert base.loras == () and with_lora.model is model and with_lora.lora_uses()[0].strength == 0.7
    with with_lora.applied():
        with with_lora.applied():  # nested: applied once
            assert sum(hasattr(m, "goan_lora") for m in model.modules()) == len(reference[0].terms)
        with pytest.raises(InputError, match="other LoRAs"):
            with base.applied():
                pass
    assert weights(model) == before and not any(hasattr(m, "goan_lora") for m in model.modules())
    assert not any(m._forward_hooks for m in model.modules())
    assert torch.equal(forward(model), plain)


def test_with_lora_refuses_bad_strengths_and_other_models(model, reference, deep):
    handle = Transformer(model, CPU, F32)
    for strength in (float("nan"), float("inf"), 1000.0):
        with pytest.raises(InputError, match="strength"):
            handle.with_lora(reference[0], strength)
    with pytest.raises(InputError, match="another transformer"):
        Transformer(deep, CPU, F32).with_lora(reference[0], 1.0)


def test_fp8_stored_base_with_lora_equals_the_upcast_file_with_lora(model, lora_dir, tmp_path):
    path = write_transformer_file(model, tmp_path / "fp8.safetensors", FP8)
    fp8 = load_transformer_file(path, F32)  # weights stay fp8, cast per layer
    upcast = load_transformer_file(path, F32, "fp32")
    lora = read_lora(lf.write_lora(model, lora_dir / "fp8.safetensors"), fp8, F32)
    with_lora = forward_with(fp8, [(lora, 0.7)])
    assert torch.equal(with_lora, forward_with(upcast, [(lora, 0.7)]))
    assert not torch.equal(with_lora, forward(fp8))


def test_bf16_compute_keeps_lora_tensors_in_bf16(model, lora_dir):
    bf16 = copy.deepcopy(model).to(BF16)
    lora = read_lora(lf.write_lora(model, lora_dir / "bf16.safetensors"), bf16, BF16)
    assert {t.up.dtype for terms in lora.terms.values() for t in terms} == {BF16}
    assert lora.nbytes == sum(2 * (t.up.numel() + t.down.numel()) for terms in lora.terms.values() for t in terms)
    out = forward_with(bf16, [(lora, 0.7)], BF16)
    assert out.dtype == BF16 and torch.isfinite(out).all()


def test_block_swapped_with_lora_equals_resident_with_lora(tiny_models, deep, lora_dir, tmp_path):
    """deep: 3 + 3 blocks, 2 resident and 4 streamed; the LoRA tensors stream with their blocks, counted."""
    lora = read_lora(lf.write_lora(deep, lora_dir / "deep.safetensors", "diffusers_peft"), deep, F32)
    handle = Transformer(deep, CPU, F32).with_lora(lora, 0.8)
    state, source = new_job_state(tiny_models, params(), image())
    state.loras = handle.lora_uses()
    resident = run_job(Job(state.snapshot(), source), handle, RunSettings(tmp_path / "resident"))
    before = weights(deep)
    with handle.applied():
        free = free_for(deep, state, extra_blocks=2)
        plan = plan_swap(deep, free, PRESERVE, compute_dtype=F32, tokens=section_tokens(state.plan))
    fake = CountingAccelerator(free)
    swapped = run_job(Job(state.snapshot(), source), handle,
                      RunSettings(tmp_path / "swapped", gpu_memory_preservation=PRESERVE, accelerator=fake))
    assert resident.status == swapped.status == Status.FINISHED
    assert torch.equal(swapped.state.history_latents, resident.state.history_latents)
    assert plan.streamed and fake.peak_bytes == plan.peak_weight_bytes  # the ledger counted the LoRA tensors
    assert weights(deep) == before and fake.resident_bytes == 0
    state.loras = ()
    plain = run_job(Job(state.snapshot(), source), Transformer(deep, CPU, F32).with_lora(lora, 0.0),
                    RunSettings(tmp_path / "plain"))
    reference = state.snapshot()
    Engine(deep, CPU, F32).run(reference)
    assert torch.equal(plain.state.history_latents, reference.history_latents)  # strength 0 = none, a whole job
    assert not torch.equal(resident.state.history_latents, reference.history_latents)  # the LoRA changed it


def test_a_job_runs_only_with_the_loras_it_records(tiny_models, reference, tmp_path):
    state, source = new_job_state(tiny_models, params(), image())
    with pytest.raises(InputError, match="LoRAs are not the transformer's"):
        run_job(Job(state, source), Transformer(tiny_models.transformer, CPU, F32).with_lora(reference[0], 1.0),
                RunSettings(tmp_path))


# -- refusals -----------------------------------------------------------------------------------------------


def _write(path, tensors):
    save_file(tensors, str(path))
    return path


M = torch.zeros


@pytest.mark.parametrize("tensors, phrase", [
    ({"lora_unet_blocks_0_self_attn_q.lora_down.weight": M(4, 32), "lora_unet_blocks_0_self_attn_q.lora_up.weight":
      M(32, 4)}, "does not have ('blocks_0_self_attn_q'): is it a LoRA for another model"),
    ({"transformer.transformer_blocks.0.attn.to_q.hada_w1_a": M(4, 32)}, "LyCORIS LoHa"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lokr_w1": M(4, 4)}, "LyCORIS LoKr"),
    ({"lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": M(4, 32)}, "text-encoder LoRA"),
    ({"transformer_blocks.0.attn.to_q.weight": M(32, 32)}, "full model or checkpoint"),
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": M(4, 32),
      "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": M(32, 4),
      "transformer.transformer_blocks.0.attn.to_q.dora_scale": M(1, 32)}, "DoRA"),
    ({"transformer.transformer_blocks.0.attn.to_q.lora_A.weight": M(4, 33),
      "transformer.transformer_blocks.0.attn.to_q.lora_B.weight": M(32, 4)},
     "transformer.transformer_blocks.0.attn.to_q.lora_A.weight has shape [4, 33], but the layer takes 32 inputs"),
    ({"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": M(4, 32),
      "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": M(64, 4)}, "give 64 outputs, but the layer has 96"),
    ({"transformer.proj_out.lora_A.weight": M(4, 32), "transformer.proj_out.lora_B.weight": M(64, 3)},
     "does not fit rank 4"),
    ({"transformer.proj_out.lora_A.weight": M(4, 32)}, "proj_out.lora_A.weight has no matching up weight"),
    ({"transformer.x_embedder.proj.lora_A.weight": M(4, 16), "transformer.x_embedder.proj.lora_B.weight": M(32, 4)},
     "x_embedder.proj, which is not a Linear layer"),
    ({"lora_unet_img_in_proj.lora_down.weight": M(4, 16), "lora_unet_img_in_proj.lora_up.weight": M(32, 4)},
     "which is not a Linear layer"),
    ({"transformer.proj_out.lora_A.weight": torch.full((4, 32), float("nan")),
      "transformer.proj_out.lora_B.weight": M(64, 4)}, "NaN or Inf"),
    ({"transformer.proj_out.lora_A.weight": M(4, 32), "transformer.proj_out.lora_B.weight": M(64, 4),
      "transformer.proj_out.alpha": torch.tensor(-1.0)}, "alpha -1.0 must be a finite positive number"),
    ({"transformer.proj_out.lora_A.weight": M(4, 32), "transformer.proj_out.lora_B.weight": M(64, 4),
      "proj_out.lora_A.weight": M(4, 32)}, "are the same weight of proj_out"),
    ({"transformer.proj_out.lora_A.weight": M(4, 32), "transformer.proj_out.lora_B.weight": M(64, 4),
      "use_dora_flag": torch.tensor(True)}, "use_dora_flag"),
    ({}, "found no tensors"),
])
def test_files_goan_cannot_read_are_refused_naming_file_and_key(model, tmp_path, tensors, phrase):
    path = _write(tmp_path / "bad.safetensors", tensors)
    with pytest.raises(ModelFolderError) as caught:
        read_lora(path, model, F32)
    message = str(caught.value)
    assert str(path) in message and phrase in message, message


def test_not_safetensors_and_missing_files_are_refused(model, tmp_path):
    pickle = tmp_path / "old.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ModelFolderError, match="not a readable .safetensors file"):
        read_lora(pickle, model, F32)
    with pytest.raises(ModelFolderError, match="no such file"):
        read_lora(tmp_path / "absent.safetensors", model, F32)
