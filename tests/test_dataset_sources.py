"""Image sources on tiny on-disk datasets built in tmp_path: labels, loading, and the failures that
must be loud (corrupt files, label mismatches, empty splits, absent data). Offline; no Ray."""

from __future__ import annotations

import json
import pickle
import socket

import numpy as np
import pytest
from PIL import Image

from datasets.registry import open_split
from datasets.sources.base import CorruptImageError, DatasetNotFoundError, EmptySplitError, LabelMismatchError
from datasets.sources.imagefolder import ImageFolderSource
from datasets.sources.manifest import ManifestSource
from datasets.sources.npz import NpzSource
from datasets.sources.torchvision_source import TorchvisionSource

CLASSES = ["cat", "dog", "sea horse"]


def _img(path, color=(200, 10, 10), size=(8, 6), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color if mode == "RGB" else color[0]).save(path)
    return path


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ------------------------------------------------------------------ imagefolder

def _tree(root, split="train", folders=("cat", "dog", "sea horse"), per=2):
    for folder in folders:
        for i in range(per):
            _img(root / split / folder / f"{i}.png", color=(10 * i, 50, 90))
    return root


def test_imagefolder_labels_and_loading(tmp_path):
    _tree(tmp_path)
    _img(tmp_path / "train" / "dog" / "extra.JPEG")
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    src = ImageFolderSource(CLASSES, "train", root=tmp_path)
    assert src.labels.tolist() == [0, 0, 1, 1, 1, 2, 2]
    img = src.load(3)
    assert img.mode == "RGB" and img.size == (8, 6)
    assert src.locate(2).endswith("dog/0.png")
    clone = pickle.loads(pickle.dumps(src))
    assert clone.labels.tolist() == src.labels.tolist() and clone.identity() == src.identity()


def test_imagefolder_folder_mappings(tmp_path):
    _tree(tmp_path, split="val", folders=("n01", "n02", "n03"), per=1)
    src = ImageFolderSource(CLASSES, "test", split_dirs={"test": "val"}, folder_names=["n01", "n02", "n03"],
                            root=tmp_path)
    assert src.labels.tolist() == [0, 1, 2]
    src = ImageFolderSource(CLASSES, "test", split_dirs={"test": "val"},
                            class_folders={"cat": "n01", "dog": "n02", "sea horse": "n03"}, root=tmp_path)
    assert src.labels.tolist() == [0, 1, 2]


def test_imagefolder_missing_and_extra_class_folders(tmp_path):
    _tree(tmp_path, folders=("cat", "dog"))
    with pytest.raises(LabelMismatchError, match="sea horse"):
        ImageFolderSource(CLASSES, "train", root=tmp_path)
    _tree(tmp_path, folders=("sea horse", "zebra"))
    with pytest.raises(LabelMismatchError, match="zebra"):
        ImageFolderSource(CLASSES, "train", root=tmp_path)
    assert len(ImageFolderSource(CLASSES, "train", ignore_folders=["zebra"], root=tmp_path)) == 6


def test_imagefolder_empty_split_and_missing_split(tmp_path):
    for c in CLASSES:
        (tmp_path / "train" / c).mkdir(parents=True)
    with pytest.raises(EmptySplitError):
        ImageFolderSource(CLASSES, "train", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=str(tmp_path / "test")):
        ImageFolderSource(CLASSES, "test", root=tmp_path)


def test_corrupt_image_names_its_path(tmp_path):
    _tree(tmp_path, per=1)
    bad = tmp_path / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    src = ImageFolderSource(CLASSES, "train", root=tmp_path)
    index = src.files.index(str(bad))
    with pytest.raises(CorruptImageError) as err:
        src.load(index)
    assert str(bad) in str(err.value) and err.value.location == str(bad)


# ------------------------------------------------------------------ manifest

def _manifest_images(folder, names):
    for n in names:
        _img(folder / "imgs" / n)


def test_manifest_csv_names_ids_and_split_column(tmp_path):
    _manifest_images(tmp_path / "ds", ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "ds" / "m.csv").write_text(
        "path,label,split\nimgs/a.png,cat,train\nimgs/b.png,2,train\nimgs/c.png,Sea_Horse,test\nimgs/d.png,dog,train\n")
    src = ManifestSource(CLASSES, "train", file="ds/m.csv", root=tmp_path)
    assert src.labels.tolist() == [0, 2, 1]
    assert src.load(0).mode == "RGB" and src.locate(1) == str(tmp_path / "ds" / "imgs" / "b.png")
    test = ManifestSource(CLASSES, "test", file="ds/m.csv", root=tmp_path)
    assert test.labels.tolist() == [2]
    assert pickle.loads(pickle.dumps(src)).identity() == src.identity()


def test_manifest_unknown_labels_list_rows_and_known_classes(tmp_path):
    (tmp_path / "m.csv").write_text("path,label\na.png,cat\nb.png,unicorn\nc.png,7\n")
    with pytest.raises(LabelMismatchError) as err:
        ManifestSource(CLASSES, "train", file="m.csv", root=tmp_path)
    msg = str(err.value)
    assert "unicorn" in msg and "'7'" in msg and "b.png" in msg and "'sea horse'" in msg and "2 rows" in msg


def test_manifest_parquet_with_integer_labels_and_image_root(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    _manifest_images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "meta").mkdir()
    pd.DataFrame({"file": ["a.png", "b.png"], "label": [2, 0]}).to_parquet(tmp_path / "meta" / "m.parquet")
    src = ManifestSource(CLASSES, "all", file="meta/m.parquet", image_root="../imgs", path_column="file",
                         root=tmp_path)
    assert src.labels.tolist() == [2, 0]
    assert src.load(0).size == (8, 6)


def test_manifest_multilabel_column_with_ignored_names(tmp_path):
    (tmp_path / "m.csv").write_text("path,labels\na.png,cat|dog\nb.png,No Finding\nc.png,sea_horse\n")
    src = ManifestSource(CLASSES, "train", file="m.csv", ignore_labels=["No Finding"], root=tmp_path)
    assert src.labels.tolist() == [[1, 1, 0], [0, 0, 0], [0, 0, 1]]
    src.check_labels()
    (tmp_path / "bad.csv").write_text("path,labels\na.png,cat|griffin\n")
    with pytest.raises(LabelMismatchError, match="griffin"):
        ManifestSource(CLASSES, "train", file="bad.csv", root=tmp_path)


def test_manifest_label_columns_multilabel_and_one_hot(tmp_path):
    (tmp_path / "chex.csv").write_text("Path,cat,dog,sea horse\na.jpg,1.0,-1.0,\nb.jpg,0.0,,1.0\n")
    zeros = ManifestSource(CLASSES, "train", file="chex.csv", path_column="Path", label_columns=CLASSES,
                           root=tmp_path)
    assert zeros.labels.tolist() == [[1, 0, 0], [0, 0, 1]]
    ones = ManifestSource(CLASSES, "train", file="chex.csv", path_column="Path", label_columns=CLASSES,
                          uncertain=1, root=tmp_path)
    assert ones.labels.tolist() == [[1, 1, 0], [0, 0, 1]]
    (tmp_path / "isic.csv").write_text("image,C,D,S\nISIC_1,0.0,1.0,0.0\nISIC_2,1.0,0.0,0.0\n")
    isic = ManifestSource(CLASSES, "train", file="isic.csv", path_column="image", path_suffix=".jpg",
                          label_columns=["C", "D", "S"], multilabel=False, root=tmp_path)
    assert isic.labels.tolist() == [1, 0] and isic.locate(0).endswith("ISIC_1.jpg")
    (tmp_path / "two.csv").write_text("image,C,D,S\nISIC_3,1.0,1.0,0.0\n")
    with pytest.raises(LabelMismatchError, match="ISIC_3"):
        ManifestSource(CLASSES, "train", file="two.csv", path_column="image", label_columns=["C", "D", "S"],
                       multilabel=False, root=tmp_path)


def test_manifest_coop_split_json(tmp_path):
    _manifest_images(tmp_path / "ds", ["a.png", "b.png"])
    split = {"train": [["a.png", 5, "sea_horse"], ["b.png", 0, "cat"]], "val": [], "test": [["b.png", 1, "dog"]]}
    (tmp_path / "ds" / "split_zhou_X.json").write_text(json.dumps(split))
    src = ManifestSource(CLASSES, "train", file="ds/split_zhou_X.json", image_root="imgs", root=tmp_path)
    assert src.labels.tolist() == [2, 0]  # resolved by class name, not CoOp's integer id
    assert src.load(1).mode == "RGB"
    with pytest.raises(EmptySplitError):
        ManifestSource(CLASSES, "val", file="ds/split_zhou_X.json", root=tmp_path)
    (tmp_path / "ds" / "bad.json").write_text(json.dumps({"train": [["a.png", 0, "kitten"]]}))
    with pytest.raises(LabelMismatchError, match="kitten"):
        ManifestSource(CLASSES, "train", file="ds/bad.json", root=tmp_path)


def test_manifest_split_lists_hash_split_and_filters(tmp_path):
    rows = "".join(f"img{i}.png,{CLASSES[i % 3]},{'F' if i % 2 else 'L'}\n" for i in range(40))
    (tmp_path / "m.csv").write_text("Image Index,label,view\n" + rows)
    (tmp_path / "train_list.txt").write_text("img1.png\nimg2.png\n")
    listed = ManifestSource(CLASSES, "train", file="m.csv", path_column="Image Index",
                            split_lists={"train": "train_list.txt"}, root=tmp_path)
    assert [p.rsplit("/", 1)[-1] for p in listed.files] == ["img1.png", "img2.png"]
    ranges = {"train": [0.0, 0.5], "test": [0.5, 1.0]}
    parts = [ManifestSource(CLASSES, s, file="m.csv", path_column="Image Index", hash_split=ranges, root=tmp_path)
             for s in ("train", "test")]
    assert not set(parts[0].files) & set(parts[1].files) and len(parts[0]) + len(parts[1]) == 40
    again = ManifestSource(CLASSES, "train", file="m.csv", path_column="Image Index", hash_split=ranges, root=tmp_path)
    assert again.files == parts[0].files
    frontal = ManifestSource(CLASSES, "x", file="m.csv", path_column="Image Index", where={"view": "F"}, root=tmp_path)
    assert len(frontal) == 20


def test_manifest_per_split_files_and_missing_manifest(tmp_path):
    (tmp_path / "train.csv").write_text("path,label\na.png,cat\n")
    src = ManifestSource(CLASSES, "train", file={"train": "train.csv", "val": "valid.csv"}, root=tmp_path)
    assert src.labels.tolist() == [0]
    with pytest.raises(DatasetNotFoundError, match="valid.csv"):
        ManifestSource(CLASSES, "val", file={"train": "train.csv", "val": "valid.csv"}, root=tmp_path)


# ------------------------------------------------------------------ npz

def test_npz_grayscale_rgb_and_multilabel(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (5, 7, 7), dtype=np.uint8)
    rgb = rng.integers(0, 255, (3, 7, 7, 3), dtype=np.uint8)
    np.savez(tmp_path / "stored.npz", train_images=gray, train_labels=np.array([[0], [2], [1], [1], [0]]),
             test_images=rgb, test_labels=np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]]))
    np.savez_compressed(tmp_path / "packed.npz", train_images=gray, train_labels=np.array([0, 2, 1, 1, 0]))
    for name in ("stored.npz", "packed.npz"):
        src = NpzSource(CLASSES, "train", file=name, root=tmp_path)
        assert src.labels.tolist() == [0, 2, 1, 1, 0]
        img = src.load(1)
        assert img.mode == "RGB" and img.size == (7, 7)
        assert np.array_equal(np.asarray(img)[..., 0], gray[1]) and np.array_equal(np.asarray(img)[..., 2], gray[1])
        state = pickle.dumps(src)
        assert len(state) < gray.nbytes + 2000  # the image array does not travel
        assert np.array_equal(pickle.loads(state).render([4])[0, ..., 1], gray[4])
    test = NpzSource(CLASSES, "test", file="stored.npz", root=tmp_path)
    assert test.labels.shape == (3, 3) and np.array_equal(np.asarray(test.load(2)), rgb[2])


def test_npz_missing_file_and_keys(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="nothere.npz"):
        NpzSource(CLASSES, "train", file="nothere.npz", root=tmp_path)
    np.savez(tmp_path / "x.npz", train_images=np.zeros((1, 2, 2), np.uint8), train_labels=np.zeros((1, 1)))
    with pytest.raises(KeyError, match="val_images"):
        NpzSource(CLASSES, "val", file="x.npz", root=tmp_path)


# ------------------------------------------------------------------ torchvision

def test_torchvision_absent_data_fails_fast_offline(tmp_path, no_network):
    with pytest.raises(DatasetNotFoundError) as err:
        TorchvisionSource(CLASSES, "train", dataset="DTD", root=tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "dtd" / "dtd") in msg and "download=True" in msg and "dtd-r1.0.1.tar.gz" in msg
    with pytest.raises(DatasetNotFoundError, match="cannot download"):
        TorchvisionSource(CLASSES, "train", dataset="StanfordCars", root=tmp_path)
    with pytest.raises(DatasetNotFoundError, match="cifar-10-batches-py"):
        TorchvisionSource(CLASSES, "train", dataset="CIFAR10", splits={"train": True}, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_torchvision_split_mapping_is_checked(tmp_path):
    with pytest.raises(KeyError, match="trainval"):
        TorchvisionSource(CLASSES, "train", dataset="OxfordIIITPet", root=tmp_path)
    with pytest.raises(KeyError, match="has no splits"):  # no silent train == test on split-less datasets
        TorchvisionSource(CLASSES, "train", dataset="EuroSAT", root=tmp_path)


def test_torchvision_dtd_labels_without_decoding(tmp_path, no_network):
    base = tmp_path / "dtd" / "dtd"
    lines = []
    for cls in ("banded", "dotted", "zigzagged"):
        for i in range(2):
            _img(base / "images" / cls / f"{cls}_{i}.jpg")
            lines.append(f"{cls}/{cls}_{i}.jpg")
    (base / "labels").mkdir()
    (base / "labels" / "train1.txt").write_text("\n".join(lines) + "\n")
    # a corrupt file: labels must still come out (no decoding), loading it must name the path
    (base / "images" / "dotted" / "dotted_1.jpg").write_bytes(b"garbage")
    src = TorchvisionSource(["banded", "dotted", "zigzagged"], "train", dataset="DTD", root=tmp_path)
    assert src.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert src.load(0).mode == "RGB"
    with pytest.raises(CorruptImageError, match="dotted_1.jpg"):
        src.load(3)
    clone = pickle.loads(pickle.dumps(src))
    assert clone._ds is None and clone.labels.tolist() == src.labels.tolist()


def test_torchvision_class_count_mismatch_names_the_card_source(tmp_path, no_network):
    cats = tmp_path / "caltech101" / "101_ObjectCategories"
    for folder in ("BACKGROUND_Google", "Faces", "Faces_easy", "ant"):
        _img(cats / folder / "image_0001.jpg")
    with pytest.raises(LabelMismatchError) as err:  # CoOp's list drops Faces_easy; torchvision keeps it
        TorchvisionSource(["face", "ant"], "all", dataset="Caltech101", root=tmp_path)
    assert "class_source" in str(err.value) and "has 3" in str(err.value)
    src = TorchvisionSource(["face", "face easy", "ant"], "all", dataset="Caltech101", root=tmp_path)
    assert src.labels.tolist() == [0, 1, 2] and src.locate(2).endswith("ant/image_0001.jpg")


# ------------------------------------------------------------------ through the registry

def test_open_split_reads_a_coop_layout(tmp_path):
    from datasets.registry import get_card

    classes = get_card("eurosat").classes
    base = tmp_path / "eurosat"
    _img(base / "2750" / "Forest" / "Forest_1.jpg")
    _img(base / "2750" / "SeaLake" / "SeaLake_1.jpg")
    split = {"train": [["Forest/Forest_1.jpg", 1, "Forest"], ["SeaLake/SeaLake_1.jpg", 9, "Sea or Lake"]],
             "val": [], "test": []}
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    src = open_split("eurosat", "train", data_root=tmp_path)
    assert src.labels.tolist() == [classes.index("Forest"), classes.index("Sea or Lake")]
    assert src.load(1).mode == "RGB"
