"""Model artefacts without pickle: arrays in a byte-reproducible ``.npz``, identity by sha256.

An artefact is one ``.npz`` holding only numeric and fixed-width unicode arrays, written with fixed zip
timestamps so the same model always gives the same bytes (and the same sha256).  Loading uses
``np.load(allow_pickle=False)`` and refuses a file whose sha256 differs from the expected digest.
"""

from __future__ import annotations

import dataclasses

import hashlib
import io
import json
import os
import uuid
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from factory_assets.ml.recsys.model import BlendModel, ModelParams
from factory_assets.platform.files import sha256_file  # noqa: F401 (part of this module's API)

FORMAT = "factory_assets.blend/1"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ArtefactIntegrityError(RuntimeError):
    """An artefact's bytes do not match the sha256 its manifest promises (tampered or corrupted)."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file and ``os.replace``: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")  # unique per writer and thread
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves no stray temporary file
        raise


ZIP_LEVEL = 1  # deflate level: 4x faster than zlib's default 6 on a 120 MiB model, 11 % larger (benchmarks/scale.py)


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A deterministic ``.npz`` (zip of ``.npy`` members in name order, fixed timestamps).

    Raises:
        TypeError: for an ``object`` array (it would need pickle).
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(arrays):
            array = np.ascontiguousarray(arrays[name])
            if array.dtype == object:
                raise TypeError(f"array {name!r} has dtype object; artefacts never hold pickled objects")
            member = io.BytesIO()
            np.lib.format.write_array(member, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, member.getvalue(), compresslevel=ZIP_LEVEL)
    return buffer.getvalue()


def model_arrays(model: BlendModel) -> dict[str, np.ndarray]:
    """The arrays that make up a :class:`BlendModel` (the inverse of :func:`model_from_arrays`)."""
    history = model.history.tocsr()
    return {
        "user_ids": np.asarray(model.user_ids, dtype=str),
        "item_ids": np.asarray(model.item_ids, dtype=str),
        "user_factors": model.user_factors.astype(np.float32),
        "item_factors": model.item_factors.astype(np.float32),
        "history_data": history.data.astype(np.float32),
        "history_indices": history.indices.astype(np.int32),
        "history_indptr": history.indptr.astype(np.int64),
        "popularity": model.popularity.astype(np.float32),
        "als_weight": np.asarray([model.als_weight], dtype=np.float64),
        "params_json": np.asarray([json.dumps(model.params.as_dict(), sort_keys=True)]),
    } | ({} if model.ranker is None else ranker_arrays(model.ranker)) | regime_arrays(model)


def regime_arrays(model: BlendModel) -> dict[str, np.ndarray]:
    """The regime's terms (``recsys.regime``), only when the model has them: other models keep their exact bytes."""
    out = {} if model.trend is None else {"regime_trend": model.trend.astype(np.float32)}
    return out | ({} if model.recent is None else _csr_arrays("regime_recent", model.recent))


def _csr_arrays(prefix: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    m = matrix.tocsr()
    return {f"{prefix}_data": m.data.astype(np.float32), f"{prefix}_indices": m.indices.astype(np.int32),
            f"{prefix}_indptr": m.indptr.astype(np.int64), f"{prefix}_shape": np.asarray(m.shape, dtype=np.int64)}


def _csr_from(prefix: str, arrays: dict[str, np.ndarray]) -> sp.csr_matrix:
    shape = tuple(int(v) for v in arrays[f"{prefix}_shape"])
    return sp.csr_matrix((arrays[f"{prefix}_data"], arrays[f"{prefix}_indices"], arrays[f"{prefix}_indptr"]), shape=shape)


RANKER_PREFIX = "ranker__"
LONG_CSR = ("long_days", "long_conversions", "long_recency", "long_due")  # SourceArrays' long-history matrices
_TREE_FIELDS = ("roots", "feature", "threshold", "missing_left", "left", "right", "is_leaf", "value")


def ranker_arrays(part) -> dict[str, np.ndarray]:
    """Arrays of a ``recsys.ranker.RankerPart`` (sources, linear coefficients or tree nodes), prefixed ``ranker__``."""
    from factory_assets.ml.recsys.ranker import TreeRanker

    src = part.sources
    out = {
        **_csr_arrays("recency", src.recency), **_csr_arrays("neighbours", src.neighbours),
        **_csr_arrays("days_count", src.days_count),
        "converters": src.converters.astype(np.float32), "converters_7d": src.converters_7d.astype(np.float32),
        "converters_prev_7d": src.converters_prev_7d.astype(np.float32),
        "item_repeat_rate": src.item_repeat_rate.astype(np.float32), "user_days": src.user_days.astype(np.float32),
        "n_candidates": np.asarray([part.n_candidates], dtype=np.int64),
    }
    if src.long_days is not None:  # only then: a model without long history keeps its exact bytes
        for name in LONG_CSR:
            out |= _csr_arrays(name, getattr(src, name))
        out["long_converters"] = src.long_converters.astype(np.float32)
    lin = part.linear
    if isinstance(lin, TreeRanker):
        out |= {f"tree_{f}": np.asarray(getattr(lin, f)) for f in _TREE_FIELDS}
        out |= {"tree_baseline": np.asarray([lin.baseline], dtype=np.float64), "tree_max_depth": np.asarray([lin.max_depth], dtype=np.int64)}
    else:
        out |= {"coef": lin.coef.astype(np.float64), "intercept": np.asarray([lin.intercept], dtype=np.float64),
                "mean": lin.mean.astype(np.float64), "scale": lin.scale.astype(np.float64)}
    return {RANKER_PREFIX + k: v for k, v in out.items()}


def ranker_from_arrays(arrays: dict[str, np.ndarray]):
    """The inverse of :func:`ranker_arrays` (``arrays`` with the prefix stripped)."""
    from factory_assets.ml.recsys.candidates import SourceArrays
    from factory_assets.ml.recsys.ranker import LinearRanker, RankerPart, TreeRanker

    sources = SourceArrays(
        recency=_csr_from("recency", arrays), neighbours=_csr_from("neighbours", arrays),
        converters=arrays["converters"], converters_7d=arrays["converters_7d"],
        converters_prev_7d=arrays["converters_prev_7d"], days_count=_csr_from("days_count", arrays),
        item_repeat_rate=arrays["item_repeat_rate"], user_days=arrays["user_days"],
        **({name: _csr_from(name, arrays) for name in LONG_CSR} | {"long_converters": arrays["long_converters"]}
           if "long_days_data" in arrays else {}),
    )
    if "tree_roots" in arrays:
        linear = TreeRanker(**{f: arrays[f"tree_{f}"] for f in _TREE_FIELDS}, baseline=float(arrays["tree_baseline"][0]),
                            max_depth=int(arrays["tree_max_depth"][0]))
    else:
        linear = LinearRanker(coef=arrays["coef"], intercept=float(arrays["intercept"][0]), mean=arrays["mean"], scale=arrays["scale"])
    return RankerPart(sources=sources, linear=linear, n_candidates=int(arrays["n_candidates"][0]))


def model_from_arrays(arrays: dict[str, np.ndarray]) -> BlendModel:
    """Rebuild a model from :func:`model_arrays` output (a ranker model when ``ranker__*`` arrays are present)."""
    user_ids = arrays["user_ids"].astype(str)
    item_ids = arrays["item_ids"].astype(str)
    history = sp.csr_matrix(
        (arrays["history_data"], arrays["history_indices"], arrays["history_indptr"]),
        shape=(len(user_ids), len(item_ids)),
    )
    params = json.loads(str(arrays["params_json"][0]))
    params["als_weight_grid"] = tuple(params["als_weight_grid"])
    if "regime_decay_grid" in params:
        params["regime_decay_grid"] = tuple(params["regime_decay_grid"])
    ranked = {k[len(RANKER_PREFIX):]: v for k, v in arrays.items() if k.startswith(RANKER_PREFIX)}
    return BlendModel(
        ranker=ranker_from_arrays(ranked) if ranked else None,
        user_ids=user_ids,
        item_ids=item_ids,
        user_factors=arrays["user_factors"],
        item_factors=arrays["item_factors"],
        history=history,
        popularity=arrays["popularity"],
        als_weight=float(arrays["als_weight"][0]),
        params=_params(params),
        trend=arrays.get("regime_trend"),
        recent=_csr_from("regime_recent", arrays) if "regime_recent_shape" in arrays else None,
    )


def _params(params: dict) -> ModelParams:
    """``ModelParams`` of a stored artefact.

    Raises:
        ArtefactIntegrityError: when the artefact names parameters this code does not know (written by another
            code version): its scores could mean something else here, so it is refused like a bad digest.
    """
    known = {f.name for f in dataclasses.fields(ModelParams)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ArtefactIntegrityError(f"artefact parameters unknown to this code version: {unknown}")
    return ModelParams(**params)


def save_model(model: BlendModel, directory: Path) -> tuple[Path, str]:
    """Write the model content-addressed as ``<directory>/<sha256>.npz``; return ``(path, sha256)``."""
    data = npz_bytes(model_arrays(model))
    digest = hashlib.sha256(data).hexdigest()
    path = directory / f"{digest}.npz"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path, digest


def load_model(path: str | Path, expected_sha256: str) -> BlendModel:
    """Load a model after checking its sha256; never unpickles.

    Raises:
        ArtefactIntegrityError: if the file's sha256 is not ``expected_sha256``.
        FileNotFoundError: if the file is missing.
    """
    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ArtefactIntegrityError(f"{path}: sha256 {actual} does not match the expected {expected_sha256}")
    with np.load(path, allow_pickle=False) as archive:
        return model_from_arrays({name: archive[name] for name in archive.files})


def manifest_bytes(manifest: dict) -> bytes:
    """Canonical JSON bytes of a manifest (sorted keys, UTF-8, trailing newline): its sha256 is the model's id."""
    return (json.dumps(manifest, sort_keys=True, indent=2, default=str) + "\n").encode("utf-8")


def write_manifest(manifest: dict, directory: Path) -> tuple[Path, str]:
    """Write the manifest content-addressed as ``<directory>/<sha256>.json``; return ``(path, sha256)``."""
    data = manifest_bytes(manifest)
    digest = hashlib.sha256(data).hexdigest()
    path = directory / f"{digest}.json"
    if not path.exists():
        atomic_write_bytes(path, data)
    return path, digest


def read_manifest(path: str | Path, expected_sha256: str | None = None) -> dict:
    """Parse a manifest, checking its sha256 when given.

    Raises:
        ArtefactIntegrityError: on a digest mismatch.
    """
    data = Path(path).read_bytes()
    if expected_sha256 is not None and hashlib.sha256(data).hexdigest() != expected_sha256:
        raise ArtefactIntegrityError(f"{path}: manifest sha256 does not match the expected {expected_sha256}")
    return json.loads(data)


def load_manifest_model(manifest_path: str | Path, role: str, manifest_sha256: str | None = None) -> BlendModel:
    """Load the ``role`` artefact (``"served"`` or ``"eval"``) a manifest lists, verifying both digests."""
    manifest = read_manifest(manifest_path, manifest_sha256)
    entry = manifest["artefacts"][role]
    return load_model(Path(manifest_path).parent / entry["file"], entry["sha256"])
