"""The downloader against a small file served from a local HTTP server on 127.0.0.1 (with Range support)."""
import hashlib
import http.server
import threading

import pytest

from weights.download import Remote, download, main

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


class Handler(http.server.BaseHTTPRequestHandler):
    files, ranges = {}, []

    def do_GET(self):
        data = self.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
            return
        start = 0
        if "Range" in self.headers:
            start = int(self.headers["Range"].split("=")[1].split("-")[0])
            self.ranges.append(start)
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.files, Handler.ranges = {"big.bin": PAYLOAD, "small.txt": b"hello\n"}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def files(sha=None, size=len(PAYLOAD)):
    return [Remote("big.bin", "weights/big.bin", size, sha or hashlib.sha256(PAYLOAD).hexdigest()),
            Remote("small.txt", "tokenizer/small.txt", check=lambda p: None)]


def test_download_checks_and_places_files(server, tmp_path):
    paths = download(files(), tmp_path, server)
    assert paths[0].read_bytes() == PAYLOAD and paths[1].read_bytes() == b"hello\n"
    assert (tmp_path / "weights/big.bin.sha256").read_text().startswith(hashlib.sha256(PAYLOAD).hexdigest())
    assert not list(tmp_path.rglob("*.part"))
    download(files(), tmp_path, server)  # second run: already there, nothing fetched
    assert Handler.ranges == []


def test_download_resumes_from_a_partial_file(server, tmp_path):
    part = tmp_path / "weights/big.bin.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(PAYLOAD[:300_000])
    download(files(), tmp_path, server)
    assert Handler.ranges == [300_000]  # only the rest was asked for
    assert (tmp_path / "weights/big.bin").read_bytes() == PAYLOAD


def test_a_wrong_hash_leaves_no_file(server, tmp_path):
    with pytest.raises(ValueError, match="sha256 .* does not match"):
        download(files(sha="0" * 64), tmp_path, server)
    assert not (tmp_path / "weights/big.bin").exists() and not (tmp_path / "weights/big.bin.part").exists()


def test_a_short_file_is_kept_for_resuming_and_reported(server, tmp_path):
    with pytest.raises(ValueError, match=f"1,048,576 bytes, expected {len(PAYLOAD) + 10:,}"):
        download(files(size=len(PAYLOAD) + 10), tmp_path, server)
    assert not (tmp_path / "weights/big.bin").exists()


def test_command_line_error_is_one_line(server, tmp_path, capsys):
    assert main(["--dest", str(tmp_path), "--base-url", server + "/missing"]) == 1
    err = capsys.readouterr().err.strip().split("\n")
    assert err[-1].startswith("weights.download: error: HTTP Error 404")
