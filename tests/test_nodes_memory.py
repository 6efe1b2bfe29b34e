"""Issue 10 point 4 through the adapter's plain host: the sampler claims memory, then gives it all back.

The compute device is goan_core's CountingAccelerator (PlainHost.accelerator): a CPU stand-in that
keeps a ledger of the weight bytes it holds. Before the transformer is placed the host's
free_memory must be asked for exactly the bytes the planner then places plus the memory its
activations use (the preservation, or the activation reserve when larger: `SwapPlan.device_bytes`), and after every way a run can end (finish, pause, cancel, out of memory) the device must hold
nothing. The ComfyUI side of the same calls (free_memory instead of unload_all_models, the
--lowvram/--novram/--reserve-vram budget) is in test_nodes_comfy_host.py.
"""

from __future__ import annotations

import pytest
import torch

from nodes_helpers import *  # noqa: F401,F403  (fixtures)
from nodes_helpers import PROMPT_ID, run_sampler

GIB = 1024 ** 3


@pytest.fixture(scope="module")
def section_plan(pack, loaded, image, tmp_path_factory):
    """The SectionPlan of the test job (the activation reserve depends on its tokens)."""
    from goan_pack.nodes import adapter

    saved = dict(adapter.HOST.dirs)
    adapter.configure(output_dir=tmp_path_factory.mktemp("plan_out"))
    try:
        job, _, _ = run_sampler(loaded, image, autosave_every=0)
    finally:
        adapter.HOST.dirs = saved
    return job.state.plan


def expected_plan(transformer, section_plan, free, preservation):
    from goan_pack.goan_core.models import plan_swap, section_tokens

    return plan_swap(transformer.model, free, preservation, compute_dtype=transformer.dtype,
                     tokens=section_tokens(section_plan, transformer.model.config.patch_size))


def streaming_free(transformer, section_plan, preservation=0.0):
    """Free bytes one short of keeping every block resident: the tiny transformer (two blocks) streams them."""
    sizes = expected_plan(transformer, section_plan, None, preservation)
    activations = max(sizes.preservation_bytes, sizes.reserve_bytes)  # the preserved memory holds the reserve
    return sizes.fixed_bytes + sum(sizes.block_bytes.values()) - 1 + activations


@pytest.fixture
def device(host):
    """A counting fake device as the host's accelerator; free_memory calls recorded with its ledger then."""
    from goan_pack.goan_core.models import CountingAccelerator

    holder = {}

    def install(free):
        fake = CountingAccelerator(free)
        fake.held_at_claim = []
        host.accelerator = fake
        host.memory_calls.clear()
        real = type(host).free_memory

        def free_memory(bytes_needed, where):
            fake.held_at_claim.append((fake.resident_bytes, fake.uploaded_bytes))
            real(host, bytes_needed, where)

        host.free_memory = free_memory
        holder["fake"] = fake
        return fake

    yield install
    host.accelerator = None
    host.memory_calls.clear()
    host.__dict__.pop("free_memory", None)
    host.__dict__.pop("memory_budget", None)


def check_claim_and_release(host, fake, transformer, section_plan, free, preservation=0.0):
    plan = expected_plan(transformer, section_plan, free, preservation)
    assert plan.streamed and not plan.fallback  # the run really swaps
    # free_memory was asked once, before anything went to the device, for the planned weights + the memory the
    # activations use (the preservation, or the reserve when larger): no more than is free
    activations = max(int(preservation * GIB), plan.reserve_bytes)
    assert host.memory_calls == [(plan.peak_weight_bytes + activations, torch.device("cpu"))]
    assert plan.device_bytes() == plan.peak_weight_bytes + activations <= free
    assert fake.held_at_claim == [(0, 0)]
    # the runner placed exactly that plan: its weight peak, no more
    assert fake.uploaded_bytes > 0 and fake.peak_bytes == plan.peak_weight_bytes
    # and the device holds nothing afterwards
    assert fake.resident_bytes == 0
    return plan


def test_finished_run_claims_the_planned_bytes_and_releases_them(host, loaded, image, section_plan, device):
    transformer = loaded[0]
    free = streaming_free(transformer, section_plan)
    fake = device(free)
    job, _, _ = run_sampler(loaded, image, autosave_every=0, gpu_memory_preservation=0.0)
    assert job.status == "finished"
    check_claim_and_release(host, fake, transformer, section_plan, free)


def test_preservation_is_claimed_too(host, loaded, image, section_plan, device):
    transformer = loaded[0]
    free = streaming_free(transformer, section_plan, preservation=2.0)
    fake = device(free)
    job, _, _ = run_sampler(loaded, image, autosave_every=0, gpu_memory_preservation=2.0)
    assert job.status == "finished"
    check_claim_and_release(host, fake, transformer, section_plan, free, preservation=2.0)


def test_paused_run_releases_the_device(host, loaded, image, section_plan, device):
    from goan_pack.nodes.jobs import REGISTRY

    transformer = loaded[0]
    free = streaming_free(transformer, section_plan)
    fake = device(free)
    held = []

    def pause(bar):
        if bar.current == 4 and bar.total == 6 and REGISTRY.jobs()[0]["status"] == "running":
            held.append(fake.resident_bytes)
            assert REGISTRY.request_pause(PROMPT_ID) is not None

    host.on_progress = pause
    job, _, _ = run_sampler(loaded, image, autosave_every=0, gpu_memory_preservation=0.0)
    assert job.status == "paused" and (job.state.section, job.state.step_in_section) == (1, 1)
    assert held and held[0] > 0  # the transformer was on the device mid-run
    check_claim_and_release(host, fake, transformer, section_plan, free)


def test_cancelled_run_releases_the_device(host, loaded, image, section_plan, device):
    from goan_pack.nodes.adapter import PlainInterrupt

    transformer = loaded[0]
    free = streaming_free(transformer, section_plan)
    fake = device(free)

    def cancel(bar):
        if bar.current == 2 and bar.total == 6:
            host.request_interrupt()

    host.on_progress = cancel
    with pytest.raises(PlainInterrupt):
        run_sampler(loaded, image, autosave_every=0, gpu_memory_preservation=0.0)
    check_claim_and_release(host, fake, transformer, section_plan, free)


def test_out_of_memory_releases_the_device(host, loaded, image, section_plan, device, monkeypatch):
    from goan_pack.goan_core.sampling import engine as engine_module

    transformer = loaded[0]
    free = streaming_free(transformer, section_plan)
    fake = device(free)
    real_step = engine_module.Engine.step
    calls = []

    def step(self, state):
        calls.append(fake.resident_bytes)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_step(self, state)

    monkeypatch.setattr(engine_module.Engine, "step", step)
    with pytest.raises(torch.OutOfMemoryError):
        run_sampler(loaded, image, autosave_every=0, gpu_memory_preservation=0.0)
    assert calls[-1] > 0
    check_claim_and_release(host, fake, transformer, section_plan, free)


@pytest.mark.parametrize("mode, prefetch", [("lowvram", True), ("novram", False)])
def test_lowvram_modes_stream_every_block(host, loaded, image, section_plan, device, mode, prefetch):
    from goan_pack.nodes.adapter import MemoryBudget

    transformer = loaded[0]
    fake = device(10 * GIB)  # plenty: without the flag everything would stay resident
    host.memory_budget = lambda preservation: MemoryBudget(preservation, mode, f"--{mode}")
    job, _, _ = run_sampler(loaded, image, autosave_every=0, gpu_memory_preservation=0.5)
    assert job.status == "finished"
    sizes = expected_plan(transformer, section_plan, None, 0.5)
    largest = sorted(sizes.block_bytes.values(), reverse=True)
    slots = sum(largest[:2 if prefetch else 1])
    assert fake.peak_bytes == sizes.fixed_bytes + slots  # nothing resident but the non-block modules
    assert host.memory_calls == [(sizes.fixed_bytes + slots + max(int(0.5 * GIB), sizes.reserve_bytes),
                                  torch.device("cpu"))]
    assert fake.resident_bytes == 0


def test_plain_host_without_a_device_claims_nothing_on_the_cpu(host, loaded, image):
    host.memory_calls.clear()
    job, _, _ = run_sampler(loaded, image, autosave_every=0)
    assert job.status == "finished" and host.memory_calls == []
    assert host.memory_budget(3.5).gpu_memory_preservation == 3.5 and host.memory_budget(3.5).mode == "normal"


# -- ComfyUI's RAM-pressure cache sees goan's outputs at their real size (issue 17 item 2) -----------------

def ram_pressure_size(outputs) -> int:
    """The bytes current ComfyUI's RAM-pressure cache (comfy_execution/caching.py, 0.34 and later) counts for
    one cached node output: CPU tensors found in lists, tuples and mappings, each storage once, and the
    tensors an object lists through its `_comfy_cache_tensors()` hook; anything else counts as nothing."""
    from collections.abc import Mapping

    seen, total = set(), 0

    def scan(value):
        nonlocal total
        if isinstance(value, Mapping):
            value = list(value.values())
        if isinstance(value, (list, tuple)):
            for item in value:
                scan(item)
        elif isinstance(value, torch.Tensor):
            if value.device.type == "cpu":
                storage = value.untyped_storage()
                key = (storage.data_ptr(), storage.nbytes())
                if key not in seen:
                    seen.add(key)
                    total += storage.nbytes()
        elif hasattr(value, "_comfy_cache_tensors"):
            scan(value._comfy_cache_tensors())

    scan(outputs)
    return total


def weight_bytes(*modules) -> int:
    storages = {(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
                for m in modules for t in [*m.parameters(), *m.buffers()]}
    return sum(nbytes for _, nbytes in storages)


def test_goans_outputs_report_their_size_to_comfyuis_ram_pressure_cache(loaded, image, host):
    transformer, vae, text, image_encoder = loaded
    # a cache entry's outputs: one list per output slot, as ComfyUI stores them
    assert ram_pressure_size([[transformer]]) == weight_bytes(transformer.model) > 0
    assert ram_pressure_size([[vae]]) == weight_bytes(vae.model) > 0
    assert ram_pressure_size([[text]]) == weight_bytes(text.models.text_encoder, text.models.text_encoder_2) > 0
    assert ram_pressure_size([[image_encoder]]) == weight_bytes(image_encoder.models.image_encoder) > 0
    job, images, fps = run_sampler(loaded, image, autosave_every=0)
    state = job.state
    own = ram_pressure_size([[job]])
    assert own >= state.history_latents.nbytes + state.conditioning.prompt_embeds.nbytes
    assert own == ram_pressure_size([list(state.held_tensors())])
    assert ram_pressure_size([[job], [images], [fps]]) == own + images.nbytes  # the frames count once, natively

    class Opaque:  # what every goan output was to the cache before: nothing
        model = transformer.model

    assert ram_pressure_size([[Opaque()]]) == 0
