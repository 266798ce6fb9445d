"""Build the bundled sample of MVSA-Single (sample/mvsa) from the full data in the lab-folder layout.

    python sample/make_sample.py --data ../shared/data/mvsa            # rewrites sample/mvsa

Reproducible: the same data and options give the same posts, texts and image bytes. The labelled part is a
stratified draw of ``--labelled`` rows of the data's train.txt (scikit-learn, ``--seed``); the unlabelled part is a
draw of ``--unlabelled`` rows of its test_without_label.txt, whose tags stay ``null``. Every post keeps its guid.
Texts are copied byte for byte; each image is turned upright (EXIF), converted to RGB and shrunk so that its short
side is ``--short-side`` pixels (never enlarged, never cropped), then saved as JPEG at ``--quality``.
"""

from __future__ import annotations

import argparse
import io
import random
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageOps
from sklearn.model_selection import train_test_split

HERE = Path(__file__).resolve().parent


def read_rows(path: Path) -> list[tuple[str, str]]:
    """The (guid, tag) rows of a guid,tag file, in file order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].strip() != "guid,tag":
        sys.exit(f"make_sample.py: error: {path} is not a guid,tag file")
    return [tuple(part.strip() for part in line.split(",", 1)) for line in lines[1:] if line.strip()]


def shrunk_jpeg(raw: bytes, short_side: int, quality: int) -> bytes:
    """The image upright, RGB, its short side at most ``short_side`` pixels, as JPEG bytes."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(raw)))
    image = image.convert("RGB")
    scale = short_side / min(image.size)
    if scale < 1:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.BICUBIC, reducing_gap=3.0)
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def choose(data: Path, labelled: int, unlabelled: int, seed: int) -> tuple[list, list]:
    """(labelled rows, unlabelled rows), each in the order of its file."""
    train = read_rows(data / "train.txt")
    order = {guid: i for i, (guid, _) in enumerate(train)}
    picked, _ = train_test_split(train, train_size=labelled, stratify=[tag for _, tag in train], random_state=seed)
    test = read_rows(data / "test_without_label.txt")
    chosen = sorted(random.Random(seed).sample(range(len(test)), unlabelled))
    return sorted(picked, key=lambda row: order[row[0]]), [(test[i][0], "null") for i in chosen]


def write_sample(data: Path, out: Path, labelled: list, unlabelled: list, short_side: int, quality: int) -> None:
    if out.exists():
        shutil.rmtree(out)
    (out / "data").mkdir(parents=True)
    for name, rows in (("train.txt", labelled), ("test_without_label.txt", unlabelled)):
        (out / name).write_text("guid,tag\n" + "".join(f"{guid},{tag}\n" for guid, tag in rows), encoding="utf-8")
    for guid, _ in labelled + unlabelled:
        (out / "data" / f"{guid}.txt").write_bytes((data / "data" / f"{guid}.txt").read_bytes())
        raw = (data / "data" / f"{guid}.jpg").read_bytes()
        (out / "data" / f"{guid}.jpg").write_bytes(shrunk_jpeg(raw, short_side, quality))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="the full MVSA-Single data in the lab-folder layout")
    parser.add_argument("--out", type=Path, default=HERE / "mvsa", help="folder to (re)write (default: sample/mvsa)")
    parser.add_argument("--labelled", type=int, default=300, help="labelled posts, stratified (default: 300)")
    parser.add_argument("--unlabelled", type=int, default=40, help="posts to predict (default: 40)")
    parser.add_argument("--seed", type=int, default=42, help="seed of both draws (default: 42)")
    parser.add_argument("--short-side", type=int, default=224, help="short side of the images in pixels (default: 224)")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality (default: 85)")
    args = parser.parse_args(argv)
    if not (args.data / "train.txt").is_file():
        parser.error(f"no train.txt in {args.data}: --data takes the full data in the lab-folder layout")
    labelled, unlabelled = choose(args.data, args.labelled, args.unlabelled, args.seed)
    write_sample(args.data, args.out, labelled, unlabelled, args.short_side, args.quality)
    counts = {tag: sum(t == tag for _, t in labelled) for tag in sorted({t for _, t in labelled})}
    print(f"wrote {len(labelled)} labelled posts {counts} and {len(unlabelled)} to predict to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
