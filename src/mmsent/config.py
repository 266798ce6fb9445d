"""Typed configuration: one dataclass per component, merged into :class:`RunConfig`.

A plugin declares its own options as a dataclass registered with it (``registry.register(name, config=...)``, fields
made with :func:`option`); a section whose plugins own options is composed from the registered dataclasses
(:func:`compose_config`): ``DataConfig`` is the data options of every format joined with each format's own (a
table's columns).

A run's ``config.json`` is ``RunConfig.to_dict()``; ``--config FILE`` reads the same shape (any subset of keys),
and command-line flags override it. Every field is reachable from the CLI as ``--set section.field=value``;
the most used ones also have a short flag, declared once in the field's metadata (``flag``).

A value is parsed and checked as its field's annotation (:func:`parse_value`: ``bool``, ``int``, ``float``, ``str``,
``list[X]``, ``X | None``), and a key that takes only some values (a field's ``choices``, or the names of a registry:
``REGISTRY_KEYS``) is checked by :func:`allowed_values` alone, which :func:`apply_overrides`, the CLI's flags and
``mmsent config`` all use.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

CONFIG_VERSION = 1
LABELS = ("negative", "neutral", "positive")
BACKENDS = ("auto", "torch", "onnx", "openvino")  # what runs the frozen encoders (train.backend): torch, or one of
# the graph runtimes of encoders/runtime.py (tests/test_runtime.py checks that the two lists agree)
MODALITIES = ("all", "image", "text")
PRECISIONS = ("f32", "bf16")  # arithmetic of the frozen encoders' graph runtime (train.inference_precision)
FOLD_SCHEMES = ("stratified_kfold",)  # train.fold_scheme: how data.folds draws them
SELECTION_SETS = ("inner", "scored_fold")  # train.select_on: where early stopping chooses (cv.py)
DECISION_RULES = ("accuracy", "macro_f1")  # train.decision: how a label is chosen (decision.RULES)


# Config keys whose values are names registered in a registry of mmsent.registry (checked by allowed_values).
# data.format also takes its default, '' (detected from the data).
REGISTRY_KEYS = {"model": "MODEL_FAMILIES", "fusion.name": "FUSIONS", "train.loss": "LOSSES", "data.format": "FORMATS"}


def _opt(default, flag: str | None = None, help: str = "", choices: tuple | None = None, **kw):
    """A dataclass field with CLI metadata (``flag``: the short option, ``help``: its text, ``choices``: the only
    values allowed). The field's annotation is the type its values are parsed and checked as."""
    metadata = {"flag": flag, "help": help, "choices": choices}
    if callable(default):
        return field(default_factory=default, metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


option = _opt  # how a plugin declares an option of its config (the fields of every config are made with it)


@dataclass
class TextPrepConfig:
    """How a post's text is cleaned before tokenisation."""

    strip_urls: bool = _opt(True, help="remove http(s):// and www. links")
    strip_mentions: bool = _opt(True, help="remove @user mentions")
    placeholders: bool = _opt(False, help="replace what strip_urls / strip_mentions take out by the words 'url' / "
                                          "'user' instead of deleting it")
    split_hashtags: bool = _opt(False, help="split camel-case hashtags into words: '#LegDay' -> 'leg day'")
    strip_rt: bool = _opt(True, help="remove retweet markers ('RT')")
    lowercase: bool = _opt(True, help="lowercase the text")
    remove_stopwords: bool = _opt(False, help="drop English stop words (negations such as 'not' are kept)")
    max_chars: int = _opt(2000, help="texts longer than this are truncated before tokenisation")


@dataclass
class TextEncoderConfig:
    """Text tower: a registered name or any Hugging Face model id / local folder."""

    name: str = _opt("minilm", flag="--text-encoder", help="registered name, Hugging Face id or local folder")
    max_length: int = _opt(64, help="tokens per text (longer texts are cut)")
    train_layers: int = _opt(0, flag="--text-train-layers",
                             help="top transformer layers fine-tuned; the frozen ones below are cached on disk")
    pooled: bool = _opt(False, help="cache one mean-pooled vector per text instead of its tokens (frozen encoder "
                                    "only): a much smaller cache and much faster training")


@dataclass
class ImageEncoderConfig:
    """Image tower: a registered name or any Hugging Face model id / local folder."""

    name: str = _opt("efficientnet_lite0", flag="--image-encoder", help="registered name, Hugging Face id or local folder")
    image_size: int = _opt(224, help="side of the square input image (0 = the encoder's native size)")
    fit: str = _opt("crop", choices=("crop", "pad"),
                    help="how an image becomes that square: 'crop' = the centre square of the short side; 'pad' = "
                         "the whole image, its long side resized to the square and the rest padded")
    train_layers: int = _opt(0, flag="--image-train-layers",
                             help="top stages fine-tuned; the frozen ones below are cached on disk")
    pooled: bool = _opt(False, help="cache one mean-pooled vector per image instead of its tokens (frozen encoder "
                                    "only)")


@dataclass
class OcrConfig:
    """Reading the text inside each post's image (:mod:`mmsent.ocr`) as a second text, encoded by the text encoder
    and given to the fusion as tokens of their own segment."""

    enabled: bool = _opt(False, flag="--ocr", help="read the text in each image (RapidOCR) and give it to the model "
                                                   "beside the post's text")
    side: int = _opt(640, help="longest side, in pixels, of the whole image searched for text")
    max_boxes: int = _opt(12, help="the largest text boxes found that are read")
    min_score: float = _opt(0.5, help="recognised lines scoring below this are dropped")
    workers: int = _opt(0, help="processes that read images not yet in the cache (0 = one per core)")


@dataclass
class LexiconConfig:
    """Sentiment lexicon scores of each post's text (:mod:`mmsent.lexicon`: VADER and the emoji sentiment ranking)
    as an extra input of the model, joined to the fused representation before the head."""

    enabled: bool = _opt(True, flag="--lexicon", help="give the model VADER's and the emoji ranking's scores of "
                                                      "each post's text")


@dataclass
class CustomConfig:
    """The from-scratch family (``--model custom``): a ResNet image encoder and a Transformer text encoder.

    Texts are split with the packaged MiniLM WordPiece vocabulary (its weights are not used); images are decoded
    once at ``image_size`` and cached as pixels.
    """

    dim: int = _opt(512, flag="--custom-dim", help="model dimension of the text Transformer and the ResNet output")
    heads: int = _opt(8, flag="--custom-heads", help="self-attention heads of the text Transformer")
    ffn_dim: int = _opt(256, flag="--custom-ffn-dim", help="feed-forward width of the text Transformer")
    layers: int = _opt(3, flag="--custom-layers", help="text Transformer encoder layers")
    dropout: float = _opt(0.3, flag="--custom-dropout", help="dropout inside both encoders")
    max_length: int = _opt(64, help="tokens per text (longer texts are cut)")
    image_size: int = _opt(64, flag="--custom-image-size", help="side of the square input image")
    widths: list[int] = _opt(lambda: [16, 32, 64, 128], help="ResNet channels per stage (comma-separated)")
    blocks: list[int] = _opt(lambda: [1, 1, 1, 1], help="residual blocks per stage (comma-separated, one per width)")
    augment: bool = _opt(True, help="random crop and horizontal flip of training images")


@dataclass
class FusionConfig:
    """How image and text tokens are combined."""

    name: str = _opt("cross_attention", flag="--fusion", help="fusion registered by name")
    dim: int = _opt(256, flag="--dim", help="model (feature) dimension after projecting each tower")
    heads: int = _opt(4, flag="--heads", help="attention heads")
    layers: int = _opt(1, flag="--fusion-layers", help="stacked co-attention layers (bi_cross_attention)")
    ffn_dim: int = _opt(512, flag="--ffn-dim", help="feed-forward width inside attention layers")
    dropout: float = _opt(0.3, flag="--dropout", help="dropout in fusion and head")


@dataclass
class TrainConfig:
    """Optimisation, loss, early stopping and cross-validation."""

    folds: int = _opt(5, flag="--folds", help="stratified cross-validation folds")
    fold_scheme: str = _opt("stratified_kfold", choices=FOLD_SCHEMES,
                            help="how the folds are drawn: scikit-learn's StratifiedKFold, shuffled with train.seed; "
                                 "a run folder whose config.json lacks this key holds other folds and is not "
                                 "continued, recalibrated or combined with other runs")
    epochs: int = _opt(20, flag="--epochs", help="upper bound; early stopping may end sooner")
    patience: int = _opt(3, flag="--patience", help="epochs without a better validation accuracy before stopping")
    batch_size: int = _opt(32, flag="--batch-size", help="posts per training step")
    lr: float = _opt(3e-4, flag="--lr", help="learning rate of the fusion and head")
    encoder_lr: float = _opt(5e-5, flag="--encoder-lr", help="learning rate of fine-tuned encoder layers")
    layer_lr_decay: float = _opt(1.0, help="layer-wise learning-rate decay: a fine-tuned encoder layer d layers below "
                                           "its encoder's top one learns at encoder_lr * this ** d; 1 = off")
    weight_decay: float = _opt(0.01, flag="--weight-decay", help="weight decay of the optimizer")
    optimizer: str = _opt("adamw", flag="--optimizer", help="adam or adamw")
    warmup_ratio: float = _opt(0.1, help="share of steps with linear warm-up, then cosine decay")
    loss: str = _opt("cross_entropy", flag="--loss", help="loss registered by name")
    focal_gamma: float = _opt(2.0, help="focal loss focusing parameter")
    focal_alpha: list[float] = _opt(list, help="per-class focal alpha in label order (empty = 0.25 for every class)")
    label_smoothing: float = _opt(0.0, help="cross-entropy label smoothing")
    class_weight_power: float = _opt(0.0, help="cross-entropy weight of each class: (N / (classes * n_class)) ** power, "
                                               "counted on the training fold; 0 = off, 1 = balanced")
    logit_adjustment: float = _opt(0.0, help="train on logits + this * log(class prior of the training fold) "
                                             "(logit-adjusted loss, Menon et al. 2021); predictions use the plain "
                                             "logits; 0 = off")
    ema_decay: float = _opt(0.0, help="validate and keep an exponential moving average of the weights, updated every "
                                      "step with this decay (e.g. 0.99); 0 = off")
    supcon_weight: float = _opt(0.0, help="weight of a supervised contrastive term on the fused representation "
                                          "(Khosla et al. 2020): posts of one class in a batch drawn together, the "
                                          "others pushed apart; 0 = off")
    supcon_temperature: float = _opt(0.1, help="temperature of the supervised contrastive term")
    decision: str = _opt("accuracy", flag="--decision", choices=DECISION_RULES,
                         help="how a label is chosen from the probabilities: 'accuracy' = the most probable class; "
                              "'macro_f1' = per-class offsets fitted on the out-of-fold probabilities to maximise "
                              "macro F1 (the rare classes are chosen more often; RUN/decision.json)")
    select_on: str = _opt("inner", flag="--select-on", choices=SELECTION_SETS,
                          help="which posts early stopping chooses the best epoch on: 'inner' = a stratified part "
                               "of each training fold (--inner-val), so that the scored fold only scores; "
                               "'scored_fold' = the fold that is also scored (optimistic: the epoch is chosen on "
                               "the posts it is scored on)")
    inner_val: float = _opt(0.1, flag="--inner-val",
                            help="share of each training fold held out, stratified, for early stopping "
                                 "(select_on=inner)")
    seed: int = _opt(42, flag="--seed", help="seed of the folds, the initial weights and the batch order")
    device: str = _opt("auto", flag="--device", help="auto, cpu, cuda or cuda:N")
    workers: int = _opt(1, flag="--workers", help="image-decoding worker processes during feature extraction")
    backend: str = _opt("auto", flag="--backend", choices=BACKENDS,
                        help="what runs the frozen encoders: torch, onnx (ONNX Runtime) or openvino (OpenVINO: faster, "
                             "opt-in), both CPU only, or auto (on the CPU the first installed of onnx, openvino; else "
                             "torch)")
    inference_precision: str = _opt("f32", flag="--inference-precision", choices=PRECISIONS,
                                    help="arithmetic of the frozen encoders: f32 (the same features on every CPU and "
                                         "backend) or bf16 (openvino only, on a CPU with bf16 instructions: faster, "
                                         "features differ slightly and are cached apart)")


@dataclass
class DataOptions:
    """How the data set is read (mmsent.data.formats): its format and the label set, joined in ``DataConfig`` with
    the options each format registers (a table's columns: mmsent.data.table).

    No field has a short flag here: ``cli.add_data_options`` declares ``--format``, ``--labels`` and the column
    flags for every command that reads data.
    """

    format: str = _opt("", help="data format registered in mmsent.data.formats; '' = detected from --data")
    labels: list[str] = _opt(list, help="the label names in class order; empty = the sorted names found in the "
                                        "labelled rows (a run folder whose config.json has none predicts "
                                        "negative,neutral,positive)")


def normalised_labels(names) -> tuple[str, ...]:
    """A label list as given (``--labels``, ``data.labels``) -> the names compared everywhere: stripped and
    lowercased, empty ones dropped; ConfigError for a repeated name or a single class."""
    labels = tuple(name.strip().lower() for name in names if name.strip())
    repeated = sorted({name for name in labels if labels.count(name) > 1})
    if repeated:
        raise ConfigError(f"--labels names {', '.join(repeated)} more than once")
    if len(labels) == 1:
        raise ConfigError(f"--labels gives one class ({labels[0]}): at least two are needed")
    return labels


def run_labels(config: "RunConfig") -> tuple[str, ...]:
    """The class names of a run, in class order: ``config.data.labels``, or ``LABELS`` for a run saved without them."""
    return tuple(config.data.labels) or LABELS


@dataclass
class RunConfig:
    """Everything needed to rebuild and retrain a model; saved as ``RUN/config.json``."""

    model: str = _opt("pretrained", flag="--model", help="model family registered by name")
    modality: str = _opt("all", flag="--modality", choices=MODALITIES,
                         help="what the model reads: all (image and text), or image or text alone (ablations)")
    text_prep: TextPrepConfig = field(default_factory=TextPrepConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    image: ImageEncoderConfig = field(default_factory=ImageEncoderConfig)
    ocr: OcrConfig = field(default_factory=OcrConfig)
    lexicon: LexiconConfig = field(default_factory=LexiconConfig)
    custom: CustomConfig = field(default_factory=CustomConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=lambda: data_config_class()())
    version: int = CONFIG_VERSION

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "RunConfig":
        config = cls()
        data = {k: v for k, v in data.items() if k != "version"}
        apply_overrides(config, flatten(data))
        return config

    def save(self, path: Path) -> None:
        from .atomic import atomic_write_text

        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2))




def compose_config(name: str, common: type, registry) -> type:
    """A dataclass ``name`` (of this module) with the fields of ``common``, then those of each config registered in
    ``registry``, in its order (a plugin's own options). A field is declared once: ConfigError for a field that two
    of them declare."""
    if registry.loading:
        raise RuntimeError(f"{name} is composed from the registered {registry.kind}s while they are being "
                           f"registered: a module that registers one must not use {name} when it is imported")
    owners = [common] + list(dict.fromkeys(c for c in map(registry.config_of, registry.names()) if c is not None))
    specs, declared_by = [], {}
    for owner in owners:
        hints = typing.get_type_hints(owner)
        for spec in fields(owner):
            if spec.name in declared_by:
                raise ConfigError(f"{name}.{spec.name} is declared by both {declared_by[spec.name].__qualname__} "
                                  f"and {owner.__qualname__}")
            declared_by[spec.name] = owner
            specs.append((spec.name, hints[spec.name], field(default=spec.default, metadata=spec.metadata,
                                                             default_factory=spec.default_factory)))
    composed = dataclasses.make_dataclass(name, specs, namespace={"__doc__": common.__doc__, "__module__": __name__})
    composed.__qualname__ = name
    return composed


def data_config_class() -> type:
    """``DataConfig``: :class:`DataOptions` and the options of every registered data format, composed on first use
    (the formats register themselves when ``FORMATS`` is first asked: mmsent.registry)."""
    if "DataConfig" not in globals():
        from .registry import FORMATS

        globals()["DataConfig"] = compose_config("DataConfig", DataOptions, FORMATS)
    return globals()["DataConfig"]


def __getattr__(name: str):
    if name == "DataConfig":  # ``from mmsent.config import DataConfig`` composes it
        return data_config_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1}."""
    flat = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "."))
        else:
            flat[path] = value
    return flat


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """A config dataclass's field name -> its annotation, resolved (``from __future__ import annotations`` leaves
    strings; RunConfig's ``DataConfig`` is composed first)."""
    return typing.get_type_hints(cls, localns={"DataConfig": data_config_class()} if cls is RunConfig else None)


def config_fields(config: Any = None, prefix: str = ""):
    """Yield (dotted_key, dataclass_field, default) for every leaf field of RunConfig."""
    cls = RunConfig if config is None else config
    hints = field_types(cls)
    for f in fields(cls):
        if f.name == "version":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(hints[f.name]):
            yield from config_fields(hints[f.name], prefix + f.name + ".")
        else:
            yield prefix + f.name, f, default


def config_types() -> dict[str, Any]:
    """Every dotted config key -> the annotation of its field (``list[float]``, ``bool``, ``str | None``...)."""
    types_by_key = {}
    for key, spec, _ in config_fields():
        *parents, _leaf = key.split(".")
        owner = RunConfig
        for part in parents:
            owner = field_types(owner)[part]
        types_by_key[key] = field_types(owner)[spec.name]
    return types_by_key


def _optional_of(kind: Any) -> Any:
    """``X`` for ``Optional[X]`` / ``X | None``; None for any other annotation."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        others = [arg for arg in typing.get_args(kind) if arg is not type(None)]
        if len(others) == 1 and len(typing.get_args(kind)) == 2:
            return others[0]
    return None


def type_name(kind: Any) -> str:
    """An annotation in words for messages: ``list[float]`` -> 'list of floats'."""
    if _optional_of(kind) is not None:
        return f"{type_name(_optional_of(kind))} or null"
    if kind is list or typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (str,)
        return f"comma-separated list of {type_name(item)}s"
    return {bool: "true/false"}.get(kind, getattr(kind, "__name__", str(kind)))


def parse_value(key: str, value: Any, kind: Any) -> Any:
    """``value`` (a string from the command line, or a JSON value) as the annotation ``kind`` of config key ``key``:
    ``bool``, ``int``, ``float``, ``str``, ``list``/``list[X]`` (comma-separated or a JSON list), ``Optional[X]``
    (null/none or an X). ConfigError naming the key and the expected type otherwise."""
    inner = _optional_of(kind)
    if inner is not None:
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null") and inner is not str):
            return None
        return parse_value(key, value, inner)
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if kind is list or typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind) or (str,)
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raise ConfigError(f"{key}: expected a JSON list or a {type_name(kind)}, got {value!r}") from None
        elif isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a {type_name(kind)}, got {value!r}")
        try:
            return [parse_value(key, v.strip() if isinstance(v, str) else v, item) for v in value]
        except ConfigError:
            raise ConfigError(f"{key}: expected a {type_name(kind)}, got {value!r}") from None
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if kind in (int, float):
        if isinstance(value, (bool, list, dict)) or value is None:
            raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}")
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {kind.__name__}, got {value!r}") from None
    return value  # an annotation without a parser (Any): taken as given


def allowed_values(key: str, spec: dataclasses.Field | None = None) -> tuple[str, ...] | None:
    """The only values config key ``key`` takes: its field's ``choices``, or the names of the registry it names
    (``REGISTRY_KEYS``); None when any value of its type is allowed, or when the registry cannot be loaded (a
    missing optional package: what needs it says so when run)."""
    if spec is None:
        spec = {k: s for k, s, _ in config_fields()}[key]
    if spec.metadata.get("choices"):
        return tuple(spec.metadata["choices"])
    if key in REGISTRY_KEYS:
        from . import registry

        names = getattr(registry, REGISTRY_KEYS[key])
        if names.loading:
            return None
        try:
            return tuple(names.names())
        except ImportError:
            return None
    return None


def check_allowed(key: str, value: Any, spec: dataclasses.Field | None = None, default: Any = None) -> None:
    """ConfigError unless ``value`` is one of ``allowed_values(key)`` (the field's default always is)."""
    if value == default and spec is not None:
        return
    allowed = allowed_values(key, spec)
    if allowed is not None and value not in allowed:
        raise ConfigError(f"{key}: expected one of {', '.join(allowed)}, got {value!r}")


def config_value(config: RunConfig, key: str) -> Any:
    """The value of dotted ``key`` in ``config``."""
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return value


def check_config(config: RunConfig) -> None:
    """ConfigError for the first value of ``config`` that its key does not allow (a config built in Python, not
    through :func:`apply_overrides`)."""
    for key, spec, default in config_fields():
        check_allowed(key, config_value(config, key), spec, default)


def unknown_key_error(key: str, known) -> ConfigError:
    """The error for a config key that is not one: it names the closest keys, if any."""
    close = difflib.get_close_matches(key, list(known), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(close)}?" if close else "'mmsent config' lists every key"
    return ConfigError(f"unknown config key {key!r}; {hint}")


def apply_overrides(config: RunConfig, overrides: dict[str, Any]) -> RunConfig:
    """Set dotted keys (``train.lr``) on ``config`` in place, each parsed as its field's annotation and checked
    against its allowed values; nothing is changed when one is refused."""
    known = {key: (spec, default) for key, spec, default in config_fields()}
    kinds = config_types()
    parsed = {}
    for key, value in overrides.items():
        if key not in known:
            raise unknown_key_error(key, known)
        spec, default = known[key]
        parsed[key] = parse_value(key, value, kinds[key])
        check_allowed(key, parsed[key], spec, default)
    for key, value in parsed.items():
        owner = config
        *parents, leaf = key.split(".")
        for part in parents:
            owner = getattr(owner, part)
        setattr(owner, leaf, value)
    return config


def family_defaults(model: str) -> dict[str, Any]:
    """The config defaults a model family registered with (``MODEL_FAMILIES.register(name, defaults=...)``)."""
    from .registry import MODEL_FAMILIES

    try:
        if model not in MODEL_FAMILIES:
            return {}  # unknown names are reported where the family is built
    except ImportError:
        return {}  # no PyTorch (a base install): no family is built, the data options are still resolved
    return dict(MODEL_FAMILIES.metadata(model).get("defaults", {}))


def resolve_config(overrides: dict[str, Any], base: RunConfig | None = None) -> RunConfig:
    """The run config for the user's dotted ``overrides``.

    Layers, later ones winning: the dataclass defaults, then the defaults of the chosen model family (``model``
    from ``overrides``), then ``overrides``. With ``base`` (a saved run's config) the layers are ``base`` and
    ``overrides`` only.
    """
    if base is not None:
        return apply_overrides(RunConfig.from_dict(base.to_dict()), overrides)
    config = RunConfig()
    apply_overrides(config, family_defaults(str(overrides.get("model", config.model))))
    return apply_overrides(config, overrides)


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a JSON config (nested like config.json, or flat dotted keys) into dotted overrides."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except json.JSONDecodeError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    data.pop("version", None)
    return flatten(data)
