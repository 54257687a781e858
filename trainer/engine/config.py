"""A training run described by one config file (YAML or TOML) plus ``key=value`` overrides.

Defaults are the official Kontinuous Kontext release (LoRA rank 4 / alpha 4 on the 12 official
target suffixes, projector 4 layers as wide as its output, lr 2e-5, AdamW betas (0.9, 0.999),
weight decay 1e-4, grad clip 1.0, constant schedule, guidance 1.0 in training, 512 px) except the
slider-condition dropout: 0.1 as the paper states (the released script hard-codes 0).
"""
from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..families import family_problem
from .registry import method_for, method_names

OFFICIAL_LORA_TARGETS = ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0", "attn.add_k_proj",
                         "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "ff.net.0.proj", "ff.net.2",
                         "ff_context.net.0.proj", "ff_context.net.2")


TEXT_ENCODERS = ("flux", "learned", "lines")  # data.text_encoder
LINES_POOLED = ("mean", "sum")  # data.lines_pooled


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass
class ModelSection:
    pretrained: str | None = None  # diffusers folder or hub id of FLUX.1 Kontext [dev]
    family: str = "flux1"  # the model family (trainer/families/): flux1, flux2, qwen_image (the editor's; others: flux1)
    # A FluxTransformer2DModel config for a model trained from scratch (the offline demo); then every
    # transformer weight is trainable, since there is no pretrained base to adapt.
    scratch: dict | None = None
    # Every transformer weight trains too: a full fine-tune of model.pretrained (kontinuous, editor: with
    # lora.enabled false; numeric: no LoRA is added). From scratch, kontinuous and editor runs train every weight
    # anyway; a scratch numeric run needs it (without it its transformer stays frozen under the numeric LoRA).
    # Export then writes the transformer too (`export --transformer-out DIR`).
    train_transformer: bool = False
    gradient_checkpointing: bool = True
    guidance: float = 1.0  # the guidance embedding's value during training (official: 1.0)


@dataclass
class LoraSection:
    enabled: bool = True
    rank: int = 4
    alpha: float = 4.0
    targets: list[str] = field(default_factory=lambda: list(OFFICIAL_LORA_TARGETS))
    init: str = "gaussian"


@dataclass
class ProjectorSection:
    n_layers: int = 4
    width: int | None = None  # None: 2 x hidden size, as released
    strength_embed_dim: int = 768
    use_clip: bool = True  # False: the variant without the pooled CLIP input
    slider_dropout: float = 0.1  # probability of zeroing a sample's offsets (condition dropped)


@dataclass
class DataSection:
    trajectories: list[str] = field(default_factory=list)  # folders in the generic trajectory format
    resolution: int = 512
    cache_dir: str | None = None  # default: <output_dir>/cache
    # "flux": CLIP-L + T5 of `model.pretrained`. Offline (no text model): "learned": for method kontinuous one
    # trainable embedding per instruction, for the other methods the fixed per-line vectors of "lines";
    # "lines": fixed vectors seeded from each sub-instruction's text (features.LineTextEncoder), nothing trained,
    # for every method: how a Kontinuous run reads the text of a base editor trained offline (method editor)
    text_encoder: str = "flux"
    pixel_space: bool = False  # the demo: images are the latents (no VAE)
    # pixel space only: > 0 stores each pixel as luma + two chroma channels times this (features.PixelCodec),
    # so the loss weighs colour errors that much more; 0: RGB
    pixel_chroma_scale: float = 0.0
    learned_text_tokens: int = 4  # slideredit: tokens per sub-instruction
    # the offline per-line encoder's pooled vector of a prompt of several lines: the "mean" of its lines' or
    # their "sum" (each line's share of the modulation input as when it stands alone: docs/results.md,
    # NumeriKontrol demo)
    lines_pooled: str = "mean"
    # method slideredit: folders in the SliderEdit edit format (``edits.json``: an image + its sub-instruction
    # lines; trainer/data/edits.py). Trajectory folders listed in ``trajectories`` count too: each trajectory
    # is one sample (its source image; its instruction split at newlines into sub-instructions).
    edits: list[str] = field(default_factory=list)


@dataclass
class OptimSection:
    lr: float = 2e-5
    # the base transformer's own weights in a full fine-tune (``model.train_transformer``) at their own rate
    # (None: ``lr``): adapters and projectors learn fast while the base moves little and keeps what it knew
    transformer_lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-4
    eps: float = 1e-8
    use_8bit_adam: bool = False
    grad_clip: float = 1.0
    scheduler: str = "constant"  # "constant" | "cosine"
    warmup_steps: int = 0


@dataclass
class RunSection:
    output_dir: str = "output"
    max_steps: int = 110_000
    batch_size: int = 1  # per process
    seed: int = 0
    mixed_precision: str = "bf16"  # "no" | "bf16" | "fp16"
    checkpoint_every: int = 2000
    keep_checkpoints: int = 3
    log_every: int = 10
    validate_every: int = 0  # 0: only at the end
    validation_strengths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    validation_pairs: int = 2  # (source, instruction) pairs rendered, the first trajectories of the data
    sample_steps: int = 20
    tensorboard: bool = False
    progress: bool = True
    kill_at_step: int | None = None  # fault injection for tests: SIGKILL itself in the middle of this step

    def __post_init__(self):
        if self.mixed_precision is False:  # YAML reads a bare `no` as false
            self.mixed_precision = "no"
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"run.mixed_precision must be no, bf16 or fp16, got {self.mixed_precision!r}")


def check_lora_fields(where: str, rank, alpha, targets) -> None:
    """rank > 0, alpha a positive number or null, targets a list of strings or null (a ConfigError naming the key)."""
    if isinstance(rank, bool) or not isinstance(rank, int) or rank <= 0:
        raise ConfigError(f"{where}.rank must be a positive integer, got {rank!r}")
    if alpha is not None and (isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0):
        raise ConfigError(f"{where}.alpha must be a positive number or null, got {alpha!r}")
    if targets is not None and (not isinstance(targets, list) or not all(isinstance(t, str) for t in targets)):
        raise ConfigError(f"{where}.targets must be a list of module suffixes or null, got {targets!r}")


@dataclass
class SliderEditSection:
    """``method: slideredit``: one shared low-rank adapter, trained self-supervised (PPS / SPPS) to cancel
    sub-instructions; scaled by 1 - strength at inference (trainer/methods/slideredit/)."""
    variant: str = "stlora"  # "stlora": text-stream LoRA on chosen tokens; "gstlora": all tokens, both streams
    loss: str | None = None  # "pps" | "spps"; null: pps for stlora, spps for gstlora (as the authors train them)
    rank: int = 16
    alpha: float | None = None  # null: alpha = rank (scale 1, the authors')
    targets: list[str] | None = None  # diffusers Linear suffixes; null: the authors' per variant
    init: str = "authors"  # "authors" (stlora: kaiming-uniform A; gstlora: gaussian A) | "kaiming" | "gaussian"
    neutral_prompt: str = "keep the image the same"  # the teacher's prompt in SPPS (the authors' GSTLoRA)
    guidance: float = 3.5  # the guidance embedding's value in training (the authors'); model.guidance is Kontinuous's
    max_lines: int = 3  # samples with more sub-instructions are skipped (PPS encodes all 2^K - 1 kept subsets)
    batch_teacher: bool = True  # teacher + student in one forward of 2B rows; false: two forwards (less memory)

    def __post_init__(self):
        from ...core.slideredit.weights import VARIANTS
        if self.variant not in VARIANTS:
            raise ConfigError(f"slideredit.variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.loss is None:
            self.loss = "pps" if self.variant == "stlora" else "spps"
        if self.loss not in ("pps", "spps"):
            raise ConfigError(f"slideredit.loss must be pps or spps, got {self.loss!r}")
        if self.variant == "gstlora" and self.loss == "pps":
            raise ConfigError("slideredit.loss pps needs variant stlora: a GSTLoRA has one slider for the whole "
                              "prompt, so it cannot suppress some sub-instructions only; use loss: spps")
        check_lora_fields("slideredit", self.rank, self.alpha, self.targets)
        if self.targets is not None:
            from ..families.flux1 import check_targets
            try:
                check_targets(self.variant, self.targets)
            except ValueError as e:
                raise ConfigError(f"slideredit.targets: {e}") from None
        if self.init not in ("authors", "kaiming", "gaussian"):
            raise ConfigError(f"slideredit.init must be authors, kaiming or gaussian, got {self.init!r}")
        if not isinstance(self.neutral_prompt, str):
            raise ConfigError(f"slideredit.neutral_prompt must be text, got {self.neutral_prompt!r}")
        if not 1 <= self.max_lines <= 8:
            raise ConfigError(f"slideredit.max_lines must be 1 ... 8 (PPS encodes 2^K - 1 prompts per sample), "
                              f"got {self.max_lines!r}")
        if not isinstance(self.batch_teacher, bool):
            raise ConfigError(f"slideredit.batch_teacher must be true or false, got {self.batch_teacher!r}")


@dataclass
class NumericSection:
    """``method: numeric``: NumeriKontrol, a numeric adapter (z = D(E(f(delta)) + emb(task))) whose tokens go in
    front of the T5 tokens, and a LoRA on the attention Q/K/V (trainer/methods/numeric/method.py, model.py)."""
    # the task registry (units, ranges, templates): null = the default (the `synth cat` tasks), a path to a
    # registry JSON file, or the registry itself; a numeric run's resolved config holds it inline, so every
    # checkpoint carries the registry its task ids refer to
    registry: str | dict | None = None
    frequencies: int = 3  # sin/cos octaves of the signed coordinate (core/numeric/adapter.py)
    encoder_width: int = 256  # the paper's 256 -> 256 -> 256 -> T5 width
    embed_width: int = 256
    decoder_width: int = 256
    rank: int = 128  # the paper's LoRA rank
    alpha: float | None = None  # null: alpha = rank (scale 1)
    targets: list[str] | None = None  # diffusers Linear suffixes; null: Q/K/V of both streams (methods/numeric/model.py)
    init: str = "gaussian"  # peft's init_lora_weights: "gaussian" (A ~ N(0, 1/r)) or "default" (kaiming); B zeros
    guidance: float = 1.0  # the guidance embedding's value in training (the paper: "CFG 1.0")
    max_edits: int = 3  # data.text_encoder learned: room for this many sub-instructions in a prompt
    # prior preservation in a fine-tune: this fraction of the rows is drawn from the edits folders
    # ``replay_edits`` (``edits.json`` with targets, e.g. the base editor's own prompts of several instructions)
    # and trained without numeric tokens, as the base was; 0: every row from the trajectories
    replay_edits: list[str] = field(default_factory=list)
    replay_fraction: float = 0.0

    def __post_init__(self):
        if isinstance(self.replay_fraction, bool) or not isinstance(self.replay_fraction, (int, float)) \
                or not 0 <= self.replay_fraction < 1:
            raise ConfigError(f"numeric.replay_fraction must be a number in [0, 1), got {self.replay_fraction!r}")
        if self.replay_fraction > 0 and not self.replay_edits:
            raise ConfigError("numeric.replay_fraction > 0 needs numeric.replay_edits: the edits folders to draw "
                              "those rows from")
        for key in ("frequencies", "encoder_width", "embed_width", "decoder_width", "max_edits"):
            value, least = getattr(self, key), 0 if key == "frequencies" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"numeric.{key} must be an integer >= {least}, got {value!r}")
        check_lora_fields("numeric", self.rank, self.alpha, self.targets)
        if self.targets is not None:
            bad = [t for t in self.targets if t not in OFFICIAL_LORA_TARGETS]
            if bad or not self.targets:
                raise ConfigError(f"numeric.targets: cannot target {', '.join(map(repr, bad)) or 'nothing'}; "
                                  f"allowed: {', '.join(OFFICIAL_LORA_TARGETS)}")
        if self.init not in ("gaussian", "default"):
            raise ConfigError(f"numeric.init must be gaussian or default, got {self.init!r}")
        if isinstance(self.registry, str):
            path = Path(self.registry)
            if not path.is_file():
                raise ConfigError(f"numeric.registry: no such file {path}")
            self.registry = path.read_text(encoding="utf-8")  # parsed (and its errors named) below
        if self.registry is not None:
            from ...core.numeric import Registry, RegistryError
            try:
                self.registry = Registry.from_json(self.registry).to_json()
            except RegistryError as e:
                raise ConfigError(f"numeric.registry: {e}") from None

    def task_registry(self):
        from ...core.numeric import DEFAULT_REGISTRY, Registry
        return DEFAULT_REGISTRY if self.registry is None else Registry.from_json(self.registry)




@dataclass
class TrainConfig:
    method: str = "kontinuous"  # Kontinuous Kontext: strength projector (+ LoRA) on a frozen Kontext
    model: ModelSection = field(default_factory=ModelSection)
    lora: LoraSection = field(default_factory=LoraSection)
    projector: ProjectorSection = field(default_factory=ProjectorSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    run: RunSection = field(default_factory=RunSection)
    slideredit: SliderEditSection = field(default_factory=SliderEditSection)
    numeric: NumericSection = field(default_factory=NumericSection)

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, plain types only


def _section_from_dict(cls, data: dict, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a table of settings, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(where + '.' + u for u in unknown)}; "
                          f"known in {where}: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(getattr(cls(), k), v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def _coerce(default, value, key: str):
    """Values typed like the defaults: YAML reads 1e-4 as a string, TOML has no tuples."""
    try:
        if isinstance(default, bool) or value is None:
            return value
        if isinstance(default, float):
            return float(value)
        if isinstance(default, int):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if isinstance(default, tuple):
            return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: {value!r} is not a valid {type(default).__name__}") from None
    return value


def config_from_dict(data: dict) -> TrainConfig:
    sections = [f.name for f in dataclasses.fields(TrainConfig) if f.name != "method"]
    unknown = sorted(set(data) - set(sections) - {"method"})
    if unknown:
        raise ConfigError(f"unknown section(s) {', '.join(unknown)}; known: method, {', '.join(sections)}")
    method = data.get("method", "kontinuous")
    # what `method` may name: the registered methods (engine/registry.py; trainer/methods/). "editor": a plain
    # instruction editor trained on ground-truth edits (edits.json with targets), e.g. the demo's base model for
    # SliderEdit; "numeric": NumeriKontrol
    methods = method_names()
    if method not in methods:
        raise ConfigError(f"method {method!r} is not one this trainer implements; available: {', '.join(methods)}")
    defaults = TrainConfig()
    config = TrainConfig(method=method, **{name: _section_from_dict(type(getattr(defaults, name)),
                                                                    data.get(name, {}), name) for name in sections})
    if not isinstance(config.model.train_transformer, bool):
        raise ConfigError(f"model.train_transformer must be true or false, got {config.model.train_transformer!r}")
    problem = family_problem(config.model.family, method, method_for(method).families, config.data)
    if problem:
        raise ConfigError(problem)
    check = method_for(method).check_config
    if check is not None:  # the method's own checks (and defaults it resolves)
        check(config)
    if (config.model.train_transformer and method in ("kontinuous", "editor") and config.model.pretrained is not None
            and config.lora.enabled):
        raise ConfigError("model.train_transformer trains every weight of the base: a LoRA on weights that train "
                          "anyway adds nothing; set lora.enabled: false (or model.train_transformer: false)")
    chroma = config.data.pixel_chroma_scale
    if not chroma >= 0 or (chroma and not config.data.pixel_space):
        raise ConfigError(f"data.pixel_chroma_scale is the colour weighting of the pixel-space codec: a number >= 0 "
                          f"(0: RGB) that needs data.pixel_space: true, got {chroma!r}"
                          + ("" if config.data.pixel_space else " without pixel_space"))
    lr = config.optim.transformer_lr
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0):
        raise ConfigError(f"optim.transformer_lr must be a number > 0 (or absent: optim.lr), got {lr!r}")
    # a peft LoRA freezes the weights under it: the base trains only with model.train_transformer and no LoRA
    if lr is not None and (not config.model.train_transformer
                           or (method in ("kontinuous", "editor") and config.lora.enabled)):
        raise ConfigError("optim.transformer_lr is the rate of the base transformer's own weights, and this run keeps "
                          "them frozen; set model.train_transformer: true (and lora.enabled: false for a "
                          f"{method} run) or drop optim.transformer_lr")
    return config


def _one_line(e: Exception) -> str:
    """A parser's error as one line: PyYAML's spans several (the offending text, a caret)."""
    mark = getattr(e, "problem_mark", None)
    if isinstance(e, yaml.MarkedYAMLError) and mark is not None:
        return f"{e.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(e).split())


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            return tomllib.loads(text)
        if path.suffix in (".yaml", ".yml", ".json"):
            return yaml.safe_load(text) or {}
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path} is not valid {path.suffix[1:].upper()}: {_one_line(e)}") from None
    raise ConfigError(f"{path}: use a .yaml, .yml, .toml or .json config file")


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``section.key=value`` (value parsed as YAML: 10, 1e-4, true, [1, 2], text), or ``method=NAME``."""
    out = json.loads(json.dumps(data))
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if sep and parts == ["method"]:
            out["method"] = raw.strip()
            continue
        if not sep or len(parts) != 2 or not all(parts):
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. run.max_steps=100")
        out.setdefault(parts[0], {})[parts[1]] = yaml.safe_load(raw)
    return out


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    data = read_config_file(path) if path else {}
    return config_from_dict(apply_overrides(data, list(overrides)))


def check_ready_to_train(config: TrainConfig) -> None:
    """What ``train`` would otherwise find out only after writing into ``run.output_dir``."""
    m, d = config.model, config.data
    if (m.pretrained is None) == (m.scratch is None):
        raise ConfigError("set exactly one of model.pretrained (a FLUX.1 Kontext diffusers folder or hub id) "
                          "and model.scratch (a FluxTransformer2DModel config, for a model trained from scratch)")
    if d.text_encoder not in TEXT_ENCODERS:
        raise ConfigError(f"data.text_encoder must be one of {', '.join(TEXT_ENCODERS)}, got {d.text_encoder!r}")
    if d.lines_pooled not in LINES_POOLED:
        raise ConfigError(f"data.lines_pooled must be one of {', '.join(LINES_POOLED)}, got {d.lines_pooled!r}")
    if d.text_encoder == "flux" and m.pretrained is None:
        raise ConfigError("data.text_encoder 'flux' needs model.pretrained (or use data.text_encoder: learned)")
    method_for(config.method).check_data(config)
    for key in ("trajectories", "edits"):
        missing = [t for t in getattr(d, key) if not Path(t).is_dir()]
        if missing:
            raise ConfigError(f"data.{key}: no such folder {', '.join(map(str, missing))}")


def require_trajectories(config: TrainConfig) -> None:
    """A method that trains on trajectories: ``data.trajectories`` must list some."""
    if not config.data.trajectories:
        raise ConfigError("data.trajectories is empty: list the trajectory folders to train on "
                          "(made by `synth cat` or `synth filter --out`)")


def require_samples(config: TrainConfig) -> None:
    """A method that trains on SliderEdit samples: ``data.edits`` or ``data.trajectories`` must list some."""
    if not config.data.edits and not config.data.trajectories:
        raise ConfigError("data.edits and data.trajectories are empty: list folders of SliderEdit samples "
                          "(edits.json: an image + sub-instruction lines) or trajectory folders to train on")


def save_resolved_config(config: TrainConfig, path: str | Path) -> None:
    from ...core.atomic import atomic_write
    text = yaml.safe_dump(config.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
