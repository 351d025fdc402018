"""`make weights` / `python -m weights.download`: fetch the official SD 1.5 weights and tokenizer.

Where this sits: the only code in minitome that touches the network. It downloads
`v1-5-pruned-emaonly.safetensors` and the tokenizer's vocab.json + merges.txt from the Hugging Face
Hub repository `stable-diffusion-v1-5/stable-diffusion-v1-5` into a git-ignored folder (`models/`),
laid out as `weights.load` expects (the tokenizer folder beside the file).

Each file goes to `<name>.part` first; an interrupted download resumes from there with an HTTP Range
request. A finished file is checked (size and sha256 where known, content otherwise) before it is
renamed into place, so a file with its final name is always whole. The checkpoint's sha256 is saved
beside it (`.sha256`), where `python -m minitome.sample` reads the short hash for the PNG metadata.
"""
import argparse
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

BASE_URL = "https://huggingface.co/stable-diffusion-v1-5/stable-diffusion-v1-5/resolve/main"
CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a connection counts as lost


def check_vocab(path: Path):
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError("not a JSON vocabulary") from None
    if not isinstance(vocab, dict) or len(vocab) != 49408:
        raise ValueError("expected 49,408 vocabulary entries")


def check_merges(path: Path):
    try:
        lines = path.read_text(encoding="utf-8").strip().split("\n")
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    if len(lines) < 48895 or any(len(line.split()) != 2 for line in lines[1:48895]):
        raise ValueError("expected a version line and 48,894 merges")


@dataclass(frozen=True)
class Remote:
    url_path: str          # below the base URL
    dest: str              # below the destination folder
    size: int = None       # bytes, when known
    sha256: str = None     # hex digest, when known
    check: object = None   # a content check, for files whose hash is not pinned here


OFFICIAL = [
    Remote("v1-5-pruned-emaonly.safetensors", "v1-5-pruned-emaonly.safetensors", 4_265_146_304,
           "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa"),
    Remote("tokenizer/vocab.json", "tokenizer/vocab.json", check=check_vocab),
    Remote("tokenizer/merges.txt", "tokenizer/merges.txt", check=check_merges),
]


def sha256_of(path: Path, start: int = 0) -> str:
    """The sha256 of the file's bytes from `start` on, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(start)
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


class DownloadError(Exception):
    """A file that could not be fetched or did not check out; the message names the file and the URL."""


def fetch(url: str, part: Path, log=sys.stderr):
    """Append the rest of `url` to `part`, resuming from its current size when the server allows it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing left to fetch: the .part is complete
            return
        raise
    except TimeoutError as error:  # connected, but no answer
        raise urllib.error.URLError(error) from None
    with response:
        if have and response.status != 206:  # the server ignored the Range: start over
            have = 0
        total = int(response.headers.get("Content-Length", 0)) + have
        mode = "ab" if have else "wb"
        start, done = time.monotonic(), have
        with open(part, mode) as f:
            while chunk := response.read(CHUNK):
                f.write(chunk)
                done += len(chunk)
                rate = (done - have) / max(time.monotonic() - start, 1e-6) / 1e6
                shown = f"{100 * done / total:5.1f}% of {total / 1e6:,.0f} MB" if total else f"{done / 1e6:,.0f} MB"
                print(f"\r  {part.name[:-5]}: {shown} · {rate:.1f} MB/s", end="", file=log, flush=True)
        print(file=log)
        if total and done < total:
            raise ConnectionError(f"the server sent {done - have:,} of {total - have:,} bytes")


def network_error(error: Exception, remote: "Remote", url: str, dest: Path) -> DownloadError:
    """What went wrong, for which file and URL, and what to do about it. URLError is raised while connecting
    (no network, no such host, refused, no answer); anything else while the body was arriving."""
    if isinstance(error, urllib.error.HTTPError):
        return DownloadError(f"{remote.dest}: {url}: HTTP {error.code} {error.reason}")
    if isinstance(error, urllib.error.URLError):
        host, by_hand = urllib.parse.urlsplit(url).hostname, ", ".join(r.dest for r in OFFICIAL)
        return DownloadError(f"{remote.dest}: cannot reach {host} ({error.reason}); connect to the network and run "
                             f"again, or put the files ({by_hand}) into {dest}/ by hand")
    return DownloadError(f"{remote.dest}: {url}: connection lost ({error}); run again to resume")


def download(files=OFFICIAL, dest="models", base_url: str = BASE_URL, log=sys.stderr) -> list:
    """Fetch each file into dest unless it is already there; returns the final paths.

    A `.part` that fails a check (too long, wrong sha256, wrong content) is deleted, so that the next run
    starts it afresh instead of appending to it; one that is only short stays, and the next run resumes it.
    """
    dest, paths = Path(dest), []
    for remote in files:
        target = dest / remote.dest
        paths.append(target)
        if target.exists():
            print(f"  {remote.dest}: already here", file=log)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        part = target.with_name(target.name + ".part")
        url = f"{base_url.rstrip('/')}/{remote.url_path}"
        try:
            fetch(url, part, log)
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.HTTPException) as error:
            raise network_error(error, remote, url, dest) from None
        size = part.stat().st_size
        if remote.size is not None and size < remote.size:
            raise DownloadError(f"{remote.dest}: {url}: {size:,} bytes of {remote.size:,}; run again to resume")
        problem = None
        if remote.size is not None and size > remote.size:
            problem = f"{size:,} bytes, expected {remote.size:,}"
        elif remote.sha256 is not None and (digest := sha256_of(part)) != remote.sha256:
            problem = f"sha256 {digest} does not match {remote.sha256}"
        elif remote.check is not None:
            try:
                remote.check(part)
            except ValueError as error:
                problem = str(error)
        if problem is not None:
            part.unlink()
            raise DownloadError(f"{remote.dest}: {url}: {problem}; removed it, run again to fetch it afresh")
        if remote.sha256 is not None:
            target.with_name(target.name + ".sha256").write_text(f"{remote.sha256}  {target.name}\n")
        os.replace(part, target)
        print(f"  {remote.dest}: ok", file=log)
    return paths


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m weights.download", description=__doc__.splitlines()[0])
    p.add_argument("--dest", default="models", help="folder for the files (default: models/)")
    p.add_argument("--base-url", default=BASE_URL, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        download(dest=args.dest, base_url=args.base_url)
    except DownloadError as error:
        print(f"\nweights.download: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the destination cannot be made or written (no permission, a full disk)
        print(f"\nweights.download: error: {error.filename or args.dest}: {error.strerror or error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nweights.download: interrupted; run again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
