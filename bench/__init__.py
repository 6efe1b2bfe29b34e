"""goan's benchmarks: `python -m bench` runs them all, prints one markdown table, writes bench/results.json.

One module per measure (autosave, resume, pause, engine, gpu, gpu_memory, memory, teacache, lora, speed, farm), each with `run(quick, base_dir,
repeats) -> list[Row]`; `common` holds the timing, table and JSON helpers. Ratios are measured side
by side in the same run; medians over repeats. `--quick` uses the smoke-test sizes.
"""

MEASURES = ("autosave", "resume", "pause", "engine", "gpu", "gpu_memory", "memory", "teacache", "lora", "speed", "farm")
