"""The runtime's benchmarks, on their own floor above the engine: ``latency`` and ``throughput``
(the engine beside transformers), ``attention`` (the attention kernels beside the framework's),
``workload`` (random prompts, the engine sized for them, shape capture over a workload).

Every benchmark returns a :class:`solidx.runtime.bench.result.BenchResult` and reads its clocks
through :mod:`solidx.gradlib.timing`. This package imports the engine; nothing of the engine
(core, layers, attention kernels, models) imports this package.
"""
