"""Local training data: a VQAv2-format split (plus a caption set) with every kind of bad input the
loader must convert or name by record id, and the all-bad set that must fail fast."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unigame.data.formats import VQAv2Files, write_vqav2
from unigame.data.loaders import DataFormatError, load_captions, load_image
from unigame.data.local import BadRecordsError, load_local_training_data, write_bad_records
from unigame.data.records import VQARecord
from unigame.data.splits import build_split

SIZE = 32  # ShapesWorld renders 32 px scenes


def _one_question_per_image(n: int) -> list[VQARecord]:
    """n records on n distinct images, so breaking one image breaks exactly one record."""
    out, seen = [], set()
    for record in build_split("train", 4 * n, 0):
        key = record.image.tobytes()
        if key not in seen:
            seen.add(key)
            out.append(record)
        if len(out) == n:
            return out
    raise AssertionError("not enough distinct scenes")


@pytest.fixture
def split(tmp_path) -> tuple[VQAv2Files, list[VQARecord]]:
    records = _one_question_per_image(20)
    return write_vqav2(records, tmp_path / "vqav2", split="train2014"), records


def _image_file(files: VQAv2Files, image_id: int) -> Path:
    return files.images_dir / f"COCO_train2014_{image_id:012d}.png"


def _load(files: VQAv2Files, **kwargs):
    return load_local_training_data(
        files.questions_json, files.annotations_json, files.images_dir, SIZE, **kwargs
    )


def test_clean_split_loads_with_resized_rgb_images(split):
    files, records = split
    data = _load(files, max_items=5)
    assert len(data.records) == 5 and not data.bad and data.examined == 5
    for got, original in zip(data.records, records):
        assert got.image.shape == (SIZE, SIZE, 3) and got.image.dtype == np.uint8
        np.testing.assert_array_equal(got.image, original.image)  # 32 px square: no resampling
        assert (got.question, got.answer) == (original.question, original.answer)
    bigger = load_local_training_data(
        files.questions_json, files.annotations_json, files.images_dir, 48, max_items=1
    )
    assert bigger.records[0].image.shape == (48, 48, 3)


def test_every_bad_input_is_converted_or_named_by_id(split):
    files, _ = split
    questions = json.loads(files.questions_json.read_text())
    annotations = json.loads(files.annotations_json.read_text())
    q = questions["questions"]
    qid = [row["question_id"] for row in q]
    image_of = {row["question_id"]: row["image_id"] for row in q}

    # convertible images: grayscale, RGBA, CMYK (as JPEG, the format that carries it), 16-bit grey
    gray, rgba, cmyk, sixteen = qid[0], qid[1], qid[2], qid[3]
    Image.open(_image_file(files, image_of[gray])).convert("L").save(_image_file(files, image_of[gray]))
    rgba_pixels = np.zeros((SIZE, SIZE, 4), np.uint8)
    rgba_pixels[..., 0] = 200  # red where opaque, transparent elsewhere
    rgba_pixels[: SIZE // 2, :, 3] = 255
    Image.fromarray(rgba_pixels, "RGBA").save(_image_file(files, image_of[rgba]))
    path = _image_file(files, image_of[cmyk])
    Image.open(path).convert("CMYK").save(path.with_suffix(".jpg"), quality=95)
    path.unlink()
    ramp = (np.arange(SIZE * SIZE, dtype=np.uint16).reshape(SIZE, SIZE) * 64).astype(np.uint16)
    Image.fromarray(ramp).save(_image_file(files, image_of[sixteen]))
    assert Image.open(_image_file(files, image_of[sixteen])).mode == "I;16"

    # bad records, one of each kind
    corrupt, huge, empty_q, empty_a, not_utf8 = qid[4], qid[5], qid[6], qid[7], qid[8]
    _image_file(files, image_of[corrupt]).write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    Image.new("RGB", (200, 200), (10, 20, 30)).save(_image_file(files, image_of[huge]))
    q[6]["question"] = "   "
    annotations["annotations"][7]["multiple_choice_answer"] = ""
    q[8]["question"] = "NOT_UTF8"
    q.append(dict(q[9], question="a duplicate of an earlier question id"))
    files.annotations_json.write_text(json.dumps(annotations))
    raw = json.dumps(questions).encode().replace(b"NOT_UTF8", b"what colour is \xff\xfe it")
    files.questions_json.write_bytes(raw)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's own bomb warning must not leak
        data = _load(files, max_pixels=100 * 100)
    problems = {b.id: b.problem for b in data.bad}
    assert set(problems) == {str(i) for i in (corrupt, huge, empty_q, empty_a, not_utf8, qid[9])}
    assert "cannot decode image" in problems[str(corrupt)]
    assert "40,000 pixels exceeds the limit of 10,000" in problems[str(huge)]
    assert "decompression-bomb guard" in problems[str(huge)]
    assert problems[str(empty_q)] == "field 'question': empty"
    assert problems[str(empty_a)] == "field 'multiple_choice_answer': empty"
    assert "not valid UTF-8 text (byte(s) 0xff, 0xfe)" in problems[str(not_utf8)]
    assert "duplicate id" in problems[str(qid[9])]
    assert len(data.records) == 20 - 5 and data.examined == 21
    first_of_duplicate = next(r for r in data.records if r.id == str(qid[9]))
    assert first_of_duplicate.question != "a duplicate of an earlier question id"  # the first is kept

    images = {r.id: r.image for r in data.records}
    assert all(im.shape == (SIZE, SIZE, 3) and im.dtype == np.uint8 for im in images.values())
    g = images[str(gray)]
    assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()
    top, bottom = images[str(rgba)][: SIZE // 2], images[str(rgba)][SIZE // 2 :]
    assert (top == [200, 0, 0]).all() and (bottom == 255).all()  # transparent part composited on white
    assert images[str(cmyk)].std() > 0
    expected = np.rint(ramp.astype(float) * 255 / 65535).astype(np.uint8)
    np.testing.assert_array_equal(images[str(sixteen)][..., 0], expected)  # scaled, not clipped to white

    out = write_bad_records(data.bad, Path(files.images_dir).parent / "bad.jsonl")
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["id"] for r in rows} == set(problems) and all(r["file"] and r["problem"] for r in rows)


def test_all_bad_fails_fast_naming_records(split, tmp_path):
    files, _ = split
    empty = tmp_path / "no-images"
    empty.mkdir()
    with pytest.raises(BadRecordsError, match=r"too many bad records, none usable so far: 11 bad") as info:
        load_local_training_data(files.questions_json, files.annotations_json, empty, SIZE)
    assert "11 bad of 11 examined (20 in the files; data.max_bad_fraction=0.5)" in str(info.value)
    assert "1000: field 'image_id': no image file for image_id 1" in str(info.value)  # ids named


def test_too_many_bad_fails_but_a_few_are_tolerated(split):
    files, _ = split
    for image_id in (1, 2, 3):  # 3 of 20 records: 15%
        _image_file(files, image_id).write_bytes(b"not an image")
    assert len(_load(files, max_bad_fraction=0.2).bad) == 3
    with pytest.raises(BadRecordsError, match="too many bad records"):
        _load(files, max_bad_fraction=0.1)


def test_caption_set_records_carry_their_caption(split, tmp_path):
    files, records = split
    folder = tmp_path / "cc3m"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(records[i].image).save(folder / f"{i:09d}.jpg", quality=95)
    vqa_id = str(json.loads(files.questions_json.read_text())["questions"][0]["question_id"])
    rows = [{"image": f"{i:09d}.jpg", "caption": f"caption number {i}"} for i in range(3)]
    rows.append({"image": f"{1:09d}.jpg", "caption": "the same id again"})
    rows.append({"id": vqa_id, "image": f"{2:09d}.jpg", "caption": "an id a VQAv2 question has"})
    (folder / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = _load(files, max_items=4, captions=folder / "captions.jsonl", caption_prompt="What is shown?")
    captioned = [r for r in data.records if r.caption]
    assert [(r.id, r.question, r.answer, r.caption) for r in captioned] == [
        (f"{i:09d}", "What is shown?", f"caption number {i}", f"caption number {i}") for i in range(3)
    ]
    assert {b.id: b.problem.split(" (")[0] for b in data.bad} == {
        "000000001": "field 'id': duplicate id",
        vqa_id: "duplicate id: a VQAv2 question has it too",
    }
    tsv = folder / "captions.tsv"
    tsv.write_text("id\timage\tcaption\nx1\t000000000.jpg\ta tab separated caption\nx2\tmissing.jpg\tgone\n")
    loaded = load_captions(tsv, skip_bad=True)
    assert [(r.id, r.caption) for r in loaded] == [("x1", "a tab separated caption")]
    assert "image file not found" in str(loaded.skipped[0]) and loaded.skipped[0].record_id is None


def test_pixel_guards_name_the_record(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 100)).save(path)
    record = VQARecord("r7", "q", "a", image_path=str(path))
    with pytest.raises(
        DataFormatError, match=r"id 'r7', field 'image': image of 100x100 = 10,000 pixels exceeds"
    ):
        load_image(record, max_pixels=9_999)
    assert load_image(record, max_pixels=10_000).shape == (100, 100, 3)
    # PIL's own guard (warning above its limit, error above twice it) becomes the same kind of error
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 4_000)
    with pytest.raises(DataFormatError, match=r"id 'r7'.*decompression-bomb guard"):
        load_image(record)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 9_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(record).shape == (100, 100, 3)
