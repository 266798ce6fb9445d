"""The frozen default encoders on each backend this machine has: torch and every installed graph runtime.

Encodes the same real posts with each (images decoded once beforehand, so only the encoders are timed; two rounds
each after a warm-up batch) and prints images/s, texts/s and the largest difference from torch's features. This is
the measurement behind the order in which ``--backend auto`` tries the runtimes (src/mmsent/encoders/runtime.py).

    python benchmarks/bench_backends.py --data ../shared/data/mvsa [--posts 400] [--json bench_backends.json]

The figures also go to a JSON record (``record.py``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from record import Recorder, add_json_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MMSENT_DATA", "../shared/data/mvsa")))
    parser.add_argument("--posts", type=int, default=400)
    add_json_option(parser, "bench_backends.json")
    args = parser.parse_args()
    recorder = Recorder("backends")
    os.environ.setdefault("MMSENT_CACHE_DIR", tempfile.mkdtemp(prefix="mmsent-bench-cache-"))  # exports land here
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per measurement instead of progress bars

    import torch

    from mmsent.config import RunConfig
    from mmsent.data.dataset import open_data
    from mmsent.data.images import load_square_rgb
    from mmsent.encoders.runtime import runtime_available
    from mmsent.model import build_towers
    from mmsent.registry import GRAPH_RUNTIMES

    config = RunConfig()
    split = open_data(args.data)
    texts = split.texts(config.text_prep)[: args.posts]
    size = config.image.image_size
    images = [load_square_rgb((args.data / "data" / f"{guid}.jpg").read_bytes(), size)
              for guid in split.guids[: args.posts]]
    backends = ["torch"] + [name for name in GRAPH_RUNTIMES.names() if runtime_available(name)]
    print(f"{len(images)} posts, {size}-px images, {torch.get_num_threads()} threads; backends: {', '.join(backends)}")
    reference, figures = {}, {"posts": len(images), "image_size": size, "threads": torch.get_num_threads(),
                              "posts_per_second": {}, "max_diff_from_torch": {}}
    for backend in backends:
        towers = build_towers(config)
        for tower, items, key in ((towers.image, images, "image_input"), (towers.text, texts, "text_hidden")):
            tower.use_backend(backend, log=lambda message: None)
            tower.encode_items(items[:8])  # warm-up: first-call allocations, lazy loading
            rates = []
            for _ in range(2):
                start = time.perf_counter()
                features = tower.encode_items(items)[key].float()
                rates.append(len(items) / (time.perf_counter() - start))
            diff = (features - reference[key]).abs().max().item() if key in reference else 0.0
            reference.setdefault(key, features)
            figures["posts_per_second"][f"{backend} {tower.kind}"] = rates
            figures["max_diff_from_torch"][f"{backend} {tower.kind}"] = diff
            print(f"{backend:>9} {tower.kind:>5}: {rates[0]:6.1f} / {rates[1]:6.1f} posts/s   max |diff| from torch "
                  f"{diff:.4f} (features up to {reference[key].abs().max().item():.1f}, stored in float16)", flush=True)
    recorder.write(args.json, figures)


if __name__ == "__main__":
    main()
