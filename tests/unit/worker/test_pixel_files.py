"""A run's pixel files: read back by index exactly as written, in any order; an attempt's workspace is locked while
it lives, removed when it ends, and a killed attempt's is removed by the next one to start."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from shared.core.config import load_settings
from worker.training import pixel_files
from worker.training.pixel_files import PixelWriter


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 5, 7, 3), dtype=np.uint8)


def test_a_pixel_file_reads_back_what_was_written_by_index_slice_and_gather(tmp_path):
    images = _images(37)
    writer = PixelWriter(tmp_path / "train.pixels", (5, 7, 3))
    assert [writer.append(im) for im in images] == list(range(37))
    pixels = writer.finish()
    assert (len(pixels), pixels.shape, pixels.dtype) == (37, (37, 5, 7, 3), np.uint8)
    assert (tmp_path / "train.pixels").stat().st_size == 37 * 5 * 7 * 3  # the records and nothing else
    assert np.array_equal(pixels[:], images) and np.array_equal(pixels[3:9], images[3:9])
    assert np.array_equal(pixels[::5], images[::5]) and np.array_equal(pixels[-1], images[-1])
    order = np.random.default_rng(1).permutation(37)
    assert np.array_equal(pixels[order], images[order])
    assert np.array_equal(pixels[np.array([4, 4, 0], np.int32)], images[[4, 4, 0]])  # repeats; tf's int32 indices
    assert np.array_equal(np.stack(list(pixels)), images)
    assert pixels[np.array([], np.int64)].shape == (0, 5, 7, 3)
    with pytest.raises(IndexError):
        pixels[[37]]


def test_a_writer_refuses_an_image_of_another_shape_or_type(tmp_path):
    writer = PixelWriter(tmp_path / "p.pixels", (5, 7, 3))
    with pytest.raises(ValueError, match="expected uint8"):
        writer.append(np.zeros((7, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="expected uint8"):
        writer.append(np.zeros((5, 7, 3), np.float32))


def test_a_workspace_is_removed_when_its_attempt_ends_even_by_an_error(tmp_path):
    settings = load_settings({"IMGQ_HOME": str(tmp_path / "home")})
    with pytest.raises(RuntimeError), pixel_files.workspace(settings, "job-1", 2) as folder:
        (folder / "train.pixels").write_bytes(b"x" * 100)
        assert folder.name == "job-1-attempt-2"
        raise RuntimeError("the fit failed")
    assert not folder.exists()


HOLDER = """
import sys, time
from shared.core.config import load_settings
from worker.training import pixel_files
with pixel_files.workspace(load_settings({"IMGQ_HOME": sys.argv[1]}), sys.argv[2], 1) as folder:
    (folder / "train.pixels").write_bytes(b"x" * 1000)
    print(folder, flush=True)
    time.sleep(600)
"""


def test_a_killed_attempts_workspace_is_removed_by_the_next_one_and_a_live_ones_is_kept(tmp_path):
    home = tmp_path / "home"
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    live = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), "live-job"], stdout=subprocess.PIPE, text=True,
                            env=env)
    killed = subprocess.Popen([sys.executable, "-c", HOLDER, str(home), "killed-job"], stdout=subprocess.PIPE,
                              text=True, env=env)
    try:
        live_folder, killed_folder = live.stdout.readline().strip(), killed.stdout.readline().strip()
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
        assert os.path.isdir(killed_folder)  # a SIGKILL runs no cleanup
        time.sleep(0.2)
        with pixel_files.workspace(load_settings({"IMGQ_HOME": str(home)}), "next-job", 1) as folder:
            assert not os.path.exists(killed_folder) and os.path.isdir(live_folder)
            assert sorted(p.name for p in folder.parent.iterdir()) == ["live-job-attempt-1", "next-job-attempt-1"]
    finally:
        live.kill()
        live.wait(10)
