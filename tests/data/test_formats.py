"""Benchmark writers and loaders: round trips on synthetic records, public-format fixtures
(including malformed rows), and image mode conversion."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from unigame.data.formats import (
    to_hf_dataset,
    write_geneval_images,
    write_naturalbench,
    write_pope,
    write_vqav2,
)
from unigame.data.loaders import (
    DataFormatError,
    GenEvalPrompt,
    load_advqa,
    load_geneval_prompts,
    load_image,
    load_images,
    load_mmmu,
    load_naturalbench,
    load_pope,
    load_vqav2,
)
from unigame.data.records import VQARecord

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def _image(seed: int, h: int = 5, w: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _assert_is_rgb(arr: np.ndarray) -> None:
    assert arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[2] == 3


# ---------------------------------------------------------------------------------------------
# Round trips: writer -> loader
# ---------------------------------------------------------------------------------------------


def test_vqav2_round_trip_numeric_ids(tmp_path):
    shared = _image(0)
    records = [
        VQARecord("101", "What color is the cube?", "red", image=shared, answers=["red"] * 9 + ["orange"]),
        VQARecord("102", "How many spheres?", "2", image=shared.copy()),  # same pixels -> same image_id
        VQARecord("103", "Is there a cone?", "no", image=_image(1), meta={"question_type": "is there a"}),
    ]
    files = write_vqav2(records, tmp_path, split="val2014")
    assert sorted(p.name for p in files.images_dir.iterdir()) == [
        "COCO_val2014_000000000001.png",
        "COCO_val2014_000000000002.png",
    ]
    ann = json.loads(files.annotations_json.read_text())["annotations"]
    assert [len(a["answers"]) for a in ann] == [10, 10, 10]
    assert [a["answer_type"] for a in ann] == ["other", "number", "yes/no"]
    assert ann[0]["answers"][0] == {"answer": "red", "answer_confidence": "yes", "answer_id": 1}
    assert json.loads(files.questions_json.read_text())["questions"][1] == {
        "image_id": 1,
        "question": "How many spheres?",
        "question_id": 102,
    }

    loaded = load_vqav2(files.questions_json, files.annotations_json, files.images_dir)
    assert [r.id for r in loaded] == ["101", "102", "103"]
    assert loaded.skipped == []
    for original, back in zip(records, loaded, strict=True):
        assert back.image is None and back.image_path is not None  # lazy: path only
        assert (back.question, back.answer) == (original.question, original.answer)
        assert back.answers == (original.answers if len(original.answers) > 1 else [original.answer] * 10)
        np.testing.assert_array_equal(load_image(back), original.image)
    assert loaded[0].meta["image_id"] == loaded[1].meta["image_id"] == 1
    assert loaded[2].meta["question_type"] == "is there a"
    assert loaded[0].meta["split"] == "val2014" and loaded[0].meta["source"] == "vqav2"


def test_vqav2_generated_question_ids(tmp_path):
    records = [
        VQARecord("shape-a", "Q1?", "yes", image=_image(0)),
        VQARecord("shape-b", "Q2?", "no", image=_image(0)),
        VQARecord("shape-c", "Q3?", "yes", image=_image(5)),
    ]
    files = write_vqav2(records, tmp_path, split="train2014")
    # VQAv2's own scheme: image_id * 1000 + k-th question on that image
    assert [r.id for r in load_vqav2(files.questions_json, files.annotations_json, files.images_dir)] == [
        "1000",
        "1001",
        "2000",
    ]


def test_vqav2_writer_rejects_records_without_images(tmp_path):
    with pytest.raises(ValueError, match="record 'x'"):
        write_vqav2([VQARecord("x", "q", "a")], tmp_path)


def test_pope_round_trip(tmp_path):
    img = _image(2)
    records = [
        VQARecord("1", "Is there a cube in the image?", "yes", image=img),
        VQARecord("2", "Is there a star in the image?", "No", image=img),
        VQARecord("q3", "Is there a ring in the image?", "no", image=_image(3)),
    ]
    path = write_pope(records, tmp_path / "coco_pope_popular.json")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows[0] == {
        "question_id": 1,
        "image": "COCO_val2014_000000000001.png",
        "text": "Is there a cube in the image?",
        "label": "yes",
    }
    assert rows[2]["question_id"] == "q3"  # non-numeric ids kept verbatim
    assert len(list((tmp_path / "images").iterdir())) == 2  # shared image written once
    loaded = load_pope(path, tmp_path / "images")
    assert [(r.id, r.answer) for r in loaded] == [("1", "yes"), ("2", "no"), ("q3", "no")]
    assert {r.meta["pope_split"] for r in loaded} == {"popular"}  # from the file name
    for original, back in zip(records, loaded, strict=True):
        np.testing.assert_array_equal(load_image(back), original.image)


def test_pope_writer_requires_yes_no(tmp_path):
    with pytest.raises(ValueError, match="yes/no answer"):
        write_pope([VQARecord("1", "Is it?", "maybe", image=_image(0))], tmp_path / "p.json")


def _nb_records(group: int, qtype: str = "yes_no") -> list[VQARecord]:
    images = [_image(10 * group), _image(10 * group + 1)]
    questions = [f"Group {group}: is it A?", f"Group {group}: is it B?"]
    answers = {"yes_no": [["Yes", "No"], ["No", "Yes"]], "multiple_choice": [["A", "B"], ["B", "A"]]}[qtype]
    return [
        VQARecord(
            f"g{group}-{j}{k}",
            questions[j],
            answers[j][k],
            image=images[k],
            meta={"group": group, "question_index": j, "image_index": k},
        )
        for k in (1, 0)  # out of order on purpose
        for j in (0, 1)
    ]


def test_naturalbench_round_trip(tmp_path):
    records = _nb_records(7) + _nb_records(8, "multiple_choice")
    path = write_naturalbench(records, tmp_path)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert list(rows[0]) == [
        "Index",
        "Image_0",
        "Image_1",
        "Question_0",
        "Question_1",
        "Image_0_Question_0",
        "Image_0_Question_1",
        "Image_1_Question_0",
        "Image_1_Question_1",
        "Question_Type",
    ]
    assert [r["Question_Type"] for r in rows] == ["yes_no", "multiple_choice"]  # inferred from answers
    loaded = load_naturalbench(path)
    assert len(loaded) == 8
    by_key = {(r.meta["group"], r.meta["question_index"], r.meta["image_index"]): r for r in loaded}
    for original in records:
        m = original.meta
        back = by_key[(m["group"], m["question_index"], m["image_index"])]
        assert (back.question, back.answer) == (original.question, original.answer)
        np.testing.assert_array_equal(load_image(back), original.image)
    assert [r.id for r in loaded[:4]] == ["7_q0_i0", "7_q0_i1", "7_q1_i0", "7_q1_i1"]  # reference order


def test_naturalbench_writer_checks_groups(tmp_path):
    records = _nb_records(1)
    with pytest.raises(ValueError, match=r"missing \['q1_i1'\]"):
        write_naturalbench([r for r in records if r.id != "g1-11"], tmp_path)
    records[0].question = "something else"
    with pytest.raises(ValueError, match="question 0 differs"):
        write_naturalbench(records, tmp_path)
    with pytest.raises(ValueError, match="meta\\['group'\\]"):
        write_naturalbench([VQARecord("x", "q", "yes", image=_image(0))], tmp_path)


def test_geneval_images_layout(tmp_path):
    prompts = load_geneval_prompts(FIXTURES / "geneval" / "evaluation_metadata.jsonl")
    subset = [prompts[1], prompts[4]]
    images = [[_image(1), _image(2)], [_image(3)]]
    folders = write_geneval_images(subset, images, tmp_path)
    # GenEval README: <IMAGE_FOLDER>/00000/metadata.jsonl and samples/0000.png ...
    assert [f.name for f in folders] == ["00001", "00004"]
    assert sorted(p.name for p in (tmp_path / "00001" / "samples").iterdir()) == ["0000.png", "0001.png"]
    meta = json.loads((tmp_path / "00004" / "metadata.jsonl").read_text())
    assert meta == prompts[4].metadata and meta["tag"] == "position"
    back = load_image(VQARecord("x", "", "", image_path=str(tmp_path / "00001" / "samples" / "0001.png")))
    np.testing.assert_array_equal(back, _image(2))
    # plain metadata dicts are numbered by position
    write_geneval_images(
        [{"tag": "colors", "prompt": "a photo of a red car", "include": []}], [[_image(0)]], tmp_path / "b"
    )
    assert (tmp_path / "b" / "00000" / "samples" / "0000.png").is_file()
    with pytest.raises(ValueError, match="2 prompts but 1"):
        write_geneval_images(subset, images[:1], tmp_path)


def test_to_hf_dataset(tmp_path):
    path_record = VQARecord("b", "q2", "no", image_path=str(FIXTURES / "images" / "gray.png"))
    records = [
        VQARecord(
            "a", "q1", "yes", image=_image(4), answers=["yes", "yes"], caption="a cube", meta={"k": [1, 2]}
        ),
        path_record,
        VQARecord("c", "q3", "yes", meta={"image_bytes": b"\x00", "kept": "x"}),
    ]
    records[2].meta["image_bytes"] = (FIXTURES / "images" / "rgba.png").read_bytes()
    ds = to_hf_dataset(records)
    assert ds.column_names == ["id", "question", "answer", "answers", "caption", "meta", "image"]
    assert ds[0]["caption"] == "a cube" and ds[0]["answers"] == ["yes", "yes"]
    assert json.loads(ds[0]["meta"]) == {"k": [1, 2]}
    assert json.loads(ds[2]["meta"]) == {"kept": "x"}  # raw bytes left out of the JSON
    np.testing.assert_array_equal(np.asarray(ds[0]["image"]), records[0].image)
    assert ds[1]["image"].size == (2, 2) and ds[2]["image"].size == (2, 2)


# ---------------------------------------------------------------------------------------------
# Public-format fixtures
# ---------------------------------------------------------------------------------------------


def test_load_vqav2_fixture():
    d = FIXTURES / "vqav2"
    recs = load_vqav2(
        d / "v2_OpenEnded_mscoco_val2014_questions.json",
        d / "v2_mscoco_val2014_annotations.json",
        d / "val2014",
    )
    assert [r.id for r in recs] == ["42000", "42001", "73000"]
    assert recs[0].answer == "red" and recs[0].answers.count("red") == 8
    assert recs[1].meta["answer_type"] == "number"
    assert recs[0].image_path.endswith("COCO_val2014_000000000042.jpg")
    assert load_image(recs[2]).shape == (6, 8, 3)
    # test-dev style: no annotations, no images
    bare = load_vqav2(d / "v2_OpenEnded_mscoco_val2014_questions.json", None, None)
    assert bare[0].answers == [] and bare[0].image_path is None


def test_load_advqa_fixture():
    d = FIXTURES / "advqa"
    recs = load_advqa(
        d / "v1_OpenEnded_mscoco_val2017_advqa_questions.json",
        d / "v1_mscoco_val2017_advqa_annotations.json",
        d / "val2017",
    )
    assert len(recs) == 1 and recs[0].answer == "3" and recs[0].meta["source"] == "advqa"
    assert recs[0].image_path.endswith("000000000139.jpg")  # COCO 2017 naming


def test_vqav2_bad_questions_raise_with_location():
    d = FIXTURES / "vqav2"
    with pytest.raises(DataFormatError) as info:
        load_vqav2(d / "bad_questions.json", d / "v2_mscoco_val2014_annotations.json", d / "val2014")
    err = info.value
    assert err.file.endswith("bad_questions.json")
    assert err.row == "questions[1] (question_id 42001)" and err.field == "question"
    assert "bad_questions.json, questions[1] (question_id 42001), field 'question': missing" in str(err)


def test_vqav2_bad_rows_skipped_with_count():
    d = FIXTURES / "vqav2"
    recs = load_vqav2(
        d / "bad_questions.json", d / "v2_mscoco_val2014_annotations.json", d / "val2014", skip_bad=True
    )
    assert [r.id for r in recs] == ["42000"]
    assert len(recs.skipped) == 3
    assert [(e.row, e.field) for e in recs.skipped] == [
        ("questions[1] (question_id 42001)", "question"),
        ("questions[2] (question_id 73000)", "image_id"),  # a string, not an int
        ("questions[3] (question_id 99000)", "question_id"),  # no annotation
    ]


def test_vqav2_bad_annotations_name_the_annotation_file():
    d = FIXTURES / "vqav2"
    q = d / "v2_OpenEnded_mscoco_val2014_questions.json"
    with pytest.raises(
        DataFormatError,
        match=r"bad_annotations.json, annotations\[1\] \(question_id 42001\), field 'answers'",
    ):
        load_vqav2(q, d / "bad_annotations.json", d / "val2014")
    recs = load_vqav2(q, d / "bad_annotations.json", d / "val2014", skip_bad=True)
    assert [r.id for r in recs] == ["42000"]
    assert [e.field for e in recs.skipped] == ["answers", "multiple_choice_answer"]


def test_vqav2_missing_image_and_bad_json(tmp_path):
    d = FIXTURES / "vqav2"
    with pytest.raises(DataFormatError, match="field 'image_id': no image file for image_id 42"):
        load_vqav2(d / "v2_OpenEnded_mscoco_val2014_questions.json", None, tmp_path)
    broken = tmp_path / "q.json"
    broken.write_text('{"questions": [')
    with pytest.raises(DataFormatError, match="q.json: not valid JSON"):
        load_vqav2(broken, None, None)
    broken.write_text('{"question": []}')
    with pytest.raises(DataFormatError, match="field 'questions'"):
        load_vqav2(broken, None, None)


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_load_pope_fixture_splits(split):
    d = FIXTURES / "pope"
    recs = load_pope(d / f"coco_pope_{split}.json", d / "images")
    assert [(r.id, r.answer) for r in recs] == [("1", "yes"), ("2", "no"), ("3", "yes")]
    assert all(r.meta["pope_split"] == split for r in recs)
    _assert_is_rgb(load_image(recs[0]))


def test_load_pope_bad_rows(caplog):
    d = FIXTURES / "pope"
    with pytest.raises(
        DataFormatError, match=r"coco_pope_random_bad.json, line 2 \(question_id 2\), field 'label'"
    ):
        load_pope(d / "coco_pope_random_bad.json", d / "images")
    recs = load_pope(d / "coco_pope_random_bad.json", d / "images", skip_bad=True)
    assert [r.id for r in recs] == ["1", "3"]
    assert [(e.row, e.field) for e in recs.skipped] == [
        ("line 2 (question_id 2)", "label"),
        ("line 3 (question_id 3)", "text"),
        ("line 4", None),  # not valid JSON
        ("line 5 (question_id 5)", "image"),  # file not found
    ]
    assert "not valid JSON" in str(recs.skipped[2])
    assert "skipped 4 bad row(s)" in caplog.text  # never a silent skip
    assert recs[0].meta["pope_split"] == "random"


def test_load_naturalbench_fixture():
    recs = load_naturalbench(FIXTURES / "naturalbench" / "naturalbench.jsonl")
    assert len(recs) == 8
    first = recs[0]
    assert (first.id, first.question, first.answer) == ("0_q0_i0", "Is the dog sleeping?", "Yes")
    assert first.meta == {
        "group": 0,
        "question_index": 0,
        "image_index": 0,
        "question_type": "yes_no",
        "source": "naturalbench",
    }
    assert recs[7].answer == "A" and recs[7].meta["question_type"] == "multiple_choice"
    assert recs[1].image_path == recs[3].image_path != recs[0].image_path  # image 1 shared by both questions


def test_load_naturalbench_bad_rows():
    path = FIXTURES / "naturalbench" / "naturalbench_bad.jsonl"
    with pytest.raises(DataFormatError, match=r"line 2 \(Index 1\), field 'Image_1_Question_1'"):
        load_naturalbench(path)
    recs = load_naturalbench(path, skip_bad=True)
    assert len(recs) == 4
    assert [(e.row, e.field) for e in recs.skipped] == [
        ("line 2 (Index 1)", "Image_1_Question_1"),
        ("line 3 (Index 2)", "Question_1"),
        ("line 4 (Index 3)", "Question_Type"),
    ]


def test_load_naturalbench_parquet_with_embedded_images(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    row = json.loads((FIXTURES / "naturalbench" / "naturalbench.jsonl").read_text().splitlines()[0])
    for k in (0, 1):  # Hugging Face parquet exports embed images as {"bytes", "path"} structs
        data = (FIXTURES / "naturalbench" / row[f"Image_{k}"]).read_bytes()
        row[f"Image_{k}"] = {"bytes": data, "path": f"nb_{k}.png"}
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "nb.parquet")
    recs = load_naturalbench(tmp_path / "nb.parquet")
    assert len(recs) == 4 and recs[0].image_path is None
    expected = load_image(
        VQARecord("x", "", "", image_path=str(FIXTURES / "naturalbench" / "images" / "0_0.png"))
    )
    np.testing.assert_array_equal(load_image(recs[0]), expected)


def test_load_mmmu_fixture():
    recs = load_mmmu(FIXTURES / "mmmu" / "mmmu.jsonl")
    mc, op = recs
    assert mc.meta["options"] == [
        "Baroque",
        "Cubism",
        "Impressionism",
        "Gothic",
    ]  # parsed from the string form
    assert mc.answer == "B" and mc.meta["question_type"] == "multiple-choice"
    assert mc.meta["subfield"] == "Art History" and mc.image_path.endswith("validation_Art_1_1.png")
    assert op.answers == ["12", "12.0"] and op.answer == "12"
    assert len(load_images(op)) == 2 and len(load_images(mc)) == 1


def test_load_mmmu_parquet_and_list_options(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [
        {
            "id": "v_1",
            "question": "Q?",
            "options": ["x", "y"],
            "answer": "A",
            "question_type": "multiple-choice",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    recs = load_mmmu(tmp_path / "m.parquet")
    assert recs[0].meta["options"] == ["x", "y"] and recs[0].meta["image_refs"] == []
    (tmp_path / "list.json").write_text(json.dumps(rows))  # a JSON list of rows
    (tmp_path / "lines.json").write_text(json.dumps(rows[0]) + "\n")  # JSON lines named .json
    for name in ("list.json", "lines.json"):
        assert load_mmmu(tmp_path / name)[0].meta["options"] == ["x", "y"]


def test_load_mmmu_bad_rows():
    path = FIXTURES / "mmmu" / "mmmu_bad.jsonl"
    with pytest.raises(DataFormatError, match=r"line 2 \(id 'validation_Art_2'\), field 'options'"):
        load_mmmu(path)
    recs = load_mmmu(path, skip_bad=True)
    assert [r.id for r in recs] == ["validation_Art_1"]
    assert [e.field for e in recs.skipped] == ["options", "answer", "image_1", "question_type"]


def test_load_geneval_prompts_fixture():
    prompts = load_geneval_prompts(FIXTURES / "geneval" / "evaluation_metadata.jsonl")
    assert [p.tag for p in prompts] == [
        "single_object",
        "two_object",
        "counting",
        "colors",
        "position",
        "color_attr",
    ]
    counting = prompts[2]
    assert isinstance(counting, GenEvalPrompt) and counting.index == 2
    assert counting.include == [{"class": "clock", "count": 3}] and counting.exclude == [
        {"class": "clock", "count": 4}
    ]
    assert prompts[0].exclude == []


def test_load_geneval_prompts_bad_rows():
    path = FIXTURES / "geneval" / "evaluation_metadata_bad.jsonl"
    with pytest.raises(DataFormatError, match=r"line 2, field 'include\[0\].count'"):
        load_geneval_prompts(path)
    prompts = load_geneval_prompts(path, skip_bad=True)
    assert [(p.index, p.tag) for p in prompts] == [
        (0, "single_object"),
        (4, "color_attr"),
    ]  # index = line position
    assert [(e.row, e.field) for e in prompts.skipped] == [
        ("line 2", "include[0].count"),
        ("line 3", "prompt"),
        ("line 4", None),
    ]


# ---------------------------------------------------------------------------------------------
# Image decoding
# ---------------------------------------------------------------------------------------------


def _decode_fixture(name: str) -> np.ndarray:
    return load_image(VQARecord("img", "", "", image_path=str(FIXTURES / "images" / name)))


def test_grayscale_becomes_rgb():
    arr = _decode_fixture("gray.png")
    _assert_is_rgb(arr)
    np.testing.assert_array_equal(arr[..., 0], [[0, 128], [200, 255]])
    assert (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_rgba_composited_on_white():
    arr = _decode_fixture("rgba.png")
    _assert_is_rgb(arr)
    assert arr[0, 0].tolist() == [255, 0, 0]  # opaque red stays red
    assert arr[0, 1].tolist() == [255, 255, 255]  # fully transparent -> white background
    assert abs(int(arr[1, 0, 0]) - 127) <= 1  # half-transparent black over white -> mid grey
    assert arr[1, 1].tolist() == [0, 255, 0]


def test_cmyk_and_palette_become_rgb():
    arr = _decode_fixture("cmyk.jpg")
    _assert_is_rgb(arr)
    assert arr.shape == (2, 3, 3) and arr[..., 0].min() > 230 and arr[..., 1:].max() < 25  # CMYK red
    pal = _decode_fixture("palette.png")
    assert pal.tolist() == [[[0, 0, 255], [0, 0, 0]]]


def test_load_image_errors():
    with pytest.raises(DataFormatError, match=r"corrupt.png, id 'img', field 'image': cannot decode"):
        _decode_fixture("corrupt.png")
    with pytest.raises(DataFormatError, match="image file not found"):
        _decode_fixture("absent.png")
    with pytest.raises(ValueError, match="no image"):
        load_image(VQARecord("empty", "", ""))
    with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
        load_image(VQARecord("f", "", "", image=np.zeros((2, 2, 3), dtype=np.float32)))
