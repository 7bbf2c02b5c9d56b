"""Routed inference against the base model, PEFT's Arrow model and PEFT's mixed-batch LoRA, same run.

Every adapter is synthetic: for each adapted module (q/k/v/o of every layer) one random shared A
(r, n) and, per adapter, a random B = Q R with calibration statistics mu = 1, sigma = 0.5. The same
A and B go to ``seqr.routing`` and, written as PEFT LoRA directories, to PEFT.

Measured, each as the fastest of ``--repeats`` timed calls, interleaved round by round with the
base model's call so that ratios share the machine's load:

- forward: one full forward (logits of every token) of ``--batch`` prompts of ``--tokens`` tokens,
  for every N in ``--adapters`` and every rank in ``--ranks``, SEQR routed per token, top-1;
- PEFT: ``create_arrow_model`` (top-1) and a ``PeftModel`` forward with ``adapter_names`` (one
  adapter per prompt, chosen round robin), for every N in ``--peft-adapters``, rank ``--ranks[0]``;
- generation: greedy ``generate`` of ``--new-tokens`` tokens after ``--prompt-tokens``-token
  prompts, routed among ``--generate-adapters`` adapters, with the KV cache.

Example (the recorded run):
    python benchmarks/bench_inference.py --adapters 1,10,100,1000 --ranks 8,32 --peft-adapters 10,100 \
        --json inference.json
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from seqr.routing import AdapterFactors, ModuleFactors, attach_routing
from seqr.routing.benchmark import describe_machine
from seqr.training.base_model import load_base_model
from seqr.training.library import DEFAULT_TARGETS

logger = logging.getLogger("bench_inference")

SYNTHETIC_MU = 1.0
SYNTHETIC_SIGMA = 0.5


@dataclass(frozen=True)
class Measurement:
    """One timed call against the base model's call of the same rounds."""

    name: str
    adapters: int
    rank: int
    seconds: float
    base_seconds: float
    median_seconds: float
    base_median_seconds: float
    cpu_seconds: float
    base_cpu_seconds: float

    @property
    def ratio(self) -> float:
        return self.seconds / self.base_seconds

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_seconds / self.base_cpu_seconds


@dataclass
class Times:
    """Wall-clock and process CPU seconds of the timed calls of one name."""

    wall: list[float]
    cpu: list[float]


@dataclass(frozen=True)
class SyntheticLibrary:
    """Shared A per module and N adapters' factors, built from stacked random B (N, m, r)."""

    shared_a: dict[str, torch.Tensor]  # module -> (r, n)
    b: dict[str, torch.Tensor]  # module -> (N, m, r); empty unless asked for
    adapters: dict[str, AdapterFactors]

    @property
    def rank(self) -> int:
        return int(next(iter(self.shared_a.values())).shape[0])


def target_modules(model: nn.Module) -> dict[str, nn.Linear]:
    """Return the q/k/v/o projections of every layer, by full module name."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in DEFAULT_TARGETS
    }


def synthetic_library(
    modules: dict[str, nn.Linear], count: int, rank: int, seed: int = 0, *, keep_b: bool = False
) -> SyntheticLibrary:
    """Draw one A per module and ``count`` random adapters; B is scaled so the update stays small.

    ``keep_b`` keeps every B for writing PEFT directories. At N = 1,000 and rank 32 the B, the
    factors and the stacked routing tensors together exceeded the 23 GiB of the benchmark machine.
    """
    generator = torch.Generator().manual_seed(seed)
    device = next(iter(modules.values())).weight.device
    shared_a: dict[str, torch.Tensor] = {}
    b: dict[str, torch.Tensor] = {}
    per_adapter: list[dict[str, ModuleFactors]] = [{} for _ in range(count)]
    for name, linear in modules.items():
        n, m = linear.in_features, linear.out_features
        shared_a[name] = torch.randn(rank, n, generator=generator) / n**0.5
        stacked = torch.randn(count, m, rank, generator=generator) * 0.01  # (N, m, r)
        q, r = torch.linalg.qr(stacked)  # (N, m, r), (N, r, r)
        if keep_b:
            b[name] = stacked
        q, r = q.to(device), r.to(device)
        for i in range(count):
            per_adapter[i][name] = ModuleFactors(q=q[i], r=r[i], mu=SYNTHETIC_MU, sigma=SYNTHETIC_SIGMA)
    adapters = {f"silo-{i:04d}": AdapterFactors(modules) for i, modules in enumerate(per_adapter)}
    return SyntheticLibrary(shared_a=shared_a, b=b, adapters=adapters)


def interleaved(calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, Times]:
    """Time each call ``repeats`` times, one call of each per round, after ``warmup`` untimed rounds.

    Process CPU time is recorded next to wall time: on a CPU shared with other jobs, CPU time
    counts only this process's work, so it varies less than wall time.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {name: Times(wall=[], cpu=[]) for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            synchronize()
            start, cpu_start = time.perf_counter(), time.process_time()
            call()
            synchronize()
            times[name].wall.append(time.perf_counter() - start)
            times[name].cpu.append(time.process_time() - cpu_start)
    return times


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def against_base(name: str, adapters: int, rank: int, times: dict[str, Times]) -> Measurement:
    timed, base = times[name], times["base"]
    result = Measurement(
        name=name, adapters=adapters, rank=rank,
        seconds=min(timed.wall), base_seconds=min(base.wall),
        median_seconds=statistics.median(timed.wall), base_median_seconds=statistics.median(base.wall),
        cpu_seconds=min(timed.cpu), base_cpu_seconds=min(base.cpu),
    )
    logger.info("%s N=%d r=%d: %.3f s, base %.3f s, ratio %.3f; CPU time ratio %.3f", name, adapters, rank,
                result.seconds, result.base_seconds, result.ratio, result.cpu_ratio)
    return result


def measure_seqr_forward(base: nn.Module, input_ids: torch.Tensor, counts: Sequence[int], ranks: Sequence[int],
                         repeats: int) -> list[Measurement]:
    """Time SEQR-routed forwards against the base model for every (rank, N)."""
    routed_model = copy.deepcopy(base)
    modules = target_modules(routed_model)
    results: list[Measurement] = []
    for rank in ranks:
        for count in counts:
            library = synthetic_library(modules, count, rank)
            start = time.perf_counter()
            routed = attach_routing(routed_model, library.shared_a, library.adapters, scaling=2.0)
            attach_seconds = time.perf_counter() - start
            # The routed layers hold stacked copies; free the per-adapter factors before timing.
            del library
            gc.collect()
            logger.info("attached N=%d r=%d in %.2f s", count, rank, attach_seconds)
            calls = {
                "base": lambda: base(input_ids=input_ids, use_cache=False),
                "seqr": lambda: routed_model(input_ids=input_ids, use_cache=False),
            }
            results.append(against_base("seqr", count, rank, interleaved(calls, repeats)))
            routed.detach()
            del routed, calls
            gc.collect()
    return results


def write_peft_adapters(library: SyntheticLibrary, directory: Path) -> list[str]:
    """Write every adapter as a PEFT LoRA directory (lora_A = shared A, lora_B = B); return the paths."""
    names = list(library.shared_a)
    short_names = sorted({name.rsplit(".", 1)[-1] for name in names})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": library.rank, "lora_alpha": 2 * library.rank,
        "lora_dropout": 0.0, "target_modules": short_names, "bias": "none",
    }
    count = len(library.adapters)
    paths: list[str] = []
    for i in range(count):
        path = directory / f"adapter-{i:04d}"
        path.mkdir(parents=True)
        tensors: dict[str, torch.Tensor] = {}
        for name in names:
            tensors[f"base_model.model.{name}.lora_A.weight"] = library.shared_a[name].contiguous()
            tensors[f"base_model.model.{name}.lora_B.weight"] = library.b[name][i].contiguous()
        save_file(tensors, str(path / "adapter_model.safetensors"))
        (path / "adapter_config.json").write_text(json.dumps(config), encoding="utf-8")
        paths.append(str(path))
    return paths


def measure_peft(base: nn.Module, input_ids: torch.Tensor, counts: Sequence[int], rank: int,
                 repeats: int) -> tuple[list[Measurement], dict[int, float]]:
    """Time PEFT's Arrow model and its mixed-batch LoRA forward against the base, with SEQR in the same rounds."""
    from peft import create_arrow_model
    from peft.tuners.lora.config import ArrowConfig

    results: list[Measurement] = []
    setup_seconds: dict[int, float] = {}
    for count in counts:
        peft_base = copy.deepcopy(base)
        seqr_model = copy.deepcopy(base)
        library = synthetic_library(target_modules(peft_base), count, rank, keep_b=True)
        routed = attach_routing(seqr_model, library.shared_a, library.adapters, scaling=2.0)
        with tempfile.TemporaryDirectory(prefix="seqr-bench-peft-") as directory:
            paths = write_peft_adapters(library, Path(directory))
            start = time.perf_counter()
            arrow_model = create_arrow_model(peft_base, paths, ArrowConfig(top_k=1, rng_seed=0))
            setup_seconds[count] = time.perf_counter() - start
        arrow_model.eval()
        logger.info("create_arrow_model with %d adapters took %.1f s", count, setup_seconds[count])
        batch = input_ids.shape[0]
        per_prompt = [f"task_{i % count}" for i in range(batch)]

        def mixed_batch() -> object:
            return arrow_model(input_ids=input_ids, use_cache=False, adapter_names=per_prompt)

        calls = {
            "base": lambda: base(input_ids=input_ids, use_cache=False),
            "seqr": lambda: seqr_model(input_ids=input_ids, use_cache=False),
            "peft arrow": lambda: arrow_model(input_ids=input_ids, use_cache=False),
            "peft mixed batch": mixed_batch,
        }
        times = interleaved(calls, repeats)
        for name in ("seqr", "peft arrow", "peft mixed batch"):
            results.append(against_base(name, count, rank, times))
        routed.detach()
        del arrow_model, peft_base, seqr_model, routed, library, calls
        gc.collect()
    return results, setup_seconds


def measure_generation(base: nn.Module, count: int, rank: int, batch: int, prompt_tokens: int, new_tokens: int,
                       repeats: int) -> dict[str, float]:
    """Time greedy generation with the KV cache, routed among ``count`` adapters, against the base model."""
    routed_model = copy.deepcopy(base)
    library = synthetic_library(target_modules(routed_model), count, rank)
    routed = attach_routing(routed_model, library.shared_a, library.adapters, scaling=2.0)
    device = next(base.parameters()).device
    input_ids = torch.randint(100, 10_000, (batch, prompt_tokens), generator=torch.Generator().manual_seed(1)).to(device)
    mask = torch.ones_like(input_ids)
    settings = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False, "pad_token_id": 0}

    def generate(model: nn.Module) -> Callable[[], object]:
        def call() -> object:
            output = model.generate(input_ids=input_ids, attention_mask=mask, **settings)
            routed.reset()
            return output
        return call

    times = interleaved({"base": generate(base), "seqr": generate(routed_model)}, repeats)
    routed.detach()
    generated = batch * new_tokens
    result = {
        "adapters": count, "rank": rank, "batch": batch, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
        "base_seconds": min(times["base"].wall), "seqr_seconds": min(times["seqr"].wall),
        "base_cpu_seconds": min(times["base"].cpu), "seqr_cpu_seconds": min(times["seqr"].cpu),
        "base_tokens_per_second": generated / min(times["base"].wall),
        "seqr_tokens_per_second": generated / min(times["seqr"].wall),
    }
    result["throughput_ratio"] = result["seqr_tokens_per_second"] / result["base_tokens_per_second"]
    result["cpu_time_ratio"] = result["seqr_cpu_seconds"] / result["base_cpu_seconds"]
    logger.info("generation N=%d: base %.1f tok/s, seqr %.1f tok/s", count, result["base_tokens_per_second"],
                result["seqr_tokens_per_second"])
    return result


def parse_counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapters", default="1,10,100,1000", help="Comma-separated N for the SEQR forward.")
    parser.add_argument("--ranks", default="8,32", help="Comma-separated LoRA ranks; PEFT uses the first.")
    parser.add_argument("--peft-adapters", default="10,100", help="Comma-separated N for PEFT; empty to skip.")
    parser.add_argument("--generate-adapters", type=int, default=100, help="N for the generation measurement; 0 skips it.")
    parser.add_argument("--batch", type=int, default=8, help="Prompts per forward.")
    parser.add_argument("--tokens", type=int, default=256, help="Tokens per prompt in the forward measurements.")
    parser.add_argument("--prompt-tokens", type=int, default=64, help="Prompt tokens in the generation measurement.")
    parser.add_argument("--new-tokens", type=int, default=32, help="Generated tokens per prompt.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed rounds; the fastest is reported.")
    parser.add_argument("--peft-repeats", type=int, default=2,
                        help="Timed rounds of the PEFT comparison (PEFT's Arrow computes every adapter for every token).")
    parser.add_argument("--threads", type=int, default=None, help="Torch intra-op threads (default: torch's choice).")
    parser.add_argument("--device", default="cpu", help="Torch device, for example cpu or cuda.")
    parser.add_argument("--json", type=Path, default=None, help="Write the results as JSON to this file.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", force=True)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    base_model = load_base_model()
    device = torch.device(args.device)
    base = base_model.model.to(device).eval()
    input_ids = torch.randint(100, 10_000, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0)).to(device)
    ranks = parse_counts(args.ranks)
    report: dict[str, object] = {
        "machine": describe_machine(device),
        "command": " ".join(sys.argv),
        "batch": args.batch, "tokens": args.tokens, "repeats": args.repeats, "peft_repeats": args.peft_repeats,
        "adapted_modules": len(target_modules(base)),
    }
    with torch.inference_mode():
        forward = measure_seqr_forward(base, input_ids, parse_counts(args.adapters), ranks, args.repeats)
        report["forward"] = [{**asdict(m), "ratio": m.ratio, "cpu_ratio": m.cpu_ratio} for m in forward]
        if args.peft_adapters.strip():
            peft, setup = measure_peft(base, input_ids, parse_counts(args.peft_adapters), ranks[0], args.peft_repeats)
            report["peft"] = [{**asdict(m), "ratio": m.ratio, "cpu_ratio": m.cpu_ratio} for m in peft]
            report["peft_arrow_setup_seconds"] = setup
        if args.generate_adapters > 0:
            report["generation"] = measure_generation(
                base, args.generate_adapters, ranks[0], args.batch, args.prompt_tokens, args.new_tokens, args.repeats
            )
    text = json.dumps(report, indent=2)
    if args.json is not None:
        args.json.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
