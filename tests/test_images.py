"""Every input kind goes through one loader and comes out as the same kind of RGB image."""

import io

import numpy as np
import pytest
from PIL import Image, ImageFile

from qponder_plugin.images import ImageError, describe, expand, iter_image_files, load_image


def jpeg_bytes(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", **options)
    return buffer.getvalue()


@pytest.fixture
def photo():
    gradient = np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3).astype("uint8")
    return Image.fromarray(gradient)


def test_path_bytes_file_object_and_pil_give_identical_pixels(tmp_path, photo):
    path = tmp_path / "photo.png"
    photo.save(path)
    results = [load_image(path), load_image(str(path)), load_image(path.read_bytes()),
               load_image(io.BytesIO(path.read_bytes())), load_image(photo)]
    for result in results:
        assert result.mode == "RGB" and result.size == (64, 48)
        assert np.array_equal(np.asarray(result), np.asarray(photo))


@pytest.mark.parametrize("layout", ["hwc", "chw"])
@pytest.mark.parametrize("dtype", ["uint8", "float", "uint16", "bool"])
def test_numpy_layouts_and_dtypes(layout, dtype):
    base = np.zeros((30, 40, 3), dtype=np.float64)
    base[:, 20:] = 1.0
    array = {"uint8": (base * 255).astype(np.uint8), "float": base.astype(np.float32),
             "uint16": (base * 65535).astype(np.uint16), "bool": base.astype(bool)}[dtype]
    if layout == "chw":
        array = np.moveaxis(array, -1, 0)
    pixels = np.asarray(load_image(array))
    assert pixels.shape == (30, 40, 3)
    assert pixels[:, :20].max() == 0 and pixels[:, 20:].min() == 255


def test_gray_and_rgba_arrays():
    gray = np.full((10, 12), 128, np.uint8)
    assert np.asarray(load_image(gray))[0, 0].tolist() == [128, 128, 128]
    rgba = np.zeros((10, 12, 4), np.uint8)  # fully transparent black flattens onto white
    assert np.asarray(load_image(rgba))[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(load_image(rgba[..., [0, 3]]))[0, 0].tolist() == [255, 255, 255]  # gray + alpha


def test_float_array_in_0_255_range_and_nan():
    assert np.asarray(load_image(np.full((4, 4, 3), 200.0)))[0, 0].tolist() == [200, 200, 200]
    with pytest.raises(ImageError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))


def test_torch_tensor_and_comfyui_batch():
    torch = pytest.importorskip("torch", reason="needs torch")
    batch = torch.zeros(3, 20, 30, 3)  # ComfyUI IMAGE: [B,H,W,C] float in 0..1
    batch[1] = 1.0
    frames = expand(batch)
    assert len(frames) == 3
    assert np.asarray(load_image(frames[1])).min() == 255
    assert load_image(batch[:1]).size == (30, 20)  # a batch of one is one image
    assert load_image(torch.ones(3, 20, 30, dtype=torch.bfloat16)).size == (30, 20)  # CHW, bf16
    with pytest.raises(ImageError, match="batch of 3"):
        load_image(batch)


@pytest.mark.parametrize("mode", ["L", "1", "P", "CMYK", "LA", "I;16", "I", "F", "RGBA", "YCbCr"])
def test_odd_modes_convert_to_rgb(tmp_path, mode):
    source = Image.new("RGB", (16, 8), (10, 200, 30)).convert(mode)
    image = load_image(source)
    assert image.mode == "RGB" and image.size == (16, 8)


def test_sixteen_bit_png_keeps_its_range(tmp_path):
    array = np.full((8, 8), 65535, np.uint16)
    array[:, :4] = 0
    path = tmp_path / "deep.png"
    Image.fromarray(array).save(path)
    pixels = np.asarray(load_image(path))
    assert pixels[:, :4].max() == 0 and pixels[:, 4:].min() == 255


def test_palette_transparency_flattens_onto_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0] * 256)
    image.info["transparency"] = 0
    assert np.asarray(load_image(image))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied(photo):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    rotated = load_image(jpeg_bytes(photo, exif=exif.tobytes()))
    assert rotated.size == (48, 64)


def test_max_pixels_caps_and_keeps_aspect(photo):
    big = photo.resize((4000, 3000))
    image = load_image(big, max_pixels=120_000)
    assert image.width * image.height <= 120_000
    assert abs(image.width / image.height - 4 / 3) < 0.01
    assert load_image(big, max_pixels=None).size == (4000, 3000)


def test_large_jpeg_is_decoded_at_reduced_scale(photo, monkeypatch):
    data = jpeg_bytes(photo.resize((4000, 3000)))
    seen = []
    original = Image.Image.load

    def spy(self):
        result = original(self)
        seen.append(self.size)
        return result

    monkeypatch.setattr(Image.Image, "load", spy)
    image = load_image(data, max_pixels=200_000)
    assert image.width * image.height <= 200_000
    assert seen and max(w * h for w, h in seen) <= 4 * 4000 * 3000 // 16  # DCT draft: never the full 12 MP


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    path = tmp_path / "bomb.png"
    Image.new("L", (100, 100)).save(path)  # 10,000 px > 2 x 1,000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path)


def test_bad_inputs_raise_one_typed_error(tmp_path, photo):
    (tmp_path / "notes.txt").write_text("not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(jpeg_bytes(photo.resize((400, 300)))[:600])
    cases = [
        (tmp_path / "missing.jpg", "no such file"),
        (tmp_path, "is a directory"),
        (tmp_path / "notes.txt", "not an image"),
        (truncated, "corrupt or truncated"),
        (b"", "not an image"),
        (12345, "unsupported input type"),
        (np.zeros((2, 3, 4, 5, 6)), "not an image"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
    ]
    for source, message in cases:
        with pytest.raises(ImageError, match=message):
            load_image(source)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # we never silently accept half an image


def test_describe_and_folder_expansion(tmp_path, photo):
    (tmp_path / "sub").mkdir()
    photo.save(tmp_path / "b.png")
    photo.save(tmp_path / "sub" / "a.jpg")
    (tmp_path / "readme.txt").write_text("x")
    found = list(iter_image_files([str(tmp_path)]))
    assert [p.rsplit("/", 1)[-1] for p in found] == ["b.png", "a.jpg"]
    assert describe(np.zeros((2, 3, 3))) == "<ndarray 2x3x3>"
    assert describe(str(tmp_path / "b.png")).endswith("b.png")


def test_a_path_is_read_afresh_each_time(tmp_path):
    path = tmp_path / "frame.png"
    Image.new("RGB", (8, 8), (10, 10, 10)).save(path)
    assert load_image(path).getpixel((0, 0)) == (10, 10, 10)
    Image.new("RGB", (8, 8), (200, 200, 200)).save(path)  # a pipeline rewrote the file
    assert load_image(path).getpixel((0, 0)) == (200, 200, 200)
