"""The hashes a PNG's text names its files by, as A1111 computes them, all made here.

Where this sits: `python -m minitome.sample` calls `hashes_of(settings)` once the weights' headers are checked,
and the PNG's text (minitome/cli/png_text.py) writes them; with `--from`, the PNG's are compared with these.

- the model and a VAE: the first 10 hex digits of the file's sha256 ("Model hash", "VAE hash"), read from the
  `.sha256` kept beside the file by `make weights` when it is current;
- the init image: the first 10 hex digits of its file's sha256 ("Init image hash");
- a LoRA: 12 hex digits of the sha256 of the bytes after the safetensors header, so that editing the header's
  metadata keeps the hash ("Lora hashes", `name: hash`);
- an embedding: 12 hex digits of the whole file's sha256 ("TI hashes", `token: hash`).
"""
import re
import sys
from pathlib import Path

from weights.download import sha256_of


def hashes_of(settings) -> dict:
    """{record attribute: hash} for the files the settings name (minitome/cli/settings.py's hash fields)."""
    from weights.embedding import token_of
    return {"model_hash": model_hash(Path(settings.weights)),
            "vae_hash": model_hash(Path(settings.vae)) if settings.vae else "",
            "init_image_hash": sha256_of(Path(settings.init_image))[:10] if settings.init_image else "",  # no sidecar
            "lora_hashes": tuple((path.stem, lora_hash(path)) for path, _ in settings.loras),
            "embedding_hashes": tuple((token_of(path, token), embedding_hash(path)) for path, token in settings.embeddings)}


def model_hash(path: Path) -> str:
    """A1111's short hash: the first 10 hex digits of the file's sha256 (kept beside the file by `make weights`);
    "" for a folder. A sidecar that is stale or not a sha256 is ignored, said in one line, and the hash computed."""
    if path.is_dir():
        return ""
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        try:
            text = sidecar.read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            text = []
        if text and re.fullmatch(r"[0-9a-f]{64}", text[0]) and sidecar.stat().st_mtime >= path.stat().st_mtime:
            return text[0][:10]
        print(f"minitome.sample: warning: ignored {sidecar}: not a current sha256 of the weights; computing it",
              file=sys.stderr)
    return sha256_of(path)[:10]


def lora_hash(path: Path) -> str:
    """A1111's LoRA hash: the sha256 of the bytes after the safetensors header (8 bytes of length, then the
    header); its first 12 hex digits."""
    with open(path, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    return sha256_of(path, 8 + header)[:12]


def embedding_hash(path: Path) -> str:
    """A1111's "TI hashes": the first 12 hex digits of the whole file's sha256."""
    return sha256_of(path)[:12]
