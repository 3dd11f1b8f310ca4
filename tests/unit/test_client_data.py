"""Edge data adapters: npz/csv files, simulation partitions, and actionable errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fedge.client.data import load_local, split_local, write_partitions
from fedge.errors import FedgeError
from fedge.tasks import load_task, partition, task_data

DIGITS = load_task("digits")


@pytest.fixture(scope="module")
def train_split() -> tuple[np.ndarray, np.ndarray]:
    return task_data(DIGITS, 0)[0]


def _write_csv(
    path: Path, raw: np.ndarray, labels: np.ndarray, label_name: str = "label", label_first: bool = False
) -> None:
    names = [f"px{i}" for i in range(raw.shape[1])]
    header = [label_name, *names] if label_first else [*names, label_name]
    rows = [
        [int(lab), *map(int, feats)] if label_first else [*map(int, feats), int(lab)]
        for feats, lab in zip(raw, labels, strict=True)
    ]
    path.write_text(",".join(header) + "\n" + "\n".join(",".join(map(str, r)) for r in rows) + "\n")


def test_write_partitions_round_trips_through_npz(tmp_path: Path, train_split) -> None:
    dirs = [tmp_path / f"node{i}" for i in range(3)]
    paths = write_partitions(DIGITS, 3, "dirichlet:0.5", 0, dirs)
    assert paths == [d / "data.npz" for d in dirs]
    x, y = train_split
    for idx, path in zip(partition(y, 3, "dirichlet:0.5", 0), paths, strict=True):
        lx, ly = load_local(DIGITS, {"data-path": str(path)}, {})
        np.testing.assert_array_equal(lx, x[idx])
        np.testing.assert_array_equal(ly, y[idx])
        assert lx.dtype == np.float32 and ly.dtype == np.int64
        assert path.stat().st_mode & 0o777 == 0o600


def test_npz_with_flat_raw_features(tmp_path: Path, train_split) -> None:
    x, y = train_split
    path = tmp_path / "flat.npz"
    np.savez(path, x=(x[:50] * 16).reshape(50, 64).astype(np.uint8), y=y[:50].astype(np.int32))
    lx, ly = load_local(DIGITS, {"data-path": path}, {})
    np.testing.assert_array_equal(lx, x[:50])
    np.testing.assert_array_equal(ly, y[:50])


@pytest.mark.parametrize("label_first", [False, True])
def test_csv_round_trip(tmp_path: Path, train_split, label_first: bool) -> None:
    x, y = train_split
    path = tmp_path / "local.csv"
    _write_csv(path, (x[:40] * 16).reshape(40, 64), y[:40], label_name="digit", label_first=label_first)
    lx, ly = load_local(DIGITS, {"data-path": str(path), "label-column": "digit"}, {})
    np.testing.assert_array_equal(lx, x[:40])
    np.testing.assert_array_equal(ly, y[:40])


def test_partition_source_matches_partitioned_train_split(train_split) -> None:
    x, y = train_split
    config = {"partition": "shards:2", "seed": 0}
    lx, ly = load_local(DIGITS, {"partition-id": 1, "num-partitions": 3}, config)
    idx = partition(y, 3, "shards:2", 0)[1]
    np.testing.assert_array_equal(ly, y[idx])
    assert load_local(DIGITS, {"partition-id": 1, "num-partitions": 3}, config)[0] is lx  # cached


def test_split_local_is_deterministic_and_disjoint() -> None:
    x, y = np.arange(50, dtype=np.float32).reshape(50, 1), np.arange(50)
    (tx, ty), (ex, ey) = split_local((x, y), seed=3)
    assert len(ey) == 10 and len(ty) == 40 and not set(ty) & set(ey)
    assert np.array_equal(split_local((x, y), seed=3)[1][1], ey)
    tiny = split_local((x[:3], y[:3]), seed=0)
    assert len(tiny[0][0]) == len(tiny[1][0]) == 3


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FedgeError) as err:
        load_local(DIGITS, {"data-path": str(tmp_path / "nope.npz")}, {})
    assert err.value.message == f"data file not found: {tmp_path / 'nope.npz'}"
    assert "data-path" in err.value.hint


def test_npz_without_labels(tmp_path: Path) -> None:
    path = tmp_path / "nolabels.npz"
    np.savez(path, x=np.zeros((4, 64)))
    with pytest.raises(FedgeError, match="has no array 'y'") as err:
        load_local(DIGITS, {"data-path": str(path)}, {})
    assert "numpy.savez" in err.value.hint


def test_csv_without_label_column(tmp_path: Path) -> None:
    path = tmp_path / "local.csv"
    _write_csv(path, np.zeros((3, 64)), np.zeros(3), label_name="target")
    with pytest.raises(FedgeError, match="no label column 'label'") as err:
        load_local(DIGITS, {"data-path": str(path)}, {})
    assert "label-column" in err.value.hint


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [
        ("bad.npz", b"not a zip", "cannot read .* as .npz"),
        ("data.txt", b"x", "unsupported data file format '.txt'"),
        ("empty.csv", b"a,label\n", "no data rows"),
        ("text.csv", b"a,label\nfoo,1\n", "non-numeric"),
    ],
)
def test_malformed_files(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(FedgeError, match=match) as err:
        load_local(DIGITS, {"data-path": str(path)}, {})
    assert err.value.hint


def test_wrong_feature_count_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "short.npz"
    np.savez(path, x=np.zeros((4, 10)), y=np.zeros(4))
    with pytest.raises(FedgeError, match="expects 64 features per sample"):
        load_local(DIGITS, {"data-path": str(path)}, {})
    np.savez(path, x=np.zeros((4, 64)), y=np.array([0, 1, 2, 10]))
    with pytest.raises(FedgeError, match="labels range 0..10") as err:
        load_local(DIGITS, {"data-path": str(path)}, {})
    assert "0..9" in err.value.hint
    np.savez(path, x=np.zeros((4, 64)), y=np.zeros(3))
    with pytest.raises(FedgeError, match="4 feature rows but 3 labels"):
        load_local(DIGITS, {"data-path": str(path)}, {})


def test_no_data_configured_and_bad_partition_id() -> None:
    with pytest.raises(FedgeError, match="no data configured") as err:
        load_local(DIGITS, {}, {})
    assert "data-path" in err.value.hint and "partition-id" in err.value.hint
    with pytest.raises(FedgeError, match="partition-id 3 is outside 0..2"):
        load_local(DIGITS, {"partition-id": 3, "num-partitions": 3}, {})
    with pytest.raises(FedgeError, match="partition-id must be an integer"):
        load_local(DIGITS, {"partition-id": "first", "num-partitions": 3}, {})


def test_write_partitions_needs_one_dir_per_partition(tmp_path: Path) -> None:
    with pytest.raises(FedgeError, match="3 partitions need 3 output directories, got 2"):
        write_partitions(DIGITS, 3, "iid", 0, [tmp_path / "a", tmp_path / "b"])


def test_parquet_reads_like_csv(tmp_path: Path, train_split) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, y = train_split
    raw = (x[:40] * 16).reshape(40, -1)
    columns = {f"px{i}": raw[:, i] for i in range(raw.shape[1])}
    pq.write_table(pa.table({**columns, "digit": y[:40]}), tmp_path / "part.parquet")
    lx, ly = load_local(DIGITS, {"data-path": str(tmp_path / "part.parquet"), "label-column": "digit"}, {})
    assert np.allclose(lx, x[:40]) and np.array_equal(ly, y[:40])
    with pytest.raises(FedgeError, match="no label column 'label'"):
        load_local(DIGITS, {"data-path": str(tmp_path / "part.parquet")}, {})


def test_regression_and_multilabel_targets_from_csv(tmp_path: Path) -> None:
    import dataclasses

    reg = dataclasses.replace(DIGITS, name="reg", kind="regression", num_classes=1, input_shape=(2,))
    (tmp_path / "r.csv").write_text("a,b,y\n1,2,0.5\n3,4,-1.25\n")
    x, y = load_local(reg, {"data-path": str(tmp_path / "r.csv"), "label-column": "y"}, {})
    assert y.dtype == np.float32 and y.tolist() == [0.5, -1.25] and x.shape == (2, 2)
    multi = dataclasses.replace(DIGITS, name="ml", kind="multilabel", num_classes=2, input_shape=(1,))
    (tmp_path / "m.csv").write_text("f,cat,dog\n0.5,1,0\n0.25,1,1\n")
    _, labels = load_local(multi, {"data-path": str(tmp_path / "m.csv"), "label-column": "cat,dog"}, {})
    assert labels.tolist() == [[1.0, 0.0], [1.0, 1.0]]
    (tmp_path / "bad.csv").write_text("f,cat,dog\n0.5,2,0\n")
    with pytest.raises(FedgeError, match="multi-label targets must be 0/1"):
        load_local(multi, {"data-path": str(tmp_path / "bad.csv"), "label-column": "cat,dog"}, {})


def test_image_folder_is_a_lazy_dataset_split_into_subsets(tmp_path: Path) -> None:
    from PIL import Image
    from torch.utils.data import Subset

    from fedge.client.images import ImageFolder
    from fedge.tasks.training import batches

    for label, name in enumerate(["one", "two"]):
        (tmp_path / name).mkdir()
        for i in range(5):
            pixels = np.full((16, 16), 40 * label + i, np.uint8)  # resized to the task's 8×8
            Image.fromarray(pixels, mode="L").save(tmp_path / name / f"{i}.png")
    (tmp_path / "one" / "notes.txt").write_text("not an image")
    data = load_local(DIGITS, {"data-path": str(tmp_path)}, {})
    assert isinstance(data, ImageFolder) and len(data) == 10 and data.classes == ["one", "two"]
    x, y = data[7]
    assert x.shape == (1, 8, 8) and int(y) == 1 and np.isclose(float(x[0, 0, 0]), (40 + 2) / 16)
    train, held_out = split_local(data, seed=0)
    assert isinstance(train, Subset) and len(train) == 8 and len(held_out) == 2
    xb, yb = next(batches(train, 4, torch.device("cpu"), np.random.default_rng(0)))
    assert xb.shape == (4, 1, 8, 8) and yb.dtype == torch.int64
    (tmp_path / "two" / "3.png").write_bytes(b"broken")
    with pytest.raises(FedgeError, match="cannot read image"):
        data[8]


def test_image_folder_needs_class_folders_with_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(FedgeError, match="holds no images in class sub-folders"):
        load_local(DIGITS, {"data-path": str(tmp_path)}, {})
