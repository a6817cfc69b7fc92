"""GET /api/v1/jobs/<id>/items/<item>/thumbnail through the app factory on SQLite and PostgreSQL: a small JPEG of an
item read only inside the data roots and the job's own uploads, cached; '..', absolute paths elsewhere, symlinks
out and another job's uploads are refused (404, the one error shape)."""
import io

from PIL import Image

from shared.core.db import session_scope
from shared.services import jobs
from tests.helpers import assert_error, seed_version, write_jpeg


def make_job(items, folder=None):
    source = {"type": "upload", "folder": folder} if folder else {"type": "items"}
    with session_scope() as session:
        job = jobs.create_score_job(session, model_ref="scorer", pieces=[items], source=source, use_cache=True,
                                    chunk_size=10)
        return job.id


def thumb(client, job_id, item_id, size=None):
    return client.get(f"/api/v1/jobs/{job_id}/items/{item_id}/thumbnail" + (f"?size={size}" if size else ""))


def test_a_thumbnail_is_a_small_jpeg_of_the_item_cached_under_the_home(client, configured):
    seed_version("scorer")
    write_jpeg(configured.data_roots[0] / "cats" / "a.jpg", size=(640, 320))
    job_id = make_job([("cat <b>a</b>", "cats/a.jpg")])
    resp = thumb(client, job_id, "cat%20%3Cb%3Ea%3C%2Fb%3E", 128)
    assert resp.status_code == 200 and resp.mimetype == "image/jpeg"
    with Image.open(io.BytesIO(resp.data)) as img:
        assert img.size == (128, 64)
    cached = list((configured.data_dir / "thumbnails" / job_id).glob("*.jpg"))
    assert len(cached) == 1 and cached[0].read_bytes() == resp.data
    (configured.data_roots[0] / "cats" / "a.jpg").unlink()
    assert thumb(client, job_id, "cat%20%3Cb%3Ea%3C%2Fb%3E", 128).data == resp.data  # from the cache
    assert_error(thumb(client, job_id, "cat%20%3Cb%3Ea%3C%2Fb%3E", 5000), 400, "InvalidRequest", "size")


def test_paths_outside_the_roots_and_other_jobs_uploads_are_refused(client, configured, tmp_path):
    seed_version("scorer")
    secret = write_jpeg(tmp_path / "secret.jpg")  # beside the data root, not inside it
    theirs = write_jpeg(configured.upload_dir / "theirs" / "x.jpg")
    write_jpeg(configured.upload_dir / "mine" / "ok.jpg")
    link = configured.data_roots[0] / "link.jpg"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(secret)
    mine = make_job([("dotdot", "../secret.jpg"), ("absolute", str(secret)), ("link", "link.jpg"),
                     ("other-upload", str(theirs)), ("other-upload-dots", "../theirs/x.jpg"),
                     ("etc", "/etc/passwd"), ("url", "http://example.com/x.jpg"), ("own", "ok.jpg")], folder="mine")
    other = make_job([("x", "x.jpg")], folder="theirs")
    for item in ("dotdot", "absolute", "link", "other-upload", "other-upload-dots", "etc", "url"):
        assert_error(thumb(client, mine, item), 404, "NotFound")
    assert thumb(client, mine, "own").status_code == 200  # its own upload folder
    assert thumb(client, other, "x").status_code == 200  # and the other job reads its own
    assert_error(thumb(client, mine, "no-such-item"), 404, "NotFound")
    assert_error(thumb(client, "00000000-0000-0000-0000-000000000000", "x"), 404, "NotFound")
