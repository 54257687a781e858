"""The training loop under accelerate, one for every method (``method:`` in the config).

A method (a ``Method`` subclass registered under its name, ``registry.py``: e.g. ``methods/kontinuous``: flow
matching on (source, strength, target) pairs; ``methods/slideredit``: PPS / SPPS self-distillation) supplies the
data rows, model and loss; the loop owns the rest: accelerate, optimizer, checkpoints, resume, logging, validation calls.

Determinism, which is what makes resume exact: the rows of step k (e.g. which trajectory, which frame,
noise, sigma, slider dropout) are a pure function of (seed, k, global row), so the data order is
the step counter and a checkpoint only needs weights, optimizer, scheduler and the step. A resumed
run therefore computes the very same steps an uninterrupted one would.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import TrainConfig, check_ready_to_train, save_resolved_config
from .features import FeatureCache
from .registry import method_for

log = logging.getLogger("kontext_sliders.trainer")



def parameter_groups(config: TrainConfig, model: torch.nn.Module) -> list[dict]:
    """The trainable parameters as optimiser groups: with ``optim.transformer_lr`` set, the base transformer's own
    weights (``transformer.*``, not a LoRA's) at that rate, the rest at ``optim.lr``."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if config.optim.transformer_lr is None:
        return [{"params": [p for _, p in named]}]
    is_base = [n.startswith("transformer.") and "lora_" not in n for n, _ in named]
    groups = [{"params": [p for (_, p), b in zip(named, is_base) if not b]},
              {"params": [p for (_, p), b in zip(named, is_base) if b], "lr": config.optim.transformer_lr}]
    return [g for g in groups if g["params"]]


def make_optimizer(config: TrainConfig, params: list):
    """AdamW (or 8-bit AdamW) over ``params`` (tensors or ``parameter_groups``) and its lr schedule."""
    o = config.optim
    if o.use_8bit_adam:
        try:
            import bitsandbytes as bnb
        except ImportError:
            raise RuntimeError("optim.use_8bit_adam needs bitsandbytes: pip install bitsandbytes") from None
        optimizer = bnb.optim.AdamW8bit(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps)
    else:
        # foreach on every device (torch picks it only on CUDA): the same numbers, bit for bit, a quarter less
        # optimiser time for the demos' hundred small tensors on the CPU
        optimizer = torch.optim.AdamW(params, lr=o.lr, betas=o.betas, weight_decay=o.weight_decay, eps=o.eps,
                                      foreach=True)
    total = config.run.max_steps

    def factor(step: int) -> float:
        warm = min(1.0, (step + 1) / o.warmup_steps) if o.warmup_steps else 1.0
        if o.scheduler == "cosine":
            return warm * 0.5 * (1 + math.cos(math.pi * min(step, total) / max(total, 1)))
        return warm

    if o.scheduler not in ("constant", "cosine"):
        raise ValueError(f"optim.scheduler must be 'constant' or 'cosine', got {o.scheduler!r}")
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass
class TrainResult:
    output_dir: Path
    steps: int
    last_loss: float
    skipped: dict
    seconds_per_step: float
    peak_memory_bytes: int
    is_main: bool = True
    rank_digests: list[str] | None = None
    losses: list[float] | None = None  # (this session's steps) the loss of every step, for plots


class Method:
    """What a method gives the one loop of ``train``: ``prepare`` (encode the data into the feature cache,
    set ``dataset``, ``cache``, ``codec``; called on the main process first), ``build_model``, ``rows`` (a
    step's global batch, a pure function of (seed, step)), ``load`` (this process's rows as tensors),
    ``loss``, ``validate`` and the ``skipped`` counter of unusable samples (``dataset.skipped``)."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self.dataset = self.cache = self.codec = None

    @property
    def skipped(self):
        return self.dataset.skipped

    def prepare(self, cache: FeatureCache, device: torch.device, progress: bool) -> None:
        raise NotImplementedError

    def build_model(self) -> torch.nn.Module:
        raise NotImplementedError

    def rows(self, seed: int, step: int, global_batch: int) -> list:
        raise NotImplementedError

    def load(self, rows: list, device: torch.device) -> dict:
        raise NotImplementedError

    def loss(self, model, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def validate(self, model, prefix: Path) -> None:
        raise NotImplementedError


def make_method(config: TrainConfig) -> Method:
    """The ``Method`` that ``config.method`` names, from the method registry (the engine imports no method)."""
    return method_for(config.method).factory(config)


def train(config: TrainConfig, resume: str | None = None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    check_ready_to_train(config)  # before anything is written into output_dir
    run = config.run
    out = Path(run.output_dir)
    # cpu=True without a GPU: torchrun / accelerate-launched processes then form a gloo (MULTI_CPU) group
    accelerator = Accelerator(mixed_precision=run.mixed_precision, cpu=not torch.cuda.is_available(),
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)])
    main = accelerator.is_main_process
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_resolved_config(config, out / "config.yaml")
    cache = FeatureCache(config.data.cache_dir or out / "cache")
    method = make_method(config)
    with accelerator.main_process_first():  # rank 0 encodes, the others find the cache filled
        method.prepare(cache, accelerator.device, progress=main and run.progress)

    torch.manual_seed(run.seed)  # model init (scratch weights, LoRA A, projector): same on every rank
    model = method.build_model().to(accelerator.device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(config, parameter_groups(config, model))
    start = 0
    if resume:
        path = latest_checkpoint(out) if resume == "latest" else Path(resume)
        if path is None:
            log.info("--resume latest: no checkpoint in %s yet, starting from step 0", out)
        else:
            trainable, state = load_checkpoint(path)
            if set(trainable) != {n for n, p in model.named_parameters() if p.requires_grad}:
                raise ValueError(f"{path} was written for another model/config (trainable tensors differ)")
            model.load_state_dict(trainable, strict=False)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start = int(state["step"])
            log.info("resumed from %s at step %d", path, start)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(ddp_model)
    writer = _tensorboard(out) if (main and run.tensorboard) else None
    config_text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    bar = _progress(start, run.max_steps) if (main and run.progress) else None

    global_batch = run.batch_size * accelerator.num_processes
    loss_value, times, losses = float("nan"), [], []
    if accelerator.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(start, run.max_steps):
        t0 = time.perf_counter()
        rows = method.rows(run.seed, step, global_batch)
        mine = rows[accelerator.process_index * run.batch_size:(accelerator.process_index + 1) * run.batch_size]
        ddp_model.train()
        with accelerator.autocast():
            loss = method.loss(ddp_model, method.load(mine, accelerator.device))
        accelerator.backward(loss)
        if run.kill_at_step is not None and step + 1 == run.kill_at_step:
            os.kill(os.getpid(), signal.SIGKILL)  # fault injection (tests): dies mid-step, nothing saved
        if config.optim.grad_clip:
            accelerator.clip_grad_norm_(params, config.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_value = float(accelerator.reduce(loss.detach(), reduction="mean"))
        losses.append(loss_value)
        times.append(time.perf_counter() - t0)
        done = step + 1
        if bar is not None:
            bar.set_postfix(loss=f"{loss_value:.4f}", step_s=f"{times[-1]:.2f}")
            bar.update(1)
        if main and done % max(run.log_every, 1) == 0:
            log.info("step %d/%d loss %.5f (%.2f s/step)", done, run.max_steps, loss_value, times[-1])
            if writer is not None:
                writer.add_scalar("train/loss", loss_value, done)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], done)
        if done % run.checkpoint_every == 0 or done == run.max_steps:
            if main:
                save_checkpoint(out, done, {n: p for n, p in unwrapped.named_parameters() if p.requires_grad},
                                {"step": done, "optimizer": optimizer.state_dict(),
                                 "scheduler": scheduler.state_dict()}, config_text, run.keep_checkpoints)
            accelerator.wait_for_everyone()
        if main and ((run.validate_every and done % run.validate_every == 0) or done == run.max_steps):
            method.validate(unwrapped, out / "validation" / f"step-{done:08d}")
    if bar is not None:
        bar.close()
    peak = torch.cuda.max_memory_allocated() if accelerator.device.type == "cuda" else _rss()
    digests = ranks_agree(accelerator, unwrapped)
    if writer is not None:
        writer.close()
    accelerator.end_training()
    return TrainResult(out, run.max_steps, loss_value, dict(method.skipped),
                       (sum(times[1:]) / max(len(times) - 1, 1)) if times else float("nan"), peak, main, digests,
                       losses)


def settle_collectives(accelerator) -> None:
    """Two barriers after the last collective on Python tensors, before train() returns.

    gloo's worker threads free a finished collective's tensors after it completes, and freeing a
    tensor Python owns takes the GIL. If the DDP wrapper (and with it the process group) is destroyed
    while such a free is still pending, the destructor holds the GIL and waits for the worker thread,
    which waits for the GIL: a launched run hung so, after its last output, about 1 time in 6. The
    barriers' tensors are C++-owned, and the main thread waits in them without the GIL, so the pending
    frees finish first.
    """
    if accelerator.num_processes > 1:
        accelerator.wait_for_everyone()
        accelerator.wait_for_everyone()


def ranks_agree(accelerator, model) -> list[str]:
    """sha256 of every rank's trainable weights; they must be identical (DDP keeps replicas in sync)."""
    from accelerate.utils import gather_object
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if p.requires_grad:
            h.update(name.encode())
            h.update(p.detach().float().cpu().numpy().tobytes())
    digests = gather_object([h.hexdigest()])
    settle_collectives(accelerator)
    if len(set(digests)) != 1:
        raise RuntimeError(f"trainable weights differ across ranks: {digests}")
    if accelerator.is_main_process and len(digests) > 1:
        log.info("trainable weights identical on %d ranks (sha256 %s)", len(digests), digests[0][:16])
    return digests


def _progress(start: int, total: int):
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=start, desc="training", unit="step", dynamic_ncols=True)


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.warning("run.tensorboard is set but tensorboard is not installed (pip install tensorboard)")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _rss() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
