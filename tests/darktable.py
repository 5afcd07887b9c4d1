"""darktable itself, run here: ``darktable-cli`` (no display) develops an image with its sidecar, and the darktable
application under Xvfb, driven by a Lua script, edits an image so that it writes a sidecar with a history stack.
Both use a library in memory and configuration and cache folders of their own (darktable's default cache is
shared, and two instances wait on each other there). A test that needs a missing tool skips,
naming it (``scripts/system-packages`` installs them)."""

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

TIMEOUT = 180


def run(args: list[str]) -> subprocess.CompletedProcess:
    """Run darktable in a process group of its own; on a timeout the whole group (xvfb-run, D-Bus, darktable) is
    killed, so no instance outlives the test."""
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True) as process:
        try:
            out, err = process.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            pytest.fail(f"darktable did not finish in {TIMEOUT} s: {' '.join(args)}\n{out[-2000:]}{err[-2000:]}")
    return subprocess.CompletedProcess(args, process.returncode, out, err)


def need(*tools: str) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/system-packages installs darktable and xvfb)")


def export(image: Path, out: Path, config: Path, sidecar: Path | None = None) -> dict:
    """Develop ``image`` with darktable-cli (reading ``sidecar``, else the NAME.EXT.xmp it finds itself) into the
    JPEG ``out``; the XMP darktable wrote into it: what it read (rating, history)."""
    import pyexiv2

    need("darktable-cli")
    args = ["darktable-cli", str(image), *([str(sidecar)] if sidecar else []), str(out), "--core", "--library",
            ":memory:", "--configdir", str(config), "--cachedir", str(config / "cache")]
    done = run(args)
    assert done.returncode == 0 and out.is_file(), done.stdout + done.stderr
    with pyexiv2.Image(str(out)) as exported:
        return exported.read_xmp()


# Import the image, rate, label, tag and title it, open it in the darkroom (which applies darktable's default
# modules: the history stack) and wait until darktable has written the sidecar with that history.
EDIT = """
local dt = require "darktable"
local image = dt.database.import("{image}")
image.rating = 2
image.red = true
image.blue = true
image.title = "Harbour at dusk"
image.description = "A test image, edited in darktable"
dt.tags.attach(dt.tags.create("places|harbour"), image)
dt.gui.views.darkroom.display_image(image)
dt.gui.current_view(dt.gui.views.darkroom)
local function written()
  local file = io.open("{sidecar}")
  if not file then return false end
  local text = file:read("a")
  file:close()
  return text:find("darktable:operation", 1, true) ~= nil
end
local waited = 0
while not written() and waited < 90000 do dt.control.sleep(250); waited = waited + 250 end
dt.gui.current_view(dt.gui.views.lighttable)
dt.control.sleep(500)
os.exit(0)
"""


def edit(image: Path, work: Path) -> Path:
    """Have darktable edit ``image`` (see :data:`EDIT`); its sidecar, ``NAME.EXT.xmp``, with the history stack."""
    need("darktable", "xvfb-run", "dbus-run-session")
    sidecar = image.with_name(image.name + ".xmp")
    script = work / "edit.lua"
    script.write_text(EDIT.format(image=image, sidecar=sidecar))
    args = ["xvfb-run", "-a", "dbus-run-session", "darktable", "--library", ":memory:", "--configdir",
            str(work / "config"), "--cachedir", str(work / "cache"), "--conf", "write_sidecar_files=on import",
            "--luacmd", f'dofile("{script}")']
    done = run(args)
    assert sidecar.is_file() and "darktable:operation" in sidecar.read_text(), done.stdout[-2000:] + done.stderr[-2000:]
    return sidecar
