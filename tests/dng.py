"""DNG files made from real photos, written by tifffile in the DNG layout (an optional preview in IFD0, the raw
Bayer data in a SubIFD), with the DNG tags LibRaw and darktable need to develop them back into the photo."""

import io

import numpy as np
import pytest
from PIL import Image

# XYZ (D65) to linear sRGB: a "camera" whose raw values are linear sRGB, so that developing gives the photo back.
XYZ_TO_SRGB = ((3.2406, -1.5372, -0.4986), (-0.9689, 1.8758, 0.0415), (0.0557, -0.2040, 1.0570))
BITS, BLACK = 12, 64


def bayer(photo: Image.Image) -> np.ndarray:
    """The photo's linear light sampled through an RGGB colour filter array, as 12-bit raw values."""
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float64) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    mosaic = np.empty(linear.shape[:2])
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    return np.rint(BLACK + mosaic * ((1 << BITS) - 1 - BLACK)).astype(np.uint16)


def write_dng(path, photo: Image.Image, preview: Image.Image | None = None, preview_format: str = "jpeg",
              orientation: int = 1) -> None:
    """Write ``photo`` as a DNG at ``path``; with ``preview``, an embedded preview (JPEG or an uncompressed bitmap,
    as DNG converters write their thumbnails); ``orientation`` is the EXIF/TIFF orientation tag."""
    tifffile = pytest.importorskip("tifffile", reason="writing DNG test files needs tifffile (the dev extra)")
    raw = bayer(photo)
    rational = [part for row in XYZ_TO_SRGB for value in row for part in (round(value * 10000), 10000)]
    dng = [(50706, "B", 4, (1, 4, 0, 0)), (50707, "B", 4, (1, 1, 0, 0)), (50708, "s", 0, "QPonder test DNG"),
           (50721, "2i", 9, rational), (50778, "H", 1, 21), (50728, "2I", 3, (1, 1, 1, 1, 1, 1)),
           (271, "s", 0, "QPonder"), (272, "s", 0, "test DNG"), (274, "H", 1, orientation)]
    cfa = [(33421, "H", 2, (2, 2)), (33422, "B", 4, (0, 1, 1, 2)), (50714, "H", 1, BLACK),
           (50717, "H", 1, (1 << BITS) - 1)]
    with tifffile.TiffWriter(path) as tif:
        if preview is None:  # the raw data in IFD0 (the TIFF/EP layout that PiDNG and many phones write)
            tif.write(raw, photometric=32803, subfiletype=0, metadata=None, extratags=dng + cfa)
            return
        preview = preview.convert("RGB")
        if preview_format == "jpeg":
            encoded = io.BytesIO()
            preview.save(encoded, "JPEG", quality=90)
            tif.write(iter([encoded.getvalue()]), shape=(preview.height, preview.width, 3), dtype="uint8",
                      photometric="ycbcr", compression=7, subsampling=(2, 2), rowsperstrip=preview.height,
                      subfiletype=1, subifds=1, metadata=None, extratags=dng)
        else:
            tif.write(np.asarray(preview), photometric="rgb", subfiletype=1, subifds=1, metadata=None, extratags=dng)
        tif.write(raw, photometric=32803, subfiletype=0, metadata=None, extratags=cfa)
