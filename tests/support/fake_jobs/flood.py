"""Fake job: `flood.py MEGABYTES` writes that many MiB of tqdm-style "\\r" progress redraws to
stderr, one "done N" line per MiB to stdout, then exits 0."""

import sys

MIB = 1024 * 1024


def progress_mib(index: int) -> bytes:
    """Exactly one MiB of "\\r<bar>" redraws, padded so sizes are exact."""
    redraw = f"\r{index:5d}: 42%|████▏     | 420/1000 [00:04<00:05, 99.9it/s]".encode()
    block = redraw * (MIB // len(redraw))
    return block + b" " * (MIB - len(block))


def main() -> None:
    megabytes = int(sys.argv[1])
    for index in range(megabytes):
        sys.stderr.buffer.write(progress_mib(index))
        sys.stdout.buffer.write(f"done {index}\n".encode())
    sys.stderr.buffer.flush()
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    main()
