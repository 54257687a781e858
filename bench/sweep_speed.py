"""A sweep of N values in one queue item vs N queue items of the same edit, whole-prompt time, same run.

Runs ComfyUI's real executor in-process (one PromptExecutor with its normal cache, as a server keeps
it between queue items) on the tests' tiny FLUX text encoders and transformer: N prompts that differ
only in the Instruction Sliders strength (each re-runs the knob node and the sampler; the cache keeps
the text encode), against one prompt with Kontext Strength Sweep + Kontext Sweep Sampler. Reports the
median of --rounds repetitions of each, interleaved.

  python bench/sweep_speed.py [--count 9] [--rounds 3] [--latent 16] [--steps 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(PACK_DIR / "tests"))  # the tests' tiny models and test-only nodes


class _Server:
    client_id = None
    last_node_id = None

    def send_sync(self, event, data, sid=None):
        pass

    def queue_updated(self):
        pass


def graph(count: int, latent: int, steps: int, strength: float | None, seed: int = 7) -> dict:
    sampler = {"seed": seed, "steps": steps, "cfg": 1.0, "sampler_name": "euler", "scheduler": "simple",
               "denoise": 1.0, "positive": ["5", 0], "negative": ["5", 0], "latent_image": ["4", 0]}
    g = {
        "1": {"class_type": "KSTestTinyFlux", "inputs": {"seed": 0, "pooled_dim": 64}},
        "2": {"class_type": "KSTestTinyClip", "inputs": {"seed": 3}},
        "3": {"class_type": "KontextMultiInstructionEncode",
              "inputs": {"clip": ["2", 0], "instructions": "make the sky stormy\nturn the car red"}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": latent * 8, "height": latent * 8, "batch_size": 1}},
        "5": {"class_type": "ReferenceLatent", "inputs": {"conditioning": ["3", 0], "latent": ["4", 0]}},
        "7": {"class_type": "KontextInstructionSliders",
              "inputs": {"model": ["1", 0], "conditioning": ["5", 0], "strengths": f"1, {strength if strength is not None else 1}"}},
    }
    if strength is None:
        g["8"] = {"class_type": "KontextStrengthSweep", "inputs": {"start": 0.0, "end": 2.0, "count": count,
                                                                   "spacing": "linear", "instruction_index": 2}}
        g["9"] = {"class_type": "KontextSweepSampler", "inputs": {"model": ["7", 0], "sweep": ["8", 0],
                                                                  "max_batch": 0, **sampler}}
    else:
        g["9"] = {"class_type": "KSampler", "inputs": {"model": ["7", 0], **sampler}}
    g["10"] = {"class_type": "KSTestLatentReport", "inputs": {"samples": ["9", 0]}}
    return g


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=9, help="sweep values (= separate queue items)")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions of each variant (median)")
    parser.add_argument("--latent", type=int, default=16, help="latent side in cells (pixels / 8)")
    parser.add_argument("--steps", type=int, default=4, help="sampling steps")
    parser.add_argument("--json", help="write the numbers to this file")
    args = parser.parse_args(argv)

    import ks_fixtures as F
    F.import_comfyui()
    import execution
    import nodes
    for module in (F.PACK_DIR, F.PACK_DIR / "tests" / "comfy_test_nodes"):
        assert asyncio.run(nodes.load_custom_node(str(module))), module
    for extra in ("nodes_edit_model.py", "nodes_sd3.py"):  # ReferenceLatent, EmptySD3LatentImage
        assert asyncio.run(nodes.load_custom_node(str(F.find_comfyui() / "comfy_extras" / extra),
                                                  module_parent="comfy_extras")), extra

    executor = execution.PromptExecutor(_Server(), cache_type=execution.CacheType.CLASSIC, cache_args={"lru": 0,
                                                                                                        "ram": 0})

    def run(prompt):
        valid, error, outputs, node_errors = asyncio.run(execution.validate_prompt("bench", prompt, None))
        assert valid, (error, node_errors)
        executor.execute(prompt, "bench", {}, outputs)
        assert executor.success

    values = [2.0 * k / (args.count - 1) for k in range(args.count)]
    run(graph(args.count, args.latent, args.steps, None))  # warm-up: models built, caches filled
    separate, swept = [], []
    for r in range(args.rounds):
        seed = 100 + r  # a new seed per round: nothing downstream of the seed is served from the cache
        order = ["separate", "sweep"] if r % 2 == 0 else ["sweep", "separate"]
        for variant in order:
            start = time.perf_counter()
            if variant == "separate":
                for v in values:
                    run(graph(args.count, args.latent, args.steps, v, seed))
                separate.append(time.perf_counter() - start)
            else:
                run(graph(args.count, args.latent, args.steps, None, seed))
                swept.append(time.perf_counter() - start)
    result = {"count": args.count, "latent": args.latent, "steps": args.steps,
              "separate_s": statistics.median(separate), "sweep_s": statistics.median(swept)}
    result["ratio_sweep_over_separate"] = result["sweep_s"] / result["separate_s"]
    print(f"{args.count} values, latent {args.latent}x{args.latent}, {args.steps} steps: {args.count} queue items "
          f"{result['separate_s']:.2f} s, one sweep {result['sweep_s']:.2f} s "
          f"(sweep / separate = {result['ratio_sweep_over_separate']:.2f})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
