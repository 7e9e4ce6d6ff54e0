"""Tests of factory_assets.ml.recsys.artefact: reproducible bytes, sha256 identity, no pickle, tamper detection."""

from __future__ import annotations

import hashlib
import io
import json
import time
import zipfile
from dataclasses import fields
from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest

from factory_assets.ml.recsys import artefact
from factory_assets.ml.recsys.artefact import ArtefactIntegrityError
from factory_assets.ml.recsys.model import BlendModel, ModelParams, fit_model

AS_OF = date(2024, 10, 7)


@pytest.fixture(scope="module")
def model() -> BlendModel:
    rng = np.random.default_rng(5)
    n = 120
    conv = rng.integers(0, 3, n)
    train = pd.DataFrame(
        {
            "day": [AS_OF - timedelta(days=int(d)) for d in rng.integers(0, 6, n)],
            "user_id": [f"u{u}" for u in rng.integers(0, 15, n)],
            "item_id": [f"item-{i}" for i in rng.integers(0, 12, n)],
            "weight": 1.0 + 5.0 * conv,
            "n_conversions": conv,
        }
    )
    return fit_model(train, AS_OF, ModelParams(factors=3, iterations=2), als_weight=0.5)


def arrays() -> dict[str, np.ndarray]:
    return {
        "b_floats": np.linspace(0, 1, 7, dtype=np.float32),
        "a_ints": np.arange(12, dtype=np.int64).reshape(3, 4),
        "c_text": np.array(["alpha", "β", ""]),
    }


def assert_models_equal(a: BlendModel, b: BlendModel) -> None:
    for f in fields(BlendModel):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name == "history":
            assert x.shape == y.shape
            np.testing.assert_array_equal(x.toarray(), y.toarray())
        elif isinstance(x, np.ndarray):
            assert x.dtype == y.dtype, f.name
            np.testing.assert_array_equal(x, y, err_msg=f.name)
        else:
            assert x == y, f.name


# --------------------------------------------------------------------------- npz_bytes
def test_npz_bytes_is_deterministic_across_calls_and_time():
    first = artefact.npz_bytes(arrays())
    assert artefact.npz_bytes(arrays()) == first
    time.sleep(2.1)  # zip timestamps have 2 s resolution: a wall-clock stamp would now differ
    assert artefact.npz_bytes(arrays()) == first
    # insertion order does not matter either (members are written in name order)
    assert artefact.npz_bytes(dict(reversed(list(arrays().items())))) == first
    with zipfile.ZipFile(io.BytesIO(first)) as archive:
        infos = archive.infolist()
    assert [i.filename for i in infos] == ["a_ints.npy", "b_floats.npy", "c_text.npy"]
    assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}


def test_npz_bytes_loads_without_pickle():
    data = artefact.npz_bytes(arrays())
    with np.load(io.BytesIO(data), allow_pickle=False) as loaded:
        assert sorted(loaded.files) == ["a_ints", "b_floats", "c_text"]
        for name, expected in arrays().items():
            assert loaded[name].dtype == expected.dtype
            np.testing.assert_array_equal(loaded[name], expected)


def test_npz_bytes_refuses_object_arrays():
    with pytest.raises(TypeError, match="object"):
        artefact.npz_bytes({"ok": np.zeros(2), "bad": np.array([{"a": 1}, None], dtype=object)})


# --------------------------------------------------------------------------- save / load
def test_save_load_round_trip(model, tmp_path):
    path, digest = artefact.save_model(model, tmp_path)
    assert path == tmp_path / f"{digest}.npz"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert_models_equal(artefact.load_model(path, digest), model)
    # saving again is idempotent: same name, same bytes, nothing else in the folder
    assert artefact.save_model(model, tmp_path) == (path, digest)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_artefact_has_no_pickled_members(model, tmp_path):
    path, _ = artefact.save_model(model, tmp_path)
    with np.load(path, allow_pickle=False) as archive:
        for name in archive.files:
            assert archive[name].dtype != object, name  # would raise ValueError if it needed pickle
    with zipfile.ZipFile(path) as archive:
        for name in archive.namelist():
            member = io.BytesIO(archive.read(name))
            np.lib.format.read_array(member, allow_pickle=False)


def test_flipped_byte_is_an_integrity_error(model, tmp_path):
    path, digest = artefact.save_model(model, tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtefactIntegrityError):
        artefact.load_model(path, digest)


def test_missing_artefact(tmp_path):
    with pytest.raises(FileNotFoundError):
        artefact.load_model(tmp_path / "nope.npz", "0" * 64)


def test_atomic_write_leaves_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    artefact.atomic_write_bytes(target, b"one")
    artefact.atomic_write_bytes(target, b"two")
    assert target.read_bytes() == b"two"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "file.bin"
    artefact.atomic_write_bytes(target, b"old")

    def crash(src, dst):
        raise OSError("simulated crash")

    monkeypatch.setattr(artefact.os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        artefact.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]


# --------------------------------------------------------------------------- manifests
def manifest_for(model: BlendModel, directory) -> dict:
    path, digest = artefact.save_model(model, directory)
    return {"model": "blend", "as_of": AS_OF, "artefacts": {"served": {"file": path.name, "sha256": digest}}}


def test_manifest_sha256_is_the_file_sha256(model, tmp_path):
    manifest = manifest_for(model, tmp_path)
    path, digest = artefact.write_manifest(manifest, tmp_path)
    data = path.read_bytes()
    assert hashlib.sha256(data).hexdigest() == digest
    assert path.name == f"{digest}.json"
    # canonical: sorted keys, the date as text, trailing newline
    assert data.endswith(b"}\n")
    assert json.loads(data)["as_of"] == "2024-10-07"
    assert artefact.read_manifest(path, digest)["artefacts"] == manifest["artefacts"]
    # the same manifest content (keys in another order) has the same identity
    reordered = dict(reversed(list(manifest.items())))
    assert artefact.write_manifest(reordered, tmp_path) == (path, digest)


def test_load_manifest_model_round_trip(model, tmp_path):
    path, digest = artefact.write_manifest(manifest_for(model, tmp_path), tmp_path)
    assert_models_equal(artefact.load_manifest_model(path, "served", digest), model)


def test_load_manifest_model_refuses_tampered_manifest(model, tmp_path):
    path, digest = artefact.write_manifest(manifest_for(model, tmp_path), tmp_path)
    tampered = json.loads(path.read_bytes())
    tampered["model"] = "something else"
    path.write_bytes(artefact.manifest_bytes(tampered))
    with pytest.raises(ArtefactIntegrityError):
        artefact.load_manifest_model(path, "served", digest)


def test_load_manifest_model_refuses_manifest_pointing_at_other_bytes(model, tmp_path):
    # the manifest is intact but the artefact file was swapped: the artefact digest check catches it
    path, digest = artefact.write_manifest(manifest_for(model, tmp_path), tmp_path)
    entry = json.loads(path.read_bytes())["artefacts"]["served"]
    (tmp_path / entry["file"]).write_bytes(artefact.npz_bytes(arrays()))
    with pytest.raises(ArtefactIntegrityError):
        artefact.load_manifest_model(path, "served", digest)
    # and without a manifest digest, a manifest whose artefact sha256 was edited is refused too
    edited = json.loads(path.read_bytes())
    edited["artefacts"]["served"]["sha256"] = hashlib.sha256(b"x").hexdigest()
    other = tmp_path / "edited.json"
    other.write_bytes(artefact.manifest_bytes(edited))
    with pytest.raises(ArtefactIntegrityError):
        artefact.load_manifest_model(other, "served")


def test_an_artefact_with_parameters_unknown_to_this_code_is_refused(model):
    arrays = artefact.model_arrays(model)
    params = json.loads(str(arrays["params_json"][0])) | {"scoring_mode_of_the_future": "x"}
    arrays["params_json"] = np.asarray([json.dumps(params)])
    with pytest.raises(ArtefactIntegrityError, match="scoring_mode_of_the_future"):
        artefact.model_from_arrays(arrays)
    # the unchanged arrays still load
    assert artefact.model_from_arrays(artefact.model_arrays(model)).params == model.params
