import io
import warnings

import numpy as np
import pytest
from PIL import Image

from xmadapter_hf.data.images import load_image, to_rgb

RNG = np.random.default_rng(0)


def _pixels(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


def _png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_rgb_is_returned_unchanged():
    image = Image.fromarray(RNG.integers(0, 256, (4, 5, 3), dtype=np.uint8))
    assert to_rgb(image) is image


def test_grayscale_and_bilevel():
    gray = RNG.integers(0, 256, (6, 7), dtype=np.uint8)
    out = _pixels(to_rgb(Image.fromarray(gray)))
    assert out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    bits = Image.fromarray(gray > 127).convert("1")
    assert bits.mode == "1"
    out = _pixels(to_rgb(bits))
    np.testing.assert_array_equal(out[..., 0], np.where(gray > 127, 255, 0))


def test_rgba_composited_on_white():
    rgba = np.array(
        [[[10, 20, 30, 0], [10, 20, 30, 255]], [[200, 100, 0, 128], [0, 0, 0, 0]]],
        dtype=np.uint8,
    )
    out = _pixels(to_rgb(Image.fromarray(rgba, mode="RGBA")))
    assert out[0, 0].tolist() == [255, 255, 255]  # fully transparent -> white, not black
    assert out[1, 1].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [10, 20, 30]  # opaque -> unchanged
    expected = np.round(np.array([200, 100, 0]) * 128 / 255 + 255 * (1 - 128 / 255))
    np.testing.assert_allclose(out[1, 0], expected, atol=1)


def test_la_composited_on_white():
    la = np.array([[[40, 0], [40, 255]]], dtype=np.uint8)
    out = _pixels(to_rgb(Image.fromarray(la, mode="LA")))
    assert out[0, 0].tolist() == [255, 255, 255]
    assert out[0, 1].tolist() == [40, 40, 40]


def test_palette_with_and_without_transparency():
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette(palette)
    colors = {0: [255, 0, 0], 1: [0, 255, 0], 2: [0, 0, 255]}
    out = _pixels(to_rgb(image))
    for (row, col), index in np.ndenumerate(indices):
        assert out[row, col].tolist() == colors[index]

    # Index 1 transparent (as a GIF or a PNG tRNS chunk declares it): composited on white.
    image.info["transparency"] = 1
    out = _pixels(to_rgb(image))
    for (row, col), index in np.ndenumerate(indices):
        assert out[row, col].tolist() == ([255, 255, 255] if index == 1 else colors[index])

    # The same through a real PNG file, which stores the transparency in a tRNS chunk.
    reloaded = load_image(_png_bytes(image))
    np.testing.assert_array_equal(_pixels(reloaded), out)


def test_cmyk():
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 0, 0, 255]]], dtype=np.uint8)
    out = _pixels(to_rgb(Image.fromarray(cmyk, mode="CMYK")))
    assert out.tolist() == [[[255, 255, 255], [0, 255, 255], [0, 0, 0]]]


@pytest.mark.parametrize("mode,dtype", [("I;16", "<u2"), ("I;16L", "<u2"), ("I;16B", ">u2"), ("I", "<i4")])
def test_16_bit_modes_scale_back_to_the_8_bit_picture(mode, dtype):
    picture = RNG.integers(0, 256, (9, 11), dtype=np.uint8)
    picture[0, :2] = [0, 255]  # make sure both extremes are present
    wide = picture.astype(np.int64) * 257  # 8-bit x stored as 16-bit x * 257
    image = Image.frombytes(mode, (11, 9), wide.astype(dtype).tobytes())
    assert image.mode == mode
    out = to_rgb(image)
    # Same pixels as the 8-bit picture itself, hence the same embedding.
    assert out.tobytes() == to_rgb(Image.fromarray(picture)).tobytes()


def test_16_bit_png_file_matches_8_bit_file():
    picture = RNG.integers(0, 256, (8, 8), dtype=np.uint8)
    wide = Image.frombytes("I;16", (8, 8), (picture.astype("<u2") * 257).tobytes())
    from_16 = load_image(_png_bytes(wide))
    from_8 = load_image(_png_bytes(Image.fromarray(picture)))
    assert from_16.tobytes() == from_8.tobytes()


def test_16_bit_rounds_and_clips():
    values = np.array([[0, 128, 129, 65535, -7, 70000]], dtype="<i4")
    out = _pixels(to_rgb(Image.frombytes("I", (6, 1), values.tobytes())))
    assert out[0, :, 0].tolist() == [0, 0, 1, 255, 0, 255]


def test_float_mode_clips_and_rounds():
    values = np.array([[-5.0, 0.4, 0.6, 254.7, 300.0, np.nan]], dtype=np.float32)
    out = _pixels(to_rgb(Image.fromarray(values, mode="F")))
    assert out[0, :, 0].tolist() == [0, 0, 1, 255, 255, 0]


def test_to_rgb_rejects_non_images():
    with pytest.raises(TypeError, match="ndarray"):
        to_rgb(np.zeros((2, 2, 3), dtype=np.uint8))


def test_load_image_sources(tmp_path):
    array = RNG.integers(0, 256, (5, 6, 3), dtype=np.uint8)
    data = _png_bytes(Image.fromarray(array))
    path = tmp_path / "x.png"
    path.write_bytes(data)
    for source in (
        path,
        str(path),
        data,
        Image.open(path),
        {"bytes": data, "path": "ignored.png"},
        {"bytes": None, "path": str(path)},
        array,
    ):
        out = load_image(source)
        assert out.mode == "RGB" and out.size == (6, 5)
        np.testing.assert_array_equal(np.asarray(out), array)


def test_load_image_arrays():
    gray = RNG.integers(0, 256, (3, 4), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(load_image(gray))[..., 1], gray)
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)  # fully transparent black
    assert np.all(np.asarray(load_image(rgba)) == 255)
    with pytest.raises(TypeError, match="float32"):
        load_image(gray.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(3, 4, 2\)"):
        load_image(np.zeros((3, 4, 2), dtype=np.uint8))


def test_load_image_bad_inputs(tmp_path):
    with pytest.raises(TypeError, match="int"):
        load_image(42)
    with pytest.raises(ValueError, match="neither"):
        load_image({"bytes": None, "path": None})
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_truncated_png_names_the_file(tmp_path):
    data = _png_bytes(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    path = tmp_path / "broken.png"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="broken.png is not a readable image"):
        load_image(path)
    with pytest.raises(ValueError, match="<bytes> is not a readable image"):
        load_image(data[: len(data) // 2])
    with pytest.raises(ValueError, match="scan.png is not a readable image"):
        load_image({"bytes": data[:100], "path": "scan.png"})


def test_text_file_names_the_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("not an image\n")
    with pytest.raises(ValueError, match="notes.txt is not a readable image"):
        load_image(path)


@pytest.mark.parametrize("side", [12, 16])  # 144 px: PIL only warns (1x..2x the limit); 256 px: PIL raises
def test_decompression_bomb(tmp_path, monkeypatch, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bytes(Image.new("L", (side, side))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    filters_before = list(warnings.filters)
    with pytest.raises(ValueError) as info:
        load_image(path)
    message = str(info.value)
    assert "bomb.png" in message
    assert f"{side * side} pixels" in message
    assert "100 pixels" in message
    assert "PIL.Image.MAX_IMAGE_PIXELS" in message
    # The warning filter is only changed for the duration of the call.
    assert warnings.filters == filters_before


def test_bomb_limit_can_be_disabled(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(Image.new("L", (16, 16))))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    assert load_image(path).size == (16, 16)


def test_where_datasets_decoding_differs_from_ours(tmp_path):
    """Why extraction decodes with `load_image` and not `datasets.Image(mode="RGB")`: the two agree on 8-bit RGB, and
    differ where ours is what the picture looks like (transparency on white, 16-bit pixels scaled, not clipped)."""
    from datasets import Image as ImageFeature

    feature = ImageFeature(mode="RGB")
    rgb = np.random.default_rng(0).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    pictures = {
        "rgb.png": Image.fromarray(rgb),
        "clear.png": Image.new("RGBA", (6, 6), (10, 200, 30, 0)),
        "gray16.png": Image.fromarray(np.full((6, 6), 100 * 257, dtype=np.uint16)),
    }
    decoded = {}
    for name, picture in pictures.items():
        picture.save(tmp_path / name)
        theirs = _pixels(feature.decode_example({"path": str(tmp_path / name), "bytes": None}))
        decoded[name] = (theirs, _pixels(load_image(tmp_path / name)))
    assert np.array_equal(*decoded["rgb.png"])
    assert (
        decoded["clear.png"][0][0, 0].tolist() == [10, 200, 30] and decoded["clear.png"][1][0, 0].tolist() == [255] * 3
    )
    assert (
        decoded["gray16.png"][0][0, 0].tolist() == [255] * 3 and decoded["gray16.png"][1][0, 0].tolist() == [100] * 3
    )
