"""training/run.py pieces not covered by the training smoke runs: the unreadable-pair summary at the
end of a run."""
import json
import warnings

import PIL.Image
import torch

from data import make_dataset
from data.render import render
from data.scenes import make_scene
from training.run import Run, log_data_summary


def test_data_summary_counts_unreadable_pairs(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    scene = make_scene(5, "train", 0, views_per_scene=3)
    for i in range(3):
        PIL.Image.fromarray(render(scene, i, (64, 48))[0]).save(images / f"{i}.png")
    (images / "1.png").write_bytes(b"\x89PNG broken")
    train = make_dataset("folder", images, resolution=(64, 48), window=2, max_bad_fraction=0.7)
    val = make_dataset("folder", images, resolution=(64, 48), window=2, max_bad_fraction=0.7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dataset warns once per skipped pair
        for i in range(len(train)):
            train[i]  # pairs (0, 1) and (1, 2) hold the broken image
    run = Run(str(tmp_path / "run"))
    run.begin(7)
    log_data_summary(run, 7, 1, torch.device("cpu"), train=train, val=val)
    (rec,) = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert rec == dict(kind="data", step=7, train_pairs=3, train_bad_items=2, val_pairs=3, val_bad_items=0)
    log = open(tmp_path / "run" / "log.txt").read().splitlines()
    train_line, val_line = (json.loads(line.split(": ", 1)[1]) for line in log)
    assert log[0].startswith("data train: ") and log[1].startswith("data val: ")
    assert train_line["bad_items"] == 2 and train_line["bad_fraction"] == 2 / 3 and "1.png" in train_line["examples"][0]
    assert val_line["bad_items"] == 0
