"""Merge the training splits of COCO sets laid out as realphoto.py writes them
(``DIR/annotations/train.json``, ``DIR/images/train``) into one, images linked.

    python benchmarks/merge_coco.py data/replay data/realphoto data/mnist_coco:800

``DIR:N`` takes the first N images of a set. Used to fine-tune on the benchmark's
photos together with part of the pretraining set ("replay", docs/benchmarks.md);
validate on the benchmark's own ``annotations/val.json``. The sets must name the same
categories in the same order. Image ids and annotation ids are renumbered; file names
gain their set's folder name, so two sets' ``train_00000.jpg`` do not collide.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def merge(out: Path, sources: list[tuple[Path, int | None]]) -> dict:
    """Write ``out/annotations/train.json`` and ``out/images/train`` (symbolic links);
    returns the merged COCO dict."""
    images = out / "images" / "train"
    images.mkdir(parents=True, exist_ok=True)
    merged: dict = {"images": [], "annotations": [], "categories": None}
    for root, limit in sources:
        path = root / "annotations" / "train.json"
        try:
            coco = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise SystemExit(f"{path}: not a readable COCO file ({e})") from None
        if merged["categories"] is None:
            merged["categories"] = coco["categories"]
        elif coco["categories"] != merged["categories"]:
            raise SystemExit(f"{path}: its categories differ from the first set's; merge sets of the same classes")
        ids = {}
        for im in coco["images"][:limit]:
            ids[im["id"]] = len(merged["images"]) + 1
            name = f"{root.name}_{im['file_name']}"
            link, target = images / name, (root / "images" / "train" / im["file_name"]).resolve()
            if not link.is_symlink():
                os.symlink(target, link)
            elif Path(os.readlink(link)) != target:  # two sets of one folder name, or another OUT's links
                raise SystemExit(f"{link}: already links {os.readlink(link)}, not {target}; choose an empty OUT")
            merged["images"].append({**im, "id": ids[im["id"]], "file_name": name})
        for a in coco["annotations"]:
            if a["image_id"] in ids:
                merged["annotations"].append(
                    {**a, "id": len(merged["annotations"]) + 1, "image_id": ids[a["image_id"]]}
                )
    target = out / "annotations" / "train.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged))
    tmp.replace(target)
    return merged


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("sets", nargs="+", metavar="DIR[:N]")
    args = ap.parse_args()
    sources = []
    for s in args.sets:
        folder, _, n = s.rpartition(":") if ":" in s else (s, "", "")
        if n and (not n.isdigit() or int(n) < 1):
            ap.error(f"{s}: N must be a positive number of images")
        sources.append((Path(folder), int(n) if n else None))
    merged = merge(Path(args.out), sources)
    print(f"{args.out}: {len(merged['images'])} images, {len(merged['annotations'])} objects")
    return 0


if __name__ == "__main__":
    sys.exit(main())
