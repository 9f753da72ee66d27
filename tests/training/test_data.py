"""Dataset loaders map each source schema onto the common VQA schema (training/data.py)."""

import re

import datasets
import numpy as np
import pytest
from PIL import Image

from training import data
from training.data import (
    SCHEMA_COLUMNS,
    ColumnMap,
    DatasetNotFoundError,
    load_benchmark,
    load_vqa_dataset,
    schema_features,
    to_common_schema,
)


def _images(n: int) -> list[Image.Image]:
    """n tiny images, each a distinct solid colour so rows can be told apart after the mapping."""
    return [Image.fromarray(np.full((6, 8, 3), 20 * i + 10, dtype=np.uint8)) for i in range(n)]


def _pixel(img: Image.Image) -> int:
    return int(np.asarray(img)[0, 0, 0])


def _save(ds: datasets.Dataset, tmp_path, split: str) -> str:
    path = tmp_path / "saved"
    datasets.DatasetDict({split: ds}).save_to_disk(str(path))
    return str(path)


def _vqav2() -> datasets.Dataset:
    # lmms-lab/VQAv2 layout: 10 answer records per question, integer ids.
    records = [
        [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1} for j, a in enumerate(["2"] * 7 + ["3"] * 3)],
        [{"answer": "yes", "answer_confidence": "maybe", "answer_id": j + 1} for j in range(10)],
    ]
    return datasets.Dataset.from_dict(
        {
            "question_type": ["how many", "is the"],
            "multiple_choice_answer": ["2", "yes"],
            "answers": records,
            "image_id": [11, 12],
            "answer_type": ["number", "yes/no"],
            "question_id": [1001, 1002],
            "question": ["How many dogs?", "Is the sky blue?"],
            "image": _images(2),
        },
        features=datasets.Features(
            {
                "question_type": datasets.Value("string"),
                "multiple_choice_answer": datasets.Value("string"),
                "answers": datasets.List(
                    {
                        "answer": datasets.Value("string"),
                        "answer_confidence": datasets.Value("string"),
                        "answer_id": datasets.Value("int64"),
                    }
                ),
                "image_id": datasets.Value("int64"),
                "answer_type": datasets.Value("string"),
                "question_id": datasets.Value("int64"),
                "question": datasets.Value("string"),
                "image": datasets.Image(),
            }
        ),
    )


def test_vqav2_mapping(tmp_path):
    path = _save(_vqav2(), tmp_path, "validation")
    ds = load_vqa_dataset("vqav2", path=path)
    assert ds.column_names == list(SCHEMA_COLUMNS)
    assert ds.features == schema_features()
    assert len(ds) == 2
    row = ds[0]
    assert row["question"] == "How many dogs?"
    assert row["answers"] == ["2"] * 7 + ["3"] * 3
    assert row["question_id"] == "1001"
    assert row["question_type"] == "number"  # default: the 3-way answer_type
    assert _pixel(row["image"]) == 10 and row["image"].size == (8, 6)
    assert ds[1]["answers"] == ["yes"] * 10 and _pixel(ds[1]["image"]) == 30


def test_column_override_and_kept_columns(tmp_path):
    path = _save(_vqav2(), tmp_path, "validation")
    ds = load_vqa_dataset("vqav2", path=path, columns={"question_type": "question_type"}, keep_columns=["image_id"])
    assert ds.column_names == [*SCHEMA_COLUMNS, "image_id"]
    assert ds["question_type"] == ["how many", "is the"]
    assert ds["image_id"] == [11, 12]


def test_images_are_not_reencoded(tmp_path):
    source = _vqav2()
    ds = to_common_schema(source, data.VQAv2Columns())
    raw_in = source.cast_column("image", datasets.Image(decode=False))["image"]
    raw_out = ds.cast_column("image", datasets.Image(decode=False))["image"]
    assert [r["bytes"] for r in raw_out] == [r["bytes"] for r in raw_in]


def _gqa_instructions(with_images: bool = False) -> datasets.Dataset:
    # lmms-lab/GQA "*_instructions" layout: one answer, nested types, images in another config keyed by imageId.
    extra = {"image": _images(3)} if with_images else {}
    return datasets.Dataset.from_dict(
        {
            **extra,
            "id": ["q7", "q8", "q9"],
            "imageId": ["img2", "img1", "img2"],
            "question": ["Is the cup red?", "What is on the table?", "Which side is the cat on?"],
            "answer": ["no", "laptop", "left"],
            "fullAnswer": ["No, the cup is blue.", "The laptop.", "The cat is on the left."],
            "types": [
                {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
                {"structural": "query", "semantic": "rel", "detailed": "relS"},
                {"structural": "query", "semantic": "rel", "detailed": "positionQuery"},
            ],
        }
    )


def test_gqa_mapping_with_separate_images(tmp_path):
    images = datasets.Dataset.from_dict({"id": ["img1", "img2"], "image": _images(2)})
    (tmp_path / "q").mkdir()
    _gqa_instructions().save_to_disk(str(tmp_path / "q" / "instr"))
    images.save_to_disk(str(tmp_path / "q" / "images"))
    ds = load_vqa_dataset("gqa", path=tmp_path / "q" / "instr", images=tmp_path / "q" / "images")
    assert ds.column_names == list(SCHEMA_COLUMNS)
    assert ds["answers"] == [["no"], ["laptop"], ["left"]]
    assert ds["question_id"] == ["q7", "q8", "q9"]
    assert ds["question_type"] == ["verify", "query", "query"]
    # img2 is the second image (pixel 30), img1 the first (pixel 10).
    assert [_pixel(img) for img in ds["image"]] == [30, 10, 30]


def test_gqa_dotted_override_and_missing_images():
    ds = to_common_schema(
        _gqa_instructions(with_images=True),
        data.GQAColumns(question_type="types.detailed"),
    )
    assert ds["question_type"] == ["verifyAttr", "relS", "positionQuery"]
    with pytest.raises(ValueError, match="images="):
        to_common_schema(_gqa_instructions(), data.GQAColumns())
    with pytest.raises(ValueError, match="no field 'nope'.*detailed"):
        to_common_schema(_gqa_instructions(with_images=True), data.GQAColumns(question_type="types.nope"))
    images = datasets.Dataset.from_dict({"id": ["img1"], "image": _images(1)})
    with pytest.raises(ValueError, match="'img2'"):
        to_common_schema(_gqa_instructions(), data.GQAColumns(), images=images)


def test_gqa_from_a_local_clone_of_the_hub_repository(tmp_path):
    # A clone of lmms-lab/GQA keeps each config in a folder declared by its README: the instructions config and the
    # images config are found there as on the hub (the images config could not be named for a clone before).
    clone = tmp_path / "GQA"
    for config, ds in (("testdev_balanced_instructions", _gqa_instructions()),
                       ("testdev_balanced_images", datasets.Dataset.from_dict({"id": ["img1", "img2"],
                                                                               "image": _images(2)}))):
        (clone / config).mkdir(parents=True)
        ds.to_parquet(str(clone / config / "testdev-00000-of-00001.parquet"))
    header = "".join(f"- config_name: {c}\n  data_files:\n  - split: testdev\n    path: {c}/testdev-*\n"
                     for c in ("testdev_balanced_images", "testdev_balanced_instructions"))
    (clone / "README.md").write_text(f"---\nconfigs:\n{header}---\n")
    cache = {"cache_dir": str(tmp_path / "cache")}
    for kw in ({}, {"images": clone}, {"config": "testdev_balanced_instructions", "images": str(clone)}):
        ds = load_vqa_dataset("gqa", path=clone, **kw, **cache)
        assert ds["question_id"] == ["q7", "q8", "q9"]
        assert [_pixel(img) for img in ds["image"]] == [30, 10, 30]


def test_training_config_names_gqas_images_table(tmp_path):
    # The error for GQA without images says to pass them; a training config had no data.images to do so with.
    from training.data import load_configured
    from training.train import load_train_cfg

    _gqa_instructions().save_to_disk(str(tmp_path / "instr"))
    datasets.Dataset.from_dict({"id": ["img1", "img2"], "image": _images(2)}).save_to_disk(str(tmp_path / "images"))
    base = ["data.source=gqa", f"data.path={tmp_path / 'instr'}", "data.generate=false"]
    with pytest.raises(ValueError, match=r"pass images=.*\(data\.images in a config\)"):
        load_configured(load_train_cfg("configs/train/tiny.yaml", base).data)
    ds = load_configured(load_train_cfg("configs/train/tiny.yaml", [*base, f"data.images={tmp_path / 'images'}"]).data)
    assert [_pixel(img) for img in ds["image"]] == [30, 10, 30]
    with pytest.raises(ValueError, match="data.images=.*not to the benchmark"):
        load_configured(load_train_cfg("configs/train/tiny.yaml", [f"data.images={tmp_path / 'images'}"]).data)


def test_textvqa_mapping_from_parquet_file(tmp_path):
    # lmms-lab/textvqa layout (facebook/textvqa's columns + ocr_tokens): 10 plain-string answers, no question type.
    source = datasets.Dataset.from_dict(
        {
            "image_id": ["a1", "a2"],
            "question_id": [5, 6],
            "question": ["what brand is this?", "what does the sign say?"],
            "image": _images(2),
            "answers": [["nokia"] * 9 + ["nokia phone"], ["stop"] * 10],
            "ocr_tokens": [["nokia"], ["stop", "sign"]],
        },
        features=datasets.Features(
            {
                "image_id": datasets.Value("string"),
                "question_id": datasets.Value("int32"),
                "question": datasets.Value("string"),
                "image": datasets.Image(),
                "answers": datasets.List(datasets.Value("string")),
                "ocr_tokens": datasets.List(datasets.Value("string")),
            }
        ),
    )
    file = tmp_path / "textvqa_val.parquet"
    source.to_parquet(str(file))
    ds = load_vqa_dataset("textvqa", path=file, cache_dir=str(tmp_path / "cache"))
    assert ds.column_names == list(SCHEMA_COLUMNS)
    assert ds["answers"][0] == ["nokia"] * 9 + ["nokia phone"]
    assert ds["question_id"] == ["5", "6"]
    assert ds["question_type"] == ["textvqa", "textvqa"]
    assert [_pixel(img) for img in ds["image"]] == [10, 30]


def test_relative_image_paths_in_a_json_file_are_read_beside_it(tmp_path, monkeypatch):
    # A jsonl of questions next to its images, loaded from another working directory: the relative paths used to be
    # read against the working directory and failed only when a row was decoded. Absolute paths stay as they are.
    import json
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4), (10, 10, 10)).save(tmp_path / "imgs" / "a.png")
    Image.new("RGB", (4, 4), (30, 30, 30)).save(tmp_path / "b.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (4, 4), (50, 50, 50)).save(elsewhere / "c.png")  # not beside the file: read as before
    rows = [{"question_id": 1, "question": "what?", "answers": ["x"] * 10, "image": "imgs/a.png"},
            {"question_id": 2, "question": "what?", "answers": ["y"] * 10, "image": str(tmp_path / "b.png")},
            {"question_id": 3, "question": "what?", "answers": ["z"] * 10, "image": "c.png"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.chdir(elsewhere)
    ds = load_vqa_dataset("textvqa", path=tmp_path / "q.jsonl", cache_dir=str(tmp_path / "cache"))
    assert [_pixel(img) for img in ds["image"]] == [10, 30, 50]


def test_relative_image_paths_in_a_separate_images_file_are_read_beside_it(tmp_path, monkeypatch):
    # GQA-style questions and an images table, both json files: the table's relative paths are read beside the table.
    import json
    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (4, 4), (10, 10, 10)).save(tmp_path / "imgs" / "one.png")
    Image.new("RGB", (4, 4), (30, 30, 30)).save(tmp_path / "imgs" / "two.png")
    questions = [{"id": "q1", "imageId": "img2", "question": "what?", "answer": "x"},
                 {"id": "q2", "imageId": "img1", "question": "what?", "answer": "y"}]
    (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in questions))
    table = [{"id": "img1", "image": "imgs/one.png"}, {"id": "img2", "image": "imgs/two.png"}]
    (tmp_path / "images.jsonl").write_text("".join(json.dumps(r) + "\n" for r in table))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    ds = load_vqa_dataset("gqa", path=tmp_path / "q.jsonl", images=tmp_path / "images.jsonl",
                          columns={"question_type": None}, cache_dir=str(tmp_path / "cache"))
    assert [_pixel(img) for img in ds["image"]] == [30, 10]


def test_docvqa_mapping(tmp_path):
    # lmms-lab/DocVQA (config DocVQA) layout: string questionId, a list of question types, several accepted answers.
    source = datasets.Dataset.from_dict(
        {
            "questionId": ["49153", "24580"],
            "question": ["What is the date?", "Who signed the letter?"],
            "question_types": [["handwritten", "form"], ["layout"]],
            "image": _images(2),
            "docId": [14465, 1],
            "answers": [["March 3, 1998", "3/3/1998"], ["J. Smith"]],
        },
        features=datasets.Features(
            {
                "questionId": datasets.Value("string"),
                "question": datasets.Value("string"),
                "question_types": datasets.List(datasets.Value("string")),
                "image": datasets.Image(),
                "docId": datasets.Value("int64"),
                "answers": datasets.List(datasets.Value("string")),
            }
        ),
    )
    ds = load_vqa_dataset("docvqa", path=_save(source, tmp_path, "validation"))
    assert ds["answers"] == [["March 3, 1998", "3/3/1998"], ["J. Smith"]]
    assert ds["question_id"] == ["49153", "24580"]
    assert ds["question_type"] == ["handwritten|form", "layout"]


def test_missing_local_dataset_says_how_to_get_it(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_vqa_dataset("vqav2", path=tmp_path / "nowhere")
    message = str(info.value)
    assert "lmms-lab/VQAv2" in message and "save_to_disk" in message and "path=" in message
    assert isinstance(info.value, FileNotFoundError)


def test_unreachable_hub_says_how_to_get_it(monkeypatch):
    calls = []

    def offline(*args, **kwargs):
        calls.append((args, kwargs))
        raise ConnectionError("Couldn't reach 'lmms-lab/DocVQA' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(data.datasets, "load_dataset", offline)
    with pytest.raises(DatasetNotFoundError, match=r"lmms-lab/DocVQA.*'DocVQA'") as info:
        load_vqa_dataset("docvqa")
    assert isinstance(info.value.__cause__, ConnectionError)
    assert calls[0][0] == ("lmms-lab/DocVQA", "DocVQA")
    assert calls[0][1]["split"] == "validation"


def test_bad_requests_raise_value_errors(tmp_path):
    path = _save(_vqav2(), tmp_path, "validation")
    with pytest.raises(ValueError, match="unknown dataset 'coco'.*vqav2"):
        load_vqa_dataset("coco", path=path)
    with pytest.raises(ValueError, match="split 'train'.*validation"):
        load_vqa_dataset("vqav2", path=path, split="train")
    with pytest.raises(ValueError, match="config='other'.*save_to_disk folder"):  # was ignored silently
        load_vqa_dataset("vqav2", path=path, config="other")
    with pytest.raises(ValueError, match="unknown column-map field.*'qtype'"):
        load_vqa_dataset("vqav2", path=path, columns={"qtype": "x"})
    with pytest.raises(ValueError, match="'query' not found; available columns: .*'question'"):
        load_vqa_dataset("vqav2", path=path, columns={"question": "query"})
    with pytest.raises(ValueError, match="clashes"):
        to_common_schema(_vqav2(), data.VQAv2Columns(), keep_columns=["question"])
    # A nested field is not a column: refused up front (it failed late, inside datasets' map).
    with pytest.raises(ValueError, match=r"'answers.answer' is not a top-level column"):
        to_common_schema(_vqav2(), data.VQAv2Columns(), keep_columns=["answers.answer"])
    with pytest.raises(ValueError, match="has no key 'text'"):
        to_common_schema(_vqav2(), ColumnMap(answer_key="text"))


def test_load_benchmark_missing_gives_command(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="python -m scripts.make_benchmark --out"):
        load_benchmark(tmp_path / "bench")


def test_columnwise_answer_records():
    # Older hub datasets declare answers as Sequence({...}), which datasets returns as a dict of lists.
    source = datasets.Dataset.from_dict(
        {
            "image": _images(1),
            "question": ["what colour?"],
            "answers": [{"answer": ["red", "dark red"], "answer_id": [1, 2]}],
            "question_id": [3],
        },
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "question": datasets.Value("string"),
                "answers": datasets.Sequence(
                    {"answer": datasets.Value("string"), "answer_id": datasets.Value("int64")}
                ),
                "question_id": datasets.Value("int64"),
            }
        ),
    )
    ds = to_common_schema(source, ColumnMap(question_type=None, default_question_type="other"))
    assert ds[0]["answers"] == ["red", "dark red"]
    assert ds[0]["question_type"] == "other"


def test_generation_leaves_out_empty_splits(tmp_path):
    """configs/train/small.yaml asks for {train: 12000, val: 0}; a size-0 split is skipped, not an error."""
    from training.benchmark import TINY_GENERATOR
    from training.data import load_configured
    from training.train import load_train_cfg

    cfg = load_train_cfg("configs/train/small.yaml", [f"data.path={tmp_path / 'b'}", "data.generate=true"])
    assert cfg.data.generate_sizes["val"] == 0
    cfg.data.generate_sizes = {"train": 6, "val": 0}
    cfg.data.generate_cfg = dict(TINY_GENERATOR)
    ds = load_configured(cfg.data)
    assert len(ds) == 6 and not (tmp_path / "b" / "val").exists()
    # The same settings find the same data; other settings at the same path are refused by name (it was reused
    # silently: 8 rows of seed 0 at 64 px handed out for a request of 16 rows of seed 1).
    assert len(load_configured(cfg.data)) == 6
    cfg.data.generate_seed = 1
    cfg.data.generate_sizes = {"train": 12, "val": 0}
    cfg.data.generate_cfg = {**TINY_GENERATOR, "max_objects": 2}
    with pytest.raises(ValueError, match=r"other settings: seed 0 \(data.generate_seed=1\); train has 6 rows "
                                         r"\(data.generate_sizes.train=12\); generator max_objects=3"):
        load_configured(cfg.data)
    cfg.data.generate = False  # taken as it is
    assert len(load_configured(cfg.data)) == 6
    cfg.data.max_samples = 2
    assert len(load_configured(cfg.data)) == 2
    cfg.data.max_samples = 100  # more than there are: all of them
    assert len(load_configured(cfg.data)) == 6
    for bad in (0, -3, 1.5):  # an empty or fractional selection was silently taken (-3 gave 0 rows)
        cfg.data.max_samples = bad
        with pytest.raises(ValueError, match=f"data.max_samples must be a positive integer or null, got {bad}"):
            load_configured(cfg.data)


def test_a_missing_bare_folder_name_is_not_tried_on_the_hub(monkeypatch):
    # Only "owner/name" can be a hub id: a missing folder name without a slash fails at once, offline.
    def hub(*args, **kwargs):
        raise AssertionError(f"tried the hub: {args}")

    monkeypatch.setattr(data.datasets, "load_dataset", hub)
    with pytest.raises(DatasetNotFoundError, match="'no_such_vqav2_folder'"):
        load_vqa_dataset("vqav2", path="no_such_vqav2_folder")


def test_single_file_suffix_is_case_insensitive(tmp_path):
    file = tmp_path / "VAL.PARQUET"
    datasets.Dataset.from_dict({"image": _images(1), "question": ["q?"], "answers": [["a"]],
                                "question_id": [4]}).to_parquet(str(file))
    ds = load_vqa_dataset("textvqa", path=file, cache_dir=str(tmp_path / "cache"))
    assert ds["question_id"] == ["4"] and ds["answers"] == [["a"]]


def test_unlabelled_rows_empty_type_lists_and_row_index_ids():
    # Test splits without answers get [], an empty list of question types the default, and without a question-id
    # column the id is the row's index in the whole split (the mapping runs in batches of 1000 rows).
    n = 1001
    source = datasets.Dataset.from_dict(
        {"image": [f"img{i}.png" for i in range(n)], "question": ["q"] * n, "answers": [None] * n,
         "types": [[]] * (n - 1) + [["a", "b"]]},
        features=datasets.Features({"image": datasets.Value("string"), "question": datasets.Value("string"),
                                    "answers": datasets.List(datasets.Value("string")),
                                    "types": datasets.List(datasets.Value("string"))}),
    )
    ds = to_common_schema(source, ColumnMap(question_id=None, question_type="types", default_question_type="other"))
    assert ds["answers"] == [[]] * n
    assert ds["question_type"] == ["other"] * (n - 1) + ["a|b"]
    assert ds["question_id"] == [str(i) for i in range(n)]


def test_bad_answer_records_and_images_table_raise_value_errors():
    columnwise = datasets.Dataset.from_dict(
        {"image": _images(1), "question": ["q"], "answers": [{"answer": ["red"]}], "question_id": [3]},
        features=datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                    "answers": datasets.Sequence({"answer": datasets.Value("string")}),
                                    "question_id": datasets.Value("int64")}),
    )
    with pytest.raises(ValueError, match="answer records have no key 'text'; keys: \\['answer'\\]"):
        to_common_schema(columnwise, ColumnMap(answer_key="text", question_type=None))
    images = datasets.Dataset.from_dict({"key": ["img1", "img2"], "image": _images(2)})
    with pytest.raises(ValueError, match="images table has no column 'id'; available columns: \\['key', 'image'\\]"):
        to_common_schema(_gqa_instructions(), data.GQAColumns(), images=images)


def test_column_overrides_keep_the_sources_other_defaults(tmp_path):
    # columns={...} overrides fields of the source's map (GQA: answer, id, imageId), not of a bare ColumnMap.
    _gqa_instructions().save_to_disk(str(tmp_path / "instr"))
    datasets.Dataset.from_dict({"id": ["img1", "img2"], "image": _images(2)}).save_to_disk(str(tmp_path / "images"))
    ds = load_vqa_dataset("gqa", path=tmp_path / "instr", images=tmp_path / "images",
                          columns={"question_type": "types.detailed"})
    assert ds["question_type"] == ["verifyAttr", "relS", "positionQuery"]
    assert ds["answers"] == [["no"], ["laptop"], ["left"]] and ds["question_id"] == ["q7", "q8", "q9"]


def test_benchmark_without_its_extra_columns_is_refused(tmp_path):
    ds = datasets.Dataset.from_dict({"image": _images(1), "question": ["q"], "answers": [["a"]],
                                     "question_id": ["0"], "question_type": ["count"]})
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "b"))
    with pytest.raises(ValueError, match=r"benchmark split 'train' .* lacks columns \['target_box', 'scene'\]"):
        load_benchmark(tmp_path / "b")


def test_plain_local_folder_gets_no_hub_config(tmp_path):
    # DocVQA's hub config "DocVQA" is not passed to a local folder of data files that does not declare it.
    (tmp_path / "doc").mkdir()
    datasets.Dataset.from_dict({"image": _images(1), "question": ["q?"], "answers": [["a"]], "questionId": ["7"],
                                "question_types": [["form"]]}).to_parquet(str(tmp_path / "doc" / "validation.parquet"))
    ds = load_vqa_dataset("docvqa", path=tmp_path / "doc", cache_dir=str(tmp_path / "cache"))
    assert ds["question_id"] == ["7"] and ds["question_type"] == ["form"]


def test_streaming_datasets_are_refused_by_name(tmp_path):
    # A streaming load has no row indices, len() or num_proc: it failed inside datasets with "IterableDataset.map()
    # got an unexpected keyword argument 'num_proc'"; the mapping, max_samples and the sampler need a map-style split.
    file = tmp_path / "val.parquet"
    datasets.Dataset.from_dict({"image": _images(1), "question": ["q?"], "answers": [["a"]],
                                "question_id": [4]}).to_parquet(str(file))
    with pytest.raises(ValueError, match=re.escape(f"'{file}' is a streaming IterableDataset (streaming=True?)")):
        load_vqa_dataset("textvqa", path=file, streaming=True, cache_dir=str(tmp_path / "cache"))
    stream = datasets.Dataset.from_dict({"image": _images(1), "question": ["q?"], "answers": [["a"]]})
    with pytest.raises(ValueError, match="the dataset is a streaming IterableDataset"):
        to_common_schema(stream.to_iterable_dataset(), ColumnMap(question_id=None, question_type=None))
    with pytest.raises(ValueError, match="the images table is a streaming IterableDataset"):
        to_common_schema(_gqa_instructions(), data.GQAColumns(), images=stream.to_iterable_dataset())


def test_gqa_join_on_a_dotted_image_id():
    # ColumnMap names may be dotted; image_id was checked as such and then read as a top-level column ("Column
    # 'meta.img' doesn't exist."). The questions here point at img2 then img1: pixels 30 then 10 (see _images).
    images = datasets.Dataset.from_dict({"id": ["img1", "img2"], "image": _images(2)})
    nested = datasets.Dataset.from_dict({"id": ["q1", "q2"], "meta": [{"img": "img2"}, {"img": "img1"}],
                                         "question": ["a?", "b?"], "answer": ["x", "y"]})
    ds = to_common_schema(nested, data.GQAColumns(image_id="meta.img", question_type=None), images=images)
    assert [_pixel(img) for img in ds["image"]] == [30, 10] and ds["question_id"] == ["q1", "q2"]
    with pytest.raises(ValueError, match=r"image id 'img9' \(column 'meta.img'\) is not in the images table"):
        to_common_schema(nested.map(lambda r: {"meta": {"img": "img9"}}),
                         data.GQAColumns(image_id="meta.img", question_type=None), images=images)


def test_an_empty_split_maps_to_an_empty_split_of_the_schema():
    # 0 rows in, 0 rows out: datasets' map leaves a 0-row table unmapped ("Original column names {...} not in the
    # dataset") and concatenating GQA's joined images drops a 0-row table's columns (KeyError: '__arr_coc_image').
    vqa = to_common_schema(_vqav2().filter(lambda r: False), data.VQAv2Columns(), keep_columns=["image_id"])
    assert len(vqa) == 0 and vqa.column_names == [*SCHEMA_COLUMNS, "image_id"]
    assert vqa.features == schema_features({"image_id": datasets.Value("int64")})
    images = datasets.Dataset.from_dict({"id": ["img1", "img2"], "image": _images(2)})
    gqa = to_common_schema(_gqa_instructions().filter(lambda r: False), data.GQAColumns(), images=images)
    assert len(gqa) == 0 and gqa.features == schema_features()


def test_null_answers_are_left_out_and_null_questions_or_ids_refused():
    # str(None) made a null answer the answer "None" (scored and trained on), a null question the question "None" and
    # a null id the id "None". Row 0's answers [a, null] keep "a"; row 1's records [{null}, {b}] keep "b".
    source = datasets.Dataset.from_dict(
        {"image": ["x.png"] * 2, "question": ["q?", "r?"], "question_id": [1, 2], "answers": [["a", None], ["b"]],
         "records": [[{"answer": None}, {"answer": "b"}], [{"answer": "c"}]]})
    assert to_common_schema(source, ColumnMap(question_type=None))["answers"] == [["a"], ["b"]]
    assert to_common_schema(source, ColumnMap(answers="records", question_type=None))["answers"] == [["b"], ["c"]]
    with pytest.raises(ValueError, match="row 1: question column 'question' is null"):
        to_common_schema(source.map(lambda r, i: {"question": None if i else "q?"}, with_indices=True),
                         ColumnMap(question_type=None))
    with pytest.raises(ValueError, match="row 0: question_id column 'question_id' is null"):
        to_common_schema(source.map(lambda r, i: {"question_id": i or None}, with_indices=True),
                         ColumnMap(question_type=None))
