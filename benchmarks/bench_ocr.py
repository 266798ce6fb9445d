"""What reading the text in images costs: milliseconds per image, one process with one thread, for RapidOCR's own
settings (detection on the image upscaled so its short side is 736 px, the angle classifier, every box read) and
for mmsent's (``ocr.*``: the whole image at most ``ocr.side`` px, no angle classifier, the ``ocr.max_boxes``
largest boxes read), on the first N images of the training file; and how often the two find text.

    python benchmarks/bench_ocr.py --data DIR [--images 100]

It writes the figures as a JSON record (``record.py``) to ``--json`` (default ``bench_ocr.json``; ``--out`` is the
same option). No cache is read or written.
"""

from __future__ import annotations

import argparse
import time

from record import Recorder, add_json_option

from mmsent.config import OcrConfig
from mmsent.data.dataset import open_data
from mmsent.ocr import engine_version, read_image_bytes


def rapidocr_defaults(raws: list[bytes]) -> tuple[list[str], float]:
    from rapidocr_onnxruntime import RapidOCR

    engine = RapidOCR(intra_op_num_threads=1, inter_op_num_threads=1)
    texts, start = [], time.perf_counter()
    for raw in raws:
        result, _ = engine(raw)
        texts.append(" ".join(line[1] for line in result or []))
    return texts, time.perf_counter() - start


def mmsent_settings(raws: list[bytes], config: OcrConfig) -> tuple[list[str], float]:
    read_image_bytes(raws[0], config)  # the engine loads once, outside the timing
    start = time.perf_counter()
    texts = [read_image_bytes(raw, config, threads=1) for raw in raws]
    return texts, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="../shared/data/mvsa")
    parser.add_argument("--images", type=int, default=100)
    add_json_option(parser, "bench_ocr.json")
    parser.add_argument("--out", dest="json", help=argparse.SUPPRESS)  # the option's earlier name
    args = parser.parse_args(argv)
    recorder = Recorder("ocr", None if argv is None else ["benchmarks/bench_ocr.py", *argv])
    split = open_data(args.data, "train")
    raws = [raw for raw in map(split.read_image_bytes, split.guids[:args.images]) if raw is not None]
    config = OcrConfig(enabled=True)
    ours, our_seconds = mmsent_settings(raws, config)
    theirs, their_seconds = rapidocr_defaults(raws)
    both = sum(bool(a) and bool(b) for a, b in zip(ours, theirs))
    figures = {
        "images": len(raws),
        "mmsent_ms_per_image": 1000 * our_seconds / len(raws),
        "rapidocr_defaults_ms_per_image": 1000 * their_seconds / len(raws),
        "mmsent_with_text": sum(map(bool, ours)), "rapidocr_defaults_with_text": sum(map(bool, theirs)),
        "both_with_text": both, "settings": {"side": config.side, "max_boxes": config.max_boxes,
                                             "min_score": config.min_score},
    }
    for key, value in figures.items():
        print(f"{key}: {value:.1f}" if isinstance(value, float) else f"{key}: {value}")
    recorder.write(args.json, figures, engine=engine_version())


if __name__ == "__main__":
    main()
