"""`python -m goan_core farm run|status`: the render farm's commands (goan_core.farm). Only `farm run` imports Ray."""

from __future__ import annotations

import functools
import sys


def farm(args) -> int:
    return farm_status(args) if args.farm_command == "status" else farm_run(args)


def farm_status(args) -> int:
    from ..farm import format_statuses, job_statuses

    print(format_statuses(job_statuses(args.store)))
    return 0


def load_worker_models(args):
    """What each farm worker runs once: the models of the CLI's model options, every part loaded (a worker may
    get new jobs, which need the encoders, and resumed ones)."""
    from .commands import load_runtime, quiet_library_progress

    quiet_library_progress()
    return load_runtime(args, need_text=True, need_image=True)


def farm_run(args) -> int:
    from ..errors import InputError
    from ..farm import DONE, FarmSettings, read_jobs, run_farm
    from ..models import default_tiny_root, write_tiny_models
    from .commands import check_save_args

    check_save_args(args)
    if args.max_retries < 0:
        raise InputError(f"--max-retries must be >= 0, got {args.max_retries}")
    jobs = read_jobs(args.jobs)
    if args.tiny:  # written once here, so that the workers of this machine only read it
        write_tiny_models(default_tiny_root())
    settings = FarmSettings(autosave_every=args.autosave_every, autosave_minutes=args.autosave_minutes,
                            keep_last=args.keep_last, include_embeddings=not args.no_embeddings,
                            gpu_memory_preservation=args.gpu_memory_preservation,
                            deterministic_video=args.deterministic_video)
    states = run_farm(jobs, args.store, functools.partial(load_worker_models, args), settings, address=args.address,
                      workers=args.workers, gpus_per_job=args.gpus_per_job, max_retries=args.max_retries)
    failed = {job_id: state for job_id, state in states.items() if state.get("state") != DONE}
    for job_id, state in sorted(states.items()):
        if job_id not in failed:
            print(f"goan: {job_id}: done, {state.get('output')}")
    for job_id, state in sorted(failed.items()):
        print(f"goan: {job_id}: {state.get('state')}: {state.get('message')}", file=sys.stderr)
    print(f"goan: {len(states) - len(failed)} of {len(states)} jobs done; details: python -m goan_core farm status "
          f"--store {args.store}")
    return 1 if failed else 0
