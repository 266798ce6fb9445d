"""Cost of an explanation (mmsent.explain) beside a prediction, per post, in one process after a warm-up.

    python benchmarks/bench_explain.py --run RUN --data DIR [--posts 20] [--steps 32]

Explains and predicts the first ``--posts`` posts of DIR/train.txt (text + image) with the run, and prints the mean
milliseconds per post of each, and writes them as a JSON record (``record.py``) to ``--json`` (default:
bench_explain.json).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from record import Recorder, add_json_option


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--posts", type=int, default=20)
    parser.add_argument("--steps", type=int, default=None)
    add_json_option(parser, "bench_explain.json")
    args = parser.parse_args()
    recorder = Recorder("explain")

    import torch

    from mmsent import load_run
    from mmsent.data.text import decode_text

    model = load_run(args.run, device="cpu")
    guids = [line.split(",")[0] for line in (args.data / "train.txt").read_text().split()[1:args.posts + 1]]
    posts = [(decode_text((args.data / "data" / f"{g}.txt").read_bytes()).text,
              (args.data / "data" / f"{g}.jpg").read_bytes()) for g in guids]
    model.explain(text=posts[0][0], image=posts[0][1], steps=args.steps)  # warm-up
    model.predict(text=posts[0][0], image=posts[0][1])
    start = time.perf_counter()
    for text, image in posts:
        model.explain(text=text, image=image, steps=args.steps)
    explain_ms = (time.perf_counter() - start) / len(posts) * 1000
    start = time.perf_counter()
    for text, image in posts:
        model.predict(text=text, image=image)
    predict_ms = (time.perf_counter() - start) / len(posts) * 1000
    print(f"{args.run}: {model.description}; {len(posts)} posts, torch threads {torch.get_num_threads()}")
    print(f"explain {explain_ms:.0f} ms per post, predict {predict_ms:.0f} ms per post "
          f"({explain_ms / predict_ms:.1f}x)")
    recorder.write(args.json, {"run": model.description, "posts": len(posts), "steps": args.steps,
                               "torch_threads": torch.get_num_threads(), "explain_ms_per_post": explain_ms,
                               "predict_ms_per_post": predict_ms})


if __name__ == "__main__":
    main()
