"""The downloader against small files served from a local HTTP server on 127.0.0.1 (with Range support):
resuming, checking, and what it says when the server or the network misbehaves."""
import hashlib
import http.server
import socket
import threading

import pytest

import weights.download as download_module
from weights.download import DownloadError, Remote, download, main

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
WRONG = bytes(reversed(PAYLOAD))


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves `files`; a path listed in `queue` serves its queued bodies first, one per request; a body
    in `cut` is announced whole but cut off after that many bytes; `hang` makes every request wait."""
    files, queue, ranges, cut, hang = {}, {}, [], {}, threading.Event()

    def do_GET(self):
        name = self.path.lstrip("/")
        if self.hang.is_set():
            threading.Event().wait(3)  # answers nothing for longer than the client waits
            return
        data = self.queue[name].pop(0) if self.queue.get(name) else self.files.get(name)
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
        self.wfile.write(data[start:start + self.cut.pop(name, len(data))])

    def log_message(self, *args):
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.files, Handler.queue, Handler.ranges, Handler.cut = {"big.bin": PAYLOAD, "small.txt": b"hello\n"}, {}, [], {}
    Handler.hang.clear()
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    Handler.hang.clear()
    httpd.shutdown()
    httpd.server_close()


def says_hello(path):
    if path.read_bytes() != b"hello\n":
        raise ValueError("not the greeting")


def files(sha=None, size=len(PAYLOAD)):
    return [Remote("big.bin", "weights/big.bin", size, sha or hashlib.sha256(PAYLOAD).hexdigest()),
            Remote("small.txt", "tokenizer/small.txt", check=says_hello)]


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


@pytest.mark.parametrize("name, wrong, message", [
    ("big.bin", WRONG, r"weights/big.bin: http://127.0.0.1:\d+/big.bin: sha256 .* does not match .*"),
    ("small.txt", b"<html>rate limited</html>", r"tokenizer/small.txt: http://127.0.0.1:\d+/small.txt: not the greeting"),
])
def test_a_wrong_body_is_deleted_and_the_next_run_starts_afresh(server, tmp_path, name, wrong, message):
    """A server that first sends a wrong body (an error page, another file) and then the right one: the
    failed .part must not be kept, or the next run would append the right bytes to the wrong ones."""
    Handler.queue[name] = [wrong]
    with pytest.raises(DownloadError, match=message + "; removed it, run again"):
        download(files(), tmp_path, server)
    assert not list(tmp_path.rglob("*.part"))
    paths = download(files(), tmp_path, server)
    assert paths[0].read_bytes() == PAYLOAD and paths[1].read_bytes() == b"hello\n"
    assert Handler.ranges == []  # afresh, not resumed


def test_a_file_longer_than_expected_is_deleted(server, tmp_path):
    with pytest.raises(DownloadError, match=f"1,048,576 bytes, expected {len(PAYLOAD) - 10:,}; removed it"):
        download(files(size=len(PAYLOAD) - 10), tmp_path, server)
    assert not list(tmp_path.rglob("*.part"))


def test_a_lost_connection_keeps_the_part_for_resuming(server, tmp_path):
    Handler.cut["big.bin"] = 400_000  # announced whole, cut off
    with pytest.raises(DownloadError, match=r"weights/big.bin: http://127.0.0.1:\d+/big.bin: connection lost .*resume"):
        download(files(), tmp_path, server)
    assert (tmp_path / "weights/big.bin.part").stat().st_size == 400_000
    download(files(), tmp_path, server)
    assert Handler.ranges == [400_000] and (tmp_path / "weights/big.bin").read_bytes() == PAYLOAD


def test_a_silent_server_times_out_naming_file_and_url(server, tmp_path, monkeypatch):
    monkeypatch.setattr(download_module, "TIMEOUT", 0.5)
    Handler.hang.set()
    with pytest.raises(DownloadError, match=r"weights/big.bin: cannot reach 127.0.0.1 \(timed out\); connect to the network"):
        download(files(), tmp_path, server)


def test_no_network_says_what_to_do(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match=r"weights/big.bin: cannot reach 127.0.0.1 \(.*\); connect to the network and "
                                            r"run again, or put the files \(v1-5-pruned-emaonly.safetensors, tokenizer/vocab.json, "
                                            r"tokenizer/merges.txt\) into .* by hand"):
        download(files(), tmp_path, f"http://127.0.0.1:{port}")


def test_command_line_error_is_one_line_naming_file_and_url(server, tmp_path, capsys):
    assert main(["--dest", str(tmp_path), "--base-url", server + "/missing"]) == 1
    err = capsys.readouterr().err.strip().split("\n")
    assert err[-1] == (f"weights.download: error: v1-5-pruned-emaonly.safetensors: {server}/missing/"
                       "v1-5-pruned-emaonly.safetensors: HTTP 404 Not Found")
