"""The routing benchmark behind ``seqr bench routing``: selection cost per method, and one routed layer against PEFT.

Each time is the fastest of several repeats (the median is reported too), measured in one
process with the methods interleaved, so ratios between methods share the machine's state. The
fastest run is the one least disturbed by other processes on a shared machine. FLOP counts come from :meth:`Router.flops_per_token` (a multiply-add counts 2).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from seqr.errors import InvalidInputError
from seqr.routing import native
from seqr.routing.layer import RoutedLinear, RoutingState
from seqr.routing.library import StackedFactors
from seqr.routing.methods import Granularity, RoutingConfig, RoutingMethod
from seqr.routing.routers import build_router

logger = logging.getLogger(__name__)

SELECTION_METHODS = (RoutingMethod.SEQR, RoutingMethod.ARROW, RoutingMethod.SPECTR, RoutingMethod.LAG, RoutingMethod.NAIVE)
FLOOR_MATMUL_SIZE = 2048


@dataclass(frozen=True)
class BenchmarkSetting:
    """One library shape: N adapters, n input and m output features, rank r, LAG's k and T tokens."""

    name: str
    n_adapters: int
    in_features: int
    out_features: int
    rank: int
    lag_k: int
    tokens: int


SETTINGS: dict[str, BenchmarkSetting] = {
    # The SEQR paper's Table 1 setting.
    "table1": BenchmarkSetting("table1", 1000, 4096, 4096, 8, 20, 256),
    # SmolLM2-135M's hidden size (its q_proj and o_proj are 576 x 576).
    "smollm2": BenchmarkSetting("smollm2", 1000, 576, 576, 8, 20, 256),
    # Small enough for a test run of the command.
    "tiny": BenchmarkSetting("tiny", 50, 64, 64, 4, 5, 32),
}


@dataclass(frozen=True)
class MethodTiming:
    """Time of ``select(x)`` per token: the fastest repeat, and the median of all repeats."""

    us_per_token: float
    flops_per_token: int
    ratio_to_seqr: float
    median_us_per_token: float


@dataclass(frozen=True)
class SelectionResult:
    """``select(x)`` timings of one setting, and SEQR's floor at the matmul rate of the same rounds."""

    setting: BenchmarkSetting
    methods: dict[str, MethodTiming]
    floor_us_per_token: float
    seqr_over_floor: float
    matmul_gflops: float


@dataclass(frozen=True)
class LayerResult:
    """One routed layer's forward (base output included) at N adapters, for one implementation."""

    implementation: str
    n_adapters: int
    ms_per_forward: float
    peak_memory_mib: float
    median_ms_per_forward: float


@dataclass
class RoutingBenchmarkReport:
    machine: dict[str, str | int | float]
    selection: list[SelectionResult] = field(default_factory=list)
    layer: list[LayerResult] = field(default_factory=list)
    layer_shape: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "machine": self.machine,
            "selection": {
                result.setting.name: {
                    "setting": asdict(result.setting),
                    "methods": {name: asdict(timing) for name, timing in result.methods.items()},
                    "floor_us_per_token": result.floor_us_per_token,
                    "seqr_over_floor": result.seqr_over_floor,
                    "matmul_gflops": result.matmul_gflops,
                }
                for result in self.selection
            },
            "layer": {"shape": self.layer_shape, "results": [asdict(result) for result in self.layer]},
            "notes": self.notes,
        }


def describe_machine(device: torch.device) -> dict[str, str | int | float]:
    info: dict[str, str | int | float] = {
        "device": str(device),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count() or 0,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["seqr_kernels"] = str(native.status())
    return info


def _cpu_model() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(encoding="utf-8"), flags=re.MULTILINE)
        if found:
            return found.group(1).strip()
    return platform.processor() or "unknown"


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_matmul(device: torch.device, size: int = FLOOR_MATMUL_SIZE) -> tuple[Callable[[], object], int]:
    """Return a dense float32 (size x size) matrix multiply to time, and its FLOP count."""
    generator = torch.Generator(device="cpu").manual_seed(0)
    left = torch.randn(size, size, generator=generator).to(device)
    right = torch.randn(size, size, generator=generator).to(device)
    return (lambda: left @ right), 2 * size**3


def random_library(setting: BenchmarkSetting, device: torch.device, seed: int = 0) -> tuple[StackedFactors, torch.Tensor]:
    """Return random stacked factors for ``setting`` and x (T, n), both on ``device``."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    a = torch.randn(setting.rank, setting.in_features, generator=generator) / setting.in_features**0.5
    b = torch.randn(setting.n_adapters, setting.out_features, setting.rank, generator=generator)
    q, r = torch.linalg.qr(b)  # (N, m, r), (N, r, r)
    x = torch.randn(setting.tokens, setting.in_features, generator=generator)
    factors = StackedFactors(a=a.to(device), q=q.to(device), r=r.to(device))
    return factors, x.to(device)


@dataclass(frozen=True)
class Timing:
    best: float
    median: float


def interleaved_seconds(
    calls: dict[str, Callable[[], object]], device: torch.device, repeats: int, warmup: int = 1
) -> dict[str, Timing]:
    """Return the fastest and the median wall time of each call, timing one call of each per round.

    Interleaving spreads load from other processes over all calls alike, which keeps the ratios
    between them meaningful on a shared machine. Each timed call directly follows an untimed one,
    so it finds its inputs in cache, as a layer does in a forward pass, whatever ran before it.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            call()
            _synchronize(device)
            start = time.perf_counter()
            call()
            _synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: Timing(best=min(values), median=statistics.median(values)) for name, values in times.items()}


def benchmark_selection(
    setting: BenchmarkSetting,
    device: torch.device,
    repeats: int,
    methods: Sequence[RoutingMethod] = SELECTION_METHODS,
) -> SelectionResult:
    """Time ``select(x)`` of every method on one random library; SEQR's time includes z = A x.

    The reference matmul of the floor is timed in the same interleaved rounds as the methods.
    """
    factors, x = random_library(setting, device)
    routers = {
        method: build_router(factors, RoutingConfig(method=method, lag_k=min(setting.lag_k, setting.n_adapters)))
        for method in (RoutingMethod.SEQR, *[m for m in methods if m is not RoutingMethod.SEQR])
    }
    matmul, matmul_flops = reference_matmul(device)
    calls: dict[str, Callable[[], object]] = {
        method.value: (lambda router=router: router.select(x)) for method, router in routers.items()
    }
    seconds = interleaved_seconds(calls | {"matmul": matmul}, device, repeats)
    flops_per_second = matmul_flops / seconds["matmul"].best
    seqr_us = seconds[RoutingMethod.SEQR.value].best * 1e6 / setting.tokens
    floor_us = routers[RoutingMethod.SEQR].flops_per_token() / flops_per_second * 1e6
    timings = {}
    for method, router in routers.items():
        timing = seconds[method.value]
        us = timing.best * 1e6 / setting.tokens
        timings[method.value] = MethodTiming(
            us_per_token=us,
            flops_per_token=router.flops_per_token(),
            ratio_to_seqr=us / seqr_us,
            median_us_per_token=timing.median * 1e6 / setting.tokens,
        )
        logger.info("%s %s: %.3f us per token", setting.name, method.value, us)
    return SelectionResult(
        setting=setting,
        methods=timings,
        floor_us_per_token=floor_us,
        seqr_over_floor=seqr_us / floor_us,
        matmul_gflops=flops_per_second / 1e9,
    )


def _peak_memory_mib(call: Callable[[], object], device: torch.device) -> float:
    """Return the peak memory ``call`` adds above what is in use before it, in MiB.

    CUDA: the allocator's peak. CPU: the rise of the process's peak resident set (VmHWM, reset
    through /proc/self/clear_refs) after glibc's ``malloc_trim`` has returned free heap pages, so
    that reused free memory also counts. Linux only; it includes allocator slack.
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    status = Path("/proc/self/status")
    if not status.is_file():
        return float("nan")
    _trim_heap()
    Path("/proc/self/clear_refs").write_text("5", encoding="ascii")
    before = _status_kib(status, "VmRSS")
    call()
    return (_status_kib(status, "VmHWM") - before) / 1024


def _trim_heap() -> None:
    """Return free heap memory to the kernel (glibc's malloc_trim); a no-op without glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        logger.debug("malloc_trim is unavailable; peak memory may miss reused free memory")


def _status_kib(status: Path, key: str) -> int:
    found = re.search(rf"^{key}:\s+(\d+) kB", status.read_text(encoding="ascii"), flags=re.MULTILINE)
    if found is None:
        raise InvalidInputError(f"{status} has no {key} line; peak memory cannot be measured here")
    return int(found.group(1))


def benchmark_layer_against_peft(
    adapter_counts: Sequence[int], setting: BenchmarkSetting, device: torch.device, repeats: int
) -> list[LayerResult]:
    """Time one routed layer's forward for SEQR and ARROW here and PEFT's Arrow layer, all top-1.

    Every implementation gets the same base ``nn.Linear`` and the same A and B; PEFT's forward is
    what its Arrow variant runs: the base output plus ``ArrowLoraLinearLayer``'s routed delta.
    """
    try:
        from peft.tuners.lora.arrow import ArrowLoraLinearLayer
        from peft.tuners.lora.config import ArrowConfig
    except ImportError as error:
        raise InvalidInputError("the layer comparison needs peft; install the dev extra or pass --no-layer") from error

    results: list[LayerResult] = []
    for count in adapter_counts:
        shape = BenchmarkSetting("layer", count, setting.in_features, setting.out_features, setting.rank, 1, setting.tokens)
        factors, x = random_library(shape, device, seed=count)
        x = x.unsqueeze(0)  # (1, T, n): one sequence of T tokens
        base = nn.Linear(shape.in_features, shape.out_features, bias=False).to(device)
        forwards: dict[str, Callable[[], torch.Tensor]] = {}
        for method in (RoutingMethod.SEQR, RoutingMethod.ARROW):
            layer = RoutedLinear(
                base, "bench", factors, RoutingConfig(method=method), 2.0, Granularity.TOKEN, RoutingState()
            )
            forwards[f"seqr.routing {method.value}"] = lambda layer=layer: layer(x)

        names = [f"task_{i}" for i in range(count)]
        lora_a = nn.ModuleDict({name: nn.Linear(shape.in_features, shape.rank, bias=False) for name in names}).to(device)
        lora_b = nn.ModuleDict({name: nn.Linear(shape.rank, shape.out_features, bias=False) for name in names}).to(device)
        b = factors.b()
        with torch.no_grad():
            for i, name in enumerate(names):
                lora_a[name].weight.copy_(factors.a)
                lora_b[name].weight.copy_(b[i])
        config = ArrowConfig(top_k=1, rng_seed=0)
        config.task_adapter_names = names
        config.gks_adapter_names = []
        arrow = ArrowLoraLinearLayer(in_features=shape.in_features, arrow_config=config).to(device)
        arrow.build_prototypes(lora_a, lora_b)
        scaling = dict.fromkeys(names, 2.0)
        dropout = nn.Identity()
        forwards["peft arrow"] = lambda: base(x) + arrow(x, lora_a, lora_b, dropout, scaling)

        with torch.no_grad():
            seconds = interleaved_seconds(forwards, device, repeats)
            for implementation, forward in forwards.items():
                peak = _peak_memory_mib(forward, device)
                timing = seconds[implementation]
                results.append(LayerResult(implementation, count, timing.best * 1e3, peak, timing.median * 1e3))
                logger.info("layer N=%d %s: %.3f ms, %.1f MiB", count, implementation, timing.best * 1e3, peak)
        del forwards, arrow, lora_a, lora_b, factors
    return results


def run_routing_benchmark(
    setting_names: Sequence[str] = ("table1", "smollm2"),
    *,
    device: str = "cpu",
    repeats: int = 7,
    layer_adapter_counts: Sequence[int] = (10, 100, 1000),
    layer_setting: str = "smollm2",
    threads: int | None = None,
) -> RoutingBenchmarkReport:
    """Run the selection benchmark for each named setting, then the layer comparison with PEFT.

    An empty ``layer_adapter_counts`` skips the layer comparison. ``threads`` sets torch's
    intra-op thread count for the run (default: leave it). Raises :class:`InvalidInputError` for
    an unknown setting or device.
    """
    unknown = [name for name in [*setting_names, layer_setting] if name not in SETTINGS]
    if unknown:
        raise InvalidInputError(f"unknown benchmark setting {unknown[0]!r}; use one of: {', '.join(SETTINGS)}")
    if repeats < 1:
        raise InvalidInputError(f"repeats must be at least 1, got {repeats}")
    if threads is not None:
        if threads < 1:
            raise InvalidInputError(f"threads must be at least 1, got {threads}")
        torch.set_num_threads(threads)
    target = torch.device(device)
    if target.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInputError(f"device {device!r} was requested but CUDA is not available; use --device cpu")

    with torch.inference_mode():
        report = RoutingBenchmarkReport(machine=describe_machine(target))
        for name in setting_names:
            report.selection.append(benchmark_selection(SETTINGS[name], target, repeats))
    if layer_adapter_counts:
        shape = SETTINGS[layer_setting]
        report.layer_shape = {"in_features": shape.in_features, "out_features": shape.out_features, "rank": shape.rank, "tokens": shape.tokens}
        report.layer = benchmark_layer_against_peft(layer_adapter_counts, shape, target, repeats)
    return report


def format_report(report: RoutingBenchmarkReport) -> str:
    """Render a report as plain-text tables."""
    machine = report.machine
    lines = [
        "times: the fastest of the repeats (methods interleaved); medians in the last column",
        f"machine: {machine['cpu']}, {machine['cpu_count']} CPUs, {machine['torch_threads']} torch threads, "
        f"device {machine['device']}{', ' + str(machine['gpu']) if 'gpu' in machine else ''}, torch {machine['torch']}",
    ]
    if "seqr_kernels" in machine:
        lines.append(f"SEQR on the CPU uses {machine['seqr_kernels']}")
    for result in report.selection:
        s = result.setting
        lines += [
            "",
            f"select(x), {s.name}: N={s.n_adapters} n={s.in_features} m={s.out_features} r={s.rank} "
            f"LAG k={s.lag_k}, {s.tokens} tokens",
            f"{'method':<8} {'us/token':>12} {'FLOPs/token':>14} {'time / SEQR':>12} {'median us/token':>16}",
        ]
        for method, timing in result.methods.items():
            lines.append(
                f"{method:<8} {timing.us_per_token:>12.3f} {timing.flops_per_token:>14,} "
                f"{timing.ratio_to_seqr:>11.1f}x {timing.median_us_per_token:>16.3f}"
            )
        lines.append(
            f"floor: SEQR's FLOPs at the dense float32 rate of a {FLOOR_MATMUL_SIZE}x{FLOOR_MATMUL_SIZE} matmul "
            f"timed in the same rounds ({result.matmul_gflops:.1f} GFLOP/s) = {result.floor_us_per_token:.3f} "
            f"us/token; SEQR is {result.seqr_over_floor:.1f}x the floor"
        )
    if report.layer:
        shape = report.layer_shape
        lines += [
            "",
            f"one routed layer forward (base included), n={shape['in_features']} m={shape['out_features']} "
            f"r={shape['rank']}, {shape['tokens']} tokens, top-1",
            f"{'implementation':<22} {'N':>6} {'ms/forward':>11} {'peak MiB':>9} {'median ms':>10}",
        ]
        for result in report.layer:
            lines.append(
                f"{result.implementation:<22} {result.n_adapters:>6} {result.ms_per_forward:>11.3f} "
                f"{result.peak_memory_mib:>9.1f} {result.median_ms_per_forward:>10.3f}"
            )
    lines += report.notes
    return "\n".join(lines)
