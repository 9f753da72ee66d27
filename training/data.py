"""Load VQA datasets onto one common schema through Hugging Face ``datasets``.

Why: training and evaluation code should see one row format whatever the source, so that the same recipe, metrics
and baselines run on the project's generated benchmark and on the public VQA sets. The common schema is

    image (datasets.Image) | question (str) | answers (list[str]) | question_id (str) | question_type (str)

Sources and their default column mappings (each overridable, see ``ColumnMap``):

- VQAv2 (Goyal et al. 2017, "Making the V in VQA Matter", CVPR; built on Antol et al. 2015, "VQA", ICCV): hub
  ``lmms-lab/VQAv2``; ``answers`` is the 10 human answers (a list of ``{"answer", ...}`` records);
  ``question_type`` defaults to the official 3-way ``answer_type`` (yes/no, number, other).
- GQA (Hudson & Manning 2019, "GQA", CVPR): hub ``lmms-lab/GQA``; one ``answer`` string becomes a 1-element list;
  ``question_type`` is ``types.structural`` (verify/query/choose/logical/compare). The hub layout keeps images in a
  separate config joined on ``imageId``; pass it as ``images=``.
- TextVQA (Singh et al. 2019, "Towards VQA Models That Can Read", CVPR): hub ``lmms-lab/textvqa``; 10 answers;
  no question type, so every row gets ``"textvqa"``.
- DocVQA (Mathew et al. 2021, "DocVQA", WACV): hub ``lmms-lab/DocVQA`` config ``DocVQA``; several accepted answers
  (scored with ANLS); ``question_types`` lists are joined with ``"|"``.
- The project's own benchmark (``training/benchmark.py``): ``load_benchmark(path)``.

``question_id`` is stored as a string, since sources disagree on its type. Images are never decoded or re-encoded by
the mapping. No dataset hub is reachable from this project's machines, so the loaders take ``path=`` (a directory
written by ``save_to_disk``, a local dataset folder or data file, or a hub id) and fail with a ``DatasetNotFoundError``
that says how to obtain the data when it is not there.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import datasets

__all__ = [
    "BENCHMARK_EXTRA_COLUMNS",
    "SCHEMA_COLUMNS",
    "SOURCES",
    "ColumnMap",
    "DatasetNotFoundError",
    "DocVQAColumns",
    "GQAColumns",
    "TextVQAColumns",
    "VQAv2Columns",
    "VqaSource",
    "list_sources",
    "load_benchmark",
    "load_configured",
    "load_vqa_dataset",
    "read_manifest",
    "schema_features",
    "to_common_schema",
]

SCHEMA_COLUMNS = ("image", "question", "answers", "question_id", "question_type")
# Extra columns of the generated benchmark: the queried region's box and the scene description (JSON).
BENCHMARK_EXTRA_COLUMNS = ("target_box", "scene")

# Suffix -> ``datasets`` packaged builder, for single data files passed as ``path=``.
_FILE_BUILDERS = {
    ".parquet": "parquet",
    ".arrow": "arrow",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
}
_TEMP_PREFIX = "__arr_coc_"


class DatasetNotFoundError(FileNotFoundError):
    """A requested dataset is neither on disk nor reachable; the message says how to get it."""


def schema_features(extra: Mapping[str, Any] | None = None) -> datasets.Features:
    """The ``datasets.Features`` of the common schema.

    Args:
        extra: Additional column name -> feature, appended after the schema columns.

    Returns:
        Features for ``image, question, answers, question_id, question_type`` (+ ``extra``).
    """
    features = {
        "image": datasets.Image(),
        "question": datasets.Value("string"),
        "answers": datasets.List(datasets.Value("string")),
        "question_id": datasets.Value("string"),
        "question_type": datasets.Value("string"),
    }
    features.update(extra or {})
    return datasets.Features(features)


@dataclass(frozen=True)
class ColumnMap:
    """Where each schema field lives in a source dataset.

    A name may be dotted (``"types.structural"``) to reach into a struct column.
    """

    image: str = "image"  # image column (datasets.Image, or paths / {bytes, path} records that cast to it)
    question: str = "question"  # question text
    answers: str = "answers"  # list of strings, list of {answer_key: ...} records, or a single string
    question_id: str | None = "question_id"  # any scalar; stored as str. None: the row's index in the split
    question_type: str | None = "question_type"  # None: every row gets `default_question_type`
    default_question_type: str = ""  # used when `question_type` is None or a row's value is missing
    answer_key: str = "answer"  # key of the answer text when answers are records
    image_id: str | None = None  # join key into a separate images table (GQA's hub layout), if any
    images_id: str = "id"  # id column of that images table
    images_image: str = "image"  # image column of that images table


@dataclass(frozen=True)
class VQAv2Columns(ColumnMap):
    """VQAv2 as on ``lmms-lab/VQAv2`` / ``HuggingFaceM4/VQAv2``: 10 answer records per question."""

    question_type: str | None = "answer_type"  # yes/no, number, other; set "question_type" for the 65 prefixes


@dataclass(frozen=True)
class GQAColumns(ColumnMap):
    """GQA as on ``lmms-lab/GQA`` (``*_instructions`` configs): one answer, images joined on ``imageId``."""

    answers: str = "answer"
    question_id: str = "id"
    question_type: str | None = "types.structural"
    image_id: str | None = "imageId"


@dataclass(frozen=True)
class TextVQAColumns(ColumnMap):
    """TextVQA as on ``lmms-lab/textvqa`` / ``facebook/textvqa``: 10 answers, no question type."""

    question_type: str | None = None
    default_question_type: str = "textvqa"


@dataclass(frozen=True)
class DocVQAColumns(ColumnMap):
    """DocVQA as on ``lmms-lab/DocVQA`` (config ``DocVQA``): several accepted answers, a list of question types."""

    question_id: str = "questionId"
    question_type: str | None = "question_types"


@dataclass(frozen=True)
class ChartQAColumns(ColumnMap):
    """ChartQA as on ``lmms-lab/ChartQA`` (split ``test``): one answer string, the split (``human_test`` /
    ``augmented_test``) as the question type, and no question id, so the row index is the id."""

    answers: str = "answer"
    question_id: str | None = None
    question_type: str | None = "type"


@dataclass(frozen=True)
class VqaSource:
    """A public VQA dataset: where it lives on the hub and how to map it."""

    name: str  # short name used by `load_vqa_dataset`
    hub_id: str  # dataset id on the Hugging Face hub
    hub_config: str | None  # hub config name, if the dataset has several
    default_split: str  # split loaded when none is given
    columns: ColumnMap  # default column mapping
    metric: str  # the metric the community reports (a key of eval.metrics.METRICS)
    images_config: str | None = None  # hub config holding the images, for sources that keep them apart
    how_to_get: str = ""  # extra download notes for the not-found error


SOURCES: dict[str, VqaSource] = {
    "vqav2": VqaSource(
        "vqav2", "lmms-lab/VQAv2", None, "validation", VQAv2Columns(), "vqa_accuracy",
        how_to_get="The official images/annotations are at https://visualqa.org/download.html.",
    ),
    "gqa": VqaSource(
        "gqa", "lmms-lab/GQA", "testdev_balanced_instructions", "testdev", GQAColumns(), "exact_match",
        images_config="testdev_balanced_images",
        how_to_get="Also save the images config (e.g. 'testdev_balanced_images') and pass it as images=<path>.",
    ),
    "textvqa": VqaSource("textvqa", "lmms-lab/textvqa", None, "validation", TextVQAColumns(), "vqa_accuracy"),
    "docvqa": VqaSource("docvqa", "lmms-lab/DocVQA", "DocVQA", "validation", DocVQAColumns(), "anls"),
    "chartqa": VqaSource("chartqa", "lmms-lab/ChartQA", None, "test", ChartQAColumns(), "relaxed_accuracy"),
}  # fmt: skip


def list_sources() -> list[str]:
    """Names accepted by ``load_vqa_dataset``."""
    return sorted(SOURCES)


def _how_to_get(source: VqaSource, split: str, target: str) -> str:
    config = f", {source.hub_config!r}" if source.hub_config else ""
    return (
        f"{source.name} was not found at {target!r}. No dataset hub is reachable here; on a machine with internet "
        f"access run\n"
        f"    python -c \"import datasets; datasets.load_dataset({source.hub_id!r}{config}, split={split!r})"
        f".save_to_disk('<dir>')\"\n"
        f"copy <dir> here and pass path='<dir>' (a local clone of https://huggingface.co/datasets/{source.hub_id} "
        f"or a single parquet/json file also works). {source.how_to_get}"
    ).rstrip()


def _is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` was written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``."""
    return (path / "dataset_dict.json").is_file() or (path / "state.json").is_file()


def _looks_local(target: str) -> bool:
    """A string that can only be a filesystem path, never a hub id."""
    # Hub ids are "owner/name"; anything else (absolute, relative with ./ or ~, deeper paths) is a path.
    return target.startswith((".", "/", "~")) or "\\" in target or target.count("/") != 1


def _source_config(source: VqaSource, target: str, config: str | None) -> str | None:
    """``config`` (one of ``source``'s hub configs) where ``target`` is the source's hub id or a local clone of its
    hub repository that declares it (in its README), else ``None``: a clone holds every config of the repository, as
    the hub id does."""
    if target == source.hub_id:
        return config
    path = Path(target).expanduser()
    if config is None or not path.is_dir() or _is_saved_dataset(path):
        return None
    try:
        names = datasets.get_dataset_config_names(str(path))
    except FileNotFoundError:  # a folder without data files: loading it says so
        return None
    return config if config in names else None


def _pick_split(obj: datasets.Dataset | datasets.DatasetDict, split: str | None, where: str) -> datasets.Dataset:
    if isinstance(obj, datasets.Dataset):
        return obj
    if split is None or split not in obj:
        raise ValueError(f"split {split!r} is not in {where!r}; available splits: {sorted(obj)}")
    return obj[split]


def _load_raw(
    target: str, config: str | None, split: str | None, not_found: Callable[[], str], **load_kwargs: Any
) -> datasets.Dataset:
    """Load one split from a saved dataset, a local folder or file, or a hub id."""
    path = Path(target).expanduser()
    if path.exists():
        if _is_saved_dataset(path):
            if config is not None:  # a saved folder holds one config: another name would be ignored silently
                raise ValueError(f"config={config!r} applies to a hub id or a local clone of its repository, not to "
                                 f"the save_to_disk folder {target!r}; leave data.config unset")
            return _pick_split(datasets.load_from_disk(str(path)), split, target)
        if path.is_file():
            builder = _FILE_BUILDERS.get(path.suffix.lower())
            if builder is None:
                raise ValueError(f"cannot load {target!r}: unknown file type, expected one of {sorted(_FILE_BUILDERS)}")
            # A single file is one split, whatever ``split`` says.
            return datasets.load_dataset(builder, data_files=str(path), split="train", **load_kwargs)
        return datasets.load_dataset(str(path), config, split=split, **load_kwargs)
    if _looks_local(target):
        raise DatasetNotFoundError(not_found())
    try:
        return datasets.load_dataset(target, config, split=split, **load_kwargs)
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as err:
        raise DatasetNotFoundError(not_found()) from err


def _map_style(ds: Any, where: str) -> datasets.Dataset:
    """``ds`` if it is a map-style ``Dataset``; ``ValueError`` for a streaming one (``streaming=True``), which the
    mapping (``num_proc``, row indices), ``max_samples`` and the training sampler (``len``, random access) cannot use:
    it failed inside ``datasets`` with "IterableDataset.map() got an unexpected keyword argument 'num_proc'"."""
    if isinstance(ds, (datasets.IterableDataset, datasets.IterableDatasetDict)):
        raise ValueError(f"{where} is a streaming {type(ds).__name__} (streaming=True?): only map-style datasets are "
                         "supported (rows are read by index); load it without streaming, or save_to_disk a slice first")
    return ds


def _paths_beside_file(ds: datasets.Dataset, column: str, target: str) -> datasets.Dataset:
    """Relative image paths in a single json/jsonl/csv/parquet file, resolved against the file's folder (as
    ``datasets``' own ``metadata.jsonl`` does) where the image exists there; others are left as they are (relative to
    the working directory, where they were read from before). Without this, a file loaded from another directory
    loaded fine and failed only when a row was decoded."""
    path = Path(target).expanduser()
    if not path.is_file() or column not in ds.column_names:
        return ds
    feature = ds.features[column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        return ds
    base = path.resolve().parent

    def resolve(value: str | None) -> str | None:
        if not value or "://" in value or os.path.isabs(value):
            return value
        beside = base / value
        return str(beside) if beside.is_file() else value

    return ds.map(lambda v: {column: resolve(v)}, input_columns=[column], desc="image paths")


def _feature_at(features: datasets.Features, dotted: str, role: str) -> Any:
    """The feature a (possibly dotted) column name points at; ``ValueError`` listing what exists if none."""
    head, *rest = dotted.split(".")
    if head not in features:
        raise ValueError(f"{role} column {dotted!r} not found; available columns: {sorted(features)}")
    feature = features[head]
    for key in rest:
        if not isinstance(feature, dict) or key not in feature:
            keys = sorted(feature) if isinstance(feature, dict) else []
            raise ValueError(f"{role} column {dotted!r}: no field {key!r}; available fields: {keys}")
        feature = feature[key]
    return feature


def _get_path(value: Any, keys: Sequence[str]) -> Any:
    for key in keys:
        value = None if value is None else value[key]
    return value


def _answer_list(value: Any, answer_key: str) -> list[str]:
    """Answers in any of the common source layouts, as a list of strings (null answers left out)."""
    if value is None:
        return []  # unlabelled test splits
    if isinstance(value, str):
        return [value]
    # A null answer inside a list is no answer, as a null list is none; str() made it the answer "None".
    if isinstance(value, Mapping):
        # A list of records that ``datasets`` returned column-wise: {"answer": [...], "answer_id": [...]}.
        if answer_key not in value:
            raise ValueError(f"answer records have no key {answer_key!r}; keys: {sorted(value)}")
        return [str(a) for a in value[answer_key] if a is not None]
    if isinstance(value, Sequence):
        out = []
        for item in value:
            if isinstance(item, Mapping):
                if answer_key not in item:
                    raise ValueError(f"answer record {item!r} has no key {answer_key!r}")
                item = item[answer_key]
            if item is not None:
                out.append(str(item))
        return out
    raise ValueError(f"cannot read answers from {value!r} ({type(value).__name__})")


def _question_type(value: Any, default: str) -> str:
    if value is None:
        return default
    if isinstance(value, (list, tuple)):
        return "|".join(str(v) for v in value) if value else default
    return str(value)


def _join_images(
    ds: datasets.Dataset, images: datasets.Dataset, columns: ColumnMap, image_id: str
) -> datasets.Dataset:
    """Attach each row's image from a separate ``images`` table by id (GQA's hub layout)."""
    for name in (columns.images_id, columns.images_image):
        if name not in images.column_names:
            raise ValueError(f"images table has no column {name!r}; available columns: {images.column_names}")
    position = {key: i for i, key in enumerate(images[columns.images_id])}
    indices = []
    head, *rest = image_id.split(".")  # a dotted image_id reaches into a struct column, as the other fields do
    for key in (_get_path(v, rest) for v in ds[head]):
        if key not in position:
            raise ValueError(f"image id {key!r} (column {image_id!r}) is not in the images table")
        indices.append(position[key])
    if not indices:  # concatenate_datasets drops a 0-row table's columns: the image column went missing (KeyError)
        return ds.add_column(_TEMP_PREFIX + "image", [], feature=images.features[columns.images_image])
    picked = images.select_columns([columns.images_image]).select(indices).flatten_indices()
    picked = picked.rename_column(columns.images_image, _TEMP_PREFIX + "image")
    return datasets.concatenate_datasets([ds, picked], axis=1)


def to_common_schema(
    ds: datasets.Dataset,
    columns: ColumnMap | None = None,
    *,
    images: datasets.Dataset | None = None,
    keep_columns: Sequence[str] = (),
    num_proc: int | None = None,
) -> datasets.Dataset:
    """Map an already loaded dataset onto the common schema.

    Args:
        ds: The source split.
        columns: Where the schema fields live in ``ds``; defaults to ``ColumnMap()``.
        images: Table of ``(columns.images_id, columns.images_image)`` to join on ``columns.image_id`` when ``ds``
            has no image column (GQA's hub layout).
        keep_columns: Source columns to carry through unchanged after the schema columns.
        num_proc: Worker processes for the mapping.

    Returns:
        A dataset with exactly ``SCHEMA_COLUMNS`` + ``keep_columns``, one row per source row, in source order.

    Raises:
        ValueError: If a mapped column is missing (the message lists the available ones), a kept column clashes with
            a schema name, answers have an unreadable layout, an image id has no image, or ``ds`` / ``images`` is a
            streaming ``IterableDataset``.
    """
    columns = columns or ColumnMap()
    ds = _map_style(ds, "the dataset")
    if images is not None:
        images = _map_style(images, "the images table")
    for name in keep_columns:
        if name in SCHEMA_COLUMNS:
            raise ValueError(f"keep_columns entry {name!r} clashes with a schema column; rename it first")
        if name not in ds.column_names:  # a nested field ("types.semantic") cannot be kept as a column of its own
            raise ValueError(f"keep_columns entry {name!r} is not a top-level column; available columns: "
                             f"{ds.column_names} (keep the parent column, or map the field with columns)")
        _feature_at(ds.features, name, "keep")
    image_column = columns.image
    if image_column not in ds.column_names:
        if columns.image_id is None or images is None:
            hint = ""
            if columns.image_id:
                hint = (f"; pass images=<table with columns {columns.images_id!r}, {columns.images_image!r}> "
                        "(data.images in a config)")
            raise ValueError(f"image column {image_column!r} not found; available columns: {ds.column_names}{hint}")
        _feature_at(ds.features, columns.image_id, "image_id")
        ds = _join_images(ds, images, columns, columns.image_id)
        image_column = _TEMP_PREFIX + "image"
    if not isinstance(ds.features[image_column], datasets.Image):
        ds = ds.cast_column(image_column, datasets.Image())

    fields = {"question": columns.question, "answers": columns.answers}
    if columns.question_id is not None:
        fields["question_id"] = columns.question_id
    if columns.question_type is not None:
        fields["question_type"] = columns.question_type
    for role, name in fields.items():
        _feature_at(ds.features, name, role)
    # Only the text columns are fed to the mapping, so images are neither decoded nor re-encoded.
    input_columns = sorted({name.split(".")[0] for name in fields.values()})
    paths = {role: name.split(".")[1:] for role, name in fields.items()}

    def convert(*cols: Any) -> dict[str, list[Any]]:
        *cols, indices = cols  # with_indices: the rows' indices come last
        batch = dict(zip(input_columns, cols))

        def values(role: str) -> list[Any]:
            return [_get_path(v, paths[role]) for v in batch[fields[role].split(".")[0]]]

        def text(role: str) -> list[str]:
            # A null became the text "None": a question "None", or one id "None" shared by every id-less row.
            out = values(role)
            for i, v in zip(indices, out):
                if v is None:
                    raise ValueError(f"row {i}: {role} column {fields[role]!r} is null")
            return [str(v) for v in out]

        n = len(cols[0])
        qtypes = values("question_type") if "question_type" in fields else [None] * n
        return {
            _TEMP_PREFIX + "question": text("question"),
            _TEMP_PREFIX + "answers": [_answer_list(a, columns.answer_key) for a in values("answers")],
            _TEMP_PREFIX + "question_id": text("question_id") if "question_id" in fields else [str(i) for i in indices],
            _TEMP_PREFIX + "question_type": [_question_type(t, columns.default_question_type) for t in qtypes],
        }

    keep = [image_column, *keep_columns]
    schema = schema_features()
    features = datasets.Features(
        {
            **{name: ds.features[name] for name in ds.column_names if name in keep},
            **{_TEMP_PREFIX + name: schema[name] for name in SCHEMA_COLUMNS if name != "image"},
        }
    )
    if len(ds) == 0:  # datasets' map returns a 0-row table unmapped, without the new columns: build it empty
        out = datasets.Dataset.from_dict({name: [] for name in features}, features=features)
    else:
        out = ds.map(
            convert,
            input_columns=input_columns,
            with_indices=True,
            batched=True,
            remove_columns=[name for name in ds.column_names if name not in keep],
            features=features,
            num_proc=num_proc,
            desc="mapping to the common VQA schema",
        )
    rename = {_TEMP_PREFIX + name: name for name in SCHEMA_COLUMNS if name != "image"}
    if image_column != "image":
        rename[image_column] = "image"
    out = out.rename_columns(rename)
    return out.select_columns([*SCHEMA_COLUMNS, *keep_columns])


def load_vqa_dataset(
    name: str,
    *,
    split: str | None = None,
    path: str | os.PathLike[str] | None = None,
    config: str | None = None,
    columns: ColumnMap | Mapping[str, Any] | None = None,
    images: datasets.Dataset | str | os.PathLike[str] | None = None,
    keep_columns: Sequence[str] = (),
    num_proc: int | None = None,
    **load_kwargs: Any,
) -> datasets.Dataset:
    """Load one split of a public VQA dataset in the common schema.

    Args:
        name: One of ``list_sources()``: ``"vqav2"``, ``"gqa"``, ``"textvqa"``, ``"docvqa"``, ``"chartqa"``.
        split: Split to load; defaults to the source's evaluation split (``SOURCES[name].default_split``).
        path: A ``save_to_disk`` directory (``Dataset`` or ``DatasetDict``), a local dataset folder, a single
            parquet/json/csv/arrow file, or a hub id. Defaults to the source's hub id, which needs internet. A path
            that does not exist fails at once, except a bare ``"owner/name"``, which is tried as a hub id.
        config: Hub/builder config name; defaults to the source's for its hub id or a local clone of its hub
            repository that declares it (``None`` for saved directories, files and other folders).
        columns: A full ``ColumnMap``, or a mapping of field -> column name overriding the source's defaults
            (e.g. ``{"question_type": "question_type"}``).
        images: For sources whose images live apart (GQA): a ``Dataset`` or a path/hub id loaded like ``path``
            (same split; config ``SOURCES[name].images_config`` for the hub id or a local clone of it). When omitted
            and ``path`` is the hub id or such a clone, the images come from there.
        keep_columns: Source columns to carry through.
        num_proc: Worker processes for the mapping.
        **load_kwargs: Passed to ``datasets.load_dataset`` (e.g. ``cache_dir``, ``revision``).

    Returns:
        The split in the common schema (see the module docstring).

    Raises:
        ValueError: For an unknown ``name``, an unknown override field, a missing split or column (listing the
            available ones), or a streaming load (``streaming=True``: rows are read by index).
        DatasetNotFoundError: If the data is not on disk and cannot be fetched; the message says how to get it.
    """
    if name not in SOURCES:
        raise ValueError(f"unknown dataset {name!r}; available: {list_sources()}")
    source = SOURCES[name]
    split = split or source.default_split
    target = os.fspath(path) if path is not None else source.hub_id
    if config is None:
        config = _source_config(source, target, source.hub_config)

    if columns is None:
        column_map = source.columns
    elif isinstance(columns, ColumnMap):
        column_map = columns
    else:
        known = {f.name for f in dataclasses.fields(ColumnMap)}
        unknown = sorted(set(columns) - known)
        if unknown:
            raise ValueError(f"unknown column-map field(s) {unknown}; known fields: {sorted(known)}")
        column_map = dataclasses.replace(source.columns, **columns)

    raw = _load_raw(target, config, split, lambda: _how_to_get(source, split, target), **load_kwargs)
    raw = _paths_beside_file(_map_style(raw, repr(target)), column_map.image, target)
    images_ds = None
    if column_map.image not in raw.column_names and column_map.image_id is not None:
        images_config = None
        if images is None:  # the images config of the same hub repository (or local clone of it), if it has one
            images_config = _source_config(source, target, source.images_config)
            if images_config:
                images = target
        if isinstance(images, (str, os.PathLike)):
            images_target = os.fspath(images)
            if images_config is None:
                images_config = _source_config(source, images_target, source.images_config)
            images_ds = _load_raw(
                images_target, images_config, split, lambda: _how_to_get(source, split, images_target), **load_kwargs
            )
            images_ds = _map_style(images_ds, repr(images_target))
            images_ds = _paths_beside_file(images_ds, column_map.images_image, images_target)
        else:
            images_ds = images
    return to_common_schema(raw, column_map, images=images_ds, keep_columns=keep_columns, num_proc=num_proc)


def load_benchmark(
    path: str | os.PathLike[str], split: str | None = None
) -> datasets.DatasetDict | datasets.Dataset:
    """Load the project's generated benchmark (written by ``scripts/make_benchmark.py``).

    Args:
        path: The directory passed to ``make_benchmark --out``.
        split: ``"train"``, ``"val"`` or ``"test"``; ``None`` returns every split.

    Returns:
        A ``DatasetDict`` of all splits, or the one split, with ``SCHEMA_COLUMNS`` + ``BENCHMARK_EXTRA_COLUMNS``.

    Raises:
        DatasetNotFoundError: If nothing was generated at ``path`` (the message gives the command).
        ValueError: If ``split`` does not exist or a split lacks a schema column.
    """
    root = Path(path).expanduser()
    if not (root.is_dir() and _is_saved_dataset(root)):
        raise DatasetNotFoundError(
            f"no generated benchmark at {os.fspath(path)!r}; create it with\n"
            f"    python -m scripts.make_benchmark --out {os.fspath(path)}\n"
            f"(add --train-size 2000 for a quick small one)"
        )
    loaded = datasets.load_from_disk(str(root))
    splits = loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    for split_name, ds in splits.items():
        missing = [c for c in (*SCHEMA_COLUMNS, *BENCHMARK_EXTRA_COLUMNS) if c not in ds.column_names]
        if missing:
            raise ValueError(f"benchmark split {split_name!r} at {str(root)!r} lacks columns {missing}; "
                             f"it has {ds.column_names}")
    if split is None:
        return splits
    return _pick_split(splits, split, str(root))


def load_configured(d: Any, *, generate_here: bool = True, barrier: Callable[[], None] | None = None
                    ) -> datasets.Dataset:
    """The rows a ``data:`` config section names (training's ``DataCfg`` and evaluation's ``EvalDataCfg``).

    ``d.source == "benchmark"`` loads the generated benchmark at ``d.path``; with ``d.generate`` it is first generated
    there when missing (``d.generate_seed``, ``d.generate_sizes``, ``d.generate_cfg``). In a multi-process job only the
    process with ``generate_here`` writes it, and every process then waits at ``barrier`` before reading. Any other
    source goes through :func:`load_vqa_dataset` with the section's ``images``, ``config``, ``columns`` and
    ``keep_columns`` where it has them. ``d.max_samples`` keeps the first rows.

    Raises:
        ValueError: a benchmark source without ``data.path``, or with VQA-only keys (config, columns, keep_columns,
            images).
        DatasetNotFoundError: nothing at the path (the message says how to get it).
    """
    if d.source == "benchmark":
        for key in ("config", "columns", "keep_columns", "images"):
            if getattr(d, key, None):
                raise ValueError(f"data.{key}={getattr(d, key)!r} applies to the VQA sources, not to the benchmark "
                                 "(whose columns are fixed: the schema plus target_box and scene)")
        if d.path is None:
            raise ValueError("data.path is required (the benchmark directory, or where to generate it)")
        if d.generate:
            # Every rank takes the barrier whenever generation is on, whether or not it sees the data yet: a rank
            # that looked after rank 0 had written it and skipped the barrier would pair rank 0's barrier with its
            # own next collective.
            if generate_here and not Path(d.path, "dataset_dict.json").is_file():
                from training.benchmark import BenchmarkCfg, make_benchmark

                # A split of size 0 is left out (small.yaml has no val split), as scripts/make_benchmark.py does.
                make_benchmark(d.path, seed=d.generate_seed, sizes={k: v for k, v in d.generate_sizes.items() if v},
                               cfg=BenchmarkCfg.from_dict(d.generate_cfg))
            if barrier is not None:
                barrier()
            _check_generated(d)  # data found at the path must be the benchmark these settings generate
        ds = load_benchmark(d.path, d.split)
    else:
        ds = load_vqa_dataset(d.source, split=d.split, path=d.path, images=getattr(d, "images", None),
                              config=getattr(d, "config", None), columns=getattr(d, "columns", None) or None,
                              keep_columns=tuple(getattr(d, "keep_columns", None) or ()))
    if d.max_samples is not None:
        if isinstance(d.max_samples, bool) or not isinstance(d.max_samples, int) or d.max_samples < 1:
            raise ValueError(f"data.max_samples must be a positive integer or null, got {d.max_samples!r}")
        ds = ds.select(range(min(int(d.max_samples), len(ds))))
    return ds


def _check_generated(d: Any) -> None:
    """Raise ``ValueError`` if the benchmark at ``d.path`` was generated with another seed, generator or split sizes
    than ``d.generate_*`` ask for (it was reused silently: another run's data under this config's name). Splits the
    config does not ask for may exist (an evaluation config adds ``test``)."""
    from training.benchmark import BenchmarkCfg

    try:
        m = read_manifest(d.path)
    except DatasetNotFoundError:
        return  # not a generated benchmark folder: load_benchmark says what is wrong with it
    want_gen = BenchmarkCfg.from_dict(d.generate_cfg).to_dict()
    diff = []
    if int(m.get("seed", -1)) != int(d.generate_seed):
        diff.append(f"seed {m.get('seed')} (data.generate_seed={d.generate_seed})")
    have = m.get("sizes", {})
    for split, n in d.generate_sizes.items():
        if n and have.get(split) != n:
            diff.append(f"{split} has {have.get(split, 'no')} rows (data.generate_sizes.{split}={n})")
    gen = m.get("generator", {})
    changed = sorted(k for k in set(gen) | set(want_gen)
                     if json.dumps(gen.get(k), sort_keys=True) != json.dumps(want_gen.get(k), sort_keys=True))
    if changed:
        diff.append("generator " + ", ".join(f"{k}={gen.get(k)!r} (data.generate_cfg: {want_gen.get(k)!r})"
                                             for k in changed))
    if diff:
        raise ValueError(f"data.path={d.path!r} holds a benchmark generated with other settings: {'; '.join(diff)}. "
                         "Use another data.path, delete it to regenerate, or set data.generate=false to use it as it "
                         "is")


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``manifest.json`` written next to a generated benchmark (seed, version, sizes, counts, parameters).

    Args:
        path: The benchmark directory.

    Returns:
        The parsed manifest.

    Raises:
        DatasetNotFoundError: If ``path`` holds no manifest.
    """
    manifest = Path(path).expanduser() / "manifest.json"
    if not manifest.is_file():
        raise DatasetNotFoundError(f"no manifest.json in {os.fspath(path)!r}; is it a generated benchmark?")
    return json.loads(manifest.read_text())
