"""Image URLs fetched through a real HTTP(S) server on loopback: bodies, limits, redirects, retries and the
guard against requests to internal addresses."""
import ipaddress
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.images.https_items import FetchPolicy, fetch, is_web_url, parse_networks
from shared.images.imaging import ImageError

pytestmark = pytest.mark.quick

LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"),)
BODY = b"\xff\xd8\xff" + bytes(range(256)) * 40


class Handler(BaseHTTPRequestHandler):
    flaky_left = {"n": 0}
    seen: list[str] = []

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        type(self).seen.append(self.path)
        route = self.path.split("?")[0]
        if route == "/photo.jpg":
            self._send(200, BODY)
        elif route == "/missing.jpg":
            self._send(404, b"no")
        elif route == "/private.jpg":
            self._send(403, b"no")
        elif route == "/big.jpg":
            self._send(200, b"x" * 5000)
        elif route == "/unsized.jpg":  # no Content-Length: the limit must hold while reading
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"y" * 5000)
        elif route == "/slow.jpg":
            time.sleep(3)
            self._send(200, BODY)
        elif route == "/flaky.jpg":
            if self.flaky_left["n"] > 0:
                self.flaky_left["n"] -= 1
                self._send(503, b"busy")
            else:
                self._send(200, BODY)
        elif route.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/"):].replace("~", "://", 1))
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self._send(500, b"?")

    def _send(self, status, body):
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


@pytest.fixture(scope="module")
def http_server():
    server = _serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def https_server(tmp_path_factory):
    """A real TLS server with a certificate for localhost and 127.0.0.1, signed by itself (the test's CA)."""
    import ssl

    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    _serve(server)
    yield f"https://localhost:{server.server_address[1]}", str(cert)
    server.shutdown()


def open_policy(**kw) -> FetchPolicy:
    return FetchPolicy(**{"timeout": 5.0, "max_bytes": 4096 * 10, "allow_http": True, "allowed_networks": LOOPBACK,
                          "backoff": 0.05, **kw})


def test_a_url_is_told_from_a_path():
    assert is_web_url("https://shop.example/a.jpg") and is_web_url("HTTP://x/a.jpg")
    assert not is_web_url("photos/a.jpg") and not is_web_url("s3://bucket/a.jpg")


def test_the_allow_list_parses_addresses_and_networks_and_names_a_bad_entry():
    assert parse_networks("127.0.0.1, 10.0.0.0/8") == (ipaddress.ip_network("127.0.0.1/32"),
                                                       ipaddress.ip_network("10.0.0.0/8"))
    with pytest.raises(ValueError, match="'intranet'"):
        parse_networks("127.0.0.1,intranet")


def test_https_with_a_checked_certificate_returns_the_body(https_server):
    base, ca = https_server
    assert fetch(f"{base}/photo.jpg", open_policy(allow_http=False, ca_file=ca)) == BODY


def test_a_certificate_the_fetcher_does_not_trust_is_an_item_error(https_server):
    base, _ = https_server
    with pytest.raises(ImageError, match="TLS failed"):
        fetch(f"{base}/photo.jpg", open_policy(allow_http=False))


def test_plain_http_is_refused_unless_allowed(http_server):
    with pytest.raises(ImageError, match=r"only https:// .*http:// is off"):
        fetch(f"{http_server}/photo.jpg", open_policy(allow_http=False))
    assert fetch(f"{http_server}/photo.jpg", open_policy()) == BODY


@pytest.mark.parametrize("path, reason", [("/missing.jpg", "not found (HTTP 404)"),
                                          ("/private.jpg", "forbidden (HTTP 403)")])
def test_missing_and_forbidden_are_item_errors_at_once(http_server, path, reason):
    Handler.seen.clear()
    with pytest.raises(ImageError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        fetch(f"{http_server}{path}?signature=secret", open_policy())
    assert Handler.seen == [f"{path}?signature=secret"]  # not retried


def test_an_error_never_shows_the_query_string(http_server):
    with pytest.raises(ImageError) as caught:
        fetch(f"{http_server}/missing.jpg?X-Amz-Signature=secret", open_policy())
    assert "secret" not in str(caught.value)


def test_loopback_is_refused_without_the_allow_list_even_by_name(http_server):
    port = http_server.rsplit(":", 1)[1]
    for url in (f"{http_server}/photo.jpg", f"http://localhost:{port}/photo.jpg"):
        with pytest.raises(ImageError, match="loopback address: refused"):
            fetch(url, open_policy(allowed_networks=()))


@pytest.mark.parametrize("target, kind", [("http~127.0.0.2:1/x.jpg", "loopback"),
                                          ("http~169.254.169.254/latest/meta-data/", "link-local"),
                                          ("http~10.1.2.3/x.jpg", "private"),
                                          ("http~[::1]:1/x.jpg", "loopback")])
def test_a_redirect_to_an_internal_address_is_refused_before_it_is_followed(http_server, target, kind):
    only_the_test_server = (ipaddress.ip_network("127.0.0.1/32"),)
    with pytest.raises(ImageError, match=f"a {kind} address: refused"):
        fetch(f"{http_server}/to/{target}", open_policy(allowed_networks=only_the_test_server))


def test_a_redirect_within_the_allowed_places_is_followed(http_server):
    target = http_server.replace("://", "~", 1) + "/photo.jpg"
    assert fetch(f"{http_server}/to/{target}", open_policy()) == BODY


def test_a_redirect_loop_ends_with_a_reason(http_server):
    with pytest.raises(ImageError, match="more than 3 redirects"):
        fetch(f"{http_server}/loop", open_policy(max_redirects=3))


def test_a_body_over_the_limit_is_refused_by_its_length_and_while_read(http_server):
    with pytest.raises(ImageError, match="5,000 bytes, over the limit of 1,000"):
        fetch(f"{http_server}/big.jpg", open_policy(max_bytes=1000))
    with pytest.raises(ImageError, match="over the limit of 1,000 bytes"):
        fetch(f"{http_server}/unsized.jpg", open_policy(max_bytes=1000))


def test_a_slow_server_times_out_as_the_item_error(http_server):
    with pytest.raises(ImageError, match="timed out after 1 s"):
        fetch(f"{http_server}/slow.jpg", open_policy(timeout=1.0))


def test_a_busy_server_is_tried_again_and_its_answer_kept(http_server):
    Handler.flaky_left["n"] = 2
    assert fetch(f"{http_server}/flaky.jpg", open_policy()) == BODY
    Handler.flaky_left["n"] = 10
    with pytest.raises(ImageError, match=r"HTTP 503 .* \(after 3 tries\)"):
        fetch(f"{http_server}/flaky.jpg", open_policy(retries=2))


def test_a_refused_connection_is_retried_then_reported(http_server):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ImageError, match=r"cannot reach .*ConnectionRefusedError \(after 2 tries\)"):
        fetch(f"http://127.0.0.1:{port}/x.jpg", open_policy(retries=1))
