from __future__ import annotations

import pytest

from edgeft.compress import data
from edgeft.errors import DataError
from tests.conftest import write_folder


def test_split_layout_and_zip_give_the_same_splits(tiny_data, tiny_zip):
    folder = data.open_image_folder(str(tiny_data))
    zipped = data.open_image_folder(str(tiny_zip))
    assert folder.classes == zipped.classes == ["blue", "green", "red"]
    assert len(folder.train) == len(zipped.train) == 24
    assert len(folder.val) == len(zipped.val) == 12
    assert [s.label for s in folder.train] == [s.label for s in zipped.train]


def test_flat_layout_is_split_stratified(tiny_flat):
    splits = data.open_image_folder(str(tiny_flat), val_fraction=0.2)
    for label in range(3):
        assert sum(s.label == label for s in splits.val) == 2
        assert sum(s.label == label for s in splits.train) == 8
    assert not {s.path for s in splits.train} & {s.path for s in splits.val}


def test_fraction_and_shots_are_stratified_and_seeded(tiny_data):
    splits = data.open_image_folder(str(tiny_data))
    few = data.sample_few(splits, 0.5, None, seed=1)
    assert [sum(s.label == c for s in few.train) for c in range(3)] == [4, 4, 4]
    again = data.sample_few(splits, 0.5, None, seed=1)
    other = data.sample_few(splits, 0.5, None, seed=2)
    assert [s.path for s in few.train] == [s.path for s in again.train]
    assert [s.path for s in few.train] != [s.path for s in other.train]
    shots = data.sample_few(splits, None, 2, seed=0)
    assert [sum(s.label == c for s in shots.train) for c in range(3)] == [2, 2, 2]
    assert shots.val == splits.val


def test_fraction_that_empties_a_class_is_an_error(tiny_data):
    splits = data.open_image_folder(str(tiny_data))
    with pytest.raises(DataError, match="--fraction 0.01 leaves class 'blue' empty"):
        data.sample_few(splits, 0.01, None, seed=0)


def test_too_many_shots_is_an_error(tiny_data):
    with pytest.raises(DataError, match="--shots 9: class 'blue' has only 8"):
        data.sample_few(data.open_image_folder(str(tiny_data)), None, 9, seed=0)


def test_missing_path_empty_class_and_single_class(tmp_path, tiny_data):
    with pytest.raises(DataError, match="no such file or directory"):
        data.open_image_folder(str(tmp_path / "nope"))
    (tiny_data / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="class folder 'train/empty' has no images"):
        data.open_image_folder(str(tiny_data))
    single = write_folder(tmp_path / "one", 4, layout="flat")
    for name in ("green", "blue"):
        for f in (single / name).iterdir():
            f.unlink()
        (single / name).rmdir()
    with pytest.raises(DataError, match="needs at least 2"):
        data.open_image_folder(str(single))


def test_corrupt_images_are_skipped_and_counted_then_refused_above_5_percent(tmp_path):
    root = write_folder(tmp_path / "d", per_class=40, layout="flat")
    (root / "red" / "bad.png").write_bytes(b"not an image")
    (root / "red" / "notes.txt").write_text("ignored")
    splits = data.open_image_folder(str(root), val_fraction=0.25)
    assert splits.ignored_files == 1
    train_has_bad = any(s.path.endswith("bad.png") for s in splits.train)
    dataset = data.ImageDataset(splits.store, splits.train if train_has_bad else splits.val, 16)
    (skipped,) = dataset.skipped
    assert skipped["file"].endswith("bad.png") and "cannot identify image" in skipped["reason"]
    assert not any(path.endswith("bad.png") for path in dataset.paths)
    for i in range(10):
        (root / "red" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 truncated")
    splits = data.open_image_folder(str(root), val_fraction=0.25)
    with pytest.raises(DataError, match="corrupt or not images"):
        data.ImageDataset(splits.store, splits.train + splits.val, 16)


def test_dataset_decodes_to_the_requested_size(tiny_data):
    splits = data.open_image_folder(str(tiny_data))
    dataset = data.ImageDataset(splits.store, splits.train, 24, data.build_transform(24, train=True))
    image, label = dataset[0]
    assert image.shape == (3, 24, 24) and 0.0 <= image.min() and image.max() <= 1.0
    assert int(label) == splits.train[0].label


def test_epoch_sampler_shards_and_reshuffles():
    ranks = [data.EpochSampler(10, seed=0, rank=r, world=2) for r in range(2)]
    first = [list(s) for s in ranks]
    assert sorted(first[0] + first[1]) == list(range(10))
    for s in ranks:
        s.set_epoch(1)
    assert [list(s) for s in ranks] != first


def test_a_file_beside_the_splits_under_a_shared_root_is_not_a_level(tmp_path):
    root = write_folder(tmp_path / "set" / "tiny-200", per_class=4)
    (root / "classes.tsv").write_text("blue\tthe colour blue\n")
    splits = data.open_image_folder(str(tmp_path / "set"))
    assert splits.classes == ["blue", "green", "red"]
    assert (len(splits.train), len(splits.val)) == (12, 6) and all("/train/" in s.path for s in splits.train)


def test_typical_short_side_is_the_images_own_resolution(tmp_path):
    write_folder(tmp_path / "d", per_class=4, size=24)
    assert data.typical_short_side(data.open_image_folder(str(tmp_path / "d"))) == 24
