"""Where `python -m minitome.sample` puts its images: PNG files reserved before sampling, written whole.

Where this sits: `minitome/sample.py` reserves the files before it loads anything, and fills them
once the images exist. A finished image is never lost to a bad output path, and no half-written
file is ever left behind:

- reserve: each image's name is created empty and exclusively (the first free one of `out.png`,
  `out-1.png`, …; a dangling symlink counts as taken), so an unwritable folder, a name too long for
  the file system or a full disk fails in milliseconds, before any model work;
- write: the PNG goes to a hidden temporary file in the same folder, which then replaces the
  reservation in one rename, with the mode the reservation got from the umask;
- abandon: on failure, Ctrl-C or SIGTERM, the reservations not yet written and any temporary file
  are removed, and so are the folders made for `--out` when nothing was written into them.
The PNG carries an A1111-style `parameters` text chunk, written by minitome/cli/png_text.py.
"""
import os
import tempfile
from pathlib import Path

from PIL.PngImagePlugin import PngInfo

from ..checks import Refusal


def png_info(parameters: str) -> PngInfo:
    info = PngInfo()
    info.add_text("parameters", parameters)
    return info


class Outputs:
    """`count` PNG paths reserved from `out` on; `write(i, image, parameters)` fills the i-th; `abandon()` clears up."""

    def __init__(self, out: Path, count: int):
        if out.suffix.lower() != ".png":
            raise Refusal(f"--out {out}: the output is a PNG, name it .png")
        self.paths, self.written, self.temporary = [], set(), None
        self.folders = [f for f in (out.parent, *out.parent.parents) if not f.exists()][::-1]  # made here, outermost first
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            self.remove_folders()
            raise Refusal(f"--out {out}: cannot create folder {out.parent} ({error.strerror})") from None
        try:
            n = 0  # the next name to try: each reservation goes on from where the last one stopped
            for _ in range(count):
                path, n = self.reserve(out, n)
                self.paths.append(path)
        except BaseException:
            self.abandon()
            raise

    @staticmethod
    def reserve(out: Path, n: int = 0) -> tuple:
        """(the first free name from the n-th on: out.png for 0, out-n.png after; the number after it).
        A batch's names are reserved in one pass over the numbers, never from the start again: linear in
        the batch and the files already there."""
        while True:
            candidate = out if n == 0 else out.with_name(f"{out.stem}-{n}{out.suffix}")
            try:
                os.close(os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))  # 0o666 less the umask
                return candidate, n + 1
            except FileExistsError:  # a file, a folder or a (dangling) symlink: take the next name
                n += 1
            except OSError as error:
                raise Refusal(f"--out {candidate}: cannot create it ({error.strerror})") from None

    def write(self, i: int, image, parameters: str) -> Path:
        target = self.paths[i]
        fd, self.temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            image.save(f, format="PNG", pnginfo=png_info(parameters))
        os.chmod(self.temporary, target.stat().st_mode & 0o777)  # mkstemp makes it 0600; the reservation has the umask's
        os.replace(self.temporary, target)
        self.temporary = None
        self.written.add(i)
        return target

    def abandon(self):
        for i, path in enumerate(self.paths):
            if i not in self.written:
                path.unlink(missing_ok=True)
        if self.temporary is not None:
            Path(self.temporary).unlink(missing_ok=True)
            self.temporary = None
        if not self.written:
            self.remove_folders()

    def remove_folders(self):
        """The folders this run created for --out, innermost first, as long as they are empty."""
        for folder in reversed(self.folders):
            try:
                folder.rmdir()
            except FileNotFoundError:  # never made (a failed mkdir) or already gone
                continue
            except OSError:  # not empty: something else wrote there
                return
